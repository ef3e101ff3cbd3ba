"""The ``[discord]`` section. Present (and enabled), it turns the Discord adapter on; the
token is a secret, best given as an environment variable (named in ``TOKEN_VARIABLES``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import SecretStr, StringConstraints

from bot.kernel.settings import HttpUrl, Strict


class DiscordSection(Strict):
    enabled: bool = True
    token: SecretStr | None = None  # (OPSBOT_DISCORD_TOKEN)
    api_url: HttpUrl = "https://discord.com/api/v10"
    # Unset: discord.py asks the API for the gateway; tests point it at a fake.
    gateway_url: str | None = None
    # Message commands: "!health", or a mention of the bot ("@opsbot health").
    command_prefix: Annotated[str, StringConstraints(min_length=1, max_length=5)] = "!"
    # `opsbot discord-sync` registers slash commands in these guilds (at once) or, when
    # empty, globally (Discord may take up to an hour to show them).
    sync_guild_ids: list[Annotated[str, StringConstraints(pattern=r"^\d{17,20}$")]] = []
    # Set: one slash command with a subcommand per opsbot command (`/ops health`,
    # `/ops rollback tag:v1.2`), as on Slack, instead of one top-level command each.
    umbrella_command: Annotated[str, StringConstraints(pattern=r"^[-_a-z0-9]{1,32}$")] | None = None


# key -> environment variable, for start-up errors that name what to set.
TOKEN_VARIABLES = {"token": "OPSBOT_DISCORD_TOKEN"}
