"""The Telegram command menu (setMyCommands) from the command registry.

Run explicitly with ``opsbot telegram-commands``; the adapter also applies it at start when
``[telegram] set_commands_on_start`` is true (one API call, so cheap to repeat).

Telegram command names allow ``[a-z0-9_]`` (1-32) only: a ``-`` in a registry name becomes
``_`` in the menu, and the adapter maps the menu name back (``command_aliases``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from telegram import Bot, BotCommand
from telegram.error import InvalidToken, TelegramError

from adapters.telegram.config import TOKEN_VARIABLES, TelegramSection
from bot.kernel.adapter import AdapterError
from bot.kernel.command import CommandSpec

_NAME = re.compile(r"[a-z0-9_]{1,32}")
_DESCRIPTION_LIMIT = 256
_MENU_LIMIT = 100  # commands Telegram accepts in one menu
TOKEN_VARIABLE = TOKEN_VARIABLES["token"]


def telegram_name(name: str) -> str:
    return name.lower().replace("-", "_")


def command_aliases(commands: Sequence[CommandSpec[Any, Any]]) -> dict[str, str]:
    """Menu name -> registry name, for the names Telegram made us change."""
    return {telegram_name(s.name): s.name for s in commands if telegram_name(s.name) != s.name}


def menu(commands: Sequence[CommandSpec[Any, Any]]) -> list[BotCommand]:
    """One entry per registry command Telegram can show, in registry order."""
    entries: list[BotCommand] = []
    seen: set[str] = set()
    for spec in commands:
        name = telegram_name(spec.name)
        if not _NAME.fullmatch(name) or name in seen:
            continue
        seen.add(name)
        description = " ".join(spec.summary.split()) or spec.usage or name
        if len(description) > _DESCRIPTION_LIMIT:
            description = description[: _DESCRIPTION_LIMIT - 1] + "…"
        entries.append(BotCommand(name, description))
    return entries[:_MENU_LIMIT]


async def apply_commands(bot: Bot, commands: Sequence[CommandSpec[Any, Any]]) -> list[BotCommand]:
    """setMyCommands on an initialized bot; returns what was set."""
    entries = menu(commands)
    await bot.set_my_commands(entries)
    return entries


def require_token(section: TelegramSection) -> str:
    if section.token is None or not section.token.get_secret_value().strip():
        raise AdapterError(
            f"no Telegram bot token: set {TOKEN_VARIABLE} (or token in [telegram]) "
            "to the token @BotFather gave you"
        )
    return section.token.get_secret_value().strip()


def scrub(error: BaseException | str, token: str) -> str:
    """A vendor error's text without the token (PTB puts it in some messages)."""
    return str(error).replace(token, "***") or type(error).__name__


def refused_token_error() -> AdapterError:
    return AdapterError(
        f"the Telegram Bot API refused the bot token (getMe: unauthorized); check {TOKEN_VARIABLE}"
    )


async def set_commands(
    section: TelegramSection | None, commands: Sequence[CommandSpec[Any, Any]]
) -> str:
    """setMyCommands from the registry; a one-line summary for the CLI."""
    section = section or TelegramSection()
    token = require_token(section)
    bot = Bot(token, base_url=section.api_url, base_file_url=section.file_url)
    try:
        async with bot:  # initialize: getMe checks the token
            entries = await apply_commands(bot, commands)
            username = bot.username
    except InvalidToken as exc:
        raise refused_token_error() from exc
    except TelegramError as exc:
        raise AdapterError(f"setMyCommands failed: {scrub(exc, token)}") from exc
    names = " ".join(f"/{entry.command}" for entry in entries)
    return f"Telegram command menu of @{username} set: {len(entries)} commands ({names})"
