"""Real HTTP servers on 127.0.0.1 for tests: no mocks, real sockets.

Usage::

    async with serve({"/health": Route.of_json({"status": "ok"})}) as server:
        async with httpx.AsyncClient() as client:
            response = await client.get(server.url("/health"))
        assert server.requests[0].headers["X-Request-ID"] == "..."

Routes can be changed while the server runs (``server.routes["/x"] = Route(...)``).
Unknown paths answer 404. Hanging and delayed handlers are released when the
server stops, so leaving the ``async with`` never waits on them.

``refused_url()`` gives a URL whose port refuses connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["FakeServer", "RecordedRequest", "Route", "refused_url", "serve"]

_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Route:
    """How the server answers one path.

    `content_type` None leaves aiohttp's default (application/octet-stream
    for a non-empty body). `delay_s` pauses before the status line; `hang`
    never answers; `trickle_s` sends the body one byte at a time with that
    pause between bytes (to beat per-read timeouts).
    """

    status: int = 200
    body: bytes | str = b""
    content_type: str | None = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False
    trickle_s: float = 0.0

    @classmethod
    def of_json(cls, document: object, status: int = 200) -> Route:
        return cls(status=status, body=json.dumps(document), content_type="application/json")

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Route:
        return cls(status=status, headers={"Location": location})

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDictProxy[str]  # case-insensitive: headers["x-request-id"] works


class FakeServer:
    """A running server: its base URL, its routes and the requests it received."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes: dict[str, Route] = dict(routes)
        self.requests: list[RecordedRequest] = []
        self.base_url = ""
        self._stopping = asyncio.Event()

    def url(self, path: str = "/") -> str:
        return f"{self.base_url}{path}"

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    async def _wait(self, seconds: float | None) -> None:
        """Sleep up to `seconds` (forever if None), cut short when the server stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        self.requests.append(RecordedRequest(request.method, request.path, headers))
        route = self.routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="not found")
        if route.hang:
            await self._wait(None)
        elif route.delay_s > 0:
            await self._wait(route.delay_s)
        return await self._respond(request, route)

    async def _respond(self, request: web.Request, route: Route) -> web.StreamResponse:
        response = web.StreamResponse(status=route.status, headers=route.headers)
        if route.content_type is not None:
            response.headers["Content-Type"] = route.content_type
        body = route.body_bytes
        if route.trickle_s <= 0:
            response.content_length = len(body)
        await response.prepare(request)
        if route.trickle_s <= 0:
            await response.write(body)
        else:
            for index in range(len(body)):
                await response.write(body[index : index + 1])
                await self._wait(route.trickle_s)
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def serve(routes: Mapping[str, Route] | None = None) -> AsyncIterator[FakeServer]:
    """Run a FakeServer on 127.0.0.1 on a free port for the duration of the block."""
    server = FakeServer(routes or {})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server._handle)
    # handler_cancellation: a client that gives up (timeout) cancels its handler.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, _HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        server.base_url = f"http://{_HOST}:{port}"
        yield server
    finally:
        server._stopping.set()
        await runner.cleanup()


def refused_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 whose port refuses connections (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port = sock.getsockname()[1]
    return f"http://{_HOST}:{port}{path}"
