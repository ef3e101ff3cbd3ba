"""The bot's own HTTP endpoints: /health (liveness), /ready, /version, /metrics, and the
inbound alert endpoints of :mod:`bot.features.alerts.intake`.

Served by uvicorn inside the bot's event loop. The socket is bound by us, so a
busy port is a clear start-up error and tests can ask for port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator, Sequence

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from bot.kernel.errors import DependencyError
from bot.kernel.failures import report_failure
from bot.kernel.metrics import CONTENT_TYPE, Metrics
from bot.kernel.version import __version__

_log = structlog.get_logger("opsbot.http")
ReadinessProbe = Callable[[], Awaitable[dict[str, str]]]
READY_STATES = frozenset({"ok", "connected"})
# Still answering, with something to look at (e.g. the audit database is down and
# records wait in the spool): ready, and /ready says why it is degraded.
DEGRADED = "degraded"


class _EmbeddedServer(uvicorn.Server):
    # The bot owns SIGTERM/SIGINT and stops the server itself.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_app(
    metrics: Metrics,
    readiness: ReadinessProbe,
    extra_routes: Sequence[BaseRoute] = (),
    cluster: Callable[[], dict[str, str]] | None = None,
) -> Starlette:
    """``cluster``: what /ready also shows of the replicas (this one's id, Redis, the
    leader), for a person looking; it does not decide readiness."""

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        checks = await readiness()
        is_ready = all(
            state in READY_STATES or state.startswith(DEGRADED) for state in checks.values()
        )
        body: dict[str, object] = {"ready": is_ready, "checks": checks}
        if cluster is not None:
            body["cluster"] = cluster()
        return JSONResponse(body, status_code=200 if is_ready else 503)

    async def version(_: Request) -> Response:
        return JSONResponse({"name": "opsbot", "version": __version__})

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        middleware=[Middleware(_FailureSink)],
        routes=[
            Route("/health", health),
            Route("/ready", ready),
            Route("/version", version),
            Route("/metrics", metrics_endpoint),
            *extra_routes,  # POST /alerts, /alerts/alertmanager (bot.features.alerts.intake)
        ],
    )


BODY_READ_TIMEOUT_S = 10.0  # the most one chunk of a request body may take to arrive
BODY_TOTAL_TIMEOUT_S = 60.0  # the most a whole request body may take
HEADER_READ_TIMEOUT_S = 10.0  # the most a request's head may take, from the connection
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; more is answered 400


class _SlowClient(Exception):
    pass


class _FailureSink:
    """An endpoint that fails answers 500 with the request id its log line carries, as a
    chat command does, instead of a bare "Internal Server Error"; a client whose body
    trickles in is answered 408 and dropped, in one log line.

    Plain ASGI, not Starlette's BaseHTTPMiddleware: that one runs every request through
    an extra task and memory streams, which showed in an alert storm's 202 latency."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # A deadline per chunk and one for the whole body: a byte every 9 s would pass the
        # first alone, and hold a connection for days.
        body_deadline = asyncio.get_running_loop().time() + BODY_TOTAL_TIMEOUT_S

        async def timed_receive() -> Message:
            left = body_deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(0.0, min(BODY_READ_TIMEOUT_S, left))):
                    return await receive()
            except TimeoutError:
                raise _SlowClient from None

        try:
            await self._app(scope, timed_receive, tracking_send)
        except ClientDisconnect:
            # The client went away mid-request: nothing to answer, nothing broken here.
            _log.info("http.client_gone", path=scope.get("path"))
        except _SlowClient:
            _log.info("http.slow_client", path=scope.get("path"), timeout_s=BODY_READ_TIMEOUT_S)
            if not started:
                response = JSONResponse(
                    {
                        "error": "the request body did not arrive in time "
                        "(10 s a chunk, 60 s in all)"
                    },
                    status_code=408,
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
        except Exception as exc:
            if started:
                raise
            request_id = report_failure(f"http {scope.get('method')} {scope.get('path')}", exc)
            response = JSONResponse(
                {
                    "error": "internal error; the operator's log has the details",
                    "request_id": request_id,
                },
                status_code=500,
            )
            await response(scope, receive, send)


class _TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's head: a client that
    sends its request line and headers a byte at a time (slowloris) is dropped after
    ``HEADER_READ_TIMEOUT_S``, in one log line. uvicorn's own timeouts cover only the idle
    time between requests."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_head_timer()  # the head is in: the body has its own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()  # the next request's head, on a kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(HEADER_READ_TIMEOUT_S, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            _log.info("http.slow_client", client=self.client, timeout_s=HEADER_READ_TIMEOUT_S)
            self.transport.close()


class HttpServer:
    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        sock = _bind(self._host, self._port)
        self.bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=_TimedH11Protocol,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # surfaces the start-up failure
                raise DependencyError("http server", "stopped during start-up")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it a response's head and body go out as
    # two segments and the body waits for the client's delayed ACK: 40 ms on every
    # answer (it was the whole of a 202's latency in bench/alert_storm.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DependencyError(
            "http server", f"cannot listen on {host}:{port}: {exc.strerror or exc}", exc
        ) from exc
    sock.set_inheritable(True)
    return sock
