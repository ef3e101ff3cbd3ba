"""Pauses of scheduled jobs (``/heartbeat pause``) shared by every replica: a pause typed to
one replica must hold on the leader, which is the one that posts.

One Redis key per paused job, ``opsbot:pause:<job>``, holding the end of the pause and
expiring with it. The leader reads it before each scheduled run
(:meth:`bot.cluster.scheduler.Scheduler.pause_everywhere` writes it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from bot.cluster.redis_clients import STATE_TIMEOUT_S, StateRedisUnavailable, redis_error
from bot.kernel.clock import Clock
from bot.storage.shared_values import SharedValues

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from bot.cluster.redis_clients import RedisClients


class SharedPauses(Protocol):
    """Where pauses are kept for every process; DependencyError when it cannot be asked."""

    async def until(self, job: str) -> datetime | None: ...

    async def pause(self, job: str, until: datetime, now: datetime) -> None: ...


class SqlPauses:
    """The same in the state database, for a bot without Redis: a ``/heartbeat pause`` typed
    in a console beside ``opsbot run`` holds for the bot."""

    def __init__(self, values: SharedValues, clock: Clock) -> None:
        self._values = values
        self._clock = clock

    async def until(self, job: str) -> datetime | None:
        value = await self._values.get(_key(job), self._clock.now())
        return datetime.fromisoformat(value) if value is not None else None

    async def pause(self, job: str, until: datetime, now: datetime) -> None:
        await self._values.set(_key(job), until.isoformat(), expires_at=until)


class RedisPauses:
    def __init__(self, clients: RedisClients, url: str) -> None:
        self._clients = clients
        self._url = url

    async def until(self, job: str) -> datetime | None:
        """The end of ``job``'s pause, None when it is not paused."""
        try:
            value = await self._client().get(_key(job))
        except (redis_error(), OSError) as exc:
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
        except (redis_error(), OSError) as exc:
            raise StateRedisUnavailable(exc) from exc

    def _client(self) -> Redis:
        return self._clients.client(self._url, timeout=STATE_TIMEOUT_S)


def _key(job: str) -> str:
    return f"opsbot:pause:{job}"
