"""What an adapter hands the core: one incoming chat message, platform-neutral."""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct, field


class Location(Struct, frozen=True):
    """Where a conversation happens: a platform's channel, and the thread in it if any.

    The one location type: a message arrives from one, a reply and every unprompted post
    (outbox, approvals, job results) go to one, and the audit log records one."""

    platform: str
    channel_id: str
    thread_id: str | None = None
    workspace: str = ""


OptionValue = str | int | float | bool


class ParsedCommand(Struct, frozen=True):
    """Chat text read as a command: its name, bare words and options."""

    name: str
    positionals: tuple[str, ...] = ()
    options: dict[str, OptionValue] = field(default_factory=dict)
    raw_args: str = ""
    # Why the arguments could not be read (an unbalanced quote, say). Reported by the
    # pipeline only after the sender is identified and the command resolved, so a
    # stranger's malformed text is throttled and denied like any other.
    problem: str | None = None


class Message(Struct, frozen=True):
    """An incoming message, translated by an adapter.

    ``location`` is where it was written; ``user_id`` is the platform's own id
    (``U024BE7LH``); the core qualifies both with the platform to match the config.
    ``addressed`` is true when the bot is certainly the recipient (slash command, direct
    message, mention), so a leading ``/`` is optional.
    """

    location: Location
    user_id: str
    text: str
    event_id: str
    received_at: datetime
    user_name: str = ""
    addressed: bool = False
    # The channel a thread belongs to, where the platform gives threads ids of their own
    # (Discord): channel rules for #ops hold in #ops's threads too.
    parent_channel_id: str | None = None
    # The command already read, when the platform hands over typed options (a Discord
    # slash command): the core binds these values instead of parsing ``text`` again.
    # ``text`` stays what the person would have typed, for the audit log.
    invocation: ParsedCommand | None = None
    # Whether a private reply (Reply.is_private) reaches this person alone: a direct
    # message, a Slack command or mention (ephemeral), a Discord interaction. Elsewhere
    # (a Telegram group, a Discord channel message) everyone reads it, so it must not
    # carry what only the asker should see, such as their platform id.
    private_replies: bool = False

    @property
    def platform(self) -> str:
        return self.location.platform

    @property
    def channel_id(self) -> str:
        return self.location.channel_id

    @property
    def thread_id(self) -> str | None:
        return self.location.thread_id

    @property
    def workspace(self) -> str:
        return self.location.workspace

    @property
    def qualified_user(self) -> str:
        return f"{self.location.platform}:{self.user_id}"

    @property
    def qualified_channel(self) -> str:
        return f"{self.location.platform}:{self.location.channel_id}"

    @property
    def qualified_parent_channel(self) -> str | None:
        if self.parent_channel_id is None:
            return None
        return f"{self.location.platform}:{self.parent_channel_id}"
