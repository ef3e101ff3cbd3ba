"""The outbox's lease holds for every request of a post, the retries an SDK makes on its
own after sleeping out a 429 included (bot.kernel.adapter.check_post_attempt). Here for
slack-sdk and discord.py against their fakes; python-telegram-bot's rate limiter is shown
with real replicas in tests/app/test_replicas_chaos.py.

The outbox runs each poster under ``posting_while(still_ours)``: here the lease "lapses"
as the platform refuses the first request with a 429, as it does for a replica frozen
during the SDK's sleep.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapters.discord.adapter import DiscordAdapter
from adapters.slack.adapter import SlackAdapter
from bot.kernel.adapter import LeaseLapsed, posting_while
from bot.kernel.message import Location
from bot.kernel.reply import Reply, Status
from tests.botharness import BASE_CONFIG, running_bot
from tests.fakes.discord_server import CHANNEL_ID, FakeDiscord
from tests.fakes.slack_server import FakeSlack

REPLY = Reply(title="deploy finished", status=Status.OK)


async def test_slack_does_not_retry_a_429_once_the_lease_lapsed() -> None:
    made: list[SlackAdapter] = []

    def factory(config: Any, commands: Any, clock: Any) -> SlackAdapter:
        made.append(SlackAdapter(config.slack, commands, clock, ping_interval=0.3))
        return made[-1]

    async with FakeSlack() as slack, running_bot(BASE_CONFIG + slack.config(), adapters=[factory]):
        [adapter] = made
        slack.fail_next("chat.postMessage", 429, {"Retry-After": "1"})

        def refused() -> bool:
            return any(c.status == 429 for c in slack.calls_of("chat.postMessage"))

        with pytest.raises(LeaseLapsed), posting_while(lambda: not refused()):
            async with asyncio.timeout(10):
                await adapter.post(Location("slack", "C0OPS0001"), REPLY, None)
        assert [c.status for c in slack.calls_of("chat.postMessage")] == [429]

        # Still ours: slack-sdk's own retry goes out after the pause.
        slack.fail_next("chat.postMessage", 429, {"Retry-After": "1"})
        with posting_while(lambda: True):
            await adapter.post(Location("slack", "C0OPS0001"), REPLY, None)
        assert [c.status for c in slack.calls_of("chat.postMessage")] == [429, 429, 200]


async def test_discord_does_not_retry_a_429_once_the_lease_lapsed() -> None:
    made: list[DiscordAdapter] = []

    def factory(config: Any, commands: Any, clock: Any) -> DiscordAdapter:
        made.append(DiscordAdapter(config.discord, commands, clock, guild_ready_timeout=0.05))
        return made[-1]

    async with (
        FakeDiscord() as fake,
        running_bot(BASE_CONFIG + fake.config(), adapters=[factory]),
    ):
        [adapter] = made
        path = rf"^/channels/{CHANNEL_ID}/messages$"
        fake.fail_next("POST", path, retry_after=1.0)

        def posts() -> list[int]:
            return [c.status for c in fake.calls_to("POST", f"/channels/{CHANNEL_ID}/messages")]

        with pytest.raises(LeaseLapsed), posting_while(lambda: 429 not in posts()):
            async with asyncio.timeout(10):
                await adapter.post(Location("discord", str(CHANNEL_ID)), REPLY, None)
        assert posts() == [429]

        # Still ours: discord.py's own retry goes out after the pause.
        fake.fail_next("POST", path, retry_after=1.0)
        with posting_while(lambda: True):
            await adapter.post(Location("discord", str(CHANNEL_ID)), REPLY, None)
        assert posts() == [429, 429, 200]
