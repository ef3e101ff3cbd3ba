"""The adapter contract: translate platform events into Messages, Replies back out.

An adapter holds no business rule. It calls ``handler`` for each incoming message and
renders whatever Reply comes back, natively, in the same thread. A button press becomes a
Message whose text is the button's ``command``, from the person who pressed it.

``start`` raises :class:`AdapterError` with one readable line (naming the environment
variable of a missing token, say); the bot then reports that adapter's state and keeps the
others running.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from bot.delivery.outbox import Destination
from bot.kernel.errors import OpsbotError
from bot.kernel.message import Message
from bot.kernel.reply import Reply

MessageHandler = Callable[[Message], Awaitable[Reply | None]]


class AdapterError(OpsbotError):
    """An adapter could not start or lost its platform; the message is for the operator.
    ``retry_after``: the platform refused for its rate limit and said how many seconds to
    wait (the outbox pauses the destination that long before trying again)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Adapter(Protocol):
    name: str  # the platform name, as in Message.platform and platform ids ("slack")

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

    async def post(self, destination: Destination, reply: Reply, key: str | None) -> None:
        """Send ``reply`` unprompted (job progress, results). ``key`` names a message that
        later posts with the same key replace, where the platform can edit messages."""
        ...


def keyed_slot(destination: Destination, key: str | None) -> str | None:
    """Where an adapter remembers the message it posted under ``key``: one per channel
    (and thread), because the outbox posts one key to every channel of an alert route."""
    if key is None:
        return None
    return f"{destination.workspace}/{destination.channel_id}/{destination.thread_id or ''}/{key}"
