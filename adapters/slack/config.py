"""The ``[slack]`` section. Present (and enabled), it turns the Slack adapter on; tokens
are secrets, best given as environment variables (named in ``TOKEN_VARIABLES``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, SecretStr

from adapters.slack.builtins import SLACK_BUILTIN_COMMANDS
from bot.kernel.settings import HttpUrl, Name, Port, Strict, UrlPath


def _not_builtin(name: str) -> str:
    if name in SLACK_BUILTIN_COMMANDS:
        raise ValueError(f"/{name} is one of Slack's own commands: an app cannot register it")
    return name


SlashName = Annotated[Name, AfterValidator(_not_builtin)]


class SlackSection(Strict):
    enabled: bool = True
    # Socket Mode needs no public URL (the default); HTTP mode verifies Slack's signature.
    mode: Literal["socket", "http"] = "socket"
    bot_token: SecretStr | None = None  # xoxb-…   (OPSBOT_SLACK_BOT_TOKEN)
    app_token: SecretStr | None = None  # xapp-…, socket mode (OPSBOT_SLACK_APP_TOKEN)
    signing_secret: SecretStr | None = None  # http mode (OPSBOT_SLACK_SIGNING_SECRET)
    api_url: HttpUrl = "https://slack.com/api/"  # GovSlack: https://slack-gov.com/api/
    http_host: str = "127.0.0.1"
    http_port: Port = 3000
    http_path: UrlPath = "/slack/events"
    # HTTP mode: the public https:// URL that reaches http_host:http_port (a reverse
    # proxy); `opsbot slack-manifest` puts it in the manifest's request URLs.
    public_url: HttpUrl | None = None
    # One slash command for everything (`/ops health`, `/ops rollback v1.2`, `/ops help`),
    # as Slack's style guide asks; and, only if listed, commands of their own (`/rollback`).
    # Never one of Slack's built-ins (/status, /remind, …): Slack refuses such a manifest.
    umbrella_command: SlashName = "ops"
    slash_commands: list[SlashName] = []


# key -> environment variable, for start-up errors that name what to set.
TOKEN_VARIABLES = {
    "bot_token": "OPSBOT_SLACK_BOT_TOKEN",
    "app_token": "OPSBOT_SLACK_APP_TOKEN",
    "signing_secret": "OPSBOT_SLACK_SIGNING_SECRET",
}
