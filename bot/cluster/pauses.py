"""Pauses of scheduled jobs (``/heartbeat pause``) shared by every replica: a pause typed to
one replica must hold on the leader, which is the one that posts.

One Redis key per paused job, ``opsbot:pause:<job>``, holding the end of the pause and
expiring with it. The leader reads it before each scheduled run
(:meth:`bot.cluster.scheduler.Scheduler.pause_everywhere` writes it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from bot.cluster.redis_clients import STATE_TIMEOUT_S, StateRedisUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from bot.cluster.redis_clients import RedisClients


class RedisPauses:
    def __init__(self, clients: RedisClients, url: str) -> None:
        self._clients = clients
        self._url = url

    async def until(self, job: str) -> datetime | None:
        """The end of ``job``'s pause, None when it is not paused."""
        try:
            value = await self._client().get(_key(job))
        except (RedisError, OSError) as exc:
            raise StateRedisUnavailable(exc) from exc
        if value is None:
            return None
        try:
            return datetime.fromisoformat(value.decode() if isinstance(value, bytes) else value)
        except ValueError:
            return None

    async def pause(self, job: str, until: datetime, now: datetime) -> None:
        """Pause ``job`` until ``until``; replaces an earlier pause, as a local one does."""
        left_ms = max(1, int((until - now) / timedelta(milliseconds=1)))
        try:
            await self._client().set(_key(job), until.isoformat(), px=left_ms)
        except (RedisError, OSError) as exc:
            raise StateRedisUnavailable(exc) from exc

    def _client(self) -> Redis:
        return self._clients.client(self._url, timeout=STATE_TIMEOUT_S)


def _key(job: str) -> str:
    return f"opsbot:pause:{job}"
