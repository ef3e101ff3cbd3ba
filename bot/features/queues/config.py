"""Config of the queues feature: the Redis streams to watch and their thresholds."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from bot.kernel.settings import Duration, Name, RedisUrl, Strict


class Level(Strict):
    """A figure is ``warn`` above ``warn`` and ``critical`` above ``critical``."""

    warn: float = Field(ge=0, le=1e12)
    critical: float = Field(ge=0, le=1e12)

    @model_validator(mode="after")
    def _ordered(self) -> Level:
        if self.critical < self.warn:
            raise ValueError("critical must be at least warn")
        return self


class FloorLevel(Strict):
    """A figure is ``warn`` below ``warn`` and ``critical`` at or below ``critical``."""

    warn: int = Field(ge=0, le=10**12)
    critical: int = Field(ge=0, le=10**12)

    @model_validator(mode="after")
    def _ordered(self) -> FloorLevel:
        if self.critical >= self.warn:
            raise ValueError("critical must be below warn")
        return self


class QueueThresholds(Strict):
    length: Level = Level(warn=100, critical=500)
    pending: Level = Level(warn=100, critical=500)
    lag: Level = Level(warn=100, critical=500)
    # Seconds the oldest pending entry has waited for an acknowledgement.
    oldest_pending_idle: Level = Level(warn=60, critical=300)
    dead_letter: Level = Level(warn=0, critical=100)
    workers: FloorLevel = FloorLevel(warn=2, critical=0)


class QueueConfig(Strict):
    """One Redis stream the bot reports on (``/queue``, ``/workers``)."""

    name: Name
    redis_url: RedisUrl  # a secret: it may carry a password
    stream: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    # The consumer group the workers read with; None reports every group of the stream.
    group: str | None = None
    dead_letter_stream: str | None = None
    thresholds: QueueThresholds = QueueThresholds()
    # False for a stream nobody is meant to read (a dead-letter stream watched on its own):
    # its workers are shown but never judged, so it does not stay CRIT for want of them.
    workers_expected: bool = True
    # A consumer idle longer than this counts as stalled.
    stalled_after: Duration = timedelta(minutes=5)
    # Per Redis call: an unreachable server must not hold the answer up.
    timeout: Duration = timedelta(seconds=1)
