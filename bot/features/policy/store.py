"""The policy mode shared by every replica: one Redis key, so that ``/policy off`` typed to
one replica relaxes all of them, and ``/policy strict`` typed to another ends the window
everywhere.

The key holds the current state as JSON; it never expires by itself. The window ends by
the replicas' own timers (and, if none was running then, at the next read): the one that
swaps the expired state for a strict one (compare-and-set, :meth:`expire`) writes the audit
entry, so the expiry is recorded once.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from msgspec import Struct

from bot.cluster.redis_clients import STATE_TIMEOUT_S, StateRedisUnavailable, redis_error
from bot.features.policy.config import PolicyMode
from bot.kernel.errors import DependencyError
from bot.storage.shared_values import SharedValues

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from bot.cluster.redis_clients import RedisClients


class PolicyState(Struct, frozen=True):
    mode: PolicyMode
    until: datetime | None = None
    changed_by: str = "config"
    reason: str = ""
    changed_at: datetime | None = None


KEY = "opsbot:policy"
# KEYS[1]: the policy key; ARGV[1]: the state expected there; ARGV[2]: its replacement.
_SWAP = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('set', KEYS[1], ARGV[2])
    return 1
end
return 0
"""


class SharedPolicyStore(Protocol):
    """Where the mode is kept for every process; DependencyError when it cannot be asked."""

    async def load(self) -> tuple[PolicyState, str] | None: ...

    async def save(self, state: PolicyState) -> None: ...

    async def save_if_absent(self, state: PolicyState) -> bool: ...

    async def expire(self, stored: str, strict: PolicyState) -> bool: ...


class SqlPolicyStore:
    """The same, in the state database: for a bot without Redis, so every process on one
    data directory (a console beside ``opsbot run``) sees the same mode."""

    def __init__(self, values: SharedValues) -> None:
        self._values = values

    async def load(self) -> tuple[PolicyState, str] | None:
        text = await self._values.get(KEY)
        if text is None:
            return None
        try:
            return decode(text), text
        except (ValueError, KeyError, TypeError) as exc:
            raise DependencyError("state database", f"unreadable policy state ({exc})") from exc

    async def save(self, state: PolicyState) -> None:
        await self._values.set(KEY, encode(state))

    async def save_if_absent(self, state: PolicyState) -> bool:
        return await self._values.set_if_absent(KEY, encode(state))

    async def expire(self, stored: str, strict: PolicyState) -> bool:
        return await self._values.swap(KEY, stored, encode(strict))


class RedisPolicyStore:
    def __init__(self, clients: RedisClients, url: str) -> None:
        self._clients = clients
        self._url = url

    async def load(self) -> tuple[PolicyState, str] | None:
        """The shared state and its stored form (for :meth:`expire`); None before any
        replica switched."""
        try:
            raw = await self._client().get(KEY)
        except (redis_error(), OSError) as exc:
            raise StateRedisUnavailable(exc) from exc
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            return decode(text), text
        except (ValueError, KeyError, TypeError) as exc:
            # Unreadable is as good as unreachable: strict, until a switch overwrites it.
            raise StateRedisUnavailable(exc) from exc

    async def save(self, state: PolicyState) -> None:
        try:
            await self._client().set(KEY, encode(state))
        except (redis_error(), OSError) as exc:
            raise StateRedisUnavailable(exc) from exc

    async def save_if_absent(self, state: PolicyState) -> bool:
        """For the configured start-up mode: a replica (re)starting must not reopen a window
        that was closed, or restart one that is running."""
        try:
            return bool(await self._client().set(KEY, encode(state), nx=True))
        except (redis_error(), OSError) as exc:
            raise StateRedisUnavailable(exc) from exc

    async def expire(self, stored: str, strict: PolicyState) -> bool:
        """Swap ``stored`` (an expired off window) for ``strict``; False if another replica
        did first, or the state changed meanwhile."""
        client = self._client()
        try:
            swapped = await client.register_script(_SWAP)(keys=[KEY], args=[stored, encode(strict)])
        except (redis_error(), OSError) as exc:
            raise StateRedisUnavailable(exc) from exc
        return bool(swapped)

    def _client(self) -> Redis:
        return self._clients.client(self._url, timeout=STATE_TIMEOUT_S)


def encode(state: PolicyState) -> str:
    return json.dumps(
        {
            "mode": state.mode.value,
            "until": state.until.isoformat() if state.until else None,
            "by": state.changed_by,
            "reason": state.reason,
            "at": state.changed_at.isoformat() if state.changed_at else None,
        },
        sort_keys=True,
    )


def decode(text: str) -> PolicyState:

    data = json.loads(text)
    return PolicyState(
        mode=PolicyMode(data["mode"]),
        until=_datetime(data.get("until")),
        changed_by=str(data.get("by", "")),
        reason=str(data.get("reason", "")),
        changed_at=_datetime(data.get("at")),
    )


def _datetime(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
