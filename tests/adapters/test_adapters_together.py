"""Slack, Telegram and Discord in one bot process, answering at the same time, each through
its real library against its fake platform; the console answers meanwhile too."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.discord.adapter import DiscordAdapter
from adapters.slack.adapter import SlackAdapter
from adapters.telegram.adapter import TelegramAdapter
from tests.botharness import BASE_CONFIG, running_bot
from tests.fakes.discord_server import BOT_ID as DISCORD_BOT
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import BOT_USER_ID as SLACK_BOT
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import BOT_USERNAME as TELEGRAM_BOT
from tests.fakes.telegram_server import FakeTelegram

ROUNDS = 5  # /whoami per platform, all in flight together


def _slack(config: Any, commands: Any, clock: Any) -> SlackAdapter:
    return SlackAdapter(config.slack, commands, clock, ping_interval=0.3, stop_grace=2.0)


def _telegram(config: Any, commands: Any, clock: Any) -> TelegramAdapter:
    return TelegramAdapter(config.telegram, commands, clock, poll_timeout=1)


def _discord(config: Any, commands: Any, clock: Any) -> DiscordAdapter:
    return DiscordAdapter(
        config.discord, commands, clock, guild_ready_timeout=0.05, ready_timeout=10
    )


async def test_three_platforms_in_one_process_answer_concurrently_and_say_who_they_are() -> None:
    async with FakeSlack() as slack, FakeTelegram() as telegram, FakeDiscord() as discord:
        config = BASE_CONFIG + slack.config() + telegram.config() + discord.config()
        adapters = [_slack, _telegram, _discord]
        async with asyncio.timeout(60), running_bot(config, adapters=adapters) as tb:
            assert tb.bot.adapters.states == {
                "console": "connected",
                "slack": "connected",
                "telegram": "connected",
                "discord": "connected",
            }
            # /status says the name to address the bot by on each platform.
            status = await tb.exec("/status")
            [line] = [line for line in status.splitlines() if "answers to" in line]
            assert line.split() == [
                *("answers", "to", "discord", "@opsbot", f"({DISCORD_BOT}),"),
                *("slack", "@opsbot", f"({SLACK_BOT}),", "telegram", f"@{TELEGRAM_BOT}"),
            ]

            async def on_slack(i: int) -> str:
                await slack.send(
                    "slash_commands", slack.slash_command("/ops", "whoami", user="U0ALICE01")
                )
                answer = await slack.wait_for(
                    lambda: (
                        [r for r in slack.responses if "You are alice" in r.all_text()][i:] or None
                    )
                )
                return answer[0].all_text()

            async def on_telegram(i: int) -> str:
                update = telegram.command("/whoami", user_id=222222222, chat_id=-1001000000001)
                call = await telegram.wait_call("sendMessage", replying_to=update)
                return call.text

            async def on_discord(i: int) -> str:
                interaction = await discord.slash("whoami", user="100000000000000003")
                await discord.ack_of(interaction)
                return (await discord.first_followup(interaction)).text

            async def on_console(i: int) -> str:
                return await tb.exec("/whoami", as_="dave")

            results = await asyncio.gather(
                *(
                    one(i)
                    for i in range(ROUNDS)
                    for one in (on_slack, on_telegram, on_discord, on_console)
                )
            )
            entries = await tb.commands_audited()
        by_platform = [results[k::4] for k in range(4)]
        assert all("You are alice" in r for r in by_platform[0])
        assert all("You are bob" in r for r in by_platform[1])
        assert all("You are carol" in r for r in by_platform[2])
        assert all("You are dave" in r for r in by_platform[3])
        platforms = sorted(e.platform for e in entries if e.command == "whoami")
        assert platforms == sorted(["slack", "telegram", "discord", "console"] * ROUNDS)
