"""Job slots shared by every replica, so that ``max_concurrent`` and lock groups hold across
them and not only within one process.

:class:`~bot.jobs.JobBoard` first checks this process's own running jobs: exact, and it
can name them with a ``/cancel``. With ``state.redis_url`` set, several replicas take
commands, so the board then takes the same slots in Redis (:class:`RedisJobLocks`), as
redis-py ``Lock`` objects (``SET NX PX``, a token-checked renewal and release):

* ``max_concurrent = N`` is N slot locks, ``opsbot:jobs:action:<name>:<i>``; a job takes
  the first free one;
* a lock group is one lock, ``opsbot:jobs:group:<name>``.

A lock's value describes its holder (:class:`Holder`: job id, what it runs, who asked,
which replica, since when), so a refusal on one replica names the job running on another.

The locks last ``state.leader_lease`` and are renewed every ``state.leader_renew_every``
while the job runs, then released when it ends. A replica that dies stops renewing, and its
slots free themselves after the lease, even if its action's process (in a process group of
its own) still runs: the lease is how long a silent replica is trusted.

If Redis cannot be asked, the job does not start (:class:`SlotsUnavailable`): two rollbacks
at once are worse than a clear line saying to try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import structlog
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from bot.errors import DependencyError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.lock import Lock

    from bot.config.operations import ActionConfig
    from bot.redis_clients import RedisClients

log = structlog.get_logger("opsbot.jobs")

_REDIS_TIMEOUT_S = 2.0
DEPENDENCY = "state Redis"


@dataclass(frozen=True, slots=True)
class Holder:
    """The job holding a slot, as the other replicas read it from the lock's value."""

    job_id: str
    description: str  # "rollback tag=v1.2"
    principal: str
    replica: str
    since: datetime

    def token(self) -> str:
        # The lock's value: readable by the other replicas, and unique per acquisition,
        # since a renewal or release only succeeds for the value it set.
        return json.dumps(
            {
                "job": self.job_id,
                "what": self.description,
                "by": self.principal,
                "replica": self.replica,
                "since": self.since.isoformat(),
                "nonce": secrets.token_hex(8),
            }
        )

    @classmethod
    def from_token(cls, token: str | bytes | None) -> Holder | None:
        """None for a slot that is free (or a value this version cannot read)."""
        if token is None:
            return None
        try:
            data = json.loads(token)
            return cls(
                job_id=str(data["job"]),
                description=str(data["what"]),
                principal=str(data["by"]),
                replica=str(data["replica"]),
                since=datetime.fromisoformat(data["since"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Conflict:
    """Why a job may not start: its action's slots, or its lock group, are all held."""

    kind: Literal["action", "group"]
    holders: tuple[Holder, ...]  # may be empty: a slot freed between the two reads


class SlotsUnavailable(DependencyError):
    """Redis could not be asked whether another replica holds the slots."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(DEPENDENCY, f"unreachable ({original})", original)


class HeldSlots:
    """The locks a running job holds; renewed until :meth:`release`."""

    def __init__(self, locks: list[Lock], renew_every: timedelta) -> None:
        self._locks = locks
        self._renewing = asyncio.create_task(
            self._renew(renew_every.total_seconds()), name="job-slots-renew"
        )

    async def release(self) -> None:
        self._renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewing
        await _release(self._locks)

    async def _renew(self, every: float) -> None:
        locks = list(self._locks)
        while locks:
            await asyncio.sleep(every)
            for lock in list(locks):
                try:
                    await lock.reacquire()
                except LockNotOwnedError:
                    # Expired while Redis could not be reached: another replica may now
                    # start what this lock kept out. The job itself cannot be undone.
                    log.error("jobs.slot_lost", lock=str(lock.name))
                    locks.remove(lock)
                except (RedisError, OSError) as exc:
                    log.warning("jobs.slot_renew_failed", lock=str(lock.name), error=str(exc))


class RedisJobLocks:
    def __init__(
        self, clients: RedisClients, url: str, *, lease: timedelta, renew_every: timedelta
    ) -> None:
        self._clients = clients
        self._url = url
        self._lease = lease
        self._renew_every = renew_every

    async def acquire(self, action: ActionConfig, holder: Holder) -> HeldSlots | Conflict:
        """Take ``action``'s lock group (if any) and one of its slots, or say who holds
        them. Raises :class:`SlotsUnavailable` when Redis cannot be asked."""
        client = self._clients.client(self._url, timeout=_REDIS_TIMEOUT_S)
        token = holder.token()
        held: list[Lock] = []
        try:
            if action.lock_group is not None:
                group = self._lock(client, f"opsbot:jobs:group:{action.lock_group}")
                if not await group.acquire(blocking=False, token=token):
                    return Conflict("group", _holders([await client.get(str(group.name))]))
                held.append(group)
            names = [f"opsbot:jobs:action:{action.name}:{i}" for i in range(action.max_concurrent)]
            for name in names:
                slot = self._lock(client, name)
                if await slot.acquire(blocking=False, token=token):
                    held.append(slot)
                    return HeldSlots(held, self._renew_every)
            holders = _holders(await client.mget(names))
        except (RedisError, OSError) as exc:
            await _release(held)
            raise SlotsUnavailable(exc) from exc
        await _release(held)
        return Conflict("action", holders)

    def _lock(self, client: Redis, name: str) -> Lock:
        from redis.asyncio.lock import Lock

        # Not thread-local: the token must be seen by the renewal task and the release.
        return Lock(client, name, timeout=self._lease.total_seconds(), thread_local=False)


def _holders(values: list[bytes | str | None]) -> tuple[Holder, ...]:
    return tuple(h for h in map(Holder.from_token, values) if h is not None)


async def _release(locks: list[Lock]) -> None:
    for lock in locks:
        try:
            await lock.release()
        except LockError:  # LockNotOwnedError too: it expired first, so it is free anyway
            log.warning("jobs.slot_expired_before_release", lock=str(lock.name))
        except (RedisError, OSError) as exc:
            # It frees itself after the lease.
            log.warning("jobs.slot_release_failed", lock=str(lock.name), error=str(exc))
