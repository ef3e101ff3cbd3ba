"""Messages the bot sends on its own, not as the answer to a message: job progress and
results, approval outcomes, alerts. Every one of them goes through the :class:`Outbox`,
the one outbound delivery queue (model: python-telegram-bot's ``AIORateLimiter``).

How a message travels:

* ``post()`` writes it to the ``outbox`` table and returns True: from then on it survives
  a restart. A worker per destination (platform, workspace, channel, thread) delivers that
  destination's messages one at a time, in the order they were posted.
* Before each delivery the worker waits for the rate limits the platform's adapter
  declares (``Adapter.limits``) and for any pause a platform asked for.
* ``key`` names a message that later posts replace (a job's progress): if a newer message
  with the same key is queued before the older one went out, only the newest is sent. An
  adapter that can edit messages updates the one it posted under that key.
* ``coalesce=True`` (alerts): coalescable messages waiting for one destination when it is
  their turn go out as one reply ("3 alerts", one line each) instead of a flood.
* A poster that raises is retried with exponential backoff and jitter, up to
  :attr:`RetryPolicy.attempts` attempts; then the message is a dead letter (kept in the
  table, state ``dead``; ``opsbot outbox --dead`` lists them; gauge
  ``opsbot_outbox_dead_letters``). An exception with a ``retry_after`` attribute (seconds,
  or a timedelta) pauses the destination that long first: adapters may raise
  :class:`RetryAfter` (or pass on ``telegram.error.RetryAfter``) when the platform says so.
* A platform without a registered poster (its adapter still starting) keeps its messages
  queued, without spending attempts, until one registers.

Delivered messages are deleted.

Replicas sharing a database deliver each message once. Every queued row has an owner (a
replica id, ``owner=``) and a lease (``lease_until``, :data:`LEASE_S` by default); only the
owner delivers it.

* ``post()`` queues a row owned by this replica, leased for ``lease`` seconds.
* A background task renews the leases on the rows this replica holds every ``lease / 3``
  seconds and claims rows nobody delivers: rows whose lease ran out (their replica died)
  and rows without an owner (queued before owners existed). ``start()`` also claims this
  replica's own rows, so a restart under the same replica id takes them back at once. A
  claim is one conditional ``UPDATE ... RETURNING`` (``OutboxStore.claim``): of two
  replicas racing for a row, exactly one gets it. Claimed rows join the queues in id order.
* A stored message goes out only while its lease was confirmed (sent) less than
  ``lease * 0.8`` ago by the monotonic clock. A replica that stalled longer asks for a
  renewal first; the renewal names the rows another replica took over meanwhile, and
  those are dropped undelivered. So while the database is unreachable stored messages
  wait (a message the database could not take at all goes out from memory).
* That check holds for every request a poster sends, not only the first: the outbox runs
  the poster under :func:`~bot.kernel.adapter.posting_while`, and each adapter calls
  :func:`~bot.kernel.adapter.check_post_attempt` from its SDK's per-request hook. An SDK
  that sleeps out a 429 and retries on its own (python-telegram-bot's rate limiter,
  slack-sdk's retry handlers, discord.py's buckets) cannot post after the lease could have
  lapsed, e.g. in a process that was frozen during the sleep: the request is not sent
  (:class:`~bot.kernel.adapter.LeaseLapsed`), no attempt is counted, and a renewal says
  whether the row is still ours.
* ``stop()`` delivers what it can within its grace, then releases the rest (the lease ends
  now): another replica claims them within ``lease / 3`` s. After a crash they wait until
  the lease runs out. A post after ``stop()`` is queued already released.

The remaining window: a request already sent when its lease runs out (the request
outlasting ``lease * 0.2``, or the process freezing between the check and the send) can be
made again by the replica that takes the row over. The lease (a minute) is long next to a post (a
second or two), so that takes a stall about as long as the lease. Also: a delivered row
whose delete fails stays leased while the delete is retried, but is delivered again if this
replica stops first; a dead letter whose state could not be written is retried once its
lease runs out. Replica clocks (``lease_until`` is wall-clock time) must agree to well
within ``lease * 0.2``, and two processes must not run under one replica id (each would
take the other's rows at start-up). Order is kept per destination among the rows one
replica holds; one destination's messages from two replicas may interleave. Rows for a
platform this replica has no poster for stay with it while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import random
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiolimiter import AsyncLimiter
from msgspec import Struct, field

from bot.kernel.adapter import LeaseLapsed, PlatformLimits, Poster, Rate, posting_while
from bot.kernel.clock import Clock, SystemClock
from bot.kernel.errors import DependencyError
from bot.kernel.message import Location
from bot.kernel.metrics import Metrics
from bot.kernel.reply import Reply, Status

if TYPE_CHECKING:
    from bot.delivery.store import OutboxRow, OutboxStore

log = structlog.get_logger("opsbot.outbound")
_T = TypeVar("_T")


class NoAdapter(Exception):
    """Why a message became a dead letter without an attempt: nothing here could post it."""


class RetryPolicy(Struct, frozen=True):
    """``attempts`` deliveries in all; the n-th retry waits about ``base * 2**(n-1)`` s
    (at most ``cap``), times a random factor in [0.5, 1] so retries do not march in step."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 60.0
    no_poster_poll: float = 5.0  # how often a platform without a poster is looked at again
    # A message for a platform no adapter here serves waits for one to attach (a restart
    # with the platform configured, an adapter still connecting), but not for ever, and
    # not without bound: past either limit it becomes a dead letter saying why.
    no_poster_ttl: float = 86_400.0
    no_poster_max: int = 1_000  # per destination

    def delay(self, attempts: int) -> float:
        backoff = min(self.cap, self.base * 2.0 ** max(0, attempts - 1))
        return backoff * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)


# ------------------------------------------------------------------ the queue


LEASE_S = 60.0
"""How long a replica's claim on a queued row holds without being renewed."""

_MARGIN = 0.2  # of the lease: a message goes out only while its lease was confirmed
# less than lease * (1 - margin) ago, so the post has that long before another may take it
SETTLE_WAIT_S = 10.0  # at stop, for writes still running: a busy SQLite file's timeout
_CLAIM_BATCH = 500  # ids looked at per claim statement


class _Item(Struct, eq=False):
    id: int | None  # None: the database could not take it; delivered from memory only
    reply: Reply
    key: str | None
    coalesce: bool
    attempts: int = 0
    # Monotonic time the last write that leased the row to us was sent (post, claim,
    # renewal); a message without a row needs no lease.
    confirmed: float = math.inf
    lost: bool = False  # another replica took the row over while it was being posted
    queued: float = 0.0  # monotonic time it was queued (or claimed) here


class _Lane(Struct, eq=False):
    """One destination's queue and its worker."""

    items: deque[_Item] = field(default_factory=deque)
    in_flight: list[_Item] = field(default_factory=list)
    paused_until: float = 0.0  # loop time
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Outbox:
    def __init__(
        self,
        store: OutboxStore | None = None,
        *,
        owner: str = "local",
        lease: float = LEASE_S,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """``store`` None: a queue in memory only (nothing survives a restart).
        ``owner``: this replica's id, which owns the rows it delivers; ``lease``: seconds
        a claim on a row holds unrenewed (renewed every ``lease / 3``)."""
        if lease <= 0:
            raise ValueError(f"lease must be positive, not {lease}")
        self._store = store
        self.owner = owner
        self._lease = lease
        self._tick = lease / 3  # how often leases are renewed and rows claimed
        self._window = lease * (1 - _MARGIN)
        self._clock = clock or SystemClock()
        self._metrics = metrics
        self._limits: dict[str, PlatformLimits] = {}
        self.retry = retry or RetryPolicy()
        self._posters: dict[str, Poster] = {}
        self._lanes: dict[Location, _Lane] = {}
        self._limiters: dict[tuple[str, ...], AsyncLimiter] = {}
        # Held while the rows this outbox holds may change in the database and in memory
        # together (post, claim, renewal): a claim must not take a row that post() has
        # just written but not yet queued, or one a worker delivered and is deleting.
        self._lock = asyncio.Lock()
        self._settling: set[int] = set()  # out of the queues, row not yet deleted / dead
        self._undeleted: set[int] = set()  # delivered, but deleting the row failed
        self._leases: asyncio.Task[None] | None = None
        # Database writes that finish even when their caller is cancelled meanwhile.
        self._unabandoned: set[asyncio.Task[Any]] = set()
        self._renew_now = asyncio.Event()
        self._running = False
        self._stored = store is None  # may post() queue yet (the database is up)
        self._dead = 0
        if metrics is not None:
            metrics.outbox_queued.set_function(lambda: self.queued)

    # ------------------------------------------------------------------ adapters

    def register(self, platform: str, poster: Poster, limits: PlatformLimits | None = None) -> None:
        """Deliver ``platform``'s messages through ``poster``, within the rate limits its
        adapter declares (none given: no limit, as for a terminal)."""
        self._posters[platform] = poster
        self._limits[platform] = limits or PlatformLimits()
        for destination, lane in self._lanes.items():
            if destination.platform == platform:
                lane.wake.set()

    def unregister(self, platform: str) -> None:
        self._posters.pop(platform, None)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Claim the messages this replica left queued and those nobody delivers, start
        delivering them, and keep the leases (the state database must be started)."""
        self._stored = True
        self._running = True
        if self._store is None:
            return
        from bot.delivery.store import RowState

        try:
            self._dead = await self._store.count(RowState.DEAD)
        except Exception:
            log.exception("outbox.load_failed")
        self._set_dead_gauge()
        try:
            await self._keep_leases(first=True)
        except Exception:
            log.exception("outbox.load_failed", owner=self.owner)
        self._renew_now.clear()
        self._leases = asyncio.create_task(
            self._leasing(), name=f"outbox-leases:{self.owner}", context=contextvars.Context()
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Deliver what can be delivered within ``grace`` seconds, then stop the workers
        and release the rest: it stays queued, and another replica (or this one, started
        again) takes it over at once."""
        await self._writes_done(grace)  # posts whose callers were cancelled: queued first
        await self.drain(grace)
        was_running, self._running = self._running, False
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if self._leases is not None:
            tasks.append(self._leases)
            self._leases = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Deliveries settling as their worker was cancelled: their rows must be gone before
        # the rest is released, or the next start sends them again.
        await self._writes_done(max(grace, SETTLE_WAIT_S))
        if was_running:
            await self._release()
        left = self.queued
        if left:
            log.info("outbox.stopped_with_queued", queued=left, owner=self.owner)
        self._lanes.clear()
        self._limiters.clear()
        self._settling.clear()
        self._undeleted.clear()
        # post() after this still writes to the database, released at once (whichever
        # replica runs delivers it), until the database closes.

    async def drain(self, within: float) -> bool:
        """Wait until every message for a platform with a poster is delivered (or dead);
        False when ``within`` seconds ran out first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._deliverable():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def closed(self) -> None:
        """The database is going away: post() can no longer queue anything."""
        self._stored = self._store is None

    @property
    def queued(self) -> int:
        return sum(len(lane.items) for lane in self._lanes.values())

    # ------------------------------------------------------------------ posting

    async def post(
        self,
        destination: Location,
        reply: Reply,
        *,
        key: str | None = None,
        coalesce: bool = False,
    ) -> bool:
        """Queue ``reply`` for ``destination``: True once it is queued (in the database),
        False (and a log line) when it cannot even be queued. Never raises: a job's
        result must not be lost to a failed progress update."""
        if not self._stored:
            log.warning("outbox.not_started", platform=destination.platform, title=reply.title)
            return False
        # Queued by a task of its own, so that a caller cancelled meanwhile (a job's
        # progress update as the job ends, a command at shutdown) neither drops the message
        # nor abandons its database write halfway: an aiosqlite connection cancelled inside
        # its BEGIN IMMEDIATE was seen to leave the next writer waiting forever.
        return await self._unabandoned_write(self._queue(destination, reply, key, coalesce))

    async def _unabandoned_write(self, write: Coroutine[Any, Any, _T]) -> _T:
        """``write`` in a task of its own, finished even if the caller is cancelled."""
        task = asyncio.create_task(write)
        self._unabandoned.add(task)
        task.add_done_callback(self._unabandoned.discard)
        return await asyncio.shield(task)

    async def _writes_done(self, within: float) -> None:
        if self._unabandoned:
            await asyncio.wait(self._unabandoned, timeout=within)

    async def _queue(
        self, destination: Location, reply: Reply, key: str | None, coalesce: bool
    ) -> bool:
        async with self._lock:
            lane = self._lane(destination)
            replaced = [
                item
                for item in lane.items
                if key is not None and item.key == key and item not in lane.in_flight
            ]
            item_id: int | None = None
            sent = self._clock.monotonic()
            if self._store is not None:
                now = self._clock.now()
                # Stopped: leased to nobody in particular, whichever replica runs takes it.
                until = now + timedelta(seconds=self._lease) if self._running else now
                try:
                    item_id = await self._store.add(
                        platform=destination.platform,
                        workspace=destination.workspace,
                        channel=destination.channel_id,
                        thread=destination.thread_id,
                        key=key,
                        coalesce=coalesce,
                        reply=reply,
                        now=now,
                        replaces=[i.id for i in replaced if i.id is not None],
                        owner=self.owner,
                        lease_until=until,
                    )
                except Exception:
                    # Better delivered from memory than lost: a database outage is when
                    # the results of rollbacks matter most.
                    log.exception(
                        "outbox.not_persisted", platform=destination.platform, title=reply.title
                    )
            lane = self._lane(destination)  # the worker may have ended meanwhile
            for old in replaced:
                if old in lane.items and old not in lane.in_flight:
                    lane.items.remove(old)
            item = _Item(item_id, reply, key, coalesce, queued=self._clock.monotonic())
            if item_id is not None:
                item.confirmed = sent
            lane.items.append(item)
            self._kick(destination, lane)
        return True

    # ------------------------------------------------------------------ delivery

    def _lane(self, destination: Location) -> _Lane:
        lane = self._lanes.get(destination)
        if lane is None:
            lane = self._lanes[destination] = _Lane()
        return lane

    def _kick(self, destination: Location, lane: _Lane) -> None:
        lane.wake.set()
        if self._running and lane.task is None and lane.items:
            # A fresh context: the worker must not log under the request that woke it.
            lane.task = asyncio.create_task(
                self._deliver(destination, lane),
                name=f"outbox:{destination.platform}:{destination.channel_id}",
                context=contextvars.Context(),
            )

    def _deliverable(self) -> bool:
        return any(
            (lane.items or lane.task is not None) and destination.platform in self._posters
            for destination, lane in self._lanes.items()
        )

    async def _deliver(self, destination: Location, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.items:
                poster = self._posters.get(destination.platform)
                if poster is None:
                    await self._expire_unserved(destination, lane)
                    if not lane.items:
                        break
                    lane.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.retry.no_poster_poll):
                            await lane.wake.wait()
                    continue
                pause = lane.paused_until - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue
                await self._acquire(destination)
                if not lane.items:  # another replica took them over meanwhile
                    continue
                # Taken after the wait: what piled up meanwhile can still be merged.
                batch = _take(lane.items)
                if not self._leased(batch):
                    # Not sure the rows are still ours (a stall, a database outage): a
                    # renewal says, and drops those another replica took over.
                    self._renew_now.set()
                    lane.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._tick):
                            await lane.wake.wait()
                    continue
                lane.in_flight = batch
                try:
                    # Each request the poster's SDK makes, its own retries included,
                    # checks the lease again (check_post_attempt): a 429 slept out inside
                    # the SDK must not post after another replica took the row over.
                    with posting_while(partial(self._still_ours, batch)):
                        await poster(
                            destination, _merge(batch), batch[0].key if len(batch) == 1 else None
                        )
                except Exception as exc:
                    for item in batch:
                        if item.lost:  # the replica that took it over retries it
                            lane.items.remove(item)
                    kept = [item for item in batch if not item.lost]
                    if kept and _lapsed(exc):
                        # Not sent, and no attempt spent: ask whether the rows are still
                        # ours before trying again (the check above waits for the answer).
                        log.info("outbox.lease_unconfirmed", platform=destination.platform)
                        self._renew_now.set()
                    elif kept:
                        await self._failed(destination, lane, kept, exc)
                else:
                    await self._delivered(lane, batch)
                finally:
                    lane.in_flight = []
        finally:
            lane.task = None
            if not lane.items and self._lanes.get(destination) is lane:
                del self._lanes[destination]

    async def _acquire(self, destination: Location) -> None:
        limits = self._limits.get(destination.platform)
        if limits is None:
            return
        channel = (destination.platform, destination.workspace, destination.channel_id)
        if limits.overall is not None:
            await self._limiter((destination.platform,), limits.overall).acquire()
        if limits.per_group is not None and limits.is_group(destination):
            await self._limiter(("group", *channel), limits.per_group).acquire()
        if limits.per_channel is not None:
            await self._limiter(channel, limits.per_channel).acquire()

    def _limiter(self, name: tuple[str, ...], rate: Rate) -> AsyncLimiter:
        limiter = self._limiters.get(name)
        if limiter is None:
            limiter = self._limiters[name] = AsyncLimiter(rate.count, rate.seconds)
        return limiter

    async def _expire_unserved(self, destination: Location, lane: _Lane) -> None:
        """Messages waiting for an adapter that never came: past ``no_poster_ttl``, or
        beyond ``no_poster_max`` in this destination (the oldest), they become dead
        letters, so a bot with nowhere to post keeps a bounded queue."""
        now = self._clock.monotonic()
        waiting = [i for i in lane.items if i not in lane.in_flight]
        surplus = max(0, len(waiting) - self.retry.no_poster_max)
        expired = [
            item
            for n, item in enumerate(waiting)
            if n < surplus or now - item.queued > self.retry.no_poster_ttl
        ]
        if expired:
            reason = NoAdapter(f"no {destination.platform} adapter attached to post it")
            await self._failed(destination, lane, expired, reason, give_up=True)

    async def _failed(
        self,
        destination: Location,
        lane: _Lane,
        batch: Sequence[_Item],
        exc: Exception,
        *,
        give_up: bool = False,
    ) -> None:
        loop = asyncio.get_running_loop()
        attempts = max(item.attempts for item in batch) + (0 if give_up else 1)
        for item in batch:
            item.attempts = attempts
        error = f"{type(exc).__name__}: {exc}"
        retry_after = _retry_after(exc)
        dead = give_up or attempts >= self.retry.attempts
        wait = self.retry.delay(attempts)
        if retry_after is not None:
            wait = max(wait if not dead else 0.0, retry_after)
        lane.paused_until = loop.time() + wait
        ids = [i.id for i in batch if i.id is not None]
        fields = {
            "platform": destination.platform,
            "channel": destination.channel_id,
            "title": batch[0].reply.title,
            "attempts": attempts,
            "error": error,
        }
        if dead:
            self._settling.update(ids)
            for item in batch:
                lane.items.remove(item)
            self._dead += len(batch)
            self._set_dead_gauge()
            log.error("outbox.dead_letter", **fields)
        else:
            log.warning("outbox.retry", retry_in_s=round(wait, 3), **fields)
        if self._store is None or not ids:
            return
        try:
            await self._store.failed(
                ids,
                attempts=attempts,
                next_at=self._clock.now() + timedelta(seconds=wait),
                error=error,
                dead=dead,
            )
        except Exception:
            # A dead letter still queued in the table: unrenewed, it is claimed again
            # when its lease runs out, and retried.
            log.exception("outbox.update_failed", platform=destination.platform)
        if dead:
            async with self._lock:
                self._settling.difference_update(ids)

    async def _delivered(self, lane: _Lane, batch: Sequence[_Item]) -> None:
        ids = [i.id for i in batch if i.id is not None]
        # Held (renewed, never claimed back) until the row is gone from the table.
        self._settling.update(ids)
        for item in batch:
            lane.items.remove(item)
        if self._store is None or not ids:
            return
        # Finished even if this worker is cancelled now (stop's grace ran out): a delivered
        # row left in the table would be sent again after the restart.
        await self._unabandoned_write(self._forget(self._store, ids))

    async def _forget(self, store: OutboxStore, ids: list[int]) -> None:
        try:
            await store.delete(ids)
        except Exception:
            # Delivered but still in the table: its lease is renewed while the delete is
            # retried, so no replica delivers it again.
            log.exception("outbox.delete_failed", ids=ids)
            self._undeleted.update(ids)
            return
        async with self._lock:
            self._settling.difference_update(ids)

    # ------------------------------------------------------------------ leases

    def _still_ours(self, batch: Sequence[_Item]) -> bool:
        """Checked before each request a poster makes: leased, and none taken over."""
        return not any(item.lost for item in batch) and self._leased(batch)

    def _leased(self, batch: Iterable[_Item]) -> bool:
        """Whether every stored message in ``batch`` is still surely this replica's."""
        now = self._clock.monotonic()
        return all(now - item.confirmed < self._window for item in batch)

    async def _leasing(self) -> None:
        """The background task: renew and claim every ``lease / 3`` s, or at once when a
        worker asks."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick):
                    await self._renew_now.wait()
            self._renew_now.clear()
            try:
                await self._keep_leases(first=False)
            except DependencyError as exc:
                log.warning("outbox.lease_failed", owner=self.owner, error=str(exc))
            except Exception:
                log.exception("outbox.lease_failed", owner=self.owner)
            else:
                continue
            await asyncio.sleep(self._tick)  # no retry storm while the database is away

    async def _keep_leases(self, *, first: bool) -> None:
        """Renew the leases on the rows held here, drop those another replica took over,
        claim what nobody delivers (``first``: this replica's own rows too)."""
        store = self._store
        if store is None:
            return
        async with self._lock:
            await self._retry_deletes(store)
            held = self._held()
            sent = self._clock.monotonic()
            until = self._clock.now() + timedelta(seconds=self._lease)
            kept = await store.renew(held | self._settling, owner=self.owner, until=until)
            self._confirm(held, kept, sent)
            await self._claim(store, own=first)
        for lane in self._lanes.values():
            lane.wake.set()  # workers waiting for a renewal

    async def _retry_deletes(self, store: OutboxStore) -> None:
        if not self._undeleted:
            return
        try:
            await store.delete(self._undeleted)
        except Exception:
            log.exception("outbox.delete_failed", ids=sorted(self._undeleted))
        else:
            self._settling.difference_update(self._undeleted)
            self._undeleted.clear()

    def _held(self) -> set[int]:
        return {
            item.id for lane in self._lanes.values() for item in lane.items if item.id is not None
        }

    def _confirm(self, held: set[int], kept: set[int], sent: float) -> None:
        """Mark the rows still ours as leased since ``sent``; drop the others."""
        lost = 0
        for destination, lane in list(self._lanes.items()):
            for item in list(lane.items):
                if item.id is None or item.id not in held:
                    continue
                if item.id in kept:
                    item.confirmed = max(item.confirmed, sent)
                elif item in lane.in_flight:
                    item.lost = True
                    lost += 1
                else:
                    lane.items.remove(item)
                    lost += 1
            if not lane.items and lane.task is None:
                del self._lanes[destination]
        if lost:
            log.warning("outbox.lease_lost", owner=self.owner, messages=lost)

    async def _claim(self, store: OutboxStore, *, own: bool) -> None:
        after = 0
        claimed: list[OutboxRow] = []
        while True:
            now = self._clock.now()
            ids = await store.claimable(
                owner=self.owner, now=now, own=own, after=after, limit=_CLAIM_BATCH
            )
            if not ids:
                break
            after = ids[-1]
            held = self._held() | self._settling
            wanted = [i for i in ids if i not in held]
            if wanted:
                sent = self._clock.monotonic()
                until = now + timedelta(seconds=self._lease)
                rows = await store.claim(wanted, owner=self.owner, now=now, until=until)
                self._adopt(rows, sent)
                claimed.extend(rows)
            if len(ids) < _CLAIM_BATCH:
                break
        if claimed:
            log.info(
                "outbox.claimed",
                owner=self.owner,
                messages=len(claimed),
                destinations=len({(r.platform, r.workspace, r.channel, r.thread) for r in claimed}),
            )

    def _adopt(self, rows: Sequence[OutboxRow], sent: float) -> None:
        """Queue claimed rows, each in id order among what its destination holds."""
        touched: dict[Location, _Lane] = {}
        for row in rows:
            destination = Location(row.platform, row.channel, row.thread, row.workspace)
            lane = self._lane(destination)
            item = _Item(
                row.id,
                row.reply,
                row.key,
                row.coalesce,
                row.attempts,
                confirmed=sent,
                queued=self._clock.monotonic(),
            )
            position = len(lane.items)
            for index in range(len(lane.in_flight), len(lane.items)):
                other = lane.items[index].id
                if other is not None and other > row.id:
                    position = index
                    break
            lane.items.insert(position, item)
            touched[destination] = lane
        for destination, lane in touched.items():
            self._kick(destination, lane)

    async def _release(self) -> None:
        """Stopping: let another replica take the rows still held here over at once."""
        store = self._store
        if store is None:
            return
        async with self._lock:
            await self._retry_deletes(store)
            try:
                # All of this replica's rows, also any a cancelled claim left unqueued; not
                # those delivered (or dead) whose row is still being settled.
                released = await store.release(
                    owner=self.owner, now=self._clock.now(), keep=self._settling
                )
            except Exception:
                log.exception(
                    "outbox.release_failed",
                    owner=self.owner,
                    hint=f"another replica takes them over when the lease runs out "
                    f"({self._lease:g}s)",
                )
                return
        if released:
            log.info("outbox.released", owner=self.owner, messages=released)

    def _set_dead_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.outbox_dead_letters.set(self._dead)


def _take(items: deque[_Item]) -> list[_Item]:
    """The next delivery: the first message, with every coalescable one right behind it
    when it is coalescable itself (order is kept: a plain message ends the run)."""
    first = items[0]
    if not first.coalesce:
        return [first]
    batch = []
    for item in items:
        if not item.coalesce:
            break
        batch.append(item)
    return batch


_SEVERITY = (Status.ERROR, Status.WARNING, Status.DENIED, Status.USAGE, Status.INFO, Status.OK)


def merge_replies(replies: Sequence[Reply]) -> Reply:
    """Several alerts as one reply: "N alerts", the most severe status, a line each."""
    if len(replies) == 1:
        return replies[0]
    status = min((r.status for r in replies), key=_SEVERITY.index)
    return Reply(
        title=f"{len(replies)} alerts",
        status=status,
        text="\n".join(f"• {_headline(r)}" for r in replies),
    )


def _headline(reply: Reply) -> str:
    if reply.title or not reply.text:
        return reply.title
    return reply.text.splitlines()[0]


def _merge(batch: Sequence[_Item]) -> Reply:
    return merge_replies([item.reply for item in batch])


def _lapsed(exc: BaseException) -> bool:
    """Whether ``exc`` is, or wraps, the lease check refusing a request (an adapter may
    wrap it, as it wraps vendor errors)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, LeaseLapsed):
            return True
        seen = getattr(seen, "original", None) or seen.__cause__ or seen.__context__
    return False


def _retry_after(exc: BaseException) -> float | None:
    """The pause the platform asked for, on ``exc`` or on the vendor error it wraps (an
    adapter's ``DependencyError`` raised ``from`` a ``telegram.error.RetryAfter``)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        value = getattr(seen, "retry_after", None)
        if isinstance(value, timedelta):
            return value.total_seconds()
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        seen = getattr(seen, "original", None) or seen.__cause__
    return None
