"""The Slack app manifest, generated from the command registry (``opsbot slack-manifest``).

Paste it at https://api.slack.com/apps (Create New App -> From a manifest). It declares
one umbrella slash command (``/ops health``; ``[slack] umbrella_command``) and only the
commands ``[slack] slash_commands`` lists, never one of Slack's built-ins. It asks
only for what the adapter uses: ``commands`` (slash commands), ``chat:write`` (answers,
job progress, editing a pressed approval message), ``app_mentions:read`` (``@opsbot
health``) and ``im:history`` (direct messages to the bot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters.slack.builtins import SLACK_BUILTIN_COMMANDS
from adapters.slack.config import SlackSection
from bot.kernel.command import CommandSpec

BOT_SCOPES = ("app_mentions:read", "chat:write", "commands", "im:history")
BOT_EVENTS = ("app_mention", "message.im")
# HTTP mode: Slack needs the public URL that reaches http_host:http_port (a reverse
# proxy, say): [slack] public_url, or this placeholder to edit.
PUBLIC_HOST_PLACEHOLDER = "https://CHANGE-ME.example.com"

_DESCRIPTION_LIMIT = 140  # display_information.description
_USAGE_HINT_LIMIT = 1000


def manifest(
    section: SlackSection | None, bot_name: str, commands: Sequence[CommandSpec[Any, Any]]
) -> dict[str, Any]:
    section = section or SlackSection()
    http_mode = section.mode == "http"
    public = (section.public_url or PUBLIC_HOST_PLACEHOLDER).rstrip("/")
    request_url = f"{public}{section.http_path}"
    name = bot_name

    slash_commands: list[dict[str, Any]] = [
        {
            "command": f"/{section.umbrella_command}",
            "description": f"{name}: operational commands (/{section.umbrella_command} help "
            "lists them)",
            "usage_hint": "<command> [arguments], e.g. health, rollback v1.2, help",
            "should_escape": False,  # the adapter reads plain text
        }
    ]
    by_name = {spec.name: spec for spec in commands}
    for own in section.slash_commands:
        spec = by_name.get(own)
        if spec is None or own in SLACK_BUILTIN_COMMANDS:
            continue  # the config check names it; never a manifest Slack refuses
        entry: dict[str, Any] = {
            "command": f"/{spec.name}",
            "description": spec.summary,
            "should_escape": False,
        }
        hint = usage_hint(spec)
        if hint:
            entry["usage_hint"] = hint
        slash_commands.append(entry)
    if http_mode:
        for entry in slash_commands:
            entry["url"] = request_url

    interactivity: dict[str, Any] = {"is_enabled": True}
    events: dict[str, Any] = {"bot_events": list(BOT_EVENTS)}
    if http_mode:
        interactivity["request_url"] = request_url
        events["request_url"] = request_url
    description = "ChatOps: allow-listed operational commands, two-person approval, audit log"
    return {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {"name": name, "description": description[:_DESCRIPTION_LIMIT]},
        "features": {
            "app_home": {
                "home_tab_enabled": False,
                "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": False,
            },
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": slash_commands,
        },
        "oauth_config": {"scopes": {"bot": list(BOT_SCOPES)}},
        "settings": {
            "event_subscriptions": events,
            "interactivity": interactivity,
            "org_deploy_enabled": False,
            "socket_mode_enabled": not http_mode,
            "token_rotation_enabled": False,
        },
    }


def usage_hint(spec: CommandSpec[Any, Any]) -> str:
    """``/rollback <tag> [--dry-run]`` -> ``<tag> [--dry-run]`` (Slack shows the command)."""
    usage = " ".join(spec.usage.split())
    head, _, rest = usage.partition(" ")
    hint = rest if head == f"/{spec.name}" else usage
    return hint[:_USAGE_HINT_LIMIT]
