"""``opsbot console --connect``: a terminal on the box as a client of the running bot.

With ``[console] token`` (``OPSBOT_CONSOLE_TOKEN``) set, ``opsbot run`` attaches a console
adapter and serves it on its HTTP server:

* ``POST /console`` ``{"text": "/health"}`` runs the command as the console's principal
  (``[console] principal``) in the console's channel, through the same pipeline, policy
  and audit as every platform, and answers the rendered reply;
* ``GET /console/posts?after=N&wait=S`` answers what the bot posted to the console since
  its N-th post (job progress and results, heartbeats routed there), waiting up to S
  seconds for something new, with the number of jobs still running.

Both need ``Authorization: Bearer <token>`` and answer only loopback clients: from another
host, use an SSH tunnel. So a second process never runs a second bot on the same state.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters.console.adapter import ConsoleAdapter
from bot.kernel.render import render_text

MAX_BODY = 16 * 1024
MAX_TEXT = 4000
MAX_WAIT_S = 30.0


def console_routes(
    console: ConsoleAdapter, token: str, jobs_running: Callable[[], int]
) -> list[BaseRoute]:
    async def command(request: Request) -> Response:
        refused = _refused(request, token)
        if refused is not None:
            return refused
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, f"a command is at most {MAX_BODY} bytes")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, 'send JSON: {"text": "/health"}')
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            return _error(400, f'"text": a command of 1 to {MAX_TEXT} characters')
        seen = console.posted_total
        reply = await console.send(text)
        return JSONResponse(
            {
                "status": reply.status.value if reply is not None else "",
                "text": render_text(reply) if reply is not None else "",
                "posted": seen,
            }
        )

    async def posts(request: Request) -> Response:
        refused = _refused(request, token)
        if refused is not None:
            return refused
        try:
            after = int(request.query_params.get("after", "0"))
            wait = min(MAX_WAIT_S, max(0.0, float(request.query_params.get("wait", "0"))))
        except ValueError:
            return _error(400, "after: a whole number, wait: seconds")
        await console.wait_posted_after(after, wait)
        new = console.posted_after(after)
        return JSONResponse(
            {
                "posts": [{"status": r.status.value, "text": render_text(r)} for r in new],
                "posted": console.posted_total,
                "jobs_running": jobs_running(),
            }
        )

    return [
        Route("/console", command, methods=["POST"]),
        Route("/console/posts", posts, methods=["GET"]),
    ]


def _refused(request: Request, token: str) -> Response | None:
    client = request.client.host if request.client is not None else ""
    try:
        loopback = ipaddress.ip_address(client).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return _error(403, "the console answers only this host (use an SSH tunnel)")
    presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(presented.encode(), token.encode()):
        return _error(401, "wrong or missing console token (OPSBOT_CONSOLE_TOKEN)")
    return None


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


# -- the client side: `opsbot console --connect URL` ---------------------------------------


class RemoteConsole:
    """The client: one command at a time to ``url``, then what the bot posts for it."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    async def __aenter__(self) -> RemoteConsole:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def send(self, text: str) -> tuple[str, str, int]:
        """(status, rendered reply, posts before it); raises RemoteError in one line."""
        data = await self._call("POST", "/console", json={"text": text})
        return str(data.get("status", "")), str(data.get("text", "")), _int(data.get("posted"), 0)

    async def posts(self, after: int, wait: float) -> tuple[list[tuple[str, str]], int, int]:
        """((status, rendered) of each post after the first ``after``, posts in all, jobs
        still running)."""
        data = await self._call("GET", "/console/posts", params={"after": after, "wait": wait})
        found = data.get("posts")
        posts = (
            [
                (str(p.get("status", "")), str(p.get("text", "")))
                for p in found
                if isinstance(p, dict)
            ]
            if isinstance(found, list)
            else []
        )
        return posts, _int(data.get("posted"), after), _int(data.get("jobs_running"), 0)

    async def _call(self, method: str, path: str, **kwargs: object) -> dict[str, object]:
        try:
            response = await self._client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the bot at {self._client.base_url}: {exc}") from exc
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code != 200:
            reason = data.get("error") if isinstance(data, dict) else None
            raise RemoteError(f"the bot refused: {response.status_code} {reason or ''}".strip())
        return data if isinstance(data, dict) else {}


class RemoteError(Exception):
    pass


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) else default
