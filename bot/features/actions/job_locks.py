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

A slot is released when its job ends. It must not be free while the job's processes may
still run, even if the replica that started them died (``kill -9``, OOM) or froze: they
run on in a process group of their own. So a slot lasts as long as its job can: the job's
process runs under a watchdog that ends it at its :func:`~bot.features.actions.process.hard_limit`
(timeout, twice kill_grace and a margin) without the bot, and the slot's expiry, renewed
every ``state.leader_renew_every``, is always at least that far after the job's start plus
``state.leader_lease``. A dead replica's slot is freed sooner only when its job is known
to be over:

* a replica on the same host (same :func:`~bot.features.actions.process.host_identity`)
  that finds the slot taken checks /proc: the bot process that started the job is gone and
  no process carries its OPSBOT_JOB marker (:func:`~bot.features.actions.orphans.job_ended`);
  then it deletes the slot (if it still holds the same value) and takes it;
* the same replica, restarted, stops its orphaned jobs and then releases the slots its
  earlier run held (:meth:`RedisJobLocks.release_left_behind`); a replica id is never
  used by two running processes, so an earlier run on another host (a pod that was
  replaced) is over.

Anything else (a frozen replica, one on another host that is gone for good) keeps its
slots until the job's hard limit has passed: a refusal then is the price of never running
two at once.

If Redis cannot be asked, the job does not start (:class:`StateRedisUnavailable`): two rollbacks
at once are worse than a clear line saying to try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import structlog
from msgspec import Struct

from bot.cluster.redis_clients import STATE_TIMEOUT_S, StateRedisUnavailable, redis_error

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.lock import Lock

    from bot.cluster.redis_clients import RedisClients
    from bot.features.actions.config import ActionConfig

log = structlog.get_logger("opsbot.jobs")

_SLOT_PREFIX = "opsbot:jobs:action:"
_GROUP_PREFIX = "opsbot:jobs:group:"
# Frees a slot only if it still holds the value read (the job found to be over).
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# How often a running job looks for a /cancel sent from another replica.
_CANCEL_POLL_S = 0.5
# A request its job's replica never picked up (it died meanwhile) does not linger.
_CANCEL_REQUEST_TTL_MS = 60_000


class Holder(Struct, frozen=True):
    """The job holding a slot, as the other replicas read it from the lock's value."""

    job_id: str
    action: str
    description: str  # "rollback tag=v1.2"
    principal: str
    replica: str
    since: datetime
    # Where its processes can be checked: host_identity() of its replica, and their
    # OPSBOT_JOB marker ("" from a version that did not record them: never reclaimed).
    host: str = ""
    marker: str = ""

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
                "host": self.host,
                "marker": self.marker,
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
                host=str(data.get("host", "")),
                marker=str(data.get("marker", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


class Conflict(Struct, frozen=True):
    """Why a job may not start: its action's slots, or its lock group, are all held."""

    kind: Literal["action", "group"]
    holders: tuple[Holder, ...]  # may be empty: a slot freed between the two reads


class RemoteJob(Struct, frozen=True):
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
        ttl: Callable[[], float],
    ) -> None:
        self._client = client
        self._locks = locks
        self._ttl = ttl
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
        from redis.exceptions import LockNotOwnedError

        loop = asyncio.get_running_loop()
        locks = list(self._locks)
        renew_at = loop.time() + every
        while True:
            await asyncio.sleep(min(_CANCEL_POLL_S, every))
            with contextlib.suppress(redis_error(), OSError):  # the renewal below logs those
                cancelled_by = await self._client.getdel(self._cancel_key)
                if cancelled_by:
                    self._on_cancel(str(cancelled_by))
            if loop.time() < renew_at:
                continue
            renew_at += every
            ttl = self._ttl()
            for lock in list(locks):
                try:
                    await lock.extend(ttl, replace_ttl=True)
                except LockNotOwnedError:
                    # Expired while Redis could not be reached: another replica may now
                    # start what this lock kept out. The job itself cannot be undone.
                    log.error("jobs.slot_lost", lock=str(lock.name))
                    locks.remove(lock)
                except (redis_error(), OSError) as exc:
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
        self._host_identity: str | None = None  # read from /proc when first needed
        self._renew_every = renew_every

    async def acquire(
        self,
        action: ActionConfig,
        holder: Holder,
        on_cancel: Callable[[str], None],
        spawned_at: Callable[[], float | None],
    ) -> HeldSlots | Conflict:
        """Take ``action``'s lock group (if any) and one of its slots, or say who holds
        them. Raises :class:`StateRedisUnavailable` when Redis cannot be asked. ``on_cancel``
        is called with who asked when another replica's ``/cancel`` reaches the job;
        ``spawned_at`` says when (event loop time) its process started, None before."""
        ttl = functools.partial(self._ttl, action, spawned_at)
        client = self._client()
        token = holder.token()
        held: list[Lock] = []
        try:
            if action.lock_group is not None:
                group = self._lock(client, f"{_GROUP_PREFIX}{action.lock_group}", ttl())
                if not await self._take(client, group, token):
                    return Conflict("group", _holders([await client.get(str(group.name))]))
                held.append(group)
            names = [f"{_SLOT_PREFIX}{action.name}:{i}" for i in range(action.max_concurrent)]
            for name in names:
                slot = self._lock(client, name, ttl())
                if await self._take(client, slot, token):
                    held.append(slot)
                    cancel_key = _cancel_key(holder.replica, holder.job_id)
                    return HeldSlots(client, held, self._renew_every, cancel_key, on_cancel, ttl)
            holders = _holders(await client.mget(names))
        except (redis_error(), OSError) as exc:
            await _release(held)
            raise StateRedisUnavailable(exc) from exc
        await _release(held)
        return Conflict("action", holders)

    def _ttl(self, action: ActionConfig, spawned_at: Callable[[], float | None]) -> float:
        """How long from now (seconds) a slot must last: as long as the job's processes may
        live without the bot (its hard limit from its start), and a lease on top, since
        the next renewal comes within one."""
        from bot.features.actions.process import hard_limit

        left = hard_limit(action).total_seconds()
        started = spawned_at()
        if started is not None:
            left -= asyncio.get_running_loop().time() - started
        return max(left, 0.0) + self._lease.total_seconds()

    @property
    def host(self) -> str:
        """This replica's host_identity(), written on the slots it takes."""
        if self._host_identity is None:
            from bot.features.actions.process import host_identity

            self._host_identity = host_identity()
        return self._host_identity

    async def _take(self, client: Redis, lock: Lock, token: str) -> bool:
        """Take ``lock``; if it is held by a job this host can show to be over (its replica
        died and left nothing running), free it first."""
        if await lock.acquire(blocking=False, token=token):
            return True
        name = str(lock.name)
        value = await client.get(name)
        holder = Holder.from_token(value)
        if value is None or holder is None or not await self._ended(holder):
            return False
        if not await client.eval(_DELETE_IF, 1, name, value):
            return False  # it changed meanwhile: someone else's now
        log.warning(
            "jobs.slot_reclaimed",
            lock=name,
            job=holder.job_id,
            replica=holder.replica,
            reason="its replica's bot process is gone and no process of the job is left",
        )
        return bool(await lock.acquire(blocking=False, token=token))

    async def _ended(self, holder: Holder) -> bool:
        from bot.features.actions.orphans import job_ended

        if not holder.marker or holder.host != self.host:
            return False  # its processes cannot be seen from here
        return await asyncio.to_thread(job_ended, holder.marker)

    async def release_left_behind(self) -> int:
        """At start-up, once this replica's orphaned jobs were stopped: release the slots
        an earlier run of this replica still holds (it was killed before it could); how
        many. A slot whose job still runs on this host (an orphan that would not stop)
        is kept. Raises :class:`StateRedisUnavailable` when Redis cannot be asked."""
        from bot.features.actions.process import marker_owner, process_identity

        me = process_identity(os.getpid())
        client = self._client()
        released = 0
        try:
            keys = []
            for prefix in (_SLOT_PREFIX, _GROUP_PREFIX):
                keys += [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
            values = await client.mget(keys) if keys else []
            for key, value in zip(keys, values, strict=True):
                holder = Holder.from_token(value)
                if value is None or holder is None or holder.replica != self._replica:
                    continue
                if marker_owner(holder.marker) == me:
                    continue  # a job of this run
                if holder.host == self.host and not await self._ended(holder):
                    continue
                if await client.eval(_DELETE_IF, 1, key, value):
                    released += 1
                    log.warning(
                        "jobs.slot_released_after_restart", lock=str(key), job=holder.job_id
                    )
        except (redis_error(), OSError) as exc:
            raise StateRedisUnavailable(exc) from exc
        return released

    async def running_elsewhere(self) -> list[RemoteJob]:
        """The jobs the other replicas run now, oldest first."""
        client = self._client()
        try:
            slots = [key async for key in client.scan_iter(match=f"{_SLOT_PREFIX}*", count=500)]
            values = await client.mget(slots) if slots else []
        except (redis_error(), OSError) as exc:
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
        except (redis_error(), OSError) as exc:
            raise StateRedisUnavailable(exc) from exc

    async def wait_ended(self, job: RemoteJob, within: float) -> bool:
        """True once ``job`` has let go of its slot, False if it still holds it after
        ``within`` seconds."""
        client = self._client()
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                holder = Holder.from_token(await client.get(job.slot))
            except (redis_error(), OSError) as exc:
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

    def _lock(self, client: Redis, name: str, ttl: float) -> Lock:
        from redis.asyncio.lock import Lock

        # Not thread-local: the token must be seen by the renewal task and the release.
        return Lock(client, name, timeout=ttl, thread_local=False)


def _cancel_key(replica: str, job_id: str) -> str:
    return f"opsbot:jobs:cancel:{replica}:{job_id}"


def _holders(values: list[bytes | str | None]) -> tuple[Holder, ...]:
    return tuple(h for h in map(Holder.from_token, values) if h is not None)


async def _release(locks: list[Lock]) -> None:
    from redis.exceptions import LockError

    for lock in locks:
        try:
            await lock.release()
        except LockError:  # LockNotOwnedError too: it expired first, so it is free anyway
            log.warning("jobs.slot_expired_before_release", lock=str(lock.name))
        except (redis_error(), OSError) as exc:
            # It frees itself after the lease.
            log.warning("jobs.slot_release_failed", lock=str(lock.name), error=str(exc))
