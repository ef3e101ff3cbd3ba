"""Ack and Silence from the alert message itself, on Slack, Telegram and Discord at once:
each platform's real library against its fake server, one bot, alerts over real HTTP.

Every button is pressed by someone allowed, by someone without the role, twice, and after
the alert resolved; presses are checked and audited like typed commands, and the pressed
message says who did what, in the same words on every platform."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx

from bot.features.alerts.silence_ends import JOB_NAME as SILENCE_ENDS
from tests.adapters.test_adapters_together import _discord, _slack, _telegram
from tests.botharness import BASE_CONFIG, ManualClock, TestBot, running_bot
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import FakeTelegram
from tests.features.alerts.test_alerts import AUTH, TOKEN, am_alert, webhook

ALERTS = f"""
[alerts]
token = "{TOKEN}"
default_channels = ["ops"]

[policy.commands.alerts]
roles = ["oncall"]
[policy.commands.ack]
roles = ["oncall"]
[policy.commands.silence]
roles = ["oncall"]
"""

SLACK_OPS, TELEGRAM_OPS, DISCORD_OPS = "C0OPS0001", -1001000000001, "200000000000000001"
# bob is oncall, carol a viewer (no role for /ack or /silence), alice an admin.
SLACK = {"bob": "U0BOB0001", "carol": "U0CAROL01", "alice": "U0ALICE01"}
TELEGRAM = {"bob": 222222222, "carol": 333333333, "alice": 111111111}
DISCORD = {"bob": "100000000000000002", "carol": "100000000000000003"}
EPHEMERAL = 64
LABELS = ["Ack", "Silence 1h", "Silence 4h", "Silence 24h"]


class Platforms:
    def __init__(self, slack: FakeSlack, tg: FakeTelegram, discord: FakeDiscord) -> None:
        self.slack, self.tg, self.discord = slack, tg, discord


@contextlib.asynccontextmanager
async def three_platforms(
    clock: Any = None,
) -> AsyncIterator[tuple[TestBot, httpx.AsyncClient, Platforms]]:
    async with FakeSlack() as slack, FakeTelegram() as tg, FakeDiscord() as discord:
        config = BASE_CONFIG + ALERTS + slack.config() + tg.config() + discord.config()
        async with (
            asyncio.timeout(90),
            running_bot(
                config, adapters=[_slack, _telegram, _discord], serve_http=True, clock=clock
            ) as tb,
        ):
            assert tb.bot.http_server is not None
            base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
            async with httpx.AsyncClient(base_url=base) as client:
                yield tb, client, Platforms(slack, tg, discord)


async def fire(tb: TestBot, client: httpx.AsyncClient, *alerts: dict[str, Any], group: str) -> None:
    answer = await client.post(
        "/alerts/alertmanager", json=webhook(*alerts, group=group), headers=AUTH
    )
    assert answer.status_code == 202, answer.text
    await tb.bot.alert_intake.drained()


async def telegram_alert(tg: FakeTelegram, contains: str) -> tuple[dict[str, Any], dict[str, str]]:
    call = await tg.wait_call(
        "sendMessage",
        lambda c: int(c.params["chat_id"]) == TELEGRAM_OPS and contains in c.text,
    )
    keyboard = call.params["reply_markup"]["inline_keyboard"]
    return tg.message_of(call), {b["text"]: b["callback_data"] for row in keyboard for b in row}


async def telegram_press(
    tg: FakeTelegram, message: dict[str, Any], data: str, who: str
) -> tuple[str | None, bool]:
    """(the text shown to the presser alone, if any; whether the message was edited)."""
    edits = len(tg.calls_of("editMessageText"))
    press = tg.press(message, data, user_id=TELEGRAM[who])
    query = press["callback_query"]["id"]
    answer = await tg.wait_call(
        "answerCallbackQuery", lambda c: c.params["callback_query_id"] == query
    )
    if answer.params.get("show_alert"):
        await asyncio.sleep(0.2)
        return str(answer.params.get("text")), len(tg.calls_of("editMessageText")) > edits
    await tg.wait_call("sendMessage", replying_to=press)
    return None, len(tg.calls_of("editMessageText")) > edits


async def discord_alert(discord: FakeDiscord, contains: str) -> tuple[dict[str, Any], list[str]]:
    call = await discord.wait_call(
        "POST", f"/channels/{DISCORD_OPS}/messages", where=lambda c: contains in c.text
    )
    return call.response, call.custom_ids


def discord_followups(discord: FakeDiscord, interaction: dict[str, Any]) -> str:
    return f"/webhooks/{interaction['application_id']}/{interaction['token']}"


async def test_ack_on_every_platform_checked_audited_and_shown_the_same_way() -> None:
    async with three_platforms() as (tb, client, on):
        await fire(tb, client, am_alert("DiskFull", instance="db-1", fp="fp-disk"), group="g-disk")
        alert_id = (await tb.bot.alert_board.firing())[0].id

        # The same four buttons on every platform, each a short command naming the alert.
        slack_msg = await on.slack.wait_for(lambda: on.slack.find_message("DiskFull"))
        tg_msg, tg_buttons = await telegram_alert(on.tg, "DiskFull")
        dc_msg, dc_ids = await discord_alert(on.discord, "DiskFull")
        assert [slack_msg.button(label)["value"] for label in LABELS] == [
            f"/ack {alert_id}",
            f"/silence {alert_id} 1h",
            f"/silence {alert_id} 4h",
            f"/silence {alert_id} 24h",
        ]
        assert list(tg_buttons) == LABELS and list(tg_buttons.values()) == [
            slack_msg.button(label)["value"] for label in LABELS
        ]
        assert dc_ids == [f"opsbot:{slack_msg.button(label)['value']}" for label in LABELS]

        # carol has no role for /ack: told alone, on Slack; the message keeps its buttons.
        await on.slack.send("interactive", on.slack.press(slack_msg, "Ack", user=SLACK["carol"]))
        refusal = await on.slack.wait_for(lambda: on.slack.find_response("needs role"))
        assert refusal.ephemeral and slack_msg.updates == 0 and slack_msg.has_buttons

        # bob acknowledges on Slack: the message loses its buttons and says who.
        await on.slack.send("interactive", on.slack.press(slack_msg, "Ack", user=SLACK["bob"]))
        await on.slack.wait_for(lambda: slack_msg if slack_msg.updates else None)
        assert not slack_msg.has_buttons
        assert slack_msg.blocks[-1]["elements"][0]["text"] == "✅ acknowledged by bob"

        # The same alert's buttons elsewhere: already done, said to the presser alone.
        private, edited = await telegram_press(on.tg, tg_msg, tg_buttons["Ack"], "alice")
        assert private is not None and "already acknowledged by bob" in private and not edited
        press = await on.discord.press(dc_msg, dc_ids[0], user=DISCORD["bob"])
        answer = await on.discord.wait_call("POST", discord_followups(on.discord, press))
        assert answer.body["flags"] & EPHEMERAL and "already acknowledged by bob" in answer.text
        assert on.discord.calls_to("PATCH", press["token"]) == []

        # Resolved: the Silence buttons left on the Telegram message answer privately.
        await fire(
            tb,
            client,
            am_alert("DiskFull", instance="db-1", fp="fp-disk", status="resolved"),
            group="g-disk",
        )
        private, edited = await telegram_press(on.tg, tg_msg, f"/silence {alert_id} 1h", "bob")
        assert private is not None and f"no firing alert '{alert_id}'" in private
        assert await tb.bot.silences.active() == []

        entries = await tb.audit()
    acks = [(e.principal, e.status) for e in entries if e.kind == "alert"]
    assert acks == [("bob", "acked")]
    pressed = [(e.principal, e.status, e.platform) for e in entries if e.command == "ack"]
    assert ("carol", "denied", "slack") in pressed
    assert ("alice", "ok", "telegram") in pressed and ("bob", "ok", "discord") in pressed


async def test_silence_button_mutes_that_alert_only_and_the_channel_is_told_when_it_ends() -> None:
    clock = ManualClock()
    async with three_platforms(clock) as (tb, client, on):
        await fire(tb, client, am_alert("HighCPU", instance="web-1", fp="fp-1"), group="g-1")
        tg_msg, tg_buttons = await telegram_alert(on.tg, "HighCPU")

        # carol may not silence; bob may, for an hour, from the message.
        private, edited = await telegram_press(on.tg, tg_msg, tg_buttons["Silence 1h"], "carol")
        assert private is not None and "needs role" in private and not edited
        private, edited = await telegram_press(on.tg, tg_msg, tg_buttons["Silence 1h"], "bob")
        assert private is None and edited
        outcome = on.tg.calls_of("editMessageText")[-1].text.rsplit("\n", 1)[-1]
        assert re.fullmatch(
            r"🔕 silenced by bob until \d{4}-\d\d-\d\d \d\d:\d\d UTC \(silence \w{6}\)", outcome
        ), outcome
        (silence,) = await tb.bot.silences.active()
        # Scoped to the alert (all its labels), not to its name.
        assert silence.matchers_text == ('alertname="HighCPU" instance="web-1" severity="warning"')
        # A second press of the same button adds nothing, and says so privately.
        private, _ = await telegram_press(on.tg, tg_msg, tg_buttons["Silence 1h"], "bob")
        assert private is not None and "Already silenced by bob" in private
        assert len(await tb.bot.silences.active()) == 1

        # Another instance of the same alert still pages.
        await fire(tb, client, am_alert("HighCPU", instance="web-2", fp="fp-2"), group="g-2")
        await telegram_alert(on.tg, "instance=web-2")

        # The hour passes: the chat where it was made is told, once.
        clock.advance(timedelta(hours=1, seconds=1))
        await tb.bot.scheduler.run_now(SILENCE_ENDS)
        told = await on.tg.wait_call(
            "sendMessage", lambda c: f"Silence {silence.id} ended" in c.text
        )
        assert int(told.params["chat_id"]) == TELEGRAM_OPS
        assert "1 alert(s) it muted are firing" in told.text
        await tb.bot.scheduler.run_now(SILENCE_ENDS)
        await asyncio.sleep(0.3)
        assert len([c for c in on.tg.calls_of("sendMessage") if "ended" in c.text]) == 1
        entries = [e for e in await tb.audit() if e.kind == "silence"]
    assert [(e.principal, e.status) for e in entries] == [("bob", "created")]


async def test_grouped_message_tells_its_alerts_apart_and_offers_the_whole_group() -> None:
    async with running_bot(BASE_CONFIG + ALERTS, serve_http=True) as tb:
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            await fire(
                tb,
                client,
                am_alert("NodeDown", instance="web-1", job="node", fp="fa"),
                am_alert("NodeDown", instance="web-2", job="node", fp="fb"),
                group="g-nodes",
            )
            text = await tb.posted("FIRING (2)")
        (_, reply), *_ = tb.console.posted
        assert "(id " in text and "· instance=web-1" in text and "· instance=web-2" in text
        assert [b.label for b in reply.buttons] == [
            "Ack all",
            "Silence group 1h",
            "Silence group 4h",
            "Silence group 24h",
        ]
        first = reply.buttons[0].command.removeprefix("/ack ")
        assert first.startswith("group:")
        silenced = await tb.exec(reply.buttons[1].command, as_="bob")
        (silence,) = await tb.bot.silences.active()
        acked = await tb.exec(reply.buttons[0].command, as_="bob")
        again = await tb.exec(reply.buttons[0].command, as_="bob")
        firing = await tb.bot.alert_board.firing()
    assert "Silence" in silenced and "created by bob" in silenced
    # The labels the group shares: both alerts, and no other instance of anything else.
    assert silence.matchers_text == 'alertname="NodeDown" job="node" severity="warning"'
    assert "2 alert(s) of group" in acked and "acknowledged by bob" in acked
    assert "already acknowledged by bob" in again
    assert {a.acked_by for a in firing} == {"bob"}
