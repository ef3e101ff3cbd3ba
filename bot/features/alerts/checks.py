"""Checks: rules the bot evaluates on a schedule (``[[checks]]``) and turns into alerts.

Each run measures one thing (a service's health, a number in an HTTP endpoint's JSON, a
queue's length, its workers, how long its oldest pending entry waits, a TCP connect, a
Redis INFO field, a PostgreSQL query, a Prometheus query, a metric of a text endpoint)
and judges it ok, warn or critical against the check's levels. A check's life:

* ``for`` consecutive bad runs fire it: a message to its channels (or, without channels,
  wherever its labels route, as for inbound alerts), under an outbox key of its own;
* a change of level while firing (warn to critical, or back) is posted as a new message;
* while it fires, unacknowledged, a reminder goes out every ``repeat``; ``/ack`` stops them;
* the first good run resolves it: the message that announced it is edited to "RESOLVED"
  (by an adapter that remembers it; else a new message says so);
* a silence whose matchers match the check's labels keeps it from being posted, and a
  firing that was never posted is not resolved in chat either;
* the same state is never posted twice within the dedup window (``[alerts] dedup_window``).

Where it stands lives on the :class:`~bot.features.alerts.board.AlertBoard` (the state database),
read at every run: a replica that becomes leader continues where the last one stopped, and
so does the count of consecutive bad runs, with several replicas
(``bot.features.alerts.streaks``). The scheduler runs checks on the leader only.

Labels of a check's alert: ``alertname`` (the check's name), ``severity`` (``warning`` or
``critical``), ``check_kind``, and the check's own ``labels``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

import structlog
from msgspec import Struct

from bot.cluster.scheduler import Every, Scheduler
from bot.features.alerts.board import ActiveAlert, AlertBoard
from bot.features.alerts.check_config import TIMED, CheckConfig, CheckKind, OnError
from bot.features.alerts.intake import alert_buttons, short_id
from bot.features.alerts.streaks import LocalStreaks
from bot.features.probes.config import Service
from bot.features.queues.config import QueueConfig
from bot.kernel.clock import Clock
from bot.kernel.durations import format_duration
from bot.kernel.reply import Field, Reply, Status
from bot.kernel.severity import Severity, above, below

if TYPE_CHECKING:
    from bot.cluster.http_clients import HttpClients
    from bot.cluster.redis_clients import RedisClients
    from bot.features.alerts.intake import AlertIntake
    from bot.kernel.metrics import Metrics

log = structlog.get_logger("opsbot.checks")

SOURCE = "check"


class Reading(Struct, frozen=True):
    """One run's measurement: its level and one line saying why."""

    level: Severity
    detail: str
    value: float | None = None
    failed: bool = False  # could not be measured (``on_error`` decides what it counts as)


class CheckFailed(Exception):
    """The value could not be read; the message is one line for the channel."""


# ------------------------------------------------------------------ measuring


class Measurer:
    """Reads what a check looks at, with the bot's shared HTTP and Redis clients."""

    def __init__(
        self,
        services: Sequence[Service],
        queues: Sequence[QueueConfig],
        http: HttpClients,
        redis: RedisClients,
    ) -> None:
        self._services = {service.name: service for service in services}
        self._queues = {queue.name: queue for queue in queues}
        self._http = http
        self._redis = redis

    async def read(self, check: CheckConfig) -> Reading:
        from bot.features.probes.readers import ProbeFailed

        try:
            if check.kind is CheckKind.HEALTH:
                return await self._health(check)
            if check.kind in TIMED:
                return await self._reach(check)
            value = await self._value(check)
        except CheckFailed as exc:
            return Reading(Severity.CRITICAL, str(exc), failed=True)
        except ProbeFailed as exc:
            return Reading(Severity.CRITICAL, str(exc), failed=True)
        return judge(check, value)

    async def _reach(self, check: CheckConfig) -> Reading:
        """tcp, redis, postgres: a number read (INFO field, query), or the time it took."""
        from bot.features.probes.readers import postgres_value, redis_reading, tcp_connect

        timeout = check.timeout.total_seconds()
        if check.kind is CheckKind.TCP:
            assert check.host is not None
            assert check.port is not None
            timed = await tcp_connect(check.host, check.port, timeout)
        elif check.kind is CheckKind.REDIS:
            assert check.redis_url is not None
            try:
                client = self._redis.client(check.redis_url, timeout=timeout)
            except ValueError as exc:  # redis-py parses the URL here; its text may hold it
                raise CheckFailed("redis_url is not a valid Redis URL") from exc
            timed = await redis_reading(client, check.redis_url, check.field, timeout)
        else:
            assert check.database_url is not None
            timed = await postgres_value(check.database_url, check.query or "SELECT 1", timeout)
        value = timed.value if timed.value is not None else timed.latency_ms
        if check.judged:
            return judge(check, value)
        return Reading(Severity.OK, f"{_figure_name(check)} {value:.1f}", value)

    async def _health(self, check: CheckConfig) -> Reading:
        from bot.features.probes import HealthState, probe_service

        service = self._services.get(check.service or "")
        assert service is not None  # the config's references are checked at load
        result = await probe_service(
            service,
            self._http,
            self._redis,
            request_id=f"check-{secrets.token_hex(5)}",
            timeout_s=check.timeout.total_seconds(),
        )
        level = {
            HealthState.UP: Severity.OK,
            HealthState.DEGRADED: Severity.WARN,
            HealthState.DOWN: Severity.CRITICAL,
        }[result.state]
        why = "; ".join(filter(None, (result.detail, *result.failing_components)))
        return Reading(level, f"{service.name} {result.state.value}" + (f" ({why})" if why else ""))

    async def _value(self, check: CheckConfig) -> float:
        if check.kind is CheckKind.HTTP_JSON:
            return await self._json_field(check)
        if check.kind in (CheckKind.PROMETHEUS, CheckKind.METRICS):
            return await self._scraped(check)
        return await self._queue_figure(check)

    async def _scraped(self, check: CheckConfig) -> float:
        from bot.features.probes.readers import metrics_sample, prometheus_value

        assert check.url is not None
        request_id = f"check-{secrets.token_hex(5)}"
        timeout = check.timeout.total_seconds()
        if check.kind is CheckKind.PROMETHEUS:
            assert check.query is not None
            timed = await prometheus_value(
                self._http.client(),
                str(check.url),
                check.query,
                check.http_request(),
                request_id=request_id,
                timeout_s=timeout,
            )
        else:
            assert check.metric is not None
            timed = await metrics_sample(
                self._http.client(),
                str(check.url),
                check.metric,
                check.metric_labels,
                check.http_request(),
                request_id=request_id,
                timeout_s=timeout,
            )
        assert timed.value is not None
        return timed.value

    async def _json_field(self, check: CheckConfig) -> float:
        from bot.features.probes.health import describe_failure, fetch, parse_json

        assert check.url is not None
        assert check.field is not None
        timeout = check.timeout.total_seconds()
        try:
            fetched = await fetch(
                self._http.client(),
                str(check.url),
                request_id=f"check-{secrets.token_hex(5)}",
                timeout_s=timeout,
                read_body=True,
                request=check.http_request(),
            )
        except Exception as exc:
            raise CheckFailed(describe_failure(exc, timeout)) from exc
        if not check.http_request().expects(fetched.status):
            raise CheckFailed(f"the endpoint answered HTTP {fetched.status}")
        ok, document = parse_json(fetched.body)
        if not ok:
            raise CheckFailed("the endpoint's answer is not JSON")
        return number_at(document, check.field)

    async def _queue_figure(self, check: CheckConfig) -> float:
        from bot.features.queues.inspect import QueueFailure, inspect_queue

        queue = self._queues.get(check.queue or "")
        assert queue is not None  # the config's references are checked at load
        report = await inspect_queue(self._redis, queue)
        if isinstance(report, QueueFailure):
            raise CheckFailed(f"queue {report.queue}: {report.reason}")
        if check.kind is CheckKind.QUEUE_LENGTH:
            return float(report.length.value or 0)
        if check.kind is CheckKind.WORKERS:
            return float(sum(g.workers.value or 0 for g in report.groups))
        return float(max((g.oldest_pending_idle.value or 0 for g in report.groups), default=0))


def number_at(document: object, path: str) -> float:
    """The number at a dotted ``path`` of a JSON document; CheckFailed naming what is wrong."""
    node = document
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise CheckFailed(f"field '{'.'.join(walked)}' is missing from the answer")
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise CheckFailed(f"field '{path}' is not a number ({type(node).__name__})")
    return float(node)


def judge(check: CheckConfig, value: float) -> Reading:
    """Above (the default): warn past ``warn``, critical past ``critical``. Below (workers,
    or ``direction = "below"``): warn under ``warn``, critical at or under ``critical``."""
    assert check.warn is not None
    assert check.critical is not None
    name = _figure_name(check)
    if check.falls_bad:
        level = below(value, check.warn, check.critical)
        levels = f"warn below {check.warn:g}, critical at {check.critical:g} or below"
    else:
        level = above(value, check.warn, check.critical)
        levels = f"warn above {check.warn:g}, critical above {check.critical:g}"
    return Reading(level, f"{name} {value:g} ({levels})", value)


def _figure_name(check: CheckConfig) -> str:
    if check.kind is CheckKind.HTTP_JSON:
        return check.field or "value"
    if check.kind is CheckKind.TCP:
        return f"{check.host}:{check.port} connect (ms)"
    if check.kind is CheckKind.REDIS:
        return f"Redis INFO {check.field}" if check.field else "Redis PING (ms)"
    if check.kind is CheckKind.POSTGRES:
        return "query value" if check.query else "PostgreSQL SELECT 1 (ms)"
    if check.kind is CheckKind.PROMETHEUS:
        return clean_query(check.query or "")
    if check.kind is CheckKind.METRICS:
        pairs = ",".join(f'{k}="{v}"' for k, v in check.metric_labels.items())
        return f"{check.metric}{{{pairs}}}" if pairs else str(check.metric)
    return {
        CheckKind.QUEUE_LENGTH: f"queue {check.queue} length",
        CheckKind.WORKERS: f"queue {check.queue} workers",
        CheckKind.PENDING_IDLE: f"queue {check.queue} oldest pending idle (s)",
    }.get(check.kind, check.name)


def clean_query(query: str, limit: int = 80) -> str:
    """A PromQL query on one line, cut to ``limit``: it names the figure in the channel."""
    flat = " ".join(query.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ------------------------------------------------------------------ the state machine


class CheckView(Struct, frozen=True):
    """What ``/checks`` shows of one check."""

    name: str
    kind: str
    level: Severity
    detail: str
    last_run: datetime | None
    next_run: datetime | None
    failing_runs: int
    needed_runs: int


class Checks:
    def __init__(
        self,
        checks: Sequence[CheckConfig],
        *,
        scheduler: Scheduler,
        board: AlertBoard,
        intake: AlertIntake,
        measurer: Measurer,
        metrics: Metrics,
        clock: Clock,
        streaks: LocalStreaks | None = None,
    ) -> None:
        """Adds one scheduler job per check (``check:<name>``); no I/O. ``streaks``: where
        the counts of bad runs live (shared by replicas: ``RedisStreaks``)."""
        self._checks = {check.name: check for check in checks}
        self._scheduler = scheduler
        self._board = board
        self._intake = intake
        self._measurer = measurer
        self._metrics = metrics
        self._clock = clock
        self._streaks = streaks if streaks is not None else LocalStreaks()
        self._last: dict[str, tuple[datetime, Reading]] = {}
        self._locks = {name: asyncio.Lock() for name in self._checks}
        for check in checks:
            scheduler.add(
                job_name(check.name), partial(self.run, check.name), Every(check.interval)
            )

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    async def views(self) -> list[CheckView]:
        firing = {a.fingerprint: a for a in await self._board.firing() if a.source == SOURCE}
        views = []
        for name, check in self._checks.items():
            known = firing.get(fingerprint(name))
            last = self._last.get(name)
            views.append(
                CheckView(
                    name=name,
                    kind=check.kind.value,
                    level=_level_of(known),
                    detail=last[1].detail if last else (known.summary if known else ""),
                    last_run=last[0] if last else None,
                    next_run=self._scheduler.next_run(job_name(name)),
                    failing_runs=self._streaks.last(name),
                    needed_runs=check.for_,
                )
            )
        return views

    async def run(self, name: str) -> Reading | None:
        """Measure the check and act on it; the reading, or None when it was ignored."""
        check = self._checks[name]
        async with self._locks[name]:
            reading = await self._measurer.read(check)
            now = self._clock.now()
            self._last[name] = (now, reading)
            if reading.failed:
                log.warning("check.unreadable", check=name, detail=reading.detail)
                if check.on_error is OnError.IGNORE:
                    return None
                if check.on_error is OnError.WARN:
                    reading = Reading(Severity.WARN, reading.detail, failed=True)
            known = await self._board.get(fingerprint(name))
            level = _level_of(known)
            state = level
            if reading.level is Severity.OK:
                await self._streaks.good(name)
                if known is not None:
                    await self._resolve(check, known, reading, now)
                state = Severity.OK
            else:
                bad_runs = await self._streaks.bad(name, check.interval)
                if known is not None and reading.level is level:
                    await self._remind(check, known, reading, now)
                elif bad_runs >= check.for_ or known is not None:
                    await self._fire(check, known, reading, now)
                    state = reading.level
            self._metrics.check_state.labels(name).set(state)
            log.debug("check.ran", check=name, level=reading.level.name, detail=reading.detail)
            return reading

    # -------------------------------------------------------------- transitions

    async def _fire(
        self, check: CheckConfig, known: ActiveAlert | None, reading: Reading, now: datetime
    ) -> None:
        """Fire, or move a firing check to another level: either way a new message."""
        labels = self.labels(check, reading.level)
        alert = await self._board.fire(
            ActiveAlert(
                id=short_id(fingerprint(check.name)),
                fingerprint=fingerprint(check.name),
                source=SOURCE,
                group_key=fingerprint(check.name),
                name=check.name,
                severity=reading.level.label,
                summary=reading.detail,
                labels=labels,
                since=known.since if known is not None else now,
            )
        )
        was = _level_of(known)
        log.info("check.fired", check=check.name, level=reading.level.name, was=was.name)
        status = reading.level.label
        if not await self._intake.newsworthy(
            alert.fingerprint, status, now, labels=labels, source=SOURCE
        ):
            return
        if was is Severity.OK:
            title = f"{reading.level.label.upper()}: {check.name}"
        else:
            title = f"{reading.level.label.upper()} (was {was.label}): {check.name}"
        key = f"check:{check.name}:{secrets.token_hex(4)}"
        reply = _alert_reply(title, check, alert, reading, now)
        if await self._post(check, labels, reply, key, status):
            await self._board.posted([alert.fingerprint], now, key=key)

    async def _remind(
        self, check: CheckConfig, known: ActiveAlert, reading: Reading, now: datetime
    ) -> None:
        if known.acked_by is not None:
            return
        labels, status = self.labels(check, reading.level), reading.level.label
        if known.last_posted_at is None:
            # Never announced (it was silenced, or the post failed): when it is news, this
            # is its announcement, not a reminder of one nobody saw.
            if not await self._intake.newsworthy(
                known.fingerprint, status, now, labels=labels, source=SOURCE
            ):
                return
            key = f"check:{check.name}:{secrets.token_hex(4)}"
            first = _alert_reply(f"{status.upper()}: {check.name}", check, known, reading, now)
            if await self._post(check, labels, first, key, status):
                await self._board.posted([known.fingerprint], now, key=key)
            return
        if now - known.last_posted_at < check.repeat or await self._intake.muted(labels):
            return
        title = f"STILL {status.upper()}: {check.name}"
        reply = _alert_reply(title, check, known, reading, now)
        if await self._post(check, labels, reply, None, status):
            # A reminder keeps the announcement's key: the resolution edits that message.
            await self._board.posted([known.fingerprint], now)

    async def _resolve(
        self, check: CheckConfig, known: ActiveAlert, reading: Reading, now: datetime
    ) -> None:
        await self._board.resolve(known.fingerprint)
        log.info("check.resolved", check=check.name, was=known.severity)
        if known.last_posted_at is None:
            return  # never announced: nothing to take back
        if not await self._intake.newsworthy(known.fingerprint, "resolved", now, source=SOURCE):
            return
        lasted = format_duration(max(now - known.since, now - now))
        reply = Reply(
            title=f"RESOLVED: {check.name}",
            status=Status.OK,
            text=f"was {known.severity} for {lasted}; now {reading.detail}",
            fields=(Field("id", known.id),),
        )
        await self._post(check, known.labels, reply, known.post_key, "resolved")

    async def forget_removed(self) -> int:
        """Resolve the alerts of checks no longer in the config (removed or renamed):
        nothing would ever run them again, so they would fire forever. A resolution is
        posted where an announcement was. Returns how many were resolved."""
        configured = {fingerprint(name) for name in self._checks}
        gone = [
            a
            for a in await self._board.firing()
            if a.source == SOURCE and a.fingerprint not in configured
        ]
        now = self._clock.now()
        for alert in gone:
            await self._board.resolve(alert.fingerprint)
            log.info("check.removed_resolved", check=alert.name, was=alert.severity)
            if alert.last_posted_at is None or not await self._intake.newsworthy(
                alert.fingerprint, "resolved", now, source=SOURCE
            ):
                continue
            reply = Reply(
                title=f"RESOLVED: {alert.name}",
                status=Status.OK,
                text=f"was {alert.severity}; the check is no longer configured",
                fields=(Field("id", alert.id),),
            )
            await self._intake.post_to(
                self._intake.channels_for(alert.labels),
                [(reply, alert.post_key)],
                what=alert.name,
            )
        return len(gone)

    async def _post(
        self,
        check: CheckConfig,
        labels: Mapping[str, str],
        reply: Reply,
        key: str | None,
        status: str,
    ) -> bool:
        channels = list(check.channels) or self._intake.channels_for(labels)
        await self._scheduler.confirm_leadership()
        posted = await self._intake.post_to(channels, [(reply, key)], what=check.name)
        if posted:
            self._intake.count(SOURCE, "posted", status)
        return posted

    def labels(self, check: CheckConfig, level: Severity) -> dict[str, str]:
        return {
            **check.labels,
            "alertname": check.name,
            "severity": level.label,
            "check_kind": check.kind.value,
        }


def job_name(check: str) -> str:
    return f"check:{check}"


def fingerprint(check: str) -> str:
    return f"check:{check}"


def _level_of(known: ActiveAlert | None) -> Severity:
    if known is None:
        return Severity.OK
    return Severity.from_label(known.severity)


def _alert_reply(
    title: str, check: CheckConfig, alert: ActiveAlert, reading: Reading, now: datetime
) -> Reply:
    fields: list[Field] = [Field("id", alert.id)]
    if alert.since < now:
        fields.append(Field("firing for", format_duration(now - alert.since)))
    shown = {k: v for k, v in check.labels.items()}
    if shown:
        fields.append(Field("labels", ", ".join(f"{k}={v}" for k, v in shown.items())))
    text = reading.detail if not check.summary else f"{check.summary}\n{reading.detail}"
    return Reply(
        title=title,
        status=Status.ERROR if reading.level is Severity.CRITICAL else Status.WARNING,
        text=f"{text}\n/ack {alert.id} stops the reminders.",
        fields=tuple(fields),
        buttons=alert_buttons(alert.id),
    )


__all__: Sequence[str] = ["CheckView", "Checks", "Measurer", "Reading", "judge"]
