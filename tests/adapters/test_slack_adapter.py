"""The Slack adapter, with real slack-bolt / slack_sdk code talking to a fake Slack on
127.0.0.1 (tests/fakes/slack_server.py): Socket Mode and HTTP mode, Block Kit replies,
approval buttons, signatures, rate limits, redeliveries and reconnects."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest
from structlog.testing import capture_logs

from adapters.slack.adapter import SlackAdapter, plain_text, strip_mention
from adapters.slack.builtins import SLACK_BUILTIN_COMMANDS
from adapters.slack.manifest import manifest
from adapters.slack.render import BLOCKS_PER_MESSAGE, SECTION_LIMIT, render
from bot.app.adapters import build_adapters, refusals
from bot.app.cli import EXIT_CONFIG, main
from bot.app.config import parse_config
from bot.kernel.command import CommandSpec
from bot.kernel.message import Location
from bot.kernel.metrics import Metrics
from bot.kernel.reply import Button, Reply, Status
from commands import COMMANDS
from tests.actionkit import Scripts, actions_config
from tests.botharness import BASE_CONFIG, TestBot, extra_command, running_bot
from tests.fakes.slack_server import BOT_USER_ID, FakeSlack, sign
from tests.processes import ROOT, run_opsbot

ALICE, BOB, CAROL, DAVE = "U0ALICE01", "U0BOB0001", "U0CAROL01", "U0DAVE001"
NOBODY = "U0NOBODY1"
OPS = "C0OPS0001"
SECRET = "fake-signing-secret"
NAMES = [spec.name for spec in COMMANDS]


@asynccontextmanager
async def slack_bot(
    config_text: str = BASE_CONFIG,
    *,
    extra_commands: Sequence[CommandSpec[Any, Any]] = (),
    serve_http: bool = False,
    **slack_options: Any,
) -> AsyncIterator[tuple[TestBot, FakeSlack, list[SlackAdapter]]]:
    """The real bot with the Slack adapter attached to a fresh fake Slack."""
    made: list[SlackAdapter] = []

    def factory(config: Any, commands: Any, clock: Any) -> SlackAdapter:
        adapter = SlackAdapter(config.slack, commands, clock, ping_interval=0.3, stop_grace=2.0)
        made.append(adapter)
        return adapter

    async with FakeSlack() as slack:
        config = config_text + slack.config(**slack_options)
        running = running_bot(
            config, adapters=[factory], extra_commands=extra_commands, serve_http=serve_http
        )
        async with asyncio.timeout(30), running as tb:
            assert tb.bot.adapters.states["slack"] == "connected", tb.bot.adapters.states
            yield tb, slack, made


async def command(slack: FakeSlack, text: str, *, user: str, **kw: Any) -> str:
    """Type a command through the umbrella slash command (``/health x`` is typed as
    ``/ops health x``); returns the envelope id once the adapter has acked it."""
    envelope = await slack.send(
        "slash_commands", slack.slash_command("/ops", text.removeprefix("/"), user=user, **kw)
    )
    await slack.wait_ack(envelope)
    return envelope


# -- commands in, Block Kit out ---------------------------------------------------------


async def test_slash_command_is_acked_and_answered_in_block_kit() -> None:
    async with slack_bot() as (_, slack, _):
        envelope = await command(slack, "/whoami", user=ALICE)
        assert slack.acks[envelope][0] is None  # an empty ack, sent before any work
        answer = await slack.wait_for(lambda: slack.find_response("You are alice"))
        assert answer.body["response_type"] == "in_channel"
        blocks = answer.body["blocks"]
        assert blocks[0] == {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "ℹ️ *You are alice*", "verbatim": True},
        }
        fields = [f["text"] for f in blocks[1]["fields"]]
        assert "*platform id*\nslack:U0ALICE01" in fields and "*channel*\nops" in fields
        assert answer.body["text"].startswith("ℹ️ You are alice\n")  # plain-text fallback


async def test_mention_is_answered_in_its_thread() -> None:
    async with slack_bot() as (_, slack, _):
        mention = slack.mention("whoami", user=BOB)
        await slack.wait_ack(await slack.send("events_api", mention))
        posted = await slack.wait_for(lambda: slack.find_message("You are bob"))
        assert posted.via == "chat.postMessage" and posted.channel == OPS
        assert posted.thread_ts == mention["event"]["ts"]  # a new thread under the mention

        in_thread = slack.mention("/whoami", user=CAROL, thread_ts="1700000000.000100")
        await slack.send("events_api", in_thread)
        posted = await slack.wait_for(lambda: slack.find_message("You are carol"))
        assert posted.thread_ts == "1700000000.000100"
        # Every Web API call carried the bot token.
        assert {c.token for c in slack.calls if c.method != "apps.connections.open"} == {
            slack.bot_token
        }


async def test_direct_message_is_answered_and_other_messages_ignored() -> None:
    async with slack_bot() as (_, slack, _):
        # An edit, a bot's own message and a channel message are not commands.
        for ignored in (
            slack.direct_message("whoami", user=ALICE, subtype="message_changed"),
            slack.direct_message("whoami", user=ALICE, bot_id="B0OTHER01"),
            slack.direct_message("whoami", user=ALICE, channel_type="channel"),
        ):
            await slack.wait_ack(await slack.send("events_api", ignored))
        await slack.wait_ack(
            await slack.send("events_api", slack.direct_message("whoami", user=BOB))
        )
        posted = await slack.wait_for(lambda: slack.find_message("You are bob"))
        assert posted.channel == "D0DIRECT01" and posted.thread_ts is None
        await asyncio.sleep(0.2)
        assert len(slack.calls_of("chat.postMessage")) == 1


async def test_unknown_user_is_denied_privately() -> None:
    async with slack_bot() as (tb, slack, _):
        await command(slack, "/whoami", user=NOBODY)
        answer = await slack.wait_for(lambda: slack.find_response("know you"))
        assert answer.ephemeral
        assert "slack:U0NOBODY1" in answer.body["text"] and answer.body["text"].startswith("⛔")
        assert "· request " in answer.body["blocks"][0]["text"]["text"]
        [entry] = await tb.commands_audited()
        assert (entry.status, entry.rule, entry.user_id) == ("denied", "deny:unknown-user", NOBODY)


# -- approvals by button ------------------------------------------------------------------


async def test_approval_button_runs_the_action_once_for_a_second_person(
    scripts: Scripts,
) -> None:
    async with slack_bot(actions_config(scripts)) as (tb, slack, _):
        await command(slack, "/rollback v1.2", user=DAVE)
        request = await slack.wait_for(lambda: slack.find_message("Approval needed"))
        assert request.button("Approve")["value"].startswith("/approve ")
        assert request.button("Approve")["style"] == "primary"
        assert request.button("Deny")["style"] == "danger"
        assert scripts.runs() == []

        # The requester may not approve: told privately; the message stays as it was.
        await slack.send("interactive", slack.press(request, "Approve", user=DAVE))
        refusal = await slack.wait_for(lambda: slack.find_response("you requested this"))
        assert refusal.ephemeral and refusal.body["replace_original"] is False
        # A viewer may not either.
        await slack.send("interactive", slack.press(request, "Approve", user=CAROL))
        await slack.wait_for(lambda: slack.find_response("need role 'oncall'"))
        await asyncio.sleep(0.2)
        assert scripts.runs() == [] and request.updates == 0 and request.has_buttons

        # Bob approves: the action runs once, the message loses its buttons and says so.
        press = slack.press(request, "Approve", user=BOB)
        await slack.send("interactive", press)
        result = await slack.wait_for(lambda: slack.find_message("finished", thread_ts=request.ts))
        assert result.channel == OPS and result.via == "chat.postMessage"
        assert "rolling back to v1.2" in result.all_text()
        assert request.updates == 1 and not request.has_buttons
        assert "Approval needed" in request.all_text()
        assert request.blocks[-1]["elements"][0]["text"] == "✅ approved by bob"
        assert scripts.runs() == ["v1.2"]

        # Slack delivering the same press again (same action_ts) changes nothing.
        await slack.wait_ack(await slack.send("interactive", press))
        await asyncio.sleep(0.3)
        assert scripts.runs() == ["v1.2"]
        approvals = [(e.status, e.principal) for e in await tb.audit() if e.kind == "approval"]
        assert approvals == [("requested", "dave"), ("approved", "bob")]
        decided = [e for e in await tb.commands_audited() if e.command == "approve"]
        assert [(e.principal, e.status) for e in decided] == [
            ("dave", "denied"),
            ("carol", "denied"),
            ("bob", "ok"),
            ("bob", "duplicate"),  # the redelivered press, recognised and not run
        ]


# -- HTTP mode ------------------------------------------------------------------------------


async def test_http_mode_checks_signatures_and_answers_valid_requests(scripts: Scripts) -> None:
    options = {"mode": "http", "signing_secret": SECRET, "http_port": 0}
    async with slack_bot(actions_config(scripts), **options) as (tb, slack, [adapter]):
        url = f"http://127.0.0.1:{adapter.http_port}/slack/events"
        form = {**slack.slash_command("/ops", "rollback v1.2", user=DAVE)}
        body = urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        async with aiohttp.ClientSession() as http:
            forged = {**sign("not-the-secret", body), **headers}
            async with http.post(url, data=body, headers=forged) as response:
                assert response.status == 401
            stale = {**sign(SECRET, body, timestamp=int(time.time()) - 301), **headers}
            async with http.post(url, data=body, headers=stale) as response:
                assert response.status == 401
            unsigned = dict(headers)
            async with http.post(url, data=body, headers=unsigned) as response:
                assert response.status == 401
            await asyncio.sleep(0.2)
            assert slack.responses == [] and await tb.commands_audited() == []

            # Slack's check of a new Request URL is answered (signed, like everything).
            check = json.dumps({"type": "url_verification", "challenge": "c-123"}).encode()
            signed = {**sign(SECRET, check), "Content-Type": "application/json"}
            async with http.post(url, data=check, headers=signed) as response:
                assert response.status == 200
                assert (await response.json())["challenge"] == "c-123"

            async with http.post(url, data=body, headers={**sign(SECRET, body), **headers}) as ok:
                assert ok.status == 200
            request = await slack.wait_for(lambda: slack.find_message("Approval needed"))

            # An Events API retry (X-Slack-Retry-Num) of a mutating command runs it once.
            event = json.dumps(slack.mention("/rollback v1.3", user=DAVE)).encode()
            for retry in ("", "1"):
                retry_headers = {"X-Slack-Retry-Num": retry, "X-Slack-Retry-Reason": "timeout"}
                signed = {**sign(SECRET, event), "Content-Type": "application/json"}
                async with http.post(
                    url, data=event, headers={**signed, **(retry_headers if retry else {})}
                ) as response:
                    assert response.status == 200
            await slack.wait_for(lambda: slack.find_message("tag=v1.3"))

            # The button press arrives as a signed form with a JSON payload.
            press = urlencode({"payload": json.dumps(slack.press(request, "Approve", user=BOB))})
            press_body = press.encode()
            async with http.post(
                url, data=press_body, headers={**sign(SECRET, press_body), **headers}
            ) as response:
                assert response.status == 200
            await slack.wait_for(lambda: slack.find_message("finished"))
        assert scripts.runs() == ["v1.2"]
        requested = [e.args for e in await tb.audit() if e.status == "requested"]
        assert requested == [{"tag": "v1.2"}, {"tag": "v1.3"}]


async def test_refused_http_requests_are_counted_by_reason_and_logged_rate_limited() -> None:
    """Requests Bolt's signature check refuses show in /metrics by reason, and in the log
    as one warning per reason a minute, however many come."""
    async with FakeSlack() as slack:
        config = BASE_CONFIG + slack.config(mode="http", signing_secret=SECRET, http_port=0)
        async with running_bot(config, serve_http=True) as tb:
            bot = tb.bot
            [adapter] = build_adapters(bot.config, COMMANDS, bot.clock, bot.metrics)
            await bot.attach([adapter])
            assert isinstance(adapter, SlackAdapter) and bot.http_server is not None
            url = f"http://127.0.0.1:{adapter.http_port}/slack/events"
            body = urlencode(slack.slash_command("/ops", "whoami", user=ALICE)).encode()
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            sent = {
                "bad_signature": {**sign("not-the-secret", body), **form},
                "stale_timestamp": {**sign(SECRET, body, int(time.time()) - 301), **form},
                "missing_headers": form,
                "bad_timestamp": {**sign(SECRET, body), "X-Slack-Request-Timestamp": "x", **form},
            }
            with capture_logs() as logs:
                async with aiohttp.ClientSession() as http:
                    for _ in range(3):
                        for headers in sent.values():
                            async with http.post(url, data=body, headers=headers) as response:
                                assert response.status == 401
                    signed = {**sign(SECRET, body), **form}
                    async with http.post(url, data=body, headers=signed) as response:
                        assert response.status == 200
                    base = f"http://127.0.0.1:{bot.http_server.bound_port}"
                    async with http.get(f"{base}/metrics") as response:
                        metrics = await response.text()
            await slack.wait_for(lambda: slack.find_response("You are alice"))
    for reason in sent:
        line = f'opsbot_refused_requests_total{{platform="slack",reason="{reason}"}} 3.0'
        assert line in metrics, reason
    warnings = [e for e in logs if e["event"] == "adapter.requests_refused"]
    assert sorted(e["reason"] for e in warnings) == sorted(sent)  # one line per reason
    assert all(e["log_level"] == "warning" and e["count"] == 1 for e in warnings)
    assert "Bad signature" not in str(logs) and "not-the-secret" not in str(logs)


def test_refusals_are_logged_once_a_minute_per_reason_with_the_count_since() -> None:
    clock = [0.0]
    refused = refusals(Metrics(), "slack", now=lambda: clock[0])
    with capture_logs() as logs:
        for at in (0.0, 1.0, 2.0, 59.0, 61.0, 62.0):
            clock[0] = at
            refused("bad_signature")
        refused("stale_timestamp")
    assert [(e["reason"], e["count"]) for e in logs] == [
        ("bad_signature", 1),
        ("bad_signature", 4),  # the three since the first line, and this one
        ("stale_timestamp", 1),
    ]


async def test_http_mode_binds_loopback_by_default() -> None:
    section = parse_config(BASE_CONFIG + "[slack]\nmode='http'\n", "t", {}, NAMES).slack
    assert section is not None and section.http_host == "127.0.0.1"


# -- platform troubles ------------------------------------------------------------------


async def test_rate_limited_post_is_retried_after_retry_after() -> None:
    async with slack_bot() as (_, slack, _):
        slack.fail_next("chat.postMessage", 429, {"Retry-After": "1"})
        await slack.send("events_api", slack.mention("whoami", user=ALICE))
        await slack.wait_for(lambda: slack.find_message("You are alice"))
        first, second = slack.calls_of("chat.postMessage")
        assert (first.status, second.status) == (429, 200)
        assert second.at - first.at >= 1.0


async def test_redelivered_envelope_and_event_run_once() -> None:
    async with slack_bot(actions_config_for_dedup()) as (tb, slack, _):
        payload = slack.slash_command("/ops", "rollback v2.1", user=DAVE)
        for _ in range(2):  # the same envelope, delivered twice
            slack.acks.pop("env-same", None)
            await slack.wait_ack(
                await slack.send("slash_commands", payload, envelope_id="env-same")
            )
        event = slack.mention("/rollback v2.2", user=DAVE)
        await slack.wait_ack(await slack.send("events_api", event))
        await slack.wait_ack(await slack.send("events_api", event, retry_attempt=1))
        await slack.wait_for(lambda: slack.find_message("tag=v2.2"))
        await slack.wait_for(lambda: slack.find_response("tag=v2.1"))
        await asyncio.sleep(0.3)
        requested = [e.args["tag"] for e in await tb.audit() if e.status == "requested"]
        assert sorted(requested) == ["v2.1", "v2.2"]
        assert len([r for r in slack.responses if "Approval needed" in r.all_text()]) == 1
        assert len([m for m in slack.messages.values() if "tag=v2.2" in m.text]) == 1
        duplicates = [e.args["tag"] for e in await tb.commands_audited() if e.status == "duplicate"]
        assert sorted(duplicates) == ["v2.1", "v2.2"]


def actions_config_for_dedup() -> str:
    # rollback without scripts: the request (not the run) is what must happen once.
    return (
        BASE_CONFIG
        + """
[[actions]]
name = "rollback"
argv = ["/bin/true", "{tag}"]
risk = "high"
roles = ["deployer"]
approver_roles = ["oncall"]
[[actions.args]]
name = "tag"
pattern = '^v\\d+\\.\\d+$'
[policy.commands.rollback]
roles = ["deployer"]
"""
    )


async def test_reconnects_after_the_websocket_is_dropped() -> None:
    async with slack_bot() as (_, slack, _):
        await command(slack, "/whoami", user=ALICE)
        await slack.drop()
        await slack.wait_connections(2)
        await command(slack, "/whoami", user=BOB)
        await slack.wait_for(lambda: slack.find_response("You are bob"))
        assert len(slack.calls_of("apps.connections.open")) == 2

        # A cut connection (no close frame) is noticed by the ping check and replaced.
        await slack.drop(abrupt=True)
        await slack.wait_connections(3)
        await command(slack, "/whoami", user=CAROL)
        await slack.wait_for(lambda: slack.find_response("You are carol"))


async def test_stop_finishes_answers_in_flight_then_disconnects() -> None:
    async def nap(request: Any, args: Any, deps: Any) -> Reply:
        await asyncio.sleep(0.5)
        return Reply(title="rested", status=Status.OK)

    async with slack_bot(extra_commands=[extra_command("nap", nap)]) as (_, slack, _):
        await command(slack, "/nap", user=ALICE)
        assert slack.responses == []
    # The bot has stopped: the answer was still delivered, and the websocket is closed.
    assert slack.find_response("rested") is not None
    assert slack.open_sockets == 0


async def test_missing_token_is_reported_and_the_bot_keeps_serving() -> None:
    async with running_bot(
        BASE_CONFIG + "[slack]\napp_token = 'xapp-1'\n", adapters=[_plain]
    ) as tb:
        state = tb.bot.adapters.states["slack"]
        assert state == "error: slack: OPSBOT_SLACK_BOT_TOKEN is not set (or [slack] bot_token)"
        assert "You are alice" in await tb.exec("/whoami")
    async with running_bot(
        BASE_CONFIG + "[slack]\nbot_token = 'xoxb-1'\n", adapters=[_plain]
    ) as tb:
        assert "OPSBOT_SLACK_APP_TOKEN is not set" in tb.bot.adapters.states["slack"]
    http_config = BASE_CONFIG + "[slack]\nmode = 'http'\nbot_token = 'xoxb-1'\n"
    async with running_bot(http_config, adapters=[_plain]) as tb:
        assert "OPSBOT_SLACK_SIGNING_SECRET is not set" in tb.bot.adapters.states["slack"]


async def test_refused_token_is_reported_with_slacks_error() -> None:
    async with FakeSlack(bot_token="xoxb-the-real-one") as slack:
        config = BASE_CONFIG + slack.config().replace("xoxb-the-real-one", "xoxb-wrong")
        async with running_bot(config, adapters=[_plain]) as tb:
            assert tb.bot.adapters.states["slack"] == "error: slack: auth.test failed: invalid_auth"
            assert "You are alice" in await tb.exec("/whoami")
    async with FakeSlack(app_token="xapp-the-real-one") as slack:
        config = BASE_CONFIG + slack.config().replace("xapp-the-real-one", "xapp-wrong")
        async with running_bot(config, adapters=[_plain]) as tb:
            state = tb.bot.adapters.states["slack"]
            assert state == "error: slack: apps.connections.open failed: invalid_auth"
            assert slack.connections == 0


async def test_bolts_oauth_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # slack-bolt reads these itself and would then ignore the bot token.
    monkeypatch.setenv("SLACK_CLIENT_ID", "1.2")
    monkeypatch.setenv("SLACK_CLIENT_SECRET", "s")
    async with (
        FakeSlack() as slack,
        running_bot(BASE_CONFIG + slack.config(), adapters=[_plain]) as tb,
    ):
        assert "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET" in tb.bot.adapters.states["slack"]
        assert slack.connections == 0


def _plain(config: Any, commands: Any, clock: Any) -> SlackAdapter:
    return SlackAdapter(config.slack, commands, clock)


# -- posts the bot makes on its own -------------------------------------------------------


async def test_job_progress_and_result_are_posted_in_the_thread(scripts: Scripts) -> None:
    async with slack_bot(actions_config(scripts)) as (_, slack, _):
        mention = slack.mention("/run slow-deploy v9.1", user=BOB)
        thread = mention["event"]["ts"]
        await slack.send("events_api", mention)
        await slack.wait_for(lambda: slack.find_message("running as job", thread_ts=thread))
        await slack.wait_for(lambda: slack.find_message("step 1", thread_ts=thread))
        result = await slack.wait_for(lambda: slack.find_message("finished in", thread_ts=thread))
        assert "step 2" in result.all_text()


async def test_post_with_a_key_edits_the_message_it_posted_before() -> None:
    async with slack_bot() as (_, slack, [adapter]):
        where = Location("slack", OPS, "1700000000.000200")
        await adapter.post(where, Reply(title="deploy: 10%"), "job-progress:j1")
        await adapter.post(where, Reply(title="other"), None)
        await adapter.post(where, Reply(title="deploy: 90%"), "job-progress:j1")
        progress = [m for m in slack.messages.values() if "deploy" in m.text]
        assert len(progress) == 1 and progress[0].updates == 1
        assert "deploy: 90%" in progress[0].all_text()
        assert progress[0].thread_ts == "1700000000.000200"
        assert [c.method for c in slack.calls if c.method.startswith("chat.")] == [
            "chat.postMessage",
            "chat.postMessage",
            "chat.update",
        ]


async def test_one_key_posted_to_two_channels_edits_each_channels_own_message() -> None:
    """An alert goes to every channel of its route under one key; its resolution must
    edit the message in each channel, not move one channel's message to the other."""
    async with slack_bot() as (_, slack, [adapter]):
        ops, incident = Location("slack", OPS), Location("slack", "C0INC0001")
        for where in (ops, incident):
            await adapter.post(where, Reply(title="FIRING: DiskFull"), "alert:g1:ab12")
        for where in (ops, incident):
            await adapter.post(where, Reply(title="RESOLVED: DiskFull"), "alert:g1:ab12")
        alerts = [m for m in slack.messages.values() if "DiskFull" in m.text]
    assert sorted(m.channel for m in alerts) == sorted([OPS, "C0INC0001"])
    assert all(m.updates == 1 and "RESOLVED" in m.all_text() for m in alerts)


# -- rendering and translation (pure) --------------------------------------------------------


def test_long_output_is_split_within_slack_limits() -> None:
    code = "\n".join(f"line {i} <tag> & more " + "x" * 80 for i in range(3000))
    reply = Reply(
        title="Big", status=Status.OK, code=code, buttons=(Button("Go", "/run go", "primary"),)
    )
    messages = render(reply)
    assert len(messages) > 1
    for message in messages:
        assert len(message.blocks) <= BLOCKS_PER_MESSAGE
        for block in message.blocks:
            text = block.get("text", {}).get("text", "")
            assert len(text) <= SECTION_LIMIT
            assert "<tag>" not in text  # escaped
    assert messages[-1].blocks[-1]["type"] == "actions"
    assert messages[-1].blocks[-1]["elements"][0]["action_id"] == "opsbot_button_0"
    assert messages[1].text.startswith("(cont. 2/")
    shown = "".join(
        b["text"]["text"].removeprefix("```\n").removesuffix("\n```")
        for m in messages
        for b in m.blocks
        if b.get("text", {}).get("text", "").startswith("```")
    )
    unescaped = shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert unescaped.replace("\n", "") == code.replace("\n", "")  # nothing lost


def test_mentions_and_slack_markup_become_plain_text() -> None:
    assert strip_mention(f"<@{BOT_USER_ID}> health api", BOT_USER_ID) == "health api"
    assert strip_mention(f"<@{BOT_USER_ID}|opsbot> whoami <@U0BOB0001>", BOT_USER_ID) == (
        "whoami <@U0BOB0001>"
    )
    assert plain_text("url=<https://x.example/a?b=1&amp;c=2|x.example> a &lt; b") == (
        "url=https://x.example/a?b=1&c=2 a < b"
    )


# -- the manifest ----------------------------------------------------------------------------


def test_manifest_has_the_umbrella_command_only_needed_scopes_and_never_a_builtin() -> None:
    config = parse_config(BASE_CONFIG, "t", {}, NAMES)
    socket = manifest(config.slack, config.bot.name, COMMANDS)
    commands = {c["command"]: c for c in socket["features"]["slash_commands"]}
    assert set(commands) == {"/ops"}
    assert "/ops help" in commands["/ops"]["description"]
    assert sorted(socket["oauth_config"]["scopes"]["bot"]) == [
        "app_mentions:read",
        "chat:write",
        "commands",
        "im:history",
    ]
    settings = socket["settings"]
    assert settings["socket_mode_enabled"] is True
    assert settings["interactivity"] == {"is_enabled": True}
    assert settings["event_subscriptions"]["bot_events"] == ["app_mention", "message.im"]

    own = parse_config(
        BASE_CONFIG + "[slack]\numbrella_command = 'opsbot'\nslash_commands = ['rollback']\n",
        "t",
        {},
        NAMES,
    )
    listed = manifest(own.slack, own.bot.name, COMMANDS)
    commands = {c["command"]: c for c in listed["features"]["slash_commands"]}
    assert set(commands) == {"/opsbot", "/rollback"}
    assert commands["/rollback"]["usage_hint"] == "<tag> [--dry-run]"

    http_config = parse_config(
        BASE_CONFIG + "[slack]\nmode = 'http'\nhttp_path = '/hooks/slack'\n", "t", {}, NAMES
    )
    http = manifest(http_config.slack, http_config.bot.name, COMMANDS)
    assert http["settings"]["socket_mode_enabled"] is False
    assert http["settings"]["interactivity"]["request_url"].endswith("/hooks/slack")
    assert all(c["url"].endswith("/hooks/slack") for c in http["features"]["slash_commands"])


@pytest.mark.parametrize("key", ["umbrella_command", "slash_commands"])
def test_a_slack_builtin_is_refused_as_a_slash_command(
    key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    value = "'status'" if key == "umbrella_command" else "['health', 'status']"
    path = tmp_path / "opsbot.toml"
    path.write_text(BASE_CONFIG + f"[slack]\n{key} = {value}\n")
    assert main(["check-config", str(path)]) == EXIT_CONFIG
    output = capsys.readouterr().err
    where = "slack.umbrella_command" if key == "umbrella_command" else "slack.slash_commands[1]"
    assert f"{where}: /status is one of Slack's own commands" in output


def test_cli_prints_a_manifest_slack_accepts() -> None:
    result = run_opsbot("slack-manifest", "--config", str(ROOT / "examples" / "opsbot.toml"))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    names = {c["command"].removeprefix("/") for c in printed["features"]["slash_commands"]}
    assert names == {"ops"}
    assert not names & SLACK_BUILTIN_COMMANDS
    # Every opsbot command that is also a Slack built-in is reached through the umbrella.
    assert {spec.name for spec in COMMANDS} & SLACK_BUILTIN_COMMANDS == {"status", "help"}


async def test_the_umbrella_runs_any_command_alone_is_help_and_listed_ones_run_too() -> None:
    async with slack_bot(slash_commands=["whoami"]) as (_, slack, _):
        # /status is Slack's own: through the umbrella it reaches opsbot.
        await slack.send("slash_commands", slack.slash_command("/ops", "status", user=ALICE))
        assert await slack.wait_for(lambda: slack.find_response(" up "))
        await slack.send("slash_commands", slack.slash_command("/ops", "", user=ALICE))
        assert await slack.wait_for(lambda: slack.find_response("/whoami"))
        # A command listed in [slack] slash_commands is its own slash command as well.
        await slack.send("slash_commands", slack.slash_command("/whoami", "", user=BOB))
        assert await slack.wait_for(lambda: slack.find_response("You are bob"))


async def test_a_connection_lost_after_start_is_degraded_not_unready() -> None:
    """Slack lost after the bot connected to it: /status says so, and /ready says
    ``degraded`` but stays 200. Every replica loses Slack together, and a 503 from all of
    them would take alert intake (and the other platforms' webhooks) off the load balancer
    just when alerts matter; posts to Slack wait in the outbox meanwhile."""
    async with slack_bot(serve_http=True) as (tb, slack, _):
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            ready = await client.get("/ready")
            assert ready.status_code == 200
            assert ready.json()["checks"]["adapter:slack"] == "connected"
            assert "slack: connected" in await tb.exec("/status", as_="alice")
            connected = 'opsbot_adapter_connected{platform="slack"}'
            assert f"{connected} 1.0" in (await client.get("/metrics")).text
            # Slack goes away for good: the Socket Mode client keeps trying, and says so.
            await slack.stop()
            # The metric to alert on now that /ready stays 200: it moves without a person
            # reading /ready or /status (the adapter's state is watched every 5 s).
            for _ in range(80):
                if f"{connected} 0.0" in (await client.get("/metrics")).text:
                    break
                await asyncio.sleep(0.1)
            assert f"{connected} 0.0" in (await client.get("/metrics")).text
            for _ in range(100):
                ready = await client.get("/ready")
                if ready.json()["checks"]["adapter:slack"] != "connected":
                    break
                await asyncio.sleep(0.05)
            assert ready.status_code == 200, ready.json()
            assert ready.json()["checks"]["adapter:slack"] == "degraded: reconnecting"
            assert "slack: reconnecting" in await tb.exec("/status", as_="alice")
