"""The adapter contract: translate platform events into Messages, Replies back out.

An adapter holds no business rule. It calls ``handler`` for each incoming
message and renders whatever Reply comes back, natively, in the same thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from bot.message import Message
from bot.reply import Reply

MessageHandler = Callable[[Message], Awaitable[Reply | None]]


class Adapter(Protocol):
    name: str

    async def start(self, handler: MessageHandler) -> None:
        """Connect and begin delivering messages; returns once connected."""
        ...

    async def stop(self) -> None:
        """Disconnect; in-flight replies are finished first."""
        ...
