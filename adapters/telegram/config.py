"""The ``[telegram]`` section. Present (and enabled), it turns the Telegram adapter on;
tokens are secrets, best given as environment variables (named in ``TOKEN_VARIABLES``)."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from bot.kernel.settings import HttpUrl, Port, Strict, UrlPath


class TelegramSection(Strict):
    enabled: bool = True
    mode: Literal["polling", "webhook"] = "polling"
    token: SecretStr | None = None  # 123456:ABC…   (OPSBOT_TELEGRAM_TOKEN)
    # A self-hosted Bot API server: http://host:8081/bot
    api_url: HttpUrl = "https://api.telegram.org/bot"
    file_url: HttpUrl = "https://api.telegram.org/file/bot"
    # Webhook mode: the public URL Telegram posts to, and what this process binds.
    webhook_url: HttpUrl | None = None
    webhook_secret: SecretStr | None = None  # (OPSBOT_TELEGRAM_WEBHOOK_SECRET)
    webhook_host: str = "127.0.0.1"
    webhook_port: Port = 8443
    webhook_path: UrlPath = "/telegram"
    # setMyCommands from the command registry at start (also: `opsbot telegram-commands`).
    set_commands_on_start: bool = True


# key -> environment variable, for start-up errors that name what to set.
TOKEN_VARIABLES = {
    "token": "OPSBOT_TELEGRAM_TOKEN",
    "webhook_secret": "OPSBOT_TELEGRAM_WEBHOOK_SECRET",
}
