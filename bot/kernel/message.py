"""What an adapter hands the core: one incoming chat message, platform-neutral."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Message:
    """An incoming message, translated by an adapter.

    ``user_id`` and ``channel_id`` are the platform's own ids (``U024BE7LH``,
    ``-1001234``); the core qualifies them with ``platform`` to match the config.
    ``addressed`` is true when the bot is certainly the recipient (slash command,
    direct message, mention), so a leading ``/`` is optional.
    """

    platform: str
    channel_id: str
    user_id: str
    text: str
    event_id: str
    received_at: datetime
    workspace: str = ""
    thread_id: str | None = None
    user_name: str = ""
    addressed: bool = False
    # The channel a thread belongs to, where the platform gives threads ids of their own
    # (Discord): channel rules for #ops hold in #ops's threads too.
    parent_channel_id: str | None = None

    @property
    def qualified_user(self) -> str:
        return f"{self.platform}:{self.user_id}"

    @property
    def qualified_channel(self) -> str:
        return f"{self.platform}:{self.channel_id}"

    @property
    def qualified_parent_channel(self) -> str | None:
        return (
            None if self.parent_channel_id is None else f"{self.platform}:{self.parent_channel_id}"
        )
