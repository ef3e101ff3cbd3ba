"""Which chat adapters run: each platform's library is imported only when its section is
configured, so a console user never pays for discord.py's import."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.app.config.models import Config
from bot.kernel.adapter import Adapter
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec


def build_adapters(
    config: Config, commands: Sequence[CommandSpec[Any, Any]], clock: Clock
) -> list[Adapter]:
    """The adapters whose sections are configured and enabled; nothing connects yet."""
    adapters: list[Adapter] = []
    if config.slack is not None and config.slack.enabled:
        from adapters.slack.adapter import SlackAdapter

        adapters.append(SlackAdapter(config.slack, commands, clock))
    if config.telegram is not None and config.telegram.enabled:
        from adapters.telegram.adapter import TelegramAdapter

        adapters.append(TelegramAdapter(config.telegram, commands, clock))
    if config.discord is not None and config.discord.enabled:
        from adapters.discord.adapter import DiscordAdapter

        adapters.append(DiscordAdapter(config.discord, commands, clock))
    return adapters
