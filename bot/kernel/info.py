"""What the bot says about itself (/status, heartbeats): its name, where its config came
from, and when it started."""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct


class BotInfo(Struct):
    name: str  # the bot's chat name (bot.name), as in "/health@<name>"
    config_source: str  # the config file, or the built-in default
    started_at: datetime  # set again when the bot starts
