"""Config for heartbeats: ``[[heartbeat]]`` entries, messages the bot posts on a schedule
so people (and a dead man's switch) see that it is alive.

Kept apart from ``models.py`` so the core config stays readable; ``Config`` includes it.
Channel names are checked against ``[channels.*]`` in ``references.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from bot.kernel.durations import format_duration
from bot.kernel.settings import Duration, Name

DEFAULT_INTERVAL = timedelta(minutes=30)
# More often floods the channel, and a heartbeat nobody reads stops being noticed.
MIN_INTERVAL = timedelta(minutes=5)


def _crontab(value: str) -> str:
    # Imported here: APScheduler is needed only when a cron line is given.
    from bot.cluster.scheduler import check_crontab

    return check_crontab(value, MIN_INTERVAL)


Crontab = Annotated[str, AfterValidator(_crontab)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class HeartbeatConfig(Strict):
    """One heartbeat: what it says, where, and when (``interval`` or ``cron``)."""

    name: Name
    # Names from [channels.*]: the heartbeat goes to every platform id of each.
    channels: Annotated[list[Name], Field(min_length=1)]
    interval: Duration | None = None  # default 30m (when no cron is given)
    cron: Crontab | None = None  # "0 9 * * 1-5": a crontab line, in UTC
    # What the message holds.
    version_uptime: bool = True
    health: bool = False  # each configured service's health, summed up
    queues: bool = False  # each queue's length, with its trend over the last samples
    failing: bool = False  # whatever needs attention: services down, queues critical
    trend_samples: int = Field(default=12, ge=2, le=100)  # samples in the queue trend

    @field_validator("interval")
    @classmethod
    def _not_too_often(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < MIN_INTERVAL:
            raise ValueError(
                f"must be at least {format_duration(MIN_INTERVAL)} "
                f"(got {format_duration(value)}): a heartbeat more often floods the channel"
            )
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> HeartbeatConfig:
        if self.interval is not None and self.cron is not None:
            raise ValueError("give interval or cron, not both")
        return self

    @property
    def every(self) -> timedelta | None:
        """The interval, None when a cron line schedules it."""
        return None if self.cron is not None else self.interval or DEFAULT_INTERVAL
