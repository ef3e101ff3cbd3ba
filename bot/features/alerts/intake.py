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
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.delivery.channels import channel_destinations
from bot.delivery.config import ChannelGroup
from bot.delivery.outbox import Outbox
from bot.features.alerts.board import ActiveAlert, AlertBoard, AlertDedup
from bot.features.alerts.config import AlertsSection
from bot.kernel.clock import Clock
from bot.kernel.message import Location
from bot.kernel.reply import Field as ReplyField
from bot.kernel.reply import Reply, Status

if TYPE_CHECKING:
    from bot.delivery.adapters import AdapterBoard
    from bot.kernel.metrics import Metrics

log = structlog.get_logger("opsbot.alerts")

NOT_CONFIGURED = "alerts are not configured"
_SHOWN_LABELS = 6  # common labels shown under a group's message


# ---------------------------------------------------------------------- payloads


class _Payload(BaseModel):
    # Senders add fields over time (Alertmanager did, v1 to v4): unknown keys are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)


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


@dataclass(frozen=True, slots=True)
class Alert:
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


@dataclass(frozen=True, slots=True)
class AlertGroup:
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

    async def receive(self, groups: Sequence[AlertGroup]) -> None:
        async with self._lock:
            now = self._clock.now()
            for group in groups:
                firing: list[Alert] = []
                resolved: dict[str | None, list[Alert]] = {}  # by the message announcing them
                for alert in group.alerts:
                    post, known = await self._news(group, alert, now)
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

    async def _news(
        self, group: AlertGroup, alert: Alert, now: datetime
    ) -> tuple[bool, ActiveAlert | None]:
        """Record the alert on the board; True when it should be posted, with what the
        board knew of it."""
        self.count("inbound", "received", alert.status)
        if alert.status == "resolved":
            known = await self.board.resolve(alert.fingerprint)
            if known is not None and known.last_posted_at is None:
                return False, known  # its firing was never posted (silenced): nothing to say
        else:
            known = await self.board.fire(
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
            )
            if known.acked_by is not None:
                return False, known  # acknowledged: someone is on it, no more reminders
        labels = alert.labels if alert.status == "firing" else None
        return await self.newsworthy(alert.fingerprint, alert.status, now, labels=labels), known

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
        """Queue each reply (with its outbox key) for every running destination of the
        channels; False when there is none."""
        targets = [
            d
            for d in channel_destinations(self._channels, channels)
            if self._adapters.serves(d.platform)
        ]
        if not targets:
            log.warning("alerts.no_destination", alert=what, channels=list(channels))
            return False
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
    return Reply(
        title=f"FIRING ({len(alerts)}): {_names(alerts)}",
        status=Status.ERROR if critical else Status.WARNING,
        text="\n".join(_line(a) for a in alerts),
        fields=_label_fields(group),
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


def _line(alert: Alert) -> str:
    severity = f"[{alert.severity}] " if alert.severity else ""
    summary = f": {alert.summary}" if alert.summary else ""
    return f"• {severity}{alert.name}{summary} (id {alert.id})"


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

    async def alertmanager(request: Request) -> Response:
        return await _accept(request, section, intake, AlertmanagerWebhook, _am_groups)

    async def generic(request: Request) -> Response:
        return await _accept(request, section, intake, GenericDelivery, _generic_groups)

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
    request: Request,
    section: AlertsSection | None,
    intake: AlertIntake,
    model: type[BaseModel],
    to_groups: Callable[[BaseModel], list[AlertGroup]],
) -> Response:
    if section is None or section.token is None:
        return _error(503, NOT_CONFIGURED)
    if not _authorized(request, section.token.get_secret_value()):
        return _error(401, "a valid 'Authorization: Bearer <token>' header is required")
    try:
        body = await _read_body(request, section.max_body_bytes)
        payload = _parse(body, model)
    except BadRequest as exc:
        return _error(exc.status, exc.message)
    groups = to_groups(payload)
    await intake.receive(groups)
    accepted = sum(len(g.alerts) for g in groups)
    log.info("alerts.accepted", path=request.url.path, alerts=accepted, groups=len(groups))
    return JSONResponse({"accepted": accepted}, status_code=202)


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


def _error(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)
