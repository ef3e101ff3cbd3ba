"""Config the pipeline reads: who is who (roles, identities) and the flood budget."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field

from bot.kernel.settings import Duration, Name, Strict, UserId

ANY_ROLE = "*"  # in policy.commands.<name>.roles: any known principal


class FloodSection(Strict):
    """Per-person command budget: a burst of ``max_commands``, refilled over ``per``."""

    max_commands: int = Field(default=15, ge=1, le=10_000_000)
    per: Duration = timedelta(seconds=10)


class Role(Strict):
    description: str = ""
    includes: list[Name] = []


class Identity(Strict):
    ids: Annotated[list[UserId], Field(min_length=1)]
    roles: list[Name] = []
