"""Config of the chat platform adapters. A section that is present (or whose token is set
in the environment) turns its adapter on; tokens are secrets, best given as environment
variables (their names are in ``TOKEN_VARIABLES``)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, StringConstraints


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _base_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"'{value}' is not an http:// or https:// URL")
    return value


BaseUrl = Annotated[str, AfterValidator(_base_url)]
Port = Annotated[int, Field(ge=0, le=65535)]
UrlPath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9/_.-]*$")]


class SlackSection(Strict):
    enabled: bool = True
    # Socket Mode needs no public URL (the default); HTTP mode verifies Slack's signature.
    mode: Literal["socket", "http"] = "socket"
    bot_token: SecretStr | None = None  # xoxb-…   (OPSBOT_SLACK_BOT_TOKEN)
    app_token: SecretStr | None = None  # xapp-…, socket mode (OPSBOT_SLACK_APP_TOKEN)
    signing_secret: SecretStr | None = None  # http mode (OPSBOT_SLACK_SIGNING_SECRET)
    api_url: BaseUrl = "https://slack.com/api/"  # GovSlack: https://slack-gov.com/api/
    http_host: str = "127.0.0.1"
    http_port: Port = 3000
    http_path: UrlPath = "/slack/events"
    # HTTP mode: the public https:// URL that reaches http_host:http_port (a reverse
    # proxy); `opsbot slack-manifest` puts it in the manifest's request URLs.
    public_url: BaseUrl | None = None


class TelegramSection(Strict):
    enabled: bool = True
    mode: Literal["polling", "webhook"] = "polling"
    token: SecretStr | None = None  # 123456:ABC…   (OPSBOT_TELEGRAM_TOKEN)
    # A self-hosted Bot API server: http://host:8081/bot
    api_url: BaseUrl = "https://api.telegram.org/bot"
    file_url: BaseUrl = "https://api.telegram.org/file/bot"
    # Webhook mode: the public URL Telegram posts to, and what this process binds.
    webhook_url: BaseUrl | None = None
    webhook_secret: SecretStr | None = None  # (OPSBOT_TELEGRAM_WEBHOOK_SECRET)
    webhook_host: str = "127.0.0.1"
    webhook_port: Port = 8443
    webhook_path: UrlPath = "/telegram"
    # setMyCommands from the command registry at start (also: `opsbot telegram-commands`).
    set_commands_on_start: bool = True


class DiscordSection(Strict):
    enabled: bool = True
    token: SecretStr | None = None  # (OPSBOT_DISCORD_TOKEN)
    api_url: BaseUrl = "https://discord.com/api/v10"
    # Unset: discord.py asks the API for the gateway; tests point it at a fake.
    gateway_url: str | None = None
    # Message commands: "!health", or a mention of the bot ("@opsbot health").
    command_prefix: Annotated[str, StringConstraints(min_length=1, max_length=5)] = "!"
    # `opsbot discord-sync` registers slash commands in these guilds (at once) or, when
    # empty, globally (Discord may take up to an hour to show them).
    sync_guild_ids: list[Annotated[str, StringConstraints(pattern=r"^\d{17,20}$")]] = []


# section -> key -> environment variable, for start-up errors that name what to set.
TOKEN_VARIABLES: dict[str, dict[str, str]] = {
    "slack": {
        "bot_token": "OPSBOT_SLACK_BOT_TOKEN",
        "app_token": "OPSBOT_SLACK_APP_TOKEN",
        "signing_secret": "OPSBOT_SLACK_SIGNING_SECRET",
    },
    "telegram": {
        "token": "OPSBOT_TELEGRAM_TOKEN",
        "webhook_secret": "OPSBOT_TELEGRAM_WEBHOOK_SECRET",
    },
    "discord": {"token": "OPSBOT_DISCORD_TOKEN"},
}
