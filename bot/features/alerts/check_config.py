"""Config for checks: ``[[checks]]``, rules the bot evaluates on a schedule and turns into
alerts (see docs/alerts.md, "Checks").

Kinds:

* ``health``: a ``[[services]]`` entry's health (degraded is warn, down is critical);
* ``http_json``: a number in an HTTP endpoint's JSON (``field``, dotted) against
  ``warn``/``critical``;
* ``queue_length``, ``workers`` (a floor: below is bad), ``pending_idle`` (seconds the
  oldest pending entry waits): a ``[[queues]]`` entry's figures against ``warn``/``critical``;
* ``tcp`` (``host``, ``port``), ``redis`` (``redis_url``; PING, or the number at an ``INFO``
  ``field``), ``postgres`` (``database_url``; ``SELECT 1``, or a ``query`` giving one
  number): without a field or query the value is the time the exchange took (ms), and
  ``warn``/``critical`` are optional;
* ``prometheus`` (``url`` of a Prometheus, an instant PromQL ``query`` giving one sample)
  and ``metrics`` (``url`` of a text endpoint, a ``metric`` and ``metric_labels`` picking
  one sample) against ``warn``/``critical``.

``http_json``, ``prometheus`` and ``metrics`` take the HTTP request options of
``[[services]]`` (``headers``, ``auth``, ``expect_status``; ``http_json`` also ``method``
and ``body``), secrets from the environment (``bot.features.probes.config``).

Kept apart from ``models.py`` like ``heartbeat.py``; ``Config`` includes it. Service,
queue and channel names are checked in ``references.py``.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from bot.features.probes.config import (
    Host,
    HttpOptions,
    PostgresSecretUrl,
    RedisSecretUrl,
    url_secrets,
)
from bot.kernel.durations import format_duration, parse_duration
from bot.kernel.settings import Duration, HttpUrl, Name, Port

DEFAULT_INTERVAL = timedelta(minutes=1)
# More often than this hammers what is checked and turns a blip into an alert.
MIN_INTERVAL = timedelta(seconds=10)
DEFAULT_REPEAT = timedelta(hours=4)  # Alertmanager's repeat_interval default
MIN_REPEAT = timedelta(minutes=5)


class CheckKind(enum.StrEnum):
    HEALTH = "health"
    HTTP_JSON = "http_json"
    QUEUE_LENGTH = "queue_length"
    WORKERS = "workers"
    PENDING_IDLE = "pending_idle"
    TCP = "tcp"
    REDIS = "redis"
    POSTGRES = "postgres"
    PROMETHEUS = "prometheus"
    METRICS = "metrics"


class Direction(enum.StrEnum):
    ABOVE = "above"  # bad when the value rises past a level (cpu, errors, lengths)
    BELOW = "below"  # bad when it falls under (free disk, workers)


class OnError(enum.StrEnum):
    """What a check whose value cannot be read (endpoint down, field missing) counts as."""

    CRITICAL = "critical"
    WARN = "warn"
    IGNORE = "ignore"  # no change of state; the log says why


def _seconds(value: Any) -> Any:
    # pending_idle levels read best as durations ("5m"); every level is a number in the end.
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    return value


Level = Annotated[float, BeforeValidator(_seconds)]
JsonPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")]

MetricName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,199}$")]
LabelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")]
MAX_QUERY_CHARS = 4000

_NEEDS = {
    CheckKind.HEALTH: ("service",),
    CheckKind.HTTP_JSON: ("url", "field", "warn", "critical"),
    CheckKind.QUEUE_LENGTH: ("queue", "warn", "critical"),
    CheckKind.WORKERS: ("queue", "warn", "critical"),
    CheckKind.PENDING_IDLE: ("queue", "warn", "critical"),
    CheckKind.TCP: ("host", "port"),
    CheckKind.REDIS: ("redis_url",),
    CheckKind.POSTGRES: ("database_url",),
    CheckKind.PROMETHEUS: ("url", "query", "warn", "critical"),
    CheckKind.METRICS: ("url", "metric", "warn", "critical"),
}
# Keys that belong to some kinds only; the others refuse them.
_REQUEST = ("method", "headers", "body", "auth", "expect_status")
_OWN = {
    CheckKind.HEALTH: ("service",),
    CheckKind.HTTP_JSON: ("url", "field", *_REQUEST),
    CheckKind.QUEUE_LENGTH: ("queue",),
    CheckKind.WORKERS: ("queue",),
    CheckKind.PENDING_IDLE: ("queue",),
    CheckKind.TCP: ("host", "port"),
    CheckKind.REDIS: ("redis_url", "field"),
    CheckKind.POSTGRES: ("database_url", "query"),
    # The query goes in the URL of a GET; the method and body are the bot's.
    CheckKind.PROMETHEUS: ("url", "query", "headers", "auth", "expect_status"),
    CheckKind.METRICS: ("url", "metric", "metric_labels", "headers", "auth", "expect_status"),
}
_KIND_KEYS = {key for keys in _OWN.values() for key in keys}
# Reachability kinds: without a field or query, the value judged is the time it took.
TIMED = frozenset({CheckKind.TCP, CheckKind.REDIS, CheckKind.POSTGRES})


class CheckConfig(HttpOptions):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)

    name: Name
    kind: CheckKind
    service: Name | None = None  # health
    url: HttpUrl | None = None  # http_json, prometheus (its base URL), metrics
    # http_json: "cpu_percent", "disks.root.used_percent"; redis: an INFO field
    # ("used_memory", "db0.keys").
    field: JsonPath | None = None
    queue: Name | None = None  # queue_length, workers, pending_idle
    host: Host | None = None  # tcp
    port: Port | None = None  # tcp
    redis_url: RedisSecretUrl | None = None  # redis: in the file or { env = "OPSBOT_…" }
    database_url: PostgresSecretUrl | None = None  # postgres: likewise
    # postgres: SQL giving one number (run read-only); prometheus: an instant PromQL query.
    query: Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS)] | None = None
    metric: MetricName | None = None  # metrics: a sample's name ("http_requests_total")
    metric_labels: dict[LabelName, Annotated[str, StringConstraints(max_length=1000)]] = {}
    warn: Level | None = None
    critical: Level | None = None
    # above: warn when value > warn; below: warn when value < warn. workers is always below.
    direction: Direction | None = None
    interval: Duration = DEFAULT_INTERVAL
    timeout: Duration = timedelta(seconds=5)
    # Consecutive failing runs before the alert fires ("for" in Prometheus rules).
    for_: Annotated[int, Field(alias="for", ge=1, le=100)] = 1
    # While it keeps firing, unacknowledged, it is posted again this often.
    repeat: Duration = DEFAULT_REPEAT
    on_error: OnError = OnError.CRITICAL
    # Where it is posted; empty: routed by its labels like inbound alerts ([alerts] routes).
    channels: list[Name] = []
    labels: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str] = {}
    summary: Annotated[str, StringConstraints(max_length=200)] = ""

    @field_validator("interval")
    @classmethod
    def _not_too_often(cls, value: timedelta) -> timedelta:
        return _at_least(value, MIN_INTERVAL)

    @field_validator("repeat")
    @classmethod
    def _repeat_not_too_often(cls, value: timedelta) -> timedelta:
        return _at_least(value, MIN_REPEAT, ": a reminder more often floods the channel")

    @model_validator(mode="after")
    def _fits_kind(self) -> CheckConfig:
        for key in _NEEDS[self.kind]:
            if getattr(self, key) is None:
                raise ValueError(f"kind '{self.kind}' needs '{key}'")
        for key in sorted(_KIND_KEYS - set(_OWN[self.kind])):
            if key in self.model_fields_set:
                raise ValueError(f"'{key}' does not apply to kind '{self.kind}'")
        if self.kind is CheckKind.HEALTH:
            for key in ("warn", "critical", "direction"):
                if getattr(self, key) is not None:
                    raise ValueError(f"'{key}' does not apply to kind '{self.kind}'")
        if (self.warn is None) != (self.critical is None):
            raise ValueError("'warn' and 'critical' go together: set both or neither")
        if self.warn is None and self.direction is not None:
            raise ValueError("'direction' needs 'warn' and 'critical'")
        if self.warn is not None and self.critical is not None:
            if self.falls_bad and self.critical > self.warn:
                raise ValueError(
                    f"critical ({self.critical:g}) must not be above warn ({self.warn:g}) "
                    "when lower is worse"
                )
            if not self.falls_bad and self.critical < self.warn:
                raise ValueError(
                    f"critical ({self.critical:g}) must not be below warn ({self.warn:g}) "
                    "when higher is worse"
                )
        return self

    @property
    def judged(self) -> bool:
        """False for a reachability check without levels: reached is ok."""
        return self.warn is not None

    def secrets(self) -> list[str]:
        """Values to redact wherever they might appear (headers from the environment,
        passwords, tokens, URLs)."""
        return [*super().secrets(), *url_secrets(self.redis_url), *url_secrets(self.database_url)]

    @property
    def falls_bad(self) -> bool:
        """True when a lower value is worse (workers, or direction = "below")."""
        if self.direction is not None:
            return self.direction is Direction.BELOW
        return self.kind is CheckKind.WORKERS


def _at_least(value: timedelta, minimum: timedelta, why: str = "") -> timedelta:
    if value < minimum:
        raise ValueError(
            f"must be at least {format_duration(minimum)} (got {format_duration(value)}){why}"
        )
    return value
