"""Messages the bot sends on its own, not as the answer to a message: job progress and
results, approval outcomes, alerts. Every one of them goes through the :class:`Outbox`,
the one outbound delivery queue (model: python-telegram-bot's ``AIORateLimiter``).

How a message travels:

* ``post()`` writes it to the ``outbox`` table and returns True: from then on it survives
  a restart. A worker per destination (platform, workspace, channel, thread) delivers that
  destination's messages one at a time, in the order they were posted.
* Before each delivery the worker waits for the destination's rate limits (:data:`LIMITS`)
  and for any pause a platform asked for.
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

Delivered messages are deleted. Several replicas sharing a database each deliver what they
queued; one starting up also picks up every queued row it finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from aiolimiter import AsyncLimiter

from bot.clock import Clock, SystemClock
from bot.message import Message
from bot.metrics import Metrics
from bot.reply import Reply, Status

if TYPE_CHECKING:
    from bot.state.outbox import OutboxStore

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
"""How an adapter posts to its platform: ``(destination, reply, key)``. It raises on
failure (the outbox retries); :class:`RetryAfter` when the platform asked to wait."""


class RetryAfter(Exception):
    """Raised by a poster when the platform said "retry after N seconds": the outbox
    pauses that destination for ``retry_after`` seconds, then tries again."""

    def __init__(self, retry_after: float, message: str = "") -> None:
        super().__init__(message or f"rate limited: retry after {retry_after:g} s")
        self.retry_after = retry_after


# ------------------------------------------------------------------ rate limits


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` messages per ``seconds`` (a leaky bucket: ``count`` is the burst)."""

    count: float
    seconds: float


@dataclass(frozen=True, slots=True)
class PlatformLimits:
    per_channel: Rate | None = None  # each channel (a thread shares its channel's limit)
    per_group: Rate | None = None  # Telegram group chats (negative chat id), on top
    overall: Rate | None = None  # everything the bot posts on this platform


LIMITS: Mapping[str, PlatformLimits] = {
    # Slack: "1 message per second per channel", short bursts tolerated.
    "slack": PlatformLimits(per_channel=Rate(1, 1.0)),
    # Telegram Bot API FAQ: 1 msg/s per chat, 20 msg/min per group, 30 msg/s overall.
    "telegram": PlatformLimits(
        per_channel=Rate(1, 1.0), per_group=Rate(20, 60.0), overall=Rate(30, 1.0)
    ),
    # Discord: 5 messages per 5 s per channel.
    "discord": PlatformLimits(per_channel=Rate(5, 5.0)),
    # A terminal: no limit. So is any platform not named here.
    "console": PlatformLimits(),
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` deliveries in all; the n-th retry waits about ``base * 2**(n-1)`` s
    (at most ``cap``), times a random factor in [0.5, 1] so retries do not march in step."""

    attempts: int = 5
    base: float = 1.0
    cap: float = 60.0
    no_poster_poll: float = 5.0  # how often a platform without a poster is looked at again

    def delay(self, attempts: int) -> float:
        backoff = min(self.cap, self.base * 2.0 ** max(0, attempts - 1))
        return backoff * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)


# ------------------------------------------------------------------ the queue


@dataclass(slots=True, eq=False)
class _Item:
    id: int | None  # None: the database could not take it; delivered from memory only
    reply: Reply
    key: str | None
    coalesce: bool
    attempts: int = 0


@dataclass(slots=True, eq=False)
class _Lane:
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
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        limits: Mapping[str, PlatformLimits] = LIMITS,
        retry: RetryPolicy | None = None,
    ) -> None:
        """``store`` None: a queue in memory only (nothing survives a restart)."""
        self._store = store
        self._clock = clock or SystemClock()
        self._metrics = metrics
        self._limits = limits
        self.retry = retry or RetryPolicy()
        self._posters: dict[str, Poster] = {}
        self._lanes: dict[Destination, _Lane] = {}
        self._limiters: dict[tuple[str, ...], AsyncLimiter] = {}
        self._enqueue = asyncio.Lock()
        self._running = False
        self._stored = store is None  # may post() queue yet (the database is up)
        self._dead = 0
        if metrics is not None:
            metrics.outbox_queued.set_function(lambda: self.queued)

    # ------------------------------------------------------------------ adapters

    def register(self, platform: str, poster: Poster) -> None:
        self._posters[platform] = poster
        for destination, lane in self._lanes.items():
            if destination.platform == platform:
                lane.wake.set()

    def unregister(self, platform: str) -> None:
        self._posters.pop(platform, None)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Load the messages a previous run left queued and start delivering them (the
        state database must be started)."""
        self._stored = True
        self._running = True
        if self._store is None:
            return
        from bot.state.outbox import RowState

        try:
            rows = await self._store.rows(RowState.QUEUED)
            self._dead = await self._store.count(RowState.DEAD)
        except Exception:
            log.exception("outbox.load_failed")
            rows = []
        self._set_dead_gauge()
        for row in rows:
            destination = Destination(row.platform, row.channel, row.thread, row.workspace)
            item = _Item(row.id, row.reply, row.key, row.coalesce, row.attempts)
            self._lane(destination).items.append(item)
        if rows:
            log.info("outbox.loaded", queued=len(rows), destinations=len(self._lanes))
        for destination, lane in self._lanes.items():
            self._kick(destination, lane)

    async def stop(self, grace: float = 5.0) -> None:
        """Deliver what can be delivered within ``grace`` seconds, then stop the workers.
        What is left stays queued in the database for the next start."""
        await self.drain(grace)
        self._running = False
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self.queued
        if left:
            log.info("outbox.stopped_with_queued", queued=left)
        self._lanes.clear()
        self._limiters.clear()
        # post() after this still writes to the database (the next start delivers it),
        # until the database closes.

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
        destination: Destination,
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
        async with self._enqueue:
            lane = self._lane(destination)
            replaced = [
                item
                for item in lane.items
                if key is not None and item.key == key and item not in lane.in_flight
            ]
            item_id: int | None = None
            if self._store is not None:
                try:
                    item_id = await self._store.add(
                        platform=destination.platform,
                        workspace=destination.workspace,
                        channel=destination.channel_id,
                        thread=destination.thread_id,
                        key=key,
                        coalesce=coalesce,
                        reply=reply,
                        now=self._clock.now(),
                        replaces=[i.id for i in replaced if i.id is not None],
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
            lane.items.append(_Item(item_id, reply, key, coalesce))
            self._kick(destination, lane)
        return True

    # ------------------------------------------------------------------ delivery

    def _lane(self, destination: Destination) -> _Lane:
        lane = self._lanes.get(destination)
        if lane is None:
            lane = self._lanes[destination] = _Lane()
        return lane

    def _kick(self, destination: Destination, lane: _Lane) -> None:
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

    async def _deliver(self, destination: Destination, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.items:
                poster = self._posters.get(destination.platform)
                if poster is None:
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
                # Taken after the wait: what piled up meanwhile can still be merged.
                batch = _take(lane.items)
                lane.in_flight = batch
                try:
                    await poster(
                        destination, _merge(batch), batch[0].key if len(batch) == 1 else None
                    )
                except Exception as exc:
                    await self._failed(destination, lane, batch, exc)
                else:
                    for item in batch:
                        lane.items.remove(item)
                    await self._forget([i.id for i in batch if i.id is not None])
                finally:
                    lane.in_flight = []
        finally:
            lane.task = None
            if not lane.items and self._lanes.get(destination) is lane:
                del self._lanes[destination]

    async def _acquire(self, destination: Destination) -> None:
        limits = self._limits.get(destination.platform)
        if limits is None:
            return
        channel = (destination.platform, destination.workspace, destination.channel_id)
        if limits.overall is not None:
            await self._limiter((destination.platform,), limits.overall).acquire()
        if limits.per_group is not None and destination.channel_id.startswith("-"):
            await self._limiter(("group", *channel), limits.per_group).acquire()
        if limits.per_channel is not None:
            await self._limiter(channel, limits.per_channel).acquire()

    def _limiter(self, name: tuple[str, ...], rate: Rate) -> AsyncLimiter:
        limiter = self._limiters.get(name)
        if limiter is None:
            limiter = self._limiters[name] = AsyncLimiter(rate.count, rate.seconds)
        return limiter

    async def _failed(
        self, destination: Destination, lane: _Lane, batch: Sequence[_Item], exc: Exception
    ) -> None:
        loop = asyncio.get_running_loop()
        attempts = max(item.attempts for item in batch) + 1
        for item in batch:
            item.attempts = attempts
        error = f"{type(exc).__name__}: {exc}"
        retry_after = _retry_after(exc)
        dead = attempts >= self.retry.attempts
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
            log.exception("outbox.update_failed", platform=destination.platform)

    async def _forget(self, ids: Sequence[int]) -> None:
        if self._store is None or not ids:
            return
        try:
            await self._store.delete(ids)
        except Exception:
            # Delivered but still in the table: the next start delivers it again.
            log.exception("outbox.delete_failed", ids=list(ids))

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
