"""Chat platform adapters. Each platform's library is imported only when its section is
configured: a console user never pays for discord.py's import."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot.adapter import Adapter
from bot.clock import Clock
from bot.command import CommandSpec
from bot.config.models import Config


def build_adapters(
    config: Config, commands: Sequence[CommandSpec[Any]], clock: Clock
) -> list[Adapter]:
    """The adapters whose sections are configured and enabled; nothing connects yet."""
    adapters: list[Adapter] = []
    if config.slack is not None and config.slack.enabled:
        from adapters.slack import SlackAdapter

        adapters.append(SlackAdapter(config, commands, clock))
    if config.telegram is not None and config.telegram.enabled:
        from adapters.telegram import TelegramAdapter

        adapters.append(TelegramAdapter(config, commands, clock))
    if config.discord is not None and config.discord.enabled:
        from adapters.discord import DiscordAdapter

        adapters.append(DiscordAdapter(config, commands, clock))
    return adapters
