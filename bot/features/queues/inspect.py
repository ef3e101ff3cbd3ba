"""Redis Streams queues as ``/queue`` and ``/workers`` see them.

One inspection per configured queue gathers everything both commands show: the stream's
length, each consumer group's pending count, lag, oldest pending entry and consumers,
and the dead-letter stream's length. It costs one pipelined round trip when the queue
names its group and two when it reports every group of the stream.

Every inspection answers: whatever goes wrong (Redis unreachable, a wrong password, a
missing stream or group) becomes a :class:`QueueFailure` with one readable line, and a
queue never takes longer than its own ``timeout``. Only cancellation escapes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from msgspec import Struct
from pydantic import SecretStr

from bot.features.queues.config import FloorLevel, Level, QueueConfig
from bot.kernel.durations import format_duration
from bot.kernel.errors import exception_causes
from bot.kernel.severity import Severity
from bot.kernel.severity import above as _above
from bot.kernel.severity import below as _below

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from bot.cluster.redis_clients import RedisClients

__all__ = [
    "Consumer",
    "Figure",
    "GroupState",
    "QueueFailure",
    "QueueReport",
    "QueueState",
    "Severity",
    "inspect_queue",
    "inspect_queues",
    "redis_location",
]

_log = structlog.get_logger(__name__)


def above(value: float | None, level: Level) -> Severity:
    """``warn`` above ``level.warn``, ``critical`` above ``level.critical``; unknown is ok."""
    if value is None:
        return Severity.OK
    return _above(value, level.warn, level.critical)


def below(value: int, level: FloorLevel) -> Severity:
    """``warn`` below ``level.warn``, ``critical`` at or below ``level.critical``."""
    return _below(value, level.warn, level.critical)


class Figure(Struct, frozen=True):
    """One measured figure, named after its key in ``QueueThresholds``."""

    name: str
    value: float | None  # None: Redis did not say (lag before Redis 7, or after XDEL)
    severity: Severity

    @property
    def shown(self) -> str:
        """The value as people read it, the same in /queue, heartbeats and alerts: a
        duration for times (``1h 6m``), a whole number for counts."""
        if self.value is None:
            return "-"
        if self.name in _SECONDS:
            return format_duration(timedelta(seconds=round(self.value)))
        return f"{self.value:g}" if not float(self.value).is_integer() else f"{self.value:.0f}"


_SECONDS = frozenset({"oldest_pending_idle"})


class Consumer(Struct, frozen=True):
    name: str
    idle_s: float
    pending: int
    stalled: bool


class GroupState(Struct, frozen=True):
    name: str | None  # None: the stream has no consumer group, so nobody reads it
    consumers: tuple[Consumer, ...]
    pending: Figure
    lag: Figure
    oldest_pending_idle: Figure  # seconds since the oldest pending entry was delivered
    workers: Figure  # consumers that are not stalled
    notes: tuple[str, ...] = ()  # what Redis said that needs explaining (a lag past a trim)

    @property
    def figures(self) -> tuple[Figure, ...]:
        return (self.pending, self.lag, self.oldest_pending_idle, self.workers)

    @property
    def severity(self) -> Severity:
        return max(f.severity for f in self.figures)


class QueueState(Struct, frozen=True):
    queue: str
    stream: str
    length: Figure
    dead_letter: Figure | None  # None: no dead_letter_stream configured
    groups: tuple[GroupState, ...]

    @property
    def stream_figures(self) -> tuple[Figure, ...]:
        return (self.length,) if self.dead_letter is None else (self.length, self.dead_letter)

    @property
    def severity(self) -> Severity:
        levels = [f.severity for f in self.stream_figures] + [g.severity for g in self.groups]
        return max(levels, default=Severity.OK)


class QueueFailure(Struct, frozen=True):
    """The queue could not be inspected; ``reason`` says why in one line, never a secret."""

    queue: str
    reason: str

    @property
    def severity(self) -> Severity:
        return Severity.CRITICAL


QueueReport = QueueState | QueueFailure


async def inspect_queues(clients: RedisClients, queues: Sequence[QueueConfig]) -> list[QueueReport]:
    """Inspect every queue at once, in config order; a slow or broken one delays none."""
    return list(await asyncio.gather(*(inspect_queue(clients, q) for q in queues)))


async def inspect_queue(clients: RedisClients, queue: QueueConfig) -> QueueReport:
    """Inspect one queue within its ``timeout``; never raises except on cancellation."""
    timeout = queue.timeout.total_seconds()
    try:
        # The client's socket timeouts bound each read, but not a connect followed by two
        # round trips: this bounds the whole inspection.
        async with asyncio.timeout(timeout):
            return await _inspect(clients.client(queue.redis_url, timeout=timeout), queue)
    except _Missing as exc:
        return QueueFailure(queue.name, exc.reason)
    except Exception as exc:
        reason = describe_failure(exc, queue)
        # The reason, not the exception's text: a connection error's text may hold the URL.
        _log.debug("queue.inspection_failed", queue=queue.name, reason=reason)
        return QueueFailure(queue.name, reason)


class _Missing(Exception):
    """The stream or group is not what the config says; not Redis's fault."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _inspect(client: aioredis.Redis, queue: QueueConfig) -> QueueState:
    stream, dead = queue.stream, queue.dead_letter_stream
    pipe = client.pipeline(transaction=False)
    pipe.type(stream)
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)
    if dead is not None:
        pipe.xlen(dead)
    if queue.group is not None:
        # Naming the group lets its details ride in the first round trip.
        _ask_group_details(pipe, stream, queue.group)
    # Errors come back in place, so a missing group is told apart from a lost connection.
    replies = iter(await pipe.execute(raise_on_error=False))

    kind = _value(next(replies), stream)
    if kind == "none":
        raise _Missing(f"stream '{stream}' does not exist")
    if kind != "stream":
        raise _Missing(f"key '{stream}' is a {kind}, not a stream")
    length = int(_value(next(replies), stream))
    infos: list[Mapping[str, Any]] = list(_value(next(replies), stream))
    dead_length = int(_value(next(replies), dead)) if dead is not None else None

    if queue.group is not None:
        infos = [info for info in infos if info.get("name") == queue.group]
        if not infos:
            raise _Missing(f"no consumer group '{queue.group}' on stream '{stream}'")
        details = [(next(replies), next(replies))]
    elif infos:
        pipe = client.pipeline(transaction=False)
        for info in infos:
            _ask_group_details(pipe, stream, str(info["name"]))
        more = iter(await pipe.execute(raise_on_error=False))
        details = [(next(more), next(more)) for _ in infos]
    else:
        details = []

    thresholds = queue.thresholds
    groups = [
        _group_state(queue, info, _value(consumers, stream), _value(oldest, stream), length)
        for info, (consumers, oldest) in zip(infos, details, strict=True)
    ]
    if not groups:
        groups = [_no_group(queue)]
    return QueueState(
        queue=queue.name,
        stream=stream,
        length=Figure("length", length, above(length, thresholds.length)),
        dead_letter=None
        if dead_length is None
        else Figure("dead_letter", dead_length, above(dead_length, thresholds.dead_letter)),
        groups=tuple(groups),
    )


def _ask_group_details(pipe: aioredis.client.Pipeline, stream: str, group: str) -> None:
    pipe.xinfo_consumers(stream, group)
    # The extended form is the only one that tells how long an entry has waited.
    pipe.xpending_range(stream, group, min="-", max="+", count=1)


def _value(reply: Any, key: str) -> Any:
    """A pipeline reply, or the error it carries as a readable reason."""
    if not isinstance(reply, Exception):
        return reply
    import redis.exceptions as redis_errors

    message = str(reply)
    if isinstance(reply, redis_errors.ResponseError):
        if message.startswith("NOGROUP"):
            group = message.split("'")[1] if message.count("'") >= 2 else "?"
            raise _Missing(f"no consumer group '{group}' on stream '{key}'") from reply
        if message.startswith("WRONGTYPE"):
            raise _Missing(f"key '{key}' is not a stream") from reply
        if message == "no such key":
            # Deleted between the first round trip and the second.
            raise _Missing(f"stream '{key}' does not exist") from reply
    raise reply


def _group_state(
    queue: QueueConfig,
    info: Mapping[str, Any],
    consumers: Sequence[Mapping[str, Any]],
    oldest: Sequence[Mapping[str, Any]],
    length: int,
) -> GroupState:
    thresholds = queue.thresholds
    stalled_ms = queue.stalled_after.total_seconds() * 1000
    pending = _int(info.get("pending"))
    raw_lag = info.get("lag")
    lag = None if raw_lag is None else _int(raw_lag)
    notes: tuple[str, ...] = ()
    if lag is not None and lag > length:
        # Redis counts the lag from entries ever added, trimmed ones included (XTRIM,
        # MAXLEN): past a trim it can exceed what the stream holds. No more than the
        # stream's length can be waiting, so that is the lag judged and shown.
        notes = (
            f"Redis reports a lag of {lag} for group {info.get('name', '?')}, more than the "
            f"{length} entries the stream holds: entries were trimmed before the group read "
            f"them; shown as at most {length}",
        )
        lag = length
    # Before Redis 7.2 (no "inactive" field) a poll that finds nothing leaves a consumer's
    # idle time running, so a healthy worker on a quiet stream looks idle. There, idle
    # means stalled only while work waits: its own pending entries, or unread ones.
    counts_polls = any("inactive" in c for c in consumers)
    backlog = lag is None or lag > 0
    members = tuple(
        Consumer(
            name=str(c.get("name", "?")),
            idle_s=_int(c.get("idle")) / 1000,
            pending=_int(c.get("pending")),
            stalled=_int(c.get("idle")) > stalled_ms
            and (counts_polls or backlog or _int(c.get("pending")) > 0),
        )
        for c in consumers
    )
    oldest_s = _int(oldest[0].get("time_since_delivered")) / 1000 if oldest else None
    live = sum(1 for c in members if not c.stalled)
    return GroupState(
        name=str(info.get("name", "?")),
        consumers=members,
        pending=Figure("pending", pending, above(pending, thresholds.pending)),
        lag=Figure("lag", lag, above(lag, thresholds.lag)),
        oldest_pending_idle=Figure(
            "oldest_pending_idle", oldest_s, above(oldest_s, thresholds.oldest_pending_idle)
        ),
        workers=Figure("workers", live, _workers_severity(queue, live)),
        notes=notes,
    )


def _no_group(queue: QueueConfig) -> GroupState:
    return GroupState(
        name=None,
        consumers=(),
        pending=Figure("pending", 0, Severity.OK),
        lag=Figure("lag", None, Severity.OK),
        oldest_pending_idle=Figure("oldest_pending_idle", None, Severity.OK),
        workers=Figure("workers", 0, _workers_severity(queue, 0)),
    )


def _workers_severity(queue: QueueConfig, live: int) -> Severity:
    if not queue.workers_expected:
        return Severity.OK
    return below(live, queue.thresholds.workers)


def _int(value: object) -> int:
    # RESP2 and RESP3 parsers disagree on whether some of these arrive as str or int.
    if isinstance(value, int):
        return value
    try:
        return int(value) if isinstance(value, str | bytes) else 0
    except ValueError:
        return 0


# --------------------------------------------------------------------------
# Failures, in words an on-call engineer can act on


def redis_location(url: SecretStr | str) -> str:
    """``host:port`` (or the socket path) of a Redis URL: never its user or password."""
    plain = url.get_secret_value() if isinstance(url, SecretStr) else url
    parts = urlsplit(plain)
    if parts.scheme == "unix":
        return parts.path or "a unix socket"
    try:
        host, port = parts.hostname or "localhost", parts.port or 6379
    except ValueError:  # a port that is not a number
        return "an invalid address"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_failure(exc: BaseException, queue: QueueConfig) -> str:
    """What went wrong, in one line with no secret in it."""
    import redis.exceptions as redis_errors

    where = f"Redis at {redis_location(queue.redis_url)}"
    if isinstance(exc, TimeoutError | redis_errors.TimeoutError):
        return f"{where} unreachable (timed out after {queue.timeout.total_seconds():g}s)"
    if isinstance(exc, redis_errors.AuthenticationError):
        return f"{where} refused the login (wrong user name or password, or none given)"
    if isinstance(exc, redis_errors.ConnectionError | OSError):
        return f"{where} unreachable ({_connection_problem(exc)})"
    if isinstance(exc, redis_errors.ResponseError):
        # Server error texts name commands and keys, never the credentials.
        return f"{where} answered: {_one_line(str(exc))}"
    return f"inspection failed ({type(exc).__name__})"


def _connection_problem(exc: BaseException) -> str:
    causes = list(exception_causes(exc))
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "DNS lookup failed"
    if any(isinstance(c, FileNotFoundError) for c in causes):
        return "no such socket"
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return "connection reset"
    text = str(exc).lower()
    if "max number of clients" in text:
        return "too many clients"
    if "closed" in text:
        return "connection closed"
    return "connection failed"


def _one_line(text: str, limit: int = 120) -> str:
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
