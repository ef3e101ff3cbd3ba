"""Which chat adapters run: each platform's library is imported only when its section is
configured, so a console user never pays for discord.py's import."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from bot.app.config.models import Config
from bot.kernel.adapter import Adapter, Refused
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec
from bot.kernel.metrics import Metrics

_log = structlog.get_logger("opsbot.adapters")
REFUSAL_LOG_EVERY_S = 60.0


def build_adapters(
    config: Config,
    commands: Sequence[CommandSpec[Any, Any]],
    clock: Clock,
    metrics: Metrics | None = None,
) -> list[Adapter]:
    """The adapters whose sections are configured and enabled; nothing connects yet.
    ``metrics``: where they count the requests they refuse."""
    adapters: list[Adapter] = []
    metrics = metrics or Metrics()
    if config.slack is not None and config.slack.enabled:
        from adapters.slack.adapter import SlackAdapter

        adapters.append(
            SlackAdapter(config.slack, commands, clock, refused=refusals(metrics, "slack"))
        )
    if config.telegram is not None and config.telegram.enabled:
        from adapters.telegram.adapter import TelegramAdapter

        adapters.append(TelegramAdapter(config.telegram, commands, clock))
    if config.discord is not None and config.discord.enabled:
        from adapters.discord.adapter import DiscordAdapter

        adapters.append(DiscordAdapter(config.discord, commands, clock))
    return adapters


def refusals(metrics: Metrics, platform: str, now: Callable[[], float] = time.monotonic) -> Refused:
    """Counts each refused request in /metrics; logs a warning per reason at most once a
    minute, with how many came since the last line: a flood of forged requests must not
    flood the log too."""
    counters: dict[str, Any] = {}  # children are cached: labels() builds a key each call
    last_line: dict[str, float] = {}
    unlogged: dict[str, int] = {}

    def refused(reason: str) -> None:
        counter = counters.get(reason)
        if counter is None:
            counter = counters[reason] = metrics.refused_requests.labels(platform, reason)
        counter.inc()
        unlogged[reason] = unlogged.get(reason, 0) + 1
        at = now()
        if reason in last_line and at - last_line[reason] < REFUSAL_LOG_EVERY_S:
            return
        last_line[reason] = at
        _log.warning(
            "adapter.requests_refused",
            adapter=platform,
            reason=reason,
            count=unlogged.pop(reason),
            within_s=REFUSAL_LOG_EVERY_S,
        )

    return refused
