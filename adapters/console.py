"""The console adapter: type a command, read the rendered reply. No tokens needed.

``send()`` is also the programmatic entry the tests and the benchmark use: a
chat message in, a Reply out, through the same pipeline every platform uses.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

from bot.adapter import MessageHandler
from bot.clock import Clock
from bot.message import Message
from bot.render import render_text
from bot.reply import Reply

QUIT_WORDS = frozenset({"/quit", "/exit", "quit", "exit"})


class ConsoleAdapter:
    name = "console"

    def __init__(self, user: str, channel: str, clock: Clock) -> None:
        self._user = user
        self._channel = channel
        self._clock = clock
        self._handler: MessageHandler | None = None
        self._event_ids = itertools.count(1)

    async def start(self, handler: MessageHandler) -> None:
        self._handler = handler

    async def stop(self) -> None:
        self._handler = None

    async def send(
        self, text: str, *, user: str | None = None, channel: str | None = None
    ) -> Reply | None:
        if self._handler is None:
            raise RuntimeError("console adapter is not started")
        message = Message(
            platform="console",
            channel_id=channel or self._channel,
            user_id=user or self._user,
            text=text,
            event_id=f"console-{next(self._event_ids)}",
            received_at=self._clock.now(),
            addressed=True,
        )
        return await self._handler(message)

    async def exec(self, text: str, *, user: str | None = None, channel: str | None = None) -> str:
        """Send ``text`` and return the rendered reply ('' when the bot stays silent)."""
        reply = await self.send(text, user=user, channel=channel)
        return render_text(reply) if reply is not None else ""

    async def repl(
        self, read_line: Callable[[], Awaitable[str | None]], write: Callable[[str], None]
    ) -> None:
        """Read commands until end of input or /quit."""
        while True:
            line = await read_line()
            if line is None or line.strip() in QUIT_WORDS:
                return
            if not line.strip():
                continue
            rendered = await self.exec(line)
            if rendered:
                write(rendered)
