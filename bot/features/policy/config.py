"""Config of the policy: the mode (strict, or off for a bounded window) and the
per-command rules the authorizer applies (roles, channels, argument rules)."""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from bot.kernel.settings import Duration, Name, Pattern, Strict


class ArgumentRule(Strict):
    """Extra roles needed when an argument has a certain value."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$")]
    pattern: Pattern = ".*"
    roles: Annotated[list[Name], Field(min_length=1)]


class CommandPolicy(Strict):
    roles: Annotated[list[str], Field(min_length=1)]
    channels: list[Name] = []
    args: list[ArgumentRule] = []


class PolicyMode(enum.StrEnum):
    STRICT = "strict"
    OFF = "off"


def _at_most_a_week(value: timedelta) -> timedelta:
    if value > timedelta(days=7):
        raise ValueError(
            "may be at most 7d: a policy 'off' window is for an incident, not a season"
        )
    return value


class PolicySection(Strict):
    mode: PolicyMode = PolicyMode.STRICT
    off_ttl: Duration | None = None
    # An "off" window is an exception: at most a week, however it is asked for.
    max_off_ttl: Annotated[Duration, AfterValidator(_at_most_a_week)] = timedelta(hours=4)
    admin_roles: Annotated[list[Name], Field(min_length=1)] = ["admin"]
    commands: dict[Name, CommandPolicy] = {}

    @model_validator(mode="after")
    def _off_needs_ttl(self) -> PolicySection:
        if self.mode is PolicyMode.OFF and self.off_ttl is None:
            raise ValueError("off_ttl is required when mode is 'off' (the window must end)")
        if self.off_ttl is not None and self.off_ttl > self.max_off_ttl:
            raise ValueError(f"off_ttl is longer than max_off_ttl ({self.max_off_ttl})")
        return self
