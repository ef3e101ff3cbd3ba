"""The adapter contract: translate platform events into Messages, Replies back out.

An adapter holds no business rule. It calls ``handler`` for each incoming message and
renders whatever Reply comes back, natively, in the same thread. A button press becomes a
Message whose text is the button's ``command``, from the person who pressed it.

``start`` raises :class:`AdapterError` with one readable line (naming the environment
variable of a missing token, say); the bot then reports that adapter's state and keeps the
others running. A ``transient`` one (the platform unreachable) is tried again by the bot,
with back-off (``bot/app/connecting.py``); ``start`` must leave nothing open when it
raises, or when it is cancelled, so that it can be called again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from msgspec import Struct

from bot.kernel.errors import OpsbotError
from bot.kernel.message import Location, Message
from bot.kernel.reply import Reply

MessageHandler = Callable[[Message], Awaitable[Reply | None]]

Refused = Callable[[str], None]
"""How an adapter reports a request it turned away before anything was read from it (a
Slack request with a bad signature: ``"bad_signature"``); the bot counts them by reason in
/metrics and logs them, at most a line per reason a minute."""

Poster = Callable[[Location, Reply, str | None], Awaitable[None]]
"""How an adapter posts to its platform: ``(location, reply, key)``. It raises on
failure (the outbox retries); :class:`RetryAfter` when the platform asked to wait."""


class RetryAfter(Exception):
    """Raised by a poster when the platform said "retry after N seconds": the outbox
    pauses that location for ``retry_after`` seconds, then tries again."""

    def __init__(self, retry_after: float, message: str = "") -> None:
        super().__init__(message or f"rate limited: retry after {retry_after:g} s")
        self.retry_after = retry_after


class LeaseLapsed(Exception):
    """Raised by :func:`check_post_attempt` when the message being posted may already be
    another replica's: the request is not sent, and the outbox asks whether it still
    holds the message before trying again (no attempt is counted)."""

    def __init__(self) -> None:
        super().__init__("not sent: this replica can no longer be sure the message is its own")


_post_guard: ContextVar[Callable[[], bool] | None] = ContextVar("opsbot_post_guard", default=None)


@contextmanager
def posting_while(still_ours: Callable[[], bool]) -> Iterator[None]:
    """The outbox wraps each poster call in it: every HTTP request the poster's SDK makes
    in this task, retries included, first asks ``still_ours()``."""
    token = _post_guard.set(still_ours)
    try:
        yield
    finally:
        _post_guard.reset(token)


def check_post_attempt() -> None:
    """Adapters call this right before each request their SDK sends (an SDK hook: PTB's
    rate limiter callback, an aiohttp trace), so that every attempt, also one an SDK makes
    on its own after sleeping out a 429, holds the outbox's lease: a replica that was
    frozen past its lease must not post what another replica has taken over and posted.
    Raises :class:`LeaseLapsed`; does nothing outside an outbox delivery."""
    still_ours = _post_guard.get()
    if still_ours is not None and not still_ours():
        raise LeaseLapsed


class Rate(Struct, frozen=True):
    """At most ``count`` messages per ``seconds`` (a leaky bucket: ``count`` is the burst)."""

    count: float
    seconds: float


def _never(_: Location) -> bool:
    return False


class PlatformLimits(Struct, frozen=True):
    """The rates a platform allows, as its adapter declares them (a platform fact, so it
    lives with the adapter); the outbox waits for them before each post."""

    per_channel: Rate | None = None  # each channel (a thread shares its channel's limit)
    per_group: Rate | None = None  # channels ``is_group`` picks out, on top
    overall: Rate | None = None  # everything the bot posts on this platform
    is_group: Callable[[Location], bool] = _never


class AdapterError(OpsbotError):
    """An adapter could not start or lost its platform; the message is for the operator.
    ``retry_after``: the platform refused for its rate limit and said how many seconds to
    wait (the outbox pauses the location that long before trying again).

    ``transient``: the platform could not be reached or could not answer now (connection
    refused, timeout, 5xx, 429), so the bot tries ``start`` again, with back-off, until it
    connects. Otherwise (a missing or refused token, a setting the platform rejects)
    trying again with the same config cannot help: the adapter stays in error until the
    config is fixed and the bot restarted."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, transient: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.transient = transient or retry_after is not None


class Adapter(Protocol):
    name: str  # the platform name, as in Message.platform and platform ids ("slack")
    limits: PlatformLimits  # the platform's posting rates, which the outbox keeps to

    @property
    def identity(self) -> str:
        """Who the bot is on the platform, as people address it ("@opsbot_bot"), learnt
        when connecting (empty before): /status shows it."""
        ...

    async def start(self, handler: MessageHandler) -> None:
        """Connect and begin delivering messages; returns once connected."""
        ...

    async def stop(self) -> None:
        """Disconnect; in-flight replies are finished first."""
        ...

    async def state(self) -> str:
        """ "connected", or what is wrong now ("reconnecting", "error: …"): /ready and
        /status ask, so a connection lost after start-up shows there."""
        ...

    async def post(self, location: Location, reply: Reply, key: str | None) -> None:
        """Send ``reply`` unprompted (job progress, results). ``key`` names a message that
        later posts with the same key replace, where the platform can edit messages."""
        ...


def keyed_slot(location: Location, key: str | None) -> str | None:
    """Where an adapter remembers the message it posted under ``key``: one per channel
    (and thread), because the outbox posts one key to every channel of an alert route."""
    if key is None:
        return None
    return f"{location.workspace}/{location.channel_id}/{location.thread_id or ''}/{key}"
