"""Heartbeats: a message the bot posts on its own, on a schedule (``[[heartbeat]]``), so
the people in a channel see it is alive and what needs attention.

One heartbeat message holds, as its config asks: the bot's version and uptime (the title,
"💓 opsbot 0.1.0 up 3h 12m"), a health summary of the configured services, each queue's
length with its trend over the last samples ("42 ▁▂▃▅▇"), and whatever is failing
(services down, queues critical or unreachable).

It goes to every platform id of each named channel whose adapter is running (an id on a
platform this process does not serve is skipped, not queued forever). A post the outbox
refuses is tried again, a bounded number of times with growing pauses, then logged. When
every destination took it, ``opsbot_heartbeat_last_success_timestamp_seconds{heartbeat}``
is set: a dead man's switch for the alerting system.

The :class:`~bot.cluster.scheduler.Scheduler` runs each heartbeat; ``/heartbeat`` shows, runs and
pauses them. With several replicas each slot of a heartbeat's schedule is posted once, by
the leader; a slot that fell while no replica led (a hand-over, a Redis outage) is posted
late by the next leader, once, and says so ("heartbeat for 10:05:00 UTC, posted late").
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Protocol

import msgspec
import structlog

from bot.cluster.scheduler import Cron, Every, Schedule, Scheduler, Slot
from bot.delivery.channels import channel_destinations
from bot.delivery.config import ChannelGroup
from bot.features.heartbeats.config import HeartbeatConfig
from bot.features.probes.config import Service
from bot.features.queues.config import QueueConfig
from bot.kernel.clock import Clock
from bot.kernel.durations import format_duration
from bot.kernel.message import Location
from bot.kernel.metrics import Metrics
from bot.kernel.reply import Field, Reply, Status
from bot.kernel.version import __version__

if TYPE_CHECKING:
    from bot.cluster.http_clients import HttpClients
    from bot.cluster.redis_clients import RedisClients
    from bot.delivery.adapters import AdapterBoard
    from bot.features.probes import HealthResult
    from bot.features.queues.inspect import QueueReport

log = structlog.get_logger("opsbot.heartbeat")

# Pauses before the 2nd, 3rd and 4th attempt of a post the outbox refused.
RETRY_DELAYS = (2.0, 10.0, 30.0)
_BARS = "▁▂▃▄▅▆▇█"
_NO_SAMPLE = "·"


class Poster(Protocol):
    """Where heartbeats are posted: the bot's :class:`~bot.delivery.outbox.Outbox`."""

    async def post(self, destination: Location, reply: Reply) -> bool: ...


class Heartbeats:
    def __init__(
        self,
        beats: Sequence[HeartbeatConfig],
        *,
        services: Sequence[Service],
        queues: Sequence[QueueConfig],
        channels: Mapping[str, ChannelGroup],
        bot_name: str,
        scheduler: Scheduler,
        outbox: Poster,
        metrics: Metrics,
        http: HttpClients,
        redis: RedisClients,
        adapters: AdapterBoard,
        clock: Clock,
        started_at: Callable[[], datetime],
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        """Adds one scheduler job per configured heartbeat; no I/O."""
        self._services = tuple(services)
        self._queues = tuple(queues)
        self._channels = channels
        self._bot_name = bot_name
        self._scheduler = scheduler
        self.outbox = outbox
        self._metrics = metrics
        self._http = http
        self._redis = redis
        self._adapters = adapters
        self._clock = clock
        self._started_at = started_at
        self.retry_delays = tuple(retry_delays)
        self._beats = {beat.name: beat for beat in beats}
        self._samples: dict[tuple[str, str], deque[int | None]] = {}
        self._last_success: dict[str, datetime] = {}
        for beat in beats:
            scheduler.add_catching_up(beat.name, partial(self.beat, beat.name), schedule_of(beat))

    # ------------------------------------------------------------------ what /heartbeat reads

    @property
    def names(self) -> list[str]:
        return list(self._beats)

    def get(self, name: str) -> HeartbeatConfig:
        return self._beats[name]

    def last_success(self, name: str) -> datetime | None:
        return self._last_success.get(name)

    def destinations(self, beat: HeartbeatConfig) -> list[Location]:
        """Every platform id of the heartbeat's channels, in config order, once each."""
        return channel_destinations(self._channels, beat.channels)

    # ------------------------------------------------------------------ one heartbeat

    async def beat(self, name: str, slot: Slot | None = None) -> bool:
        """Compose the heartbeat and post it everywhere; True when every destination took
        it (then the dead man's switch gauge moves). ``slot``: the scheduled time it is
        for (None: asked for by a person)."""
        beat = self._beats[name]
        reply = await self.compose(beat)
        if slot is not None and slot.late:
            due = slot.at.strftime("%Y-%m-%d %H:%M:%S")
            note = (
                f"Heartbeat for {due} UTC, posted late: no replica was leading when it was "
                "due (a leader hand-over or a Redis outage)."
            )
            reply = msgspec.structs.replace(reply, text=f"{reply.text}\n{note}".strip())
        targets: list[Location] = []
        for destination in self.destinations(beat):
            if self._serves(destination.platform):
                targets.append(destination)
            else:
                log.debug(
                    "heartbeat.destination_skipped",
                    heartbeat=name,
                    platform=destination.platform,
                    channel=destination.channel_id,
                    reason="no adapter running for the platform",
                )
        nowhere = not targets
        if nowhere:
            # Nowhere to post now: kept in the outbox (bounded, expiring) for an adapter
            # that can post it, rather than lost; not a heartbeat that got out.
            targets = list(self.destinations(beat))
            log.warning("heartbeat.no_destination", heartbeat=name, channels=beat.channels)
            if not targets:
                return False
        await self._scheduler.confirm_leadership()  # composing may have taken a while
        posted = await asyncio.gather(*(self._post(name, d, reply) for d in targets))
        if nowhere:
            return False
        if all(posted):
            now = self._clock.now()
            self._last_success[name] = now
            self._metrics.heartbeat_last_success.labels(name).set(now.timestamp())
            log.info(
                "heartbeat.posted",
                heartbeat=name,
                destinations=len(targets),
                slot=None if slot is None else slot.at.isoformat(),
                late=slot is not None and slot.late,
            )
            return True
        log.error(
            "heartbeat.incomplete",
            heartbeat=name,
            posted=sum(posted),
            failed=len(posted) - sum(posted),
        )
        return False

    async def compose(self, beat: HeartbeatConfig) -> Reply:
        from bot.features.queues.inspect import QueueFailure
        from bot.kernel.severity import Severity

        request_id = f"hb-{secrets.token_hex(5)}"  # probes send it as X-Request-ID
        services = self._services if beat.health or beat.failing else ()
        queues = self._queues if beat.queues or beat.failing else ()
        health, reports = await asyncio.gather(
            self._probe(services, request_id), self._inspect(queues)
        )
        fields: list[Field] = []
        if beat.health:
            fields.append(
                Field("health", _health_summary(health) if services else "no services configured")
            )
        if beat.queues:
            if not reports:
                fields.append(Field("queues", "no queues configured"))
            for report in reports:
                samples = self._sample(beat, report)
                if isinstance(report, QueueFailure):
                    line = f"? {sparkline(samples)}  {report.reason}"
                else:
                    line = f"{_number(report.length.value)} {sparkline(samples)}"
                    if report.severity is not Severity.OK:
                        line += f"  {report.severity.word}"
                fields.append(Field(f"queue {report.queue}", line))
        if beat.failing:
            items = _failing(health, reports)
            fields.append(Field("failing", "; ".join(items) if items else "nothing"))
        name = self._bot_name
        if beat.version_uptime:
            uptime = format_duration(self._clock.now() - self._started_at())
            title = f"💓 {name} {__version__} up {uptime}"
        else:
            title = f"💓 {name} heartbeat"
        return Reply(title=title, status=_status(health, reports), fields=tuple(fields))

    # ------------------------------------------------------------------ internals

    def _serves(self, platform: str) -> bool:
        return self._adapters.serves(platform)

    async def _post(self, name: str, destination: Location, reply: Reply) -> bool:
        where = log.bind(
            heartbeat=name, platform=destination.platform, channel=destination.channel_id
        )
        attempts = len(self.retry_delays) + 1
        for attempt in range(1, attempts + 1):
            if await self.outbox.post(destination, reply):
                if attempt > 1:
                    where.info("heartbeat.posted_after_retry", attempt=attempt)
                return True
            if attempt == attempts:
                break
            delay = self.retry_delays[attempt - 1]
            where.warning("heartbeat.post_retry", attempt=attempt, retry_in_s=delay)
            await asyncio.sleep(delay)
        where.error("heartbeat.post_failed", attempts=attempts)
        return False

    async def _probe(self, services: Sequence[Service], request_id: str) -> list[HealthResult]:
        if not services:
            return []
        # Imported here: httpx is the slowest import and only probes need it.
        from bot.features.probes import probe_services

        return await probe_services(services, self._http, self._redis, request_id=request_id)

    async def _inspect(self, queues: Sequence[QueueConfig]) -> list[QueueReport]:
        if not queues:
            return []
        from bot.features.queues.inspect import inspect_queues

        return await inspect_queues(self._redis, queues)

    def _sample(self, beat: HeartbeatConfig, report: QueueReport) -> Sequence[int | None]:
        from bot.features.queues.inspect import QueueState

        key = (beat.name, report.queue)
        samples = self._samples.get(key)
        if samples is None or samples.maxlen != beat.trend_samples:
            samples = self._samples[key] = deque(samples or (), maxlen=beat.trend_samples)
        value = report.length.value if isinstance(report, QueueState) else None
        samples.append(None if value is None else int(value))
        return samples


def schedule_of(beat: HeartbeatConfig) -> Schedule:
    every = beat.every
    if every is not None:
        return Every(every)
    assert beat.cron is not None  # the config allows one or the other
    return Cron(beat.cron)


def sparkline(samples: Sequence[int | None]) -> str:
    """One block per sample, scaled between the lowest and the highest ("▁▂▃▅▇"); a
    missing sample (the queue could not be read) is a dot."""
    known = [s for s in samples if s is not None]
    if not known:
        return _NO_SAMPLE * len(samples)
    low, high = min(known), max(known)
    top = len(_BARS) - 1
    return "".join(
        _NO_SAMPLE
        if s is None
        else _BARS[0 if high == low else round((s - low) * top / (high - low))]
        for s in samples
    )


def _health_summary(results: Sequence[HealthResult]) -> str:
    from bot.features.probes import HealthState

    parts = []
    for state in (HealthState.UP, HealthState.DEGRADED, HealthState.DOWN):
        matching = [r.service for r in results if r.state is state]
        if not matching:
            continue
        part = f"{len(matching)} {state.value}"
        if state is not HealthState.UP:
            part += f" ({', '.join(matching)})"
        parts.append(part)
    return ", ".join(parts)


def _failing(health: Sequence[HealthResult], reports: Sequence[QueueReport]) -> list[str]:
    from bot.features.probes import HealthState
    from bot.features.queues.inspect import QueueFailure
    from bot.kernel.severity import Severity

    items = []
    for result in health:
        if result.state is HealthState.DOWN:
            why = "; ".join(filter(None, (result.detail, *result.failing_components)))
            items.append(f"{result.service} down ({why})" if why else f"{result.service} down")
    for report in reports:
        if isinstance(report, QueueFailure):
            items.append(f"queue {report.queue}: {report.reason}")
            continue
        if report.severity is not Severity.CRITICAL:
            continue
        figures = [*report.stream_figures, *(f for g in report.groups for f in g.figures)]
        critical = [
            f"{f.name.replace('_', ' ')} {f.shown}"
            for f in figures
            if f.severity is Severity.CRITICAL
        ]
        items.append(f"queue {report.queue} critical: {', '.join(critical)}")
    return items


def _status(health: Sequence[HealthResult], reports: Sequence[QueueReport]) -> Status:
    from bot.features.probes import HealthState
    from bot.kernel.severity import Severity

    states = {r.state for r in health}
    worst = max((r.severity for r in reports), default=Severity.OK)
    if HealthState.DOWN in states or worst is Severity.CRITICAL:
        return Status.ERROR
    if HealthState.DEGRADED in states or worst is Severity.WARN:
        return Status.WARNING
    return Status.OK


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else f"{value:.0f}"
