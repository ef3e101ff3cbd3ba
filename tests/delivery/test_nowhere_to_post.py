"""A bot with nowhere to post keeps what it would post, bounded and for a while: an alert
for a Slack channel, taken while no Slack adapter runs, goes out once one attaches (the
next start, configured); what waits too long, or too much of it, becomes a dead letter
saying why."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
from msgspec.structs import replace

from adapters.slack.adapter import SlackAdapter
from bot.kernel.message import Location
from bot.kernel.reply import Reply
from tests.botharness import BASE_CONFIG, running_bot
from tests.fakes.slack_server import FakeSlack
from tests.features.alerts.test_alerts import AUTH, TOKEN, am_alert, webhook

# #pager exists only on Slack.
CONFIG = (
    BASE_CONFIG
    + f"""
[channels.pager]
ids = ["slack:C0PAGER01"]

[alerts]
token = "{TOKEN}"
default_channels = ["pager"]
"""
)


async def test_an_alert_taken_with_no_adapter_goes_out_when_one_attaches(tmp_path: Path) -> None:
    async with running_bot(CONFIG, serve_http=True, data_dir=tmp_path) as tb:
        assert tb.bot.http_server is not None
        url = f"http://127.0.0.1:{tb.bot.http_server.bound_port}/alerts/alertmanager"
        async with httpx.AsyncClient() as client:
            sent = await client.post(url, json=webhook(am_alert("DiskFull")), headers=AUTH)
        assert sent.status_code == 202
        await tb.bot.alert_intake.drained()
        assert tb.bot.outbox.queued == 1  # kept, not dropped with a warning
    async with FakeSlack() as slack:

        def attach(config: object, commands: object, clock: object) -> SlackAdapter:
            return SlackAdapter(config.slack, commands, clock, ping_interval=0.3)  # type: ignore[attr-defined]

        async with running_bot(CONFIG + slack.config(), data_dir=tmp_path, adapters=[attach]):
            posted = await slack.wait_for(lambda: slack.find_message("DiskFull"))
    assert posted.channel == "C0PAGER01" and "FIRING (1): DiskFull" in posted.all_text()


async def test_what_no_adapter_takes_expires_and_is_bounded() -> None:
    nowhere = Location(platform="slack", channel_id="C0PAGER01")
    async with running_bot(CONFIG) as tb:
        outbox = tb.bot.outbox
        outbox.retry = replace(outbox.retry, no_poster_poll=0.05, no_poster_max=3)
        for n in range(5):
            assert await outbox.post(nowhere, Reply(title=f"message {n}"))
        await _until(lambda: outbox.queued == 3)  # the two oldest gave way
        outbox.retry = replace(outbox.retry, no_poster_ttl=0.0)
        assert await outbox.post(nowhere, Reply(title="one more"))
        await _until(lambda: outbox.queued == 0)
        dead = tb.bot.metrics.outbox_dead_letters._value.get()
    assert dead == 6


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not reached in time")
