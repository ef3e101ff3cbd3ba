"""Config for checks: ``[[checks]]``, rules the bot evaluates on a schedule and turns into
alerts (see docs/alerts.md, "Checks").

Kinds:

* ``health``: a ``[[services]]`` entry's health (degraded is warn, down is critical);
* ``http_json``: a number in an HTTP endpoint's JSON (``field``, dotted) against
  ``warn``/``critical``;
* ``queue_length``, ``workers`` (a floor: below is bad), ``pending_idle`` (seconds the
  oldest pending entry waits): a ``[[queues]]`` entry's figures against ``warn``/``critical``.

Kept apart from ``models.py`` like ``heartbeat.py``; ``Config`` includes it. Service,
queue and channel names are checked in ``references.py``.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    field_validator,
    model_validator,
)

from bot.kernel.durations import format_duration, parse_duration
from bot.kernel.settings import Duration, Name

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

_NEEDS = {
    CheckKind.HEALTH: ("service",),
    CheckKind.HTTP_JSON: ("url", "field", "warn", "critical"),
    CheckKind.QUEUE_LENGTH: ("queue", "warn", "critical"),
    CheckKind.WORKERS: ("queue", "warn", "critical"),
    CheckKind.PENDING_IDLE: ("queue", "warn", "critical"),
}
_FORBIDS = {
    CheckKind.HEALTH: ("url", "field", "queue", "warn", "critical"),
    CheckKind.HTTP_JSON: ("service", "queue"),
    CheckKind.QUEUE_LENGTH: ("service", "url", "field"),
    CheckKind.WORKERS: ("service", "url", "field"),
    CheckKind.PENDING_IDLE: ("service", "url", "field"),
}


class CheckConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Name
    kind: CheckKind
    service: Name | None = None  # health
    url: HttpUrl | None = None  # http_json
    field: JsonPath | None = None  # http_json: "cpu_percent", "disks.root.used_percent"
    queue: Name | None = None  # queue_length, workers, pending_idle
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
        for key in _FORBIDS[self.kind]:
            if getattr(self, key) is not None:
                raise ValueError(f"'{key}' does not apply to kind '{self.kind}'")
        if self.kind is CheckKind.HEALTH and self.direction is not None:
            raise ValueError(f"'direction' does not apply to kind '{self.kind}'")
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
