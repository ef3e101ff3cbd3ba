"""Fan-out under the platforms' rate limits: the fakes enforce Slack's, Telegram's and
Discord's limits (``enforce_limits()``), the real adapters post through one Outbox on the
real store, and every message arrives once, in order, without a 429 (the Outbox paces
itself). Bursts of raw HTTP requests show the enforcement itself works."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from adapters.discord.adapter import DiscordAdapter
from adapters.slack.adapter import SlackAdapter
from adapters.telegram.adapter import TelegramAdapter
from bot.app.config import parse_config
from bot.audit.trail import migrate
from bot.delivery.outbox import Outbox
from bot.delivery.store import OutboxStore, RowState
from bot.kernel.adapter import Adapter
from bot.kernel.clock import SystemClock
from bot.kernel.message import Location, Message
from bot.kernel.reply import Reply
from bot.storage.database import StateDatabase
from commands import COMMANDS
from tests.fakes.discord_server import GUILD_ID, FakeDiscord
from tests.fakes.slack_server import TEAM_ID, FakeSlack
from tests.fakes.telegram_server import FakeTelegram, Limits

PER_CHANNEL = 10
SLACK_CHANNELS = ["C0FAN0001", "C0FAN0002", "C0FAN0003"]
TELEGRAM_CHATS = ["500000001", "500000002", "500000003"]  # private chats
DISCORD_CHANNELS = ["200000000000000101", "200000000000000102", "200000000000000103"]
TITLE = re.compile(r"FANOUT-(\d+)")
_CHANNEL_MESSAGES = re.compile(r"/channels/(\d+)/messages")


async def _no_commands(message: Message) -> Reply | None:
    return None


@asynccontextmanager
async def fakes_and_outbox(
    tmp_path: Path,
) -> AsyncIterator[tuple[Outbox, OutboxStore, FakeSlack, FakeTelegram, FakeDiscord]]:
    """The three fakes enforcing their limits, the real adapters on them, and one Outbox
    on an SQLite state database with every adapter's post registered."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    await migrate(url)
    database = StateDatabase(url)
    await database.start()
    store = OutboxStore(database)
    outbox = Outbox(store)
    async with FakeSlack() as slack, FakeTelegram() as telegram, FakeDiscord() as discord:
        slack.enforce_limits()
        telegram.enforce_limits()
        discord.enforce_limits()
        text = "[roles.admin]\n" + slack.config() + telegram.config() + discord.config()
        config = parse_config(text, "test", {}, [spec.name for spec in COMMANDS])
        clock = SystemClock()
        adapters: list[Adapter] = [
            SlackAdapter(config.slack, COMMANDS, clock, stop_grace=1.0),
            TelegramAdapter(config.telegram, COMMANDS, clock),
            DiscordAdapter(
                config.discord, COMMANDS, clock, guild_ready_timeout=0.05, ready_timeout=10
            ),
        ]
        started: list[Adapter] = []
        try:
            async with asyncio.timeout(20):
                for adapter in adapters:
                    await adapter.start(_no_commands)
                    started.append(adapter)
                    outbox.register(adapter.name, adapter.post, adapter.limits)
            await outbox.start()
            yield outbox, store, slack, telegram, discord
        finally:
            await outbox.stop(grace=1.0)
            for adapter in reversed(started):
                await adapter.stop()
            outbox.closed()
            await database.close()


def _received_slack(fake: FakeSlack) -> list[tuple[str, str]]:
    return [(m.channel, m.all_text()) for m in fake.messages.values()]


def _received_telegram(fake: FakeTelegram) -> list[tuple[str, str]]:
    return [(str(c.params["chat_id"]), c.text) for c in fake.calls_of("sendMessage")]


def _received_discord(fake: FakeDiscord) -> list[tuple[str, str]]:
    return [
        (m[1], call.text)
        for call in fake.calls
        if call.method == "POST"
        and call.status == 200
        and (m := _CHANNEL_MESSAGES.fullmatch(call.path))
    ]


def _titles_by_channel(received: list[tuple[str, str]]) -> dict[str, list[int]]:
    by_channel: dict[str, list[int]] = {}
    for channel, text in received:
        found = TITLE.findall(text)
        assert len(set(found)) == 1, text  # one alert per message (coalesce=False)
        by_channel.setdefault(channel, []).append(int(found[0]))
    return by_channel


async def test_every_alert_arrives_once_in_order_within_the_platform_limits(
    tmp_path: Path,
) -> None:
    async with fakes_and_outbox(tmp_path) as (outbox, store, slack, telegram, discord):
        targets: list[tuple[str, list[str], str, Callable[[], list[tuple[str, str]]]]] = [
            ("slack", SLACK_CHANNELS, TEAM_ID, lambda: _received_slack(slack)),
            ("telegram", TELEGRAM_CHATS, "", lambda: _received_telegram(telegram)),
            ("discord", DISCORD_CHANNELS, GUILD_ID, lambda: _received_discord(discord)),
        ]
        expected: dict[str, dict[str, list[int]]] = {}
        started = time.monotonic()
        # Interleaved: every platform and channel fills up at once, as an alert storm does.
        for n in range(PER_CHANNEL * 3):
            for platform, channels, workspace, _ in targets:
                channel = channels[n % 3]
                destination = Location(platform, channel, workspace=workspace)
                assert await outbox.post(destination, Reply(title=f"FANOUT-{n}"))
                expected.setdefault(platform, {}).setdefault(channel, []).append(n)
        assert await outbox.drain(30.0)
        elapsed = time.monotonic() - started
        for platform, _, _, received in targets:
            assert _titles_by_channel(received()) == expected[platform], platform
        assert await store.count(RowState.DEAD) == 0
        assert await store.count(RowState.QUEUED) == 0
        # The Outbox kept to the limits by itself: the platforms never had to refuse.
        assert (slack.rate_limited, telegram.rate_limited, discord.rate_limited) == (0, 0, 0)
        # 10 messages a channel at 1/s take 9 s at least (Discord: 5 now, 5 after 5 s).
        assert elapsed >= 8.5


# -- the enforcement itself, with raw HTTP ------------------------------------------------


async def _post_slack(http: aiohttp.ClientSession, fake: FakeSlack, channel: str) -> Any:
    async with http.post(
        fake.api_url + "chat.postMessage",
        json={"channel": channel, "text": "burst"},
        headers={"Authorization": f"Bearer {fake.bot_token}"},
    ) as response:
        return response.status, response.headers.get("Retry-After"), await response.json()


async def test_fake_slack_refuses_more_than_one_message_a_second_after_a_burst() -> None:
    async with FakeSlack() as fake, aiohttp.ClientSession() as http:
        # Off by default: a burst goes through.
        assert [(await _post_slack(http, fake, "C1"))[0] for _ in range(6)] == [200] * 6
        fake.enforce_limits()
        answers = [await _post_slack(http, fake, "C2") for _ in range(4)]
        assert [status for status, _, _ in answers] == [200, 200, 200, 429]
        assert answers[3][1:] == ("1", {"ok": False, "error": "ratelimited"})
        assert (await _post_slack(http, fake, "C3"))[0] == 200  # per channel
        assert fake.rate_limited == 1
        assert sum(1 for m in fake.messages.values() if m.channel == "C2") == 3
        assert [c.status for c in fake.calls_of("chat.postMessage")][-2:] == [429, 200]
        await asyncio.sleep(1.05)  # a token is back
        assert (await _post_slack(http, fake, "C2"))[0] == 200


async def _send_telegram(http: aiohttp.ClientSession, fake: FakeTelegram, chat: int) -> Any:
    async with http.post(
        f"{fake.api_url}{fake.token}/sendMessage", data={"chat_id": str(chat), "text": "burst"}
    ) as response:
        return response.status, await response.json()


async def test_fake_telegram_refuses_beyond_each_of_its_limits() -> None:
    async with FakeTelegram() as fake, aiohttp.ClientSession() as http:
        assert [(await _send_telegram(http, fake, 1))[0] for _ in range(6)] == [200] * 6
        fake.enforce_limits()  # 1/s per chat (burst 3), 20/min per group, 30/s overall
        answers = [await _send_telegram(http, fake, 2) for _ in range(4)]
        assert [status for status, _ in answers] == [200, 200, 200, 429]
        assert answers[3][1] == {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 1",
            "parameters": {"retry_after": 1},
        }
        # 30 overall, over many chats: tested with a slower refill (30 per 30 s), so what
        # comes back during the burst cannot blur the count.
        fake.enforce_limits(Limits(overall=(30, 30.0)))
        statuses = [(await _send_telegram(http, fake, 100 + n))[0] for n in range(32)]
        assert statuses == [200] * 30 + [429] * 2
        # 20/min in one group, with the per-chat limit out of the way.
        fake.enforce_limits(Limits(per_chat=(100, 1.0)))
        answers = [await _send_telegram(http, fake, -1001) for _ in range(21)]
        assert [status for status, _ in answers] == [200] * 20 + [429]
        assert answers[20][1]["parameters"] == {"retry_after": 3}  # one message per 3 s
        assert fake.rate_limited == 1 + 2 + 1
        assert len([c for c in fake.calls if c.status == 429]) == 4
        assert len(fake.calls_of("sendMessage")) == 6 + 3 + 30 + 20  # the accepted ones


async def _post_discord(http: aiohttp.ClientSession, fake: FakeDiscord, channel: str) -> Any:
    async with http.post(
        f"{fake.api_url}/channels/{channel}/messages",
        json={"content": "burst"},
        headers={"Authorization": f"Bot {fake.token}"},
    ) as response:
        return response.status, response.headers, await response.json()


async def test_fake_discord_refuses_a_sixth_message_in_five_seconds_and_says_so() -> None:
    async with FakeDiscord() as fake, aiohttp.ClientSession() as http:
        off = [await _post_discord(http, fake, "201") for _ in range(6)]
        assert [status for status, _, _ in off] == [200] * 6
        assert "X-RateLimit-Remaining" not in off[0][1]
        fake.enforce_limits()
        answers = [await _post_discord(http, fake, "202") for _ in range(6)]
        assert [status for status, _, _ in answers] == [200] * 5 + [429]
        assert [h["X-RateLimit-Remaining"] for _, h, _ in answers[:5]] == ["4", "3", "2", "1", "0"]
        _, headers, _ = answers[0]
        assert headers["X-RateLimit-Limit"] == "5"
        assert headers["X-RateLimit-Bucket"]
        assert float(headers["X-RateLimit-Reset-After"]) == 5.0  # the whole window is free
        assert abs(float(headers["X-RateLimit-Reset"]) - (time.time() + 5)) < 1
        _, headers, body = answers[5]
        assert headers["Via"] and headers["Retry-After"] == "5"
        assert body["message"] == "You are being rate limited." and body["global"] is False
        assert 4 < body["retry_after"] <= 5
        assert (await _post_discord(http, fake, "203"))[0] == 200  # per channel
        assert fake.rate_limited == 1
        assert sum(1 for m in fake.messages.values() if m["channel_id"] == "202") == 5


async def test_a_429_the_libraries_gave_up_on_pauses_the_destination_as_told(
    tmp_path: Path,
) -> None:
    """slack_sdk retries a 429 twice and discord.py a few times; when they give up, the
    platform's Retry-After reaches the outbox, which waits that long (not its own shorter
    backoff) and delivers the message once."""
    async with fakes_and_outbox(tmp_path) as (outbox, _, slack, _telegram, discord):
        for _ in range(3):
            slack.fail_next("chat.postMessage", 429, {"Retry-After": "2"})
        discord.fail_next("POST", r"/channels/\d+/messages", retry_after=2.0, times=5)
        await outbox.post(
            Location("slack", SLACK_CHANNELS[0], None, TEAM_ID), Reply(title="FANOUT-1")
        )
        await outbox.post(
            Location("discord", DISCORD_CHANNELS[0], None, GUILD_ID), Reply(title="FANOUT-2")
        )
        assert await outbox.drain(30.0)
        slack_calls = [c for c in slack.calls if c.method == "chat.postMessage"]
        discord_calls = [c for c in discord.calls if c.method == "POST" and "/messages" in c.path]
    assert [c.status for c in slack_calls] == [429, 429, 429, 200]
    assert slack_calls[3].at - slack_calls[2].at >= 1.9  # Retry-After: 2, not a 1 s backoff
    assert len(_received_slack(slack)) == 1
    assert [c.status for c in discord_calls][-1] == 200
    assert len([c for c in discord_calls if c.status == 200]) == 1
    refused = [c for c in discord_calls if c.status == 429]
    assert discord_calls[len(refused)].at - refused[-1].at >= 1.9


async def test_a_long_discord_rate_limit_pauses_the_channel_not_the_post(tmp_path: Path) -> None:
    """Discord asking for more than MAX_RATELIMIT_WAIT_S: discord.py raises instead of
    sleeping inside post(), and the outbox pauses that channel for as long as asked while
    the other channels keep going."""
    async with fakes_and_outbox(tmp_path) as (outbox, store, _slack, _telegram, discord):
        slow, other = DISCORD_CHANNELS[0], DISCORD_CHANNELS[1]
        discord.fail_next("POST", rf"/channels/{slow}/messages", retry_after=45.0)
        with capture_logs() as logs:
            await outbox.post(Location("discord", slow, None, GUILD_ID), Reply(title="A"))
            await outbox.post(Location("discord", other, None, GUILD_ID), Reply(title="B"))
            await discord.wait_call("POST", f"/channels/{slow}/messages", status=429)
            await discord.wait_call("POST", f"/channels/{other}/messages")
            assert await outbox.drain(1.0) is False  # A waits out its 45 s
        delivered = _received_discord(discord)
        queued = await store.count(RowState.QUEUED)
    retry = next(e for e in logs if e["event"] == "outbox.retry")
    assert retry["retry_in_s"] >= 45, retry
    assert "rate limited" in retry["error"]
    assert [text.split()[-1] for _, text in delivered] == ["B"]
    assert queued == 1
