"""Inbound alerts over HTTP: Prometheus Alertmanager's webhook (``POST /alerts/alertmanager``)
and a small generic JSON format (``POST /alerts``), both described in docs/alerts.md.

A delivery is checked (bearer token, body size, shape), then each of its groups becomes
one message: the alerts of the group that are new (the same fingerprint with the same
status was not posted within ``[alerts] dedup_window``), posted with ``coalesce=True`` and
the outbox key ``alert:<groupKey>`` to the channels of the first route whose matchers all
match the group's common labels (else ``default_channels``). Resolved alerts are posted as
"RESOLVED" (status ok, ✅) to the same channels under the same key, so a resolution
replaces a firing message still waiting in the outbox (unless the same delivery also has
new firing alerts: then it goes without a key, and lists what still fires).

The :class:`AlertBoard` keeps the alerts firing now, in memory (a restart forgets them;
Alertmanager re-sends what still fires at its next ``repeat_interval``): ``/alerts`` lists
them and ``/ack <id>`` marks one acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.channels import channel_destinations, serves
from bot.clock import Clock
from bot.config.models import Config
from bot.outbound import Destination, Outbox
from bot.reply import Field as ReplyField
from bot.reply import Reply, Status

if TYPE_CHECKING:
    from bot.context import AdapterBoard

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


@dataclass(slots=True)
class ActiveAlert:
    id: str
    fingerprint: str
    group_key: str
    name: str
    severity: str
    summary: str
    labels: dict[str, str]
    since: datetime
    acked_by: str | None = None
    acked_at: datetime | None = None


def short_id(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:6]


def fingerprint_of(name: str, labels: dict[str, str]) -> str:
    """A stable fingerprint for an alert its sender gave none: its name and labels."""
    text = json.dumps([name, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(slots=True)
class AlertBoard:
    """The alerts firing now (by fingerprint), and when each (fingerprint, status) was
    last posted, for deduplication."""

    active: dict[str, ActiveAlert] = field(default_factory=dict)
    _posted: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def firing(self) -> list[ActiveAlert]:
        return sorted(self.active.values(), key=lambda a: (a.since, a.name))

    def find(self, alert_id: str) -> ActiveAlert | None:
        alert_id = alert_id.strip().lower()
        return next((a for a in self.active.values() if a.id == alert_id), None)

    def fresh(self, alert: Alert, now: datetime, window: timedelta) -> bool:
        """True (and remembered) unless the same alert with the same status was posted
        within ``window``."""
        key = (alert.fingerprint, alert.status)
        last = self._posted.get(key)
        if last is not None and now - last < window:
            return False
        self._posted[key] = now
        other = "resolved" if alert.status == "firing" else "firing"
        self._posted.pop((alert.fingerprint, other), None)  # a re-fire is news again
        return True

    def forget_before(self, moment: datetime) -> None:
        for key in [k for k, at in self._posted.items() if at < moment]:
            del self._posted[key]

    def update(self, group: AlertGroup, alert: Alert, now: datetime) -> None:
        if alert.status == "resolved":
            self.active.pop(alert.fingerprint, None)
            return
        known = self.active.get(alert.fingerprint)
        self.active[alert.fingerprint] = ActiveAlert(
            id=alert.id,
            fingerprint=alert.fingerprint,
            group_key=group.key,
            name=alert.name,
            severity=alert.severity,
            summary=alert.summary,
            labels=alert.labels,
            since=known.since if known else alert.starts_at or now,
            acked_by=known.acked_by if known else None,
            acked_at=known.acked_at if known else None,
        )

    def in_group(self, group_key: str) -> list[ActiveAlert]:
        return [a for a in self.firing() if a.group_key == group_key]


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


class AlertIntake:
    """Takes deliveries, keeps the :class:`AlertBoard` up to date and posts what is new."""

    def __init__(
        self,
        config: Config,
        *,
        board: AlertBoard,
        outbox: Outbox,
        adapters: AdapterBoard,
        clock: Clock,
    ) -> None:
        self._config = config
        self.board = board
        self._outbox = outbox
        self._adapters = adapters
        self._clock = clock
        self._lock = asyncio.Lock()

    def channels_for(self, labels: dict[str, str]) -> list[str]:
        """The first route whose matchers all equal the labels, else the defaults."""
        section = self._config.alerts
        if section is None:
            return []
        for route in section.routes:
            if all(labels.get(k) == v for k, v in route.matchers.items()):
                return list(route.channels)
        return list(section.default_channels)

    async def receive(self, groups: Sequence[AlertGroup]) -> None:
        section = self._config.alerts
        window = section.dedup_window if section is not None else timedelta(minutes=5)
        async with self._lock:
            now = self._clock.now()
            self.board.forget_before(now - window)
            for group in groups:
                firing = [
                    a
                    for a in group.alerts
                    if a.status == "firing" and self.board.fresh(a, now, window)
                ]
                resolved = [
                    a
                    for a in group.alerts
                    if a.status == "resolved" and self.board.fresh(a, now, window)
                ]
                for alert in group.alerts:
                    self.board.update(group, alert, now)
                if not firing and not resolved:
                    log.debug("alerts.duplicate", group=group.key)
                    continue
                await self._post_group(group, firing, resolved)

    async def _post_group(
        self, group: AlertGroup, firing: Sequence[Alert], resolved: Sequence[Alert]
    ) -> None:
        channels = self.channels_for(group.labels)
        targets = [
            d
            for d in channel_destinations(self._config, channels)
            if serves(self._adapters, d.platform)
        ]
        if not targets:
            log.warning("alerts.no_destination", group=group.key, channels=channels)
            return
        key = f"alert:{group.key}"
        replies: list[tuple[Reply, str | None]] = []
        if firing:
            replies.append((_firing_reply(group, firing), key))
        if resolved:
            still = self.board.in_group(group.key)
            # Under the group's key only when it replaces no firing news of this delivery.
            replies.append((_resolved_reply(group, resolved, still), None if firing else key))
        for reply, reply_key in replies:
            for destination in targets:
                await self._post(destination, reply, reply_key)
        log.info(
            "alerts.posted",
            group=group.key,
            firing=len(firing),
            resolved=len(resolved),
            channels=channels,
        )

    async def _post(self, destination: Destination, reply: Reply, key: str | None) -> None:
        if not await self._outbox.post(destination, reply, key=key, coalesce=True):
            log.error(
                "alerts.post_failed",
                platform=destination.platform,
                channel=destination.channel_id,
                title=reply.title,
            )


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


def alert_routes(intake: AlertIntake, config: Config) -> list[Route]:
    """``POST /alerts/alertmanager`` and ``POST /alerts`` for the bot's HTTP server."""

    async def alertmanager(request: Request) -> Response:
        return await _accept(request, config, intake, AlertmanagerWebhook, _am_groups)

    async def generic(request: Request) -> Response:
        return await _accept(request, config, intake, GenericDelivery, _generic_groups)

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
    config: Config,
    intake: AlertIntake,
    model: type[BaseModel],
    to_groups: Callable[[BaseModel], list[AlertGroup]],
) -> Response:
    section = config.alerts
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
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
