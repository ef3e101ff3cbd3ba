"""Job slots shared by every replica, so that ``max_concurrent`` and lock groups hold across
them and not only within one process.

:class:`~bot.features.actions.jobs.JobBoard` first checks this process's own running jobs:
exact, and it can name them with a ``/cancel``. With ``state.redis_url`` set, several replicas take
commands, so the board then takes the same slots in Redis (:class:`RedisJobLocks`), as
redis-py ``Lock`` objects (``SET NX PX``, a token-checked renewal and release):

* ``max_concurrent = N`` is N slot locks, ``opsbot:jobs:action:<name>:<i>``; a job takes
  the first free one;
* a lock group is one lock, ``opsbot:jobs:group:<name>``.

A lock's value describes its holder (:class:`Holder`: job id, what it runs, who asked,
which replica, since when), so a refusal on one replica names the job running on another,
``/jobs`` lists every replica's running jobs (the action slots, read with SCAN), and
``/cancel`` reaches a job on another replica: it sets ``opsbot:jobs:cancel:<replica>:<job>``,
which the job's own replica polls (every half second) and acts on as a local ``/cancel``.

The locks last ``state.leader_lease`` and are renewed every ``state.leader_renew_every``
while the job runs, then released when it ends. A replica that dies stops renewing, and its
slots free themselves after the lease, even if its action's process (in a process group of
its own) still runs: the lease is how long a silent replica is trusted.

If Redis cannot be asked, the job does not start (:class:`StateRedisUnavailable`): two rollbacks
at once are worse than a clear line saying to try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import structlog
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from bot.cluster.redis_clients import STATE_TIMEOUT_S, StateRedisUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.lock import Lock

    from bot.cluster.redis_clients import RedisClients
    from bot.features.actions.config import ActionConfig

log = structlog.get_logger("opsbot.jobs")

_SLOT_PREFIX = "opsbot:jobs:action:"
# How often a running job looks for a /cancel sent from another replica.
_CANCEL_POLL_S = 0.5
# A request its job's replica never picked up (it died meanwhile) does not linger.
_CANCEL_REQUEST_TTL_MS = 60_000


@dataclass(frozen=True, slots=True)
class Holder:
    """The job holding a slot, as the other replicas read it from the lock's value."""

    job_id: str
    action: str
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
                "action": self.action,
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
                action=str(data["action"]),
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


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """A job running on another replica, as its action slot in Redis shows it."""

    holder: Holder
    slot: str  # the key of the slot it holds: released (or someone else's) once it ended


class HeldSlots:
    """The locks a running job holds, renewed until :meth:`release`; meanwhile a cancel
    requested on another replica is handed to ``on_cancel`` (with who asked)."""

    def __init__(
        self,
        client: Redis,
        locks: list[Lock],
        renew_every: timedelta,
        cancel_key: str,
        on_cancel: Callable[[str], None],
    ) -> None:
        self._client = client
        self._locks = locks
        self._cancel_key = cancel_key
        self._on_cancel = on_cancel
        self._renewing = asyncio.create_task(
            self._renew(renew_every.total_seconds()), name="job-slots-renew"
        )

    async def release(self) -> None:
        self._renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewing
        await _release(self._locks)

    async def _renew(self, every: float) -> None:
        loop = asyncio.get_running_loop()
        locks = list(self._locks)
        renew_at = loop.time() + every
        while True:
            await asyncio.sleep(min(_CANCEL_POLL_S, every))
            with contextlib.suppress(RedisError, OSError):  # the renewal below logs those
                cancelled_by = await self._client.getdel(self._cancel_key)
                if cancelled_by:
                    self._on_cancel(str(cancelled_by))
            if loop.time() < renew_at:
                continue
            renew_at += every
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
        self,
        clients: RedisClients,
        url: str,
        *,
        replica: str,
        lease: timedelta,
        renew_every: timedelta,
    ) -> None:
        self._clients = clients
        self._url = url
        self._replica = replica
        self._lease = lease
        self._renew_every = renew_every

    async def acquire(
        self, action: ActionConfig, holder: Holder, on_cancel: Callable[[str], None]
    ) -> HeldSlots | Conflict:
        """Take ``action``'s lock group (if any) and one of its slots, or say who holds
        them. Raises :class:`StateRedisUnavailable` when Redis cannot be asked. ``on_cancel``
        is called with who asked when another replica's ``/cancel`` reaches the job."""
        client = self._client()
        token = holder.token()
        held: list[Lock] = []
        try:
            if action.lock_group is not None:
                group = self._lock(client, f"opsbot:jobs:group:{action.lock_group}")
                if not await group.acquire(blocking=False, token=token):
                    return Conflict("group", _holders([await client.get(str(group.name))]))
                held.append(group)
            names = [f"{_SLOT_PREFIX}{action.name}:{i}" for i in range(action.max_concurrent)]
            for name in names:
                slot = self._lock(client, name)
                if await slot.acquire(blocking=False, token=token):
                    held.append(slot)
                    cancel_key = _cancel_key(holder.replica, holder.job_id)
                    return HeldSlots(client, held, self._renew_every, cancel_key, on_cancel)
            holders = _holders(await client.mget(names))
        except (RedisError, OSError) as exc:
            await _release(held)
            raise StateRedisUnavailable(exc) from exc
        await _release(held)
        return Conflict("action", holders)

    async def running_elsewhere(self) -> list[RemoteJob]:
        """The jobs the other replicas run now, oldest first."""
        client = self._client()
        try:
            slots = [key async for key in client.scan_iter(match=f"{_SLOT_PREFIX}*", count=500)]
            values = await client.mget(slots) if slots else []
        except (RedisError, OSError) as exc:
            raise StateRedisUnavailable(exc) from exc
        found: dict[tuple[str, str], RemoteJob] = {}
        for slot, value in zip(slots, values, strict=True):
            holder = Holder.from_token(value)
            if holder is not None and holder.replica != self._replica:
                found[(holder.replica, holder.job_id)] = RemoteJob(holder, str(slot))
        return sorted(found.values(), key=lambda job: job.holder.since)

    async def request_cancel(self, job: RemoteJob, by: str) -> None:
        """Ask ``job``'s replica to cancel it on behalf of ``by``."""
        key = _cancel_key(job.holder.replica, job.holder.job_id)
        try:
            await self._client().set(key, by, px=_CANCEL_REQUEST_TTL_MS)
        except (RedisError, OSError) as exc:
            raise StateRedisUnavailable(exc) from exc

    async def wait_ended(self, job: RemoteJob, within: float) -> bool:
        """True once ``job`` has let go of its slot, False if it still holds it after
        ``within`` seconds."""
        client = self._client()
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                holder = Holder.from_token(await client.get(job.slot))
            except (RedisError, OSError) as exc:
                raise StateRedisUnavailable(exc) from exc
            if holder is None or (holder.replica, holder.job_id) != (
                job.holder.replica,
                job.holder.job_id,
            ):
                return True
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(_CANCEL_POLL_S / 2)

    def _client(self) -> Redis:
        return self._clients.client(self._url, timeout=STATE_TIMEOUT_S)

    def _lock(self, client: Redis, name: str) -> Lock:
        from redis.asyncio.lock import Lock

        # Not thread-local: the token must be seen by the renewal task and the release.
        return Lock(client, name, timeout=self._lease.total_seconds(), thread_local=False)


def _cancel_key(replica: str, job_id: str) -> str:
    return f"opsbot:jobs:cancel:{replica}:{job_id}"


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
