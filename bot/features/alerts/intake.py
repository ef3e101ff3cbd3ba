"""Inbound alerts over HTTP: Prometheus Alertmanager's webhook (``POST /alerts/alertmanager``)
and a small generic JSON format (``POST /alerts``), both described in docs/alerts.md.

A delivery is checked (bearer token, body size, shape), then each of its groups becomes
one message: the alerts of the group that are new (the same fingerprint with the same
status was not posted within ``[alerts] dedup_window``), posted with ``coalesce=True`` and
an outbox key of its own (``alert:<groupKey>:<random>``) to the channels of the first
route whose matchers all match the group's common labels (else ``default_channels``).
Resolved alerts are posted as "RESOLVED" (status ok, ✅) to the same channels under the key
of the message that announced them: an adapter that remembers that message edits it, and a
firing message still waiting in the outbox is replaced.

An alert that is acknowledged (``/ack``) or muted by a silence (``/silence``) is not
posted again; the resolution of an alert whose firing was never posted is not posted
either.

The :class:`~bot.features.alerts.board.AlertBoard` keeps the alerts firing now in the state
database (``/alerts`` lists them on every replica, ``/ack <id>`` acknowledges one), and
:class:`~bot.features.alerts.board.AlertDedup` (Redis with several replicas) decides what is news.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

import orjson
import structlog
from msgspec import Struct
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.delivery.channels import channel_destinations
from bot.delivery.config import ChannelGroup
from bot.delivery.outbox import Outbox
from bot.features.alerts.board import ActiveAlert, AlertBoard, AlertDedup
from bot.features.alerts.config import AlertsSection
from bot.features.alerts.inbox import AlertInbox, Delivery
from bot.kernel.clock import Clock
from bot.kernel.errors import DependencyError
from bot.kernel.failures import report_failure
from bot.kernel.message import Location
from bot.kernel.reply import Button, Reply, Status
from bot.kernel.reply import Field as ReplyField

if TYPE_CHECKING:
    # Starlette loads with the HTTP server: a console run with --no-http takes no alerts.
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from bot.delivery.adapters import AdapterBoard
    from bot.kernel.metrics import Metrics

log = structlog.get_logger("opsbot.alerts")

NOT_CONFIGURED = "alerts are not configured"
_SHOWN_LABELS = 6  # common labels shown under a group's message


# ---------------------------------------------------------------------- payloads


class _Payload(BaseModel):
    # Senders add fields over time (Alertmanager did, v1 to v4): unknown keys are ignored.
    # Built with the first delivery: a bot that takes no webhook never needs them.
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


class AlertmanagerAlert(_Payload):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""


class AlertmanagerWebhook(_Payload):
    """Alertmanager's webhook body, version 4."""

    version: str
    groupKey: str
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    alerts: list[AlertmanagerAlert]


class GenericAlert(_Payload):
    name: str = Field(min_length=1, max_length=200)
    status: Literal["firing", "resolved"] = "firing"
    severity: str = Field(default="warning", max_length=50)
    summary: str = ""
    labels: dict[str, str] = {}
    fingerprint: str | None = None


class GenericDelivery(_Payload):
    alerts: list[GenericAlert]


# ---------------------------------------------------------------------- what the bot keeps


class Alert(Struct, frozen=True):
    """One alert of a delivery, whatever format it came in."""

    fingerprint: str
    status: Literal["firing", "resolved"]
    name: str
    severity: str
    summary: str
    labels: dict[str, str]
    starts_at: datetime | None = None

    @property
    def id(self) -> str:
        return short_id(self.fingerprint)


class AlertGroup(Struct, frozen=True):
    key: str
    labels: dict[str, str]  # the labels every alert of the group has
    alerts: tuple[Alert, ...]


def short_id(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:6]


def fingerprint_of(name: str, labels: dict[str, str]) -> str:
    """A stable fingerprint for an alert its sender gave none: its name and labels."""
    text = json.dumps([name, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- payloads to groups


def groups_from_alertmanager(payload: AlertmanagerWebhook) -> list[AlertGroup]:
    alerts = tuple(
        Alert(
            fingerprint=a.fingerprint or fingerprint_of(a.labels.get("alertname", ""), a.labels),
            status=a.status,
            name=a.labels.get("alertname", "alert"),
            severity=a.labels.get("severity", ""),
            summary=a.annotations.get("summary") or a.annotations.get("description", ""),
            labels=a.labels,
            starts_at=a.startsAt,
        )
        for a in payload.alerts
    )
    common = payload.commonLabels or _common([a.labels for a in alerts])
    return [AlertGroup(payload.groupKey, common, alerts)] if alerts else []


def groups_from_generic(payload: GenericDelivery) -> list[AlertGroup]:
    """One group per alert name, in the order the names first appear."""
    by_name: dict[str, list[Alert]] = {}
    for a in payload.alerts:
        labels = {**a.labels, "alertname": a.name, "severity": a.severity}
        by_name.setdefault(a.name, []).append(
            Alert(
                fingerprint=a.fingerprint or fingerprint_of(a.name, labels),
                status=a.status,
                name=a.name,
                severity=a.severity,
                summary=a.summary,
                labels=labels,
            )
        )
    return [
        AlertGroup(f"generic:{name}", _common([a.labels for a in alerts]), tuple(alerts))
        for name, alerts in by_name.items()
    ]


def _common(label_sets: Sequence[dict[str, str]]) -> dict[str, str]:
    if not label_sets:
        return {}
    first, *rest = label_sets
    return {k: v for k, v in first.items() if all(other.get(k) == v for other in rest)}


# ---------------------------------------------------------------------- posting


class Muter(Protocol):
    """Silences: the one muting alerts with these labels, if any."""

    async def muting(self, labels: Mapping[str, str]) -> object | None: ...


class AlertIntake:
    """Takes deliveries, keeps the :class:`AlertBoard` up to date and posts what is new."""

    def __init__(
        self,
        section: AlertsSection | None,
        *,
        channels: Mapping[str, ChannelGroup],
        board: AlertBoard,
        dedup: AlertDedup,
        outbox: Outbox,
        adapters: AdapterBoard,
        clock: Clock,
        silences: Muter | None = None,
        metrics: Metrics | None = None,
        inbox: AlertInbox | None = None,
    ) -> None:
        self._section = section
        self._channels = channels
        self.board = board
        self._dedup = dedup
        self._outbox = outbox
        self._adapters = adapters
        self._clock = clock
        self._silences = silences
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._inbox = inbox
        self._waiting = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing waits in the inbox
        self._idle.set()
        self._processor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()  # stop() asked: finish the delivery in hand

    def channels_for(self, labels: Mapping[str, str]) -> list[str]:
        """The first route whose matchers all equal the labels, else the defaults."""
        section = self._section
        if section is None:
            return []
        for route in section.routes:
            if all(labels.get(k) == v for k, v in route.matchers.items()):
                return list(route.channels)
        return list(section.default_channels)

    async def muted(self, labels: Mapping[str, str]) -> bool:
        if self._silences is None:
            return False
        return await self._silences.muting(labels) is not None

    # ------------------------------------------------------------------ the inbox

    @property
    def waiting(self) -> int:
        """Deliveries taken (202) and not processed yet."""
        return self._waiting

    def full(self) -> bool:
        section = self._section
        return section is not None and self._waiting >= section.max_queued_payloads

    async def enqueue(self, source: str, body: bytes, alerts: int) -> None:
        """Make a validated delivery durable for processing after the 202. Raises
        DependencyError when it cannot be written (then the sender must retry)."""
        if self._inbox is None:
            raise DependencyError("alert inbox", "not configured")
        try:
            await self._inbox.put(source, body, alerts, self._clock.now())
        except OSError as exc:
            raise DependencyError("alert inbox", f"{self._inbox.path}: {exc.strerror}") from exc
        self._waiting += 1
        self._idle.clear()
        self._wake.set()

    async def prepare(self) -> None:
        """Open the inbox (what an earlier run left is processed first), before :meth:`start`."""
        if self._inbox is not None:
            self._waiting = await self._inbox.prepare()
            if self._waiting:
                self._idle.clear()
                log.info("alerts.inbox_left", deliveries=self._waiting)

    def start(self) -> None:
        """Process the inbox in the background: what an earlier run left first."""
        if self._inbox is not None and self._processor is None:
            self._processor = asyncio.create_task(self._process_inbox(), name="alert-inbox")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop processing; what is left stays in the inbox for the next start. The
        delivery being processed is finished first (within ``grace``): cut off inside its
        database writes, it would hold up the writes that follow at shutdown, and be
        processed again after the restart."""
        task, self._processor = self._processor, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            _, late = await asyncio.wait({task}, timeout=grace)
            for running in late:
                running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._stopping.clear()

    async def drained(self) -> None:
        """Return once every delivery taken so far is processed (tests, benchmarks)."""
        await self._idle.wait()

    async def _process_inbox(self) -> None:
        assert self._inbox is not None
        inbox = self._inbox
        while not self._stopping.is_set():
            # Cleared before the read: a delivery written after it sets it again.
            self._wake.clear()
            deliveries: list[Delivery] = []
            processed: list[Delivery] = []
            try:
                deliveries = await inbox.take(_INBOX_BATCH)
                for delivery in deliveries:
                    if self._stopping.is_set():
                        inbox.rewind(delivery)  # the rest waits for the next start
                        break
                    await self._process(delivery)
                    processed.append(delivery)
                    self._waiting = max(0, self._waiting - 1)
                await inbox.done(processed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The state database or the journal failed: what was not processed is
                # taken again, in order, after a pause.
                report_failure("alert-inbox", exc)
                if len(processed) < len(deliveries):
                    inbox.rewind(deliveries[len(processed)])
                with contextlib.suppress(Exception):
                    await inbox.done(processed)
                await asyncio.sleep(1.0)
                continue
            if deliveries or self._wake.is_set():
                continue
            self._waiting = 0  # nothing is left: a count that drifted is right again
            self._idle.set()
            await self._wake.wait()

    async def _process(self, delivery: Delivery) -> None:
        model, to_groups = _FORMATS[delivery.source]
        try:
            groups = to_groups(_parse(delivery.body, model))
        except BadRequest as exc:  # validated before it was stored: not expected
            log.error("alerts.inbox_unreadable", error=exc.message)
            return
        await self.receive(groups)
        lag = (self._clock.now() - delivery.received_at).total_seconds()
        log.info("alerts.processed", alerts=delivery.alerts, lag_s=round(lag, 3))

    # ------------------------------------------------------------------ processing

    async def receive(self, groups: Sequence[AlertGroup]) -> None:
        async with self._lock:
            now = self._clock.now()
            for group in groups:
                firing: list[Alert] = []
                resolved: dict[str | None, list[Alert]] = {}  # by the message announcing them
                for alert, post, known in await self._news(group, now):
                    if not post:
                        continue
                    if alert.status == "firing":
                        firing.append(alert)
                    else:
                        resolved.setdefault(known.post_key if known else None, []).append(alert)
                if not firing and not resolved:
                    log.debug("alerts.nothing_new", group=group.key)
                    continue
                await self._post_group(group, firing, resolved, now)
            await self._trim()

    async def _trim(self) -> None:
        section = self._section
        if section is None:
            return
        dropped = await self.board.trim(section.max_board_alerts)
        if dropped:
            self.limit_hit("board", dropped)
            log.warning(
                "alerts.board_full",
                dropped=dropped,
                kept=section.max_board_alerts,
                hint="the oldest alerts were dropped from the board ([alerts] max_board_alerts)",
            )

    def limit_hit(self, limit: str, count: int = 1) -> None:
        """``opsbot_alert_limits_total{limit}``: a bound was reached."""
        if self._metrics is not None:
            self._metrics.alert_limits.labels(limit).inc(count)

    async def _news(
        self, group: AlertGroup, now: datetime
    ) -> list[tuple[Alert, bool, ActiveAlert | None]]:
        """Record the group's alerts on the board (one transaction for its firing ones,
        one for its resolved ones); for each, whether it should be posted, with what the
        board knew of it."""
        firing = [a for a in group.alerts if a.status == "firing"]
        rows = await self.board.fire_many(
            [
                ActiveAlert(
                    id=alert.id,
                    fingerprint=alert.fingerprint,
                    source="inbound",
                    group_key=group.key,
                    name=alert.name,
                    severity=alert.severity,
                    summary=alert.summary,
                    labels=alert.labels,
                    since=alert.starts_at or now,
                )
                for alert in firing
            ]
        )
        fired = {row.fingerprint: row for row in rows}
        gone = await self.board.resolve_many(
            [a.fingerprint for a in group.alerts if a.status == "resolved"]
        )
        out: list[tuple[Alert, bool, ActiveAlert | None]] = []
        for alert in group.alerts:
            self.count("inbound", "received", alert.status)
            if alert.status == "resolved":
                known = gone.get(alert.fingerprint)
                if known is not None and known.last_posted_at is None:
                    out.append((alert, False, known))  # its firing was never posted (silenced)
                    continue
            else:
                known = fired[alert.fingerprint]
                if known.acked_by is not None:
                    out.append((alert, False, known))  # acknowledged: no more reminders
                    continue
            labels = alert.labels if alert.status == "firing" else None
            news = await self.newsworthy(alert.fingerprint, alert.status, now, labels=labels)
            out.append((alert, news, known))
        return out

    async def newsworthy(
        self,
        fingerprint: str,
        status: str,
        now: datetime,
        *,
        labels: Mapping[str, str] | None = None,
        source: str = "inbound",
    ) -> bool:
        """True (and remembered) when posting ``status`` for this alert is news: no silence
        mutes ``labels`` (not asked when None) and the same status was not posted within
        the dedup window. Silences are asked first: a muted alert was not posted, so it
        must still be news when the silence ends."""
        if labels is not None and await self.muted(labels):
            self.count(source, "silenced", status)
            log.info("alerts.silenced", fingerprint=fingerprint, status=status, source=source)
            return False
        if not await self._dedup.fresh(fingerprint, status, now):
            log.debug("alerts.duplicate", fingerprint=fingerprint, status=status, source=source)
            return False
        return True

    async def _post_group(
        self,
        group: AlertGroup,
        firing: Sequence[Alert],
        resolved: Mapping[str | None, Sequence[Alert]],
        now: datetime,
    ) -> None:
        channels = self.channels_for(group.labels)
        replies: list[tuple[Reply, str | None]] = []
        # Each announcement has its own key: a resolution edits the message that announced
        # those alerts (or replaces it while it still waits in the outbox).
        announce_key = f"alert:{group.key}:{secrets.token_hex(4)}"
        if firing:
            replies.append((_firing_reply(group, firing), announce_key))
        still = await self.board.in_group(group.key) if resolved else []
        for key, alerts in resolved.items():
            same_message = [a for a in still if key is not None and a.post_key == key]
            replies.append((_resolved_reply(group, alerts, same_message or still), key))
        if not await self.post_to(channels, replies, what=group.key):
            return
        if firing:
            await self.board.posted([a.fingerprint for a in firing], now, key=announce_key)
        for alert in (*firing, *(a for alerts in resolved.values() for a in alerts)):
            self.count("inbound", "posted", alert.status)
        log.info(
            "alerts.posted",
            group=group.key,
            firing=len(firing),
            resolved=sum(len(a) for a in resolved.values()),
            channels=channels,
        )

    async def post_to(
        self, channels: Sequence[str], replies: Sequence[tuple[Reply, str | None]], *, what: str
    ) -> bool:
        """Queue each reply (with its outbox key) for every destination of the channels
        whose adapter runs here; when none does, for all of them: the outbox keeps them
        (bounded, expiring) until an adapter that can post them attaches. False when the
        channels have no destination at all."""
        every = channel_destinations(self._channels, channels)
        targets = [d for d in every if self._adapters.serves(d.platform)]
        if not targets:
            if not every:
                log.warning("alerts.no_destination", alert=what, channels=list(channels))
                return False
            log.warning(
                "alerts.kept_for_an_adapter",
                alert=what,
                channels=list(channels),
                platforms=sorted({d.platform for d in every}),
            )
            targets = every
        for reply, reply_key in replies:
            for destination in targets:
                await self._post(destination, reply, reply_key)
        return True

    async def _post(self, destination: Location, reply: Reply, key: str | None) -> None:
        if not await self._outbox.post(destination, reply, key=key, coalesce=True):
            log.error(
                "alerts.post_failed",
                platform=destination.platform,
                channel=destination.channel_id,
                title=reply.title,
            )

    def count(self, source: str, event: str, status: str) -> None:
        """``opsbot_alert_events_total``: alerts received, posted, silenced."""
        if self._metrics is not None:
            self._metrics.alert_events.labels(source, event, status).inc()


def _firing_reply(group: AlertGroup, alerts: Sequence[Alert]) -> Reply:
    critical = any(a.severity.lower() in ("critical", "page") for a in alerts)
    apart = _telling_apart(group, alerts)
    return Reply(
        title=f"FIRING ({len(alerts)}): {_names(alerts)}",
        status=Status.ERROR if critical else Status.WARNING,
        text="\n".join(_line(a, apart) for a in alerts),
        fields=_label_fields(group),
        buttons=alert_buttons(alerts[0].id, whole_group=len(alerts) > 1),
    )


SILENCE_CHOICES = ("1h", "4h", "24h")


def alert_buttons(alert_id: str, *, whole_group: bool = False) -> tuple[Button, ...]:
    """Ack and Silence 1h / 4h / 24h for one alert, or for its whole group (the firing
    alerts posted together with ``alert_id``). The buttons hold a short command, never
    the labels: the alert's fingerprint and its group live on the board (the server),
    and Telegram's callback data is 64 bytes."""
    target = f"group:{alert_id}" if whole_group else alert_id
    ack = Button("Ack all" if whole_group else "Ack", f"/ack {target}", "primary")
    what = "group " if whole_group else ""
    return (
        ack,
        *(Button(f"Silence {what}{d}", f"/silence {target} {d}") for d in SILENCE_CHOICES),
    )


def _resolved_reply(
    group: AlertGroup, alerts: Sequence[Alert], still: Sequence[ActiveAlert]
) -> Reply:
    lines = [_line(a) for a in alerts]
    if still:
        lines.append("still firing: " + ", ".join(f"{a.name} ({a.id})" for a in still))
    return Reply(
        title=f"RESOLVED ({len(alerts)}): {_names(alerts)}",
        status=Status.OK,
        text="\n".join(lines),
        fields=_label_fields(group),
    )


def _names(alerts: Sequence[Alert]) -> str:
    return ", ".join(dict.fromkeys(a.name for a in alerts))


def _line(alert: Alert, apart: Sequence[str] = ()) -> str:
    severity = f"[{alert.severity}] " if alert.severity else ""
    summary = f": {alert.summary}" if alert.summary else ""
    shown = [f"{k}={alert.labels[k]}" for k in apart if k in alert.labels]
    labels = f" · {', '.join(shown)}" if shown else ""
    return f"• {severity}{alert.name}{summary} (id {alert.id}){labels}"


# Labels that usually tell a group's alerts apart, shown first.
_APART_FIRST = ("instance", "job", "pod", "namespace", "service")
_APART_SHOWN = 3


def _telling_apart(group: AlertGroup, alerts: Sequence[Alert]) -> list[str]:
    """The labels whose values differ between the group's alerts (instance, job, ...):
    without them, three lines of "HighCPU" read as one alert three times."""
    if len(alerts) < 2:
        return []
    names = {k for a in alerts for k in a.labels} - set(group.labels) - {"alertname", "severity"}
    differing = [k for k in names if len({a.labels.get(k) for a in alerts}) > 1]
    differing.sort(key=lambda k: (_APART_FIRST.index(k) if k in _APART_FIRST else 99, k))
    return differing[:_APART_SHOWN]


def _label_fields(group: AlertGroup) -> tuple[ReplyField, ...]:
    shown = {k: v for k, v in group.labels.items() if k not in ("alertname", "severity")}
    if not shown:
        return ()
    text = ", ".join(f"{k}={v}" for k, v in list(shown.items())[:_SHOWN_LABELS])
    return (ReplyField("labels", text),)


# ---------------------------------------------------------------------- HTTP


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def alert_routes(intake: AlertIntake, section: AlertsSection | None) -> list[Route]:
    """``POST /alerts/alertmanager`` and ``POST /alerts`` for the bot's HTTP server."""
    from starlette.routing import Route

    async def alertmanager(request: Request) -> Response:
        return await _accept(request, section, intake, "alertmanager")

    async def generic(request: Request) -> Response:
        return await _accept(request, section, intake, "generic")

    return [
        Route("/alerts/alertmanager", alertmanager, methods=["POST"]),
        Route("/alerts", generic, methods=["POST"]),
    ]


def _am_groups(payload: BaseModel) -> list[AlertGroup]:
    assert isinstance(payload, AlertmanagerWebhook)
    return groups_from_alertmanager(payload)


def _generic_groups(payload: BaseModel) -> list[AlertGroup]:
    assert isinstance(payload, GenericDelivery)
    return groups_from_generic(payload)


async def _accept(
    request: Request, section: AlertsSection | None, intake: AlertIntake, source: str
) -> Response:
    model = _FORMATS[source][0]
    if section is None or section.token is None:
        return _error(503, NOT_CONFIGURED)
    if not _authorized(request, section.token.get_secret_value()):
        return _error(401, "a valid 'Authorization: Bearer <token>' header is required")
    try:
        body = await _read_body(request, section.max_body_bytes)
        payload = _parse(body, model)
    except BadRequest as exc:
        if exc.status == 413:
            intake.limit_hit("body")
        return _error(exc.status, exc.message)
    accepted = len(getattr(payload, "alerts", ()))
    if accepted > section.max_alerts_per_payload:
        intake.limit_hit("payload")
        return _error(
            413,
            f"{accepted} alerts in one delivery; at most {section.max_alerts_per_payload} "
            "([alerts] max_alerts_per_payload)",
        )
    if intake.full():
        intake.limit_hit("queue")
        log.warning("alerts.inbox_full", waiting=intake.waiting)
        return _error(
            429,
            f"{intake.waiting} deliveries are waiting to be processed; send again shortly",
            retry_after=5,
        )
    try:
        # Written before the answer, processed after it: a crash after the 202 loses nothing.
        await intake.enqueue(source, body, accepted)
    except DependencyError as exc:
        log.error("alerts.inbox_unwritable", error=str(exc))
        return _error(503, f"cannot take alerts now: {exc}; send again", retry_after=10)
    log.info("alerts.accepted", path=request.url.path, alerts=accepted)
    from starlette.responses import JSONResponse

    return JSONResponse({"accepted": accepted}, status_code=202)


_FORMATS: dict[str, tuple[type[BaseModel], Callable[[BaseModel], list[AlertGroup]]]] = {
    "alertmanager": (AlertmanagerWebhook, _am_groups),
    "generic": (GenericDelivery, _generic_groups),
}
_INBOX_BATCH = 20  # deliveries read per query


def _authorized(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = BadRequest(413, f"the body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, model: type[BaseModel]) -> BaseModel:
    try:
        # orjson: not UTF-8, a lone surrogate, nesting past 1,024 levels or a number no
        # double can hold are each one JSONDecodeError (400), never an error further on.
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"the body is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(400, first_problem(exc)) from exc


def first_problem(exc: ValidationError) -> str:
    """One line naming the first bad field: "alerts[0].labels: field required"."""
    error = exc.errors(include_url=False)[0]
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = "field required" if error["type"] == "missing" else error["msg"]
    return f"{path or '(body)'}: {message}"


def _error(status: int, message: str, *, retry_after: int | None = None) -> Response:
    from starlette.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)
