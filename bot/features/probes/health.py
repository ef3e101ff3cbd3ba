"""Health probing of HTTP services, behind the `/health` chat command.

Every probe answers: a failure of any kind becomes a DOWN result with a short
human-readable `detail`, because an on-call engineer needs an answer, not a
traceback. Only `asyncio.CancelledError` (and other BaseExceptions) escape.

The HTTP plumbing (`fetch`, `describe_failure`) lives here too and is shared
with `bot.features.probes.version`; it is not part of the public API.
"""

from __future__ import annotations

import asyncio
import enum
import json
import socket
import ssl
import time
from collections.abc import Mapping, Sequence

import httpx
import structlog
from msgspec import Struct

from bot.features.probes.request import HttpRequest
from bot.kernel.errors import exception_causes

__all__ = [
    "HealthResult",
    "HealthState",
    "ProbeTarget",
    "ResponseShape",
    "probe_all",
    "probe_health",
]

_log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_REDIRECTS = 3
_MAX_TEXT_CHARS = 80


class HealthState(enum.StrEnum):
    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"


class ResponseShape(enum.StrEnum):
    AUTO = "auto"
    HTTP = "http"
    JSON = "json"


class ProbeTarget(Struct, frozen=True):
    name: str
    url: str
    timeout_s: float
    shape: ResponseShape = ResponseShape.AUTO
    # Method, headers (secrets among them), body and the statuses that count as up.
    request: HttpRequest = HttpRequest()  # frozen: one shared default is fine


class HealthResult(Struct, frozen=True):
    service: str
    state: HealthState
    http_status: int | None
    latency_ms: float
    failing_components: tuple[str, ...]
    detail: str


# --------------------------------------------------------------------------
# HTTP plumbing shared with version.py


class Fetched(Struct, frozen=True):
    """A final (non-redirect) response, with at most MAX_BODY_BYTES of its body."""

    status: int
    media_type: str
    charset: str | None
    body: bytes
    body_truncated: bool

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    @property
    def declares_json(self) -> bool:
        return self.media_type == "application/json" or self.media_type.endswith("+json")

    def looks_like_json_object(self) -> bool:
        return self.body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")


async def fetch(
    client: httpx.AsyncClient,
    url: str,
    *,
    request_id: str,
    timeout_s: float,
    read_body: bool,
    request: HttpRequest | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> Fetched:
    """Send `request` (default: a plain GET) to `url`, following up to MAX_REDIRECTS
    redirects, all within `timeout_s`; at most `max_bytes` of the body are read.

    Raises TimeoutError or httpx errors; callers turn them into a result with
    `describe_failure`.
    """
    # httpx timeouts apply per phase/read, so a server trickling one byte at a
    # time would never trip them; asyncio.timeout bounds the whole exchange.
    async with asyncio.timeout(timeout_s):
        response = await _send_following_redirects(
            client, url, request_id, timeout_s, request or HttpRequest()
        )
        try:
            body, truncated = (
                await _read_bounded(response, max_bytes) if read_body else (b"", False)
            )
        finally:
            await response.aclose()
    return Fetched(
        status=response.status_code,
        media_type=_media_type(response.headers),
        charset=response.charset_encoding,
        body=body,
        body_truncated=truncated,
    )


async def _send_following_redirects(
    client: httpx.AsyncClient,
    url: str,
    request_id: str,
    timeout_s: float,
    asked: HttpRequest,
) -> httpx.Response:
    # Redirects are followed by hand because httpx only offers a per-client
    # limit, and the client belongs to the caller.
    request = client.build_request(
        asked.method,
        url,
        headers=[
            *asked.headers,
            ("X-Request-ID", request_id),
            ("Accept-Encoding", "identity"),
        ],
        content=asked.body,
        timeout=timeout_s,
    )
    origin = request.url.copy_with(path="/", query=None, fragment=None)
    for _ in range(MAX_REDIRECTS + 1):
        response = await client.send(request, stream=True, follow_redirects=False)
        if response.next_request is None or not asked.follows_redirects:
            return response
        await response.aclose()
        request = response.next_request
        elsewhere = request.url.copy_with(path="/", query=None, fragment=None) != origin
        if elsewhere and asked.carries_credentials:
            # httpx drops only Authorization on such a hop; configured headers (API keys)
            # would go along to whatever host the redirect names.
            raise CredentialsNotForwarded(request=request)
    raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects", request=request)


class CredentialsNotForwarded(httpx.TooManyRedirects):
    """A redirect to another origin of a request that carries configured headers."""

    def __init__(self, *, request: httpx.Request) -> None:
        super().__init__("redirected to another host", request=request)


async def _read_bounded(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        room = max_bytes - len(buffer)
        if len(chunk) > room:
            buffer += chunk[:room]
            return bytes(buffer), True
        buffer += chunk
    return bytes(buffer), False


def _media_type(headers: httpx.Headers) -> str:
    content_type: str = headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower()


def parse_json(body: bytes) -> tuple[bool, object]:
    """Return (ok, document); never raises, whatever the body."""
    try:
        return True, json.loads(body)
    # RecursionError: a few KiB of "[[[[" is enough to blow the parser's stack.
    except (ValueError, RecursionError):
        return False, None


def clean_text(value: object, limit: int = _MAX_TEXT_CHARS) -> str:
    """One printable line of at most `limit` chars, safe to put in a chat reply."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_failure(exc: Exception, timeout_s: float) -> str:
    """A short, secret-free line for a failed exchange (no URL, no raw message)."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timed out after {float(timeout_s)} s"
    if isinstance(exc, CredentialsNotForwarded):
        return "redirected to another host: not followed with the configured headers"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"too many redirects (more than {MAX_REDIRECTS})"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return "invalid or unsupported URL"
    if isinstance(exc, httpx.TransportError):
        return _describe_transport_error(exc)
    if isinstance(exc, httpx.DecodingError):
        return "could not decode the response body"
    return f"probe failed ({type(exc).__name__})"


def _describe_transport_error(exc: httpx.TransportError) -> str:
    causes = list(exception_causes(exc))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS error: {clean_text(cause.verify_message or cause.reason)}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {clean_text(cause.reason or cause)}"
        if isinstance(cause, socket.gaierror):
            return "DNS lookup failed"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return "connection reset by peer"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"protocol error: {clean_text(exc)}"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    return f"network error ({type(exc).__name__})"


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


# --------------------------------------------------------------------------
# Judging a health response

_WORD_STATES: Mapping[str, HealthState] = {
    **dict.fromkeys(
        ("ok", "healthy", "up", "pass", "passing", "green", "alive", "live", "ready", "running"),
        HealthState.UP,
    ),
    **dict.fromkeys(("degraded", "warn", "warning", "yellow"), HealthState.DEGRADED),
    **dict.fromkeys(
        (
            "unhealthy",
            "down",
            "fail",
            "failing",
            "error",
            "critical",
            "red",
            "out_of_service",  # Spring Boot
        ),
        HealthState.DOWN,
    ),
}

_SEVERITY = {HealthState.UP: 0, HealthState.DEGRADED: 1, HealthState.DOWN: 2}


def _worst(*states: HealthState) -> HealthState:
    return max(states, key=_SEVERITY.__getitem__)


def _word_state(raw: str) -> HealthState | None:
    return _WORD_STATES.get(raw.strip().lower())


class _Component(Struct, frozen=True):
    name: str
    status: str
    state: HealthState | None  # None: a status word we do not know


class _BodyVerdict(Struct, frozen=True):
    state: HealthState | None  # None: the body does not judge the service
    failing: tuple[str, ...]
    note: str | None


_NO_VERDICT = _BodyVerdict(state=None, failing=(), note=None)


def _component_status(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        status = value.get("status")
        return status if isinstance(status, str) else None
    if isinstance(value, list):
        # IETF health-check draft: a check holds a list of measurements; the
        # worst known one speaks for the check.
        statuses = [s for s in map(_component_status, value) if s is not None]
        known = [(_SEVERITY[state], s) for s in statuses if (state := _word_state(s)) is not None]
        return max(known)[1] if known else next(iter(statuses), None)
    return None


def _components(document: Mapping[str, object]) -> list[_Component]:
    found: list[_Component] = []
    for key in ("components", "checks"):
        section = document.get(key)
        if not isinstance(section, Mapping):
            continue
        for name, value in section.items():
            raw = _component_status(value)
            if raw is not None:
                status = clean_text(raw).lower()
                found.append(_Component(clean_text(name), status, _word_state(status)))
    return sorted(found, key=lambda c: c.name)


def _derive(components: list[_Component]) -> HealthState:
    # Unknown component words do not move the overall state (as Spring Boot's
    # aggregator does), but they are still listed as failing.
    return _worst(HealthState.UP, *(c.state for c in components if c.state is not None))


def _judge_document(document: object) -> _BodyVerdict:
    if not isinstance(document, Mapping):
        return _NO_VERDICT
    components = _components(document)
    failing = tuple(f"{c.name}: {c.status}" for c in components if c.state is not HealthState.UP)
    status = document.get("status")
    derived = _derive(components) if components else None
    if isinstance(status, str) and (state := _word_state(status)) is not None:
        note = None if state is HealthState.UP else f"reported {clean_text(status).lower()}"
        return _BodyVerdict(state, failing, note)
    if status is not None:
        return _BodyVerdict(derived, failing, f'unrecognised status "{clean_text(status)}"')
    if derived is None:
        return _NO_VERDICT
    note = None if derived is HealthState.UP else f"{len(failing)} failing component(s)"
    return _BodyVerdict(derived, failing, note)


def _http_state(status: int, request: HttpRequest) -> HealthState:
    return HealthState.UP if request.expects(status) else HealthState.DOWN


def _http_note(fetched: Fetched, request: HttpRequest) -> str | None:
    return None if request.expects(fetched.status) else f"HTTP {fetched.status}"


def _body_verdict(fetched: Fetched, shape: ResponseShape) -> _BodyVerdict:
    if shape is ResponseShape.HTTP:
        return _NO_VERDICT
    wants_json = shape is ResponseShape.JSON or fetched.declares_json
    if not (wants_json or fetched.looks_like_json_object()):
        return _NO_VERDICT
    if fetched.body_truncated:
        # The verdict might be past the cut: refuse to call it UP.
        return _BodyVerdict(HealthState.DOWN, (), f"body larger than {MAX_BODY_BYTES // 1024} KiB")
    parsed, document = parse_json(fetched.body)
    if parsed:
        return _judge_document(document)
    if shape is ResponseShape.JSON:
        return _BodyVerdict(HealthState.DOWN, (), "expected a JSON body")
    if fetched.declares_json:
        return _BodyVerdict(HealthState.DOWN, (), "invalid JSON body")
    return _NO_VERDICT


def judge(
    fetched: Fetched, shape: ResponseShape, request: HttpRequest | None = None
) -> tuple[HealthState, tuple[str, ...], str]:
    """(state, failing components, detail) for a final response.

    The worse of the HTTP status and the body's verdict wins, so a 200 whose
    body says "unhealthy" is DOWN and a 503 whose body says "ok" is still DOWN.
    Without ``request.expect_status``, any 2xx status is up.
    """
    asked = request or HttpRequest()
    verdict = _body_verdict(fetched, shape)
    state = _http_state(fetched.status, asked)
    if verdict.state is not None:
        state = _worst(state, verdict.state)
    notes = [n for n in (_http_note(fetched, asked), verdict.note) if n is not None]
    return state, verdict.failing, ", ".join(notes) or "ok"


# --------------------------------------------------------------------------
# Public API


async def probe_health(
    client: httpx.AsyncClient, target: ProbeTarget, *, request_id: str
) -> HealthResult:
    """Probe one service; never raises except on cancellation."""
    started = time.perf_counter()
    try:
        fetched = await fetch(
            client,
            target.url,
            request_id=request_id,
            timeout_s=target.timeout_s,
            read_body=target.shape is not ResponseShape.HTTP and target.request.method != "HEAD",
            request=target.request,
        )
        state, failing, detail = judge(fetched, target.shape, target.request)
    except Exception as exc:
        detail = describe_failure(exc, target.timeout_s)
        _log.debug(
            "health_probe_failed",
            service=target.name,
            request_id=request_id,
            detail=detail,
            error_type=type(exc).__name__,
        )
        return HealthResult(
            service=target.name,
            state=HealthState.DOWN,
            http_status=None,
            latency_ms=elapsed_ms(started),
            failing_components=(),
            detail=detail,
        )
    return HealthResult(
        service=target.name,
        state=state,
        http_status=fetched.status,
        latency_ms=elapsed_ms(started),
        failing_components=failing,
        detail=detail,
    )


async def probe_all(
    client: httpx.AsyncClient, targets: Sequence[ProbeTarget], *, request_id: str
) -> list[HealthResult]:
    """Probe all targets concurrently; results are in the order of `targets`."""
    return list(
        await asyncio.gather(
            *(probe_health(client, target, request_id=request_id) for target in targets)
        )
    )
