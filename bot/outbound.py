"""Messages the bot sends on its own, not as the answer to a message: job progress and
results, approval outcomes. Each adapter registers how it posts to its platform.

``key`` names a message that later posts replace (a job's progress): an adapter that can
edit messages updates the one it posted under that key, others post a new one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from bot.message import Message
from bot.reply import Reply

log = structlog.get_logger("opsbot.outbound")


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a conversation happens: a channel, and the thread in it if there is one."""

    platform: str
    channel_id: str
    thread_id: str | None = None
    workspace: str = ""

    @classmethod
    def of(cls, message: Message) -> Destination:
        return cls(message.platform, message.channel_id, message.thread_id, message.workspace)


Poster = Callable[[Destination, Reply, str | None], Awaitable[None]]


class Outbox:
    def __init__(self) -> None:
        self._posters: dict[str, Poster] = {}

    def register(self, platform: str, poster: Poster) -> None:
        self._posters[platform] = poster

    def unregister(self, platform: str) -> None:
        self._posters.pop(platform, None)

    async def post(self, destination: Destination, reply: Reply, *, key: str | None = None) -> bool:
        """Post ``reply``; False (and a log line) when it could not be delivered. Never
        raises: a job's result must not be lost to a failed progress update."""
        poster = self._posters.get(destination.platform)
        if poster is None:
            log.warning("outbound.no_adapter", platform=destination.platform, title=reply.title)
            return False
        try:
            await poster(destination, reply, key)
        except Exception:
            log.exception("outbound.failed", platform=destination.platform, title=reply.title)
            return False
        return True
