"""How many bad runs in a row each check has had, which its ``for`` compares against.

Alone, the count is this process's own (:class:`LocalStreaks`). With several replicas
(``state.redis_url``) it is one Redis counter per check (:class:`RedisStreaks`), so that a
replica that takes over as leader, or a ``/checks now`` typed to another replica, goes on
from the count so far instead of from zero. The counter expires after three of the check's
intervals without a bad run: a run missed during a takeover keeps the streak, an old one
does not come back.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import structlog

from bot.cluster.redis_clients import STATE_TIMEOUT_S, redis_error

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from bot.cluster.redis_clients import RedisClients

log = structlog.get_logger("opsbot.checks")

_KEPT_FOR_INTERVALS = 3


class LocalStreaks:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def last(self, check: str) -> int:
        """The count as this process last saw it (for /checks)."""
        return self._counts.get(check, 0)

    async def bad(self, check: str, interval: timedelta) -> int:
        """One more bad run; the streak's length."""
        self._counts[check] = self._counts.get(check, 0) + 1
        return self._counts[check]

    async def good(self, check: str) -> None:
        self._counts[check] = 0


class RedisStreaks(LocalStreaks):
    def __init__(self, clients: RedisClients, url: str) -> None:
        super().__init__()
        self._clients = clients
        self._url = url

    async def bad(self, check: str, interval: timedelta) -> int:
        counted_here = await super().bad(check, interval)
        kept_ms = int(interval.total_seconds() * 1000) * _KEPT_FOR_INTERVALS
        try:
            async with self._client().pipeline(transaction=True) as pipe:
                pipe.incr(_key(check))
                pipe.pexpire(_key(check), kept_ms)
                count, _ = await pipe.execute()
        except (redis_error(), OSError) as exc:
            # A check must still fire with Redis down: this process's count stands in.
            log.warning("check.streak_unshared", check=check, error=str(exc))
            return counted_here
        self._counts[check] = int(count)
        return int(count)

    async def good(self, check: str) -> None:
        await super().good(check)
        try:
            await self._client().delete(_key(check))
        except (redis_error(), OSError) as exc:
            log.warning("check.streak_unshared", check=check, error=str(exc))

    def _client(self) -> Redis:
        return self._clients.client(self._url, timeout=STATE_TIMEOUT_S)


def _key(check: str) -> str:
    return f"opsbot:check:{check}:bad_runs"
