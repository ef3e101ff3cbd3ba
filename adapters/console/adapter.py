"""The console adapter: type a command, read the rendered reply. No tokens needed.

``send()`` is also the programmatic entry the tests and the benchmark use: a
chat message in, a Reply out, through the same pipeline every platform uses.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import deque
from collections.abc import Awaitable, Callable

from bot.kernel.adapter import MessageHandler, PlatformLimits
from bot.kernel.clock import Clock
from bot.kernel.message import Location, Message
from bot.kernel.render import render_text
from bot.kernel.reply import Reply

QUIT_WORDS = frozenset({"/quit", "/exit", "quit", "exit"})


class ConsoleAdapter:
    name = "console"
    limits = PlatformLimits()  # a terminal: no limit
    identity = ""  # a terminal: nobody addresses the bot by a name

    def __init__(
        self, user: str, channel: str, clock: Clock, *, write: Callable[[str], None] | None = None
    ) -> None:
        self._user = user
        self._channel = channel
        self._clock = clock
        self._write = write
        self._handler: MessageHandler | None = None
        # Unique across runs too: event ids are remembered (dedup) in the database.
        self._session = secrets.token_hex(4)
        self._event_ids = itertools.count(1)
        # What the bot posted on its own (job progress and results), oldest first.
        self.posted: deque[tuple[Location, Reply]] = deque(maxlen=1000)
        self.posted_total = 0  # ever posted: post number n is posted[n - posted_total - 1]
        self._posted_changed = asyncio.Condition()

    async def start(self, handler: MessageHandler) -> None:
        self._handler = handler

    async def stop(self) -> None:
        self._handler = None

    async def state(self) -> str:
        return "connected" if self._handler is not None else "stopped"

    async def send(
        self, text: str, *, user: str | None = None, channel: str | None = None
    ) -> Reply | None:
        if self._handler is None:
            raise RuntimeError("console adapter is not started")
        message = Message(
            location=Location(platform="console", channel_id=channel or self._channel),
            user_id=user or self._user,
            text=text,
            event_id=f"console-{self._session}-{next(self._event_ids)}",
            received_at=self._clock.now(),
            addressed=True,
            private_replies=True,  # a terminal is read by the person typing
        )
        return await self._handler(message)

    async def post(self, destination: Location, reply: Reply, key: str | None) -> None:
        """The outbound side: a terminal cannot edit what it printed, so progress updates
        (``key``) are printed as new lines like everything else."""
        self.posted.append((destination, reply))
        self.posted_total += 1
        if self._write is not None:
            self._write(render_text(reply))
        async with self._posted_changed:
            self._posted_changed.notify_all()

    def posted_after(self, seen: int) -> list[Reply]:
        """What was posted after the first ``seen`` posts (those still kept)."""
        new = max(0, min(self.posted_total - seen, len(self.posted)))
        return [reply for _, reply in list(self.posted)[len(self.posted) - new :]]

    async def wait_posted_after(self, seen: int, within: float) -> None:
        """Return once more than ``seen`` posts were made, or after ``within`` seconds."""
        async with self._posted_changed:
            if self.posted_total <= seen:
                try:
                    await asyncio.wait_for(self._posted_changed.wait(), within)
                except TimeoutError:
                    return

    async def wait_posted(self, predicate: Callable[[Reply], bool]) -> Reply:
        """The first posted reply (old or new) ``predicate`` accepts (wrap it in a timeout)."""
        async with self._posted_changed:
            while True:
                for _, reply in self.posted:
                    if predicate(reply):
                        return reply
                await self._posted_changed.wait()

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
