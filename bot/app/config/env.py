"""The environment variables opsbot reads: this module is the only reader of os.environ.

``.env.example`` lists exactly these names; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping

# name -> (config key path it overrides, or None, and what it is for)
ENV_VARS: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "OPSBOT_CONFIG": (None, "config file used when --config is not given"),
    "OPSBOT_LOG_LEVEL": (("bot", "log_level"), "debug, info, warning or error"),
    "OPSBOT_LOG_FORMAT": (("bot", "log_format"), "json, console or auto (console on a TTY)"),
    "OPSBOT_HTTP_HOST": (("http", "host"), "address the HTTP server binds"),
    "OPSBOT_HTTP_PORT": (("http", "port"), "port of the HTTP server (0 picks a free one)"),
    "OPSBOT_DATA_DIR": (
        ("bot", "data_dir"),
        "directory for the embedded SQLite audit log and spool",
    ),
    "OPSBOT_DATABASE_URL": (
        ("audit", "database_url"),
        "audit database, e.g. postgresql+asyncpg://opsbot:PASSWORD@db/opsbot (secret)",
    ),
    "OPSBOT_REDIS_URL": (
        ("state", "redis_url"),
        "shared state of several replicas, e.g. redis://redis:6379/0 (secret)",
    ),
    "OPSBOT_AUDIT_KEY": (
        ("audit", "key"),
        "key the audit chain is kept with, 32+ characters: openssl rand -hex 32 (secret)",
    ),
    "OPSBOT_SLACK_BOT_TOKEN": (("slack", "bot_token"), "Slack bot token, xoxb-… (secret)"),
    "OPSBOT_SLACK_APP_TOKEN": (
        ("slack", "app_token"),
        "Slack app-level token for Socket Mode, xapp-… (secret)",
    ),
    "OPSBOT_SLACK_SIGNING_SECRET": (
        ("slack", "signing_secret"),
        "Slack signing secret, for HTTP mode (secret)",
    ),
    "OPSBOT_TELEGRAM_TOKEN": (("telegram", "token"), "Telegram bot token from @BotFather (secret)"),
    "OPSBOT_TELEGRAM_WEBHOOK_SECRET": (
        ("telegram", "webhook_secret"),
        "Telegram webhook secret_token, for webhook mode (secret)",
    ),
    "OPSBOT_DISCORD_TOKEN": (("discord", "token"), "Discord bot token (secret)"),
    "OPSBOT_CONSOLE_TOKEN": (
        ("console", "token"),
        "token `opsbot console --connect` presents to a running `opsbot run` (secret)",
    ),
    "OPSBOT_ALERTS_TOKEN": (
        ("alerts", "token"),
        "bearer token alert senders present to POST /alerts and /alerts/alertmanager (secret)",
    ),
}


# The config may name further variables of this prefix for its secrets (a check's header,
# a service's password: ``{ env = "OPSBOT_…" }``); nothing else of the environment is read.
REFERENCED_PREFIX = "OPSBOT_"


def read_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The subset of ``environ`` opsbot cares about (empty values count as unset): the
    variables above, and those of ``REFERENCED_PREFIX`` the config may name."""
    return {
        name: value
        for name, value in environ.items()
        if value and (name in ENV_VARS or name.startswith(REFERENCED_PREFIX))
    }


# A token alone does not turn a platform on: its section does (a stray variable in a
# shared environment must not connect the bot somewhere nobody configured).
PLATFORM_SECTIONS = frozenset({"slack", "telegram", "discord"})


def apply_overrides(raw: dict[str, object], env: Mapping[str, str]) -> list[str]:
    """Write env overrides into the raw config dict; returns the names applied. A
    platform token whose section is absent is not applied (:func:`unused_tokens`)."""
    applied: list[str] = []
    for name, (path, _) in ENV_VARS.items():
        if path is None or name not in env:
            continue
        if path[0] in PLATFORM_SECTIONS and path[0] not in raw:
            continue
        section = raw.setdefault(path[0], {})
        if isinstance(section, dict):
            section[path[1]] = env[name]
            applied.append(name)
    return applied


def unused_tokens(raw: Mapping[str, object], env: Mapping[str, str]) -> list[str]:
    """Platform token variables that are set while their section is absent."""
    return [
        name
        for name, (path, _) in ENV_VARS.items()
        if path is not None and path[0] in PLATFORM_SECTIONS and path[0] not in raw and name in env
    ]
