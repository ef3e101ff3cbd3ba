"""Slack's own slash commands. An app cannot register one (Slack refuses the whole
manifest), and typing one runs Slack's, never the app's."""

from __future__ import annotations

# From Slack's help centre ("Use built-in slash commands"), and the older ones it still
# reserves.
SLACK_BUILTIN_COMMANDS = frozenset(
    {
        "active",
        "apps",
        "archive",
        "away",
        "call",
        "clear",
        "collapse",
        "dm",
        "dnd",
        "expand",
        "feed",
        "feedback",
        "giphy",
        "help",
        "huddle",
        "invite",
        "invite_people",
        "join",
        "kick",
        "leave",
        "me",
        "msg",
        "mute",
        "open",
        "prefs",
        "remind",
        "remove",
        "rename",
        "search",
        "shortcuts",
        "shrug",
        "star",
        "status",
        "topic",
        "who",
    }
)
