"""Where the bot posts on its own: configured channel names turned into locations
(heartbeats, alerts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bot.delivery.config import ChannelGroup
from bot.kernel.message import Location


def channel_destinations(
    groups: Mapping[str, ChannelGroup], channels: Iterable[str]
) -> list[Location]:
    """Every platform id of the named channels, in config order, once each."""
    found: dict[Location, None] = {}
    for channel in channels:
        group = groups.get(channel)
        for qualified in group.ids if group is not None else ():
            platform, _, channel_id = qualified.partition(":")
            found.setdefault(Location(platform, channel_id))
    return list(found)
