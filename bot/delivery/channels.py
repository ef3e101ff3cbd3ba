"""Where the bot posts on its own: configured channel names turned into destinations of
the adapters running in this process (heartbeats, alerts)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from bot.app.config.models import Config
from bot.delivery.outbox import Destination

if TYPE_CHECKING:
    from bot.pipeline.context import AdapterBoard


def channel_destinations(config: Config, channels: Iterable[str]) -> list[Destination]:
    """Every platform id of the named channels, in config order, once each."""
    found: dict[Destination, None] = {}
    for channel in channels:
        group = config.channels.get(channel)
        for qualified in group.ids if group is not None else ():
            platform, _, channel_id = qualified.partition(":")
            found.setdefault(Destination(platform, channel_id))
    return list(found)


def serves(adapters: AdapterBoard, platform: str) -> bool:
    """Is an adapter for ``platform`` running here (an id on a platform this process does
    not serve is skipped, not queued forever)."""
    state = adapters.states.get(platform)
    return state is not None and not state.startswith(("error", "starting"))
