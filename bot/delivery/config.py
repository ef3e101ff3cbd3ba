"""Config of where the bot posts: named channels, each a list of platform channel ids."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from bot.kernel.settings import ChannelId, Strict


class ChannelGroup(Strict):
    ids: Annotated[list[ChannelId], Field(min_length=1)]
