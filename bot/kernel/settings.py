"""Shared building blocks of the config models, which each layer and feature keeps with
itself (``bot.app.config.models.Config`` puts them together)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
)

from bot.kernel.durations import MAX_DURATION, parse_duration
from bot.kernel.platform_ids import check_channel_id, check_user_id
from bot.kernel.regex import compile_linear


class Strict(BaseModel):
    """A config model: unknown keys are refused (a typo in an allow-list must stop the
    bot, not silently grant or deny: errbot#711, #1606), and it cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m or 2h, not true or false")
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value <= MAX_DURATION.total_seconds():  # NaN fails this too
            raise ValueError(f"must be between 0 and {MAX_DURATION.days} days (in seconds)")
        return timedelta(seconds=value)
    return value


def _positive(value: timedelta) -> timedelta:
    if value.total_seconds() <= 0:
        raise ValueError("must be longer than zero")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


def _regex(value: str) -> str:
    compile_linear(value)  # RegexError is a ValueError: pydantic reports it with the key
    return value


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"'{value}' is not an http:// or https:// URL")
    return value


def _redis_url(value: SecretStr) -> SecretStr:
    if not re.match(r"^(redis|rediss|unix)://", value.get_secret_value()):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


UserId = Annotated[str, AfterValidator(check_user_id)]
ChannelId = Annotated[str, AfterValidator(check_channel_id)]
Pattern = Annotated[str, AfterValidator(_regex)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
RedisUrl = Annotated[SecretStr, AfterValidator(_redis_url)]
Port = Annotated[int, Field(ge=0, le=65535)]
UrlPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9/_.-]*$")]
