"""The Discord adapter against a fake Discord (tests/fakes/discord_server.py): the real
discord.py over real sockets on 127.0.0.1, the real bot, its real audit log."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters.discord.adapter import DiscordAdapter
from adapters.discord.render import (
    DESCRIPTION_LIMIT,
    EMBEDS_PER_MESSAGE,
    FIELD_VALUE_LIMIT,
    FIELDS_PER_EMBED,
    MESSAGE_TOTAL_LIMIT,
    TITLE_LIMIT,
    render,
)
from adapters.discord.sync import command_text, sync_commands
from bot.app.config import parse_config
from bot.app.config.models import Config
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec
from bot.kernel.reply import Button, Field, Reply, Status, Table
from bot.pipeline.parse import parse
from commands import COMMANDS
from tests.actionkit import Scripts, actions_config, approval_id
from tests.botharness import BASE_CONFIG, TestBot, running_bot
from tests.fakes.discord_server import CHANNEL_ID, THREAD_ID, FakeDiscord
from tests.processes import ROOT, clean_env

ALICE = "100000000000000001"  # admin
BOB = "100000000000000002"  # oncall
CAROL = "100000000000000003"  # viewer
DAVE = "100000000000000004"  # deployer
STRANGER = "100000000000000999"
DM_CHANNEL = "200000000000000077"
EPHEMERAL = 64


def discord_adapter(
    config: Config, specs: list[CommandSpec[Any, Any]], clock: Clock
) -> DiscordAdapter:
    return DiscordAdapter(config.discord, specs, clock, guild_ready_timeout=0.05, ready_timeout=10)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@contextlib.asynccontextmanager
async def discord_bot(fake: FakeDiscord, config: str = BASE_CONFIG) -> AsyncIterator[TestBot]:
    async with running_bot(config + fake.config(), adapters=[discord_adapter]) as tb:
        assert tb.bot.adapters.states["discord"] == "connected", tb.bot.adapters.states
        yield tb


async def audited_run_statuses(tb: TestBot, *, count: int, within: float = 10.0) -> list[str]:
    """The statuses of the first ``count`` /run invocations in the audit log, polled: a
    redelivery that is recognised leaves no other trace to wait for."""
    for _ in range(int(within / 0.02)):
        statuses = [e.status for e in await tb.commands_audited() if e.command == "run"]
        if len(statuses) >= count:
            return statuses
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} /run entries after {within} s")


def followups(fake: FakeDiscord, interaction: dict[str, Any]) -> str:
    return f"/webhooks/{fake.app_id}/{interaction['token']}"


async def test_slash_command_is_deferred_then_answered_with_an_embed(fake: FakeDiscord) -> None:
    async with discord_bot(fake) as tb:
        interaction = await fake.slash("help", {"command": "status"}, user=ALICE)
        ack = await fake.wait_call("POST", f"/interactions/{interaction['id']}/")
        assert ack.body["type"] == 5  # deferred: "opsbot is thinking…"
        reply = await fake.wait_call("POST", followups(fake, interaction))
        assert ack.at < reply.at
        [embed] = reply.embeds
        assert embed["title"].startswith("ℹ️ /status")
        assert "Usage: /status" in embed["description"]
        assert embed["color"] == 0x5865F2  # info
        [entry] = [e for e in await tb.commands_audited() if e.command == "help"]
        assert (entry.platform, entry.user_id, entry.principal) == ("discord", ALICE, "alice")
        assert (entry.channel, entry.workspace) == (CHANNEL_ID, fake.guild_id)
        assert entry.raw_text == "/help status" and dict(entry.args) == {"command": "status"}


async def test_prefix_mention_and_direct_messages_are_answered_as_replies(
    fake: FakeDiscord,
) -> None:
    async with discord_bot(fake) as tb:
        chat = await fake.message("lunch at 12? !whoami", user=BOB)
        typed = await fake.message("!whoami", user=BOB)
        reply = await fake.wait_call("POST", f"/channels/{CHANNEL_ID}/messages")
        assert reply.replies_to == typed["id"]
        assert reply.embeds[0]["title"] == "ℹ️ You are bob"
        assert f"discord:{BOB}" not in reply.text  # a channel reads it: no platform id

        mention = await fake.message(f"<@{fake.bot_id}> whoami", user=CAROL, channel=THREAD_ID)
        in_thread = await fake.wait_call("POST", f"/channels/{THREAD_ID}/messages")
        assert in_thread.replies_to == mention["id"]
        assert "You are carol" in in_thread.text

        direct = await fake.message("whoami", user=DAVE, channel=DM_CHANNEL, guild=False)
        in_dm = await fake.wait_call("POST", f"/channels/{DM_CHANNEL}/messages")
        assert in_dm.replies_to == direct["id"]
        assert "You are dave" in in_dm.text and f"discord:{DAVE}" in in_dm.text

        referenced = {c.replies_to for c in fake.calls_to("POST", "/messages")}
        assert chat["id"] not in referenced
        entries = {e.principal: e for e in await tb.commands_audited()}
        assert set(entries) == {"bob", "carol", "dave"}
        assert (entries["carol"].channel, entries["carol"].thread) == (THREAD_ID, mention["id"])
        assert (entries["dave"].channel, entries["dave"].workspace) == (DM_CHANNEL, "")


async def test_unknown_user_is_denied(fake: FakeDiscord) -> None:
    async with discord_bot(fake) as tb:
        await fake.message("!whoami", user=STRANGER)
        reply = await fake.wait_call("POST", f"/channels/{CHANNEL_ID}/messages")
        [embed] = reply.embeds
        assert embed["title"].startswith("⛔ Denied: I don't know you")
        # A channel message's answer is public: no platform id in it; a direct message's is.
        assert STRANGER not in reply.text and "send me a direct message" in reply.text
        await fake.message("whoami", user=STRANGER, channel=DM_CHANNEL, guild=False)
        private = await fake.wait_call("POST", f"/channels/{DM_CHANNEL}/messages")
        assert f"discord:{STRANGER}" in private.text
        entry = (await tb.commands_audited())[0]
        assert entry.status == "denied" and embed["footer"]["text"] == f"request {entry.request_id}"


async def test_approval_buttons_run_the_action_once_for_another_approver(
    fake: FakeDiscord, scripts: Scripts
) -> None:
    async with discord_bot(fake, actions_config(scripts)) as tb:
        ask = await fake.slash("rollback", {"tag": "v1.2"}, user=DAVE)
        asked = await fake.wait_call("POST", followups(fake, ask))
        assert "Approval needed: rollback tag=v1.2" in asked.text
        request = approval_id(asked.text)
        approve, deny = asked.custom_ids
        assert (approve, deny) == (f"opsbot:/approve {request}", f"opsbot:/deny {request}")
        message = asked.response
        assert scripts.runs() == []

        # The requester may not approve: told alone, the message is left as it was.
        own = await fake.press(message, approve, user=DAVE)
        ack = await fake.wait_call("POST", f"/interactions/{own['id']}/")
        assert ack.body["type"] == 6  # deferred update of the pressed message
        refused = await fake.wait_call("POST", followups(fake, own))
        assert refused.body["flags"] & EPHEMERAL
        assert "you requested this" in refused.text
        assert fake.calls_to("PATCH", own["token"]) == []
        assert scripts.runs() == []

        press = await fake.press(message, approve, user=BOB)
        edited = await fake.wait_call("PATCH", f"{followups(fake, press)}/messages/@original")
        assert edited.body["components"] == []  # the buttons are gone
        assert "Approval needed" in edited.text
        assert edited.text.endswith("\n✅ approved by bob")  # the same line on every platform
        result = await fake.wait_call("POST", followups(fake, press))
        assert "rollback tag=v1.2 finished" in result.text
        assert not result.body.get("flags", 0) & EPHEMERAL
        assert scripts.runs() == ["v1.2"]

        # Discord delivers the same press again: it refuses a second answer, nothing runs.
        await fake.redeliver("INTERACTION_CREATE", press)
        await fake.wait_call("POST", f"/interactions/{press['id']}/", status=400)
        # A press on a stale copy of the message, by someone else: refused to them alone.
        late = await fake.press(message, approve, user=ALICE)
        late_reply = await fake.wait_call("POST", followups(fake, late))
        assert late_reply.body["flags"] & EPHEMERAL and "already approved by bob" in late_reply.text
        assert scripts.runs() == ["v1.2"]

        entries = await tb.audit()
        approvals = [(e.status, e.principal) for e in entries if e.kind == "approval"]
        assert approvals == [("requested", "dave"), ("approved", "bob")]
        denied = [e for e in await tb.commands_audited() if e.status == "denied"]
        assert [(e.principal, e.rule, e.user_id) for e in denied] == [
            ("dave", "approval:requester-may-not-approve", DAVE)
        ]


async def test_buttons_still_work_after_a_restart(
    fake: FakeDiscord, scripts: Scripts, tmp_path: Path
) -> None:
    """Presses are handled by custom id, not by a view registered in memory."""
    config, data = actions_config(scripts) + fake.config(), tmp_path / "data"
    async with running_bot(config, data_dir=data, adapters=[discord_adapter]):
        typed = await fake.message("!rollback v3.1", user=DAVE)
        asked = await fake.wait_call("POST", "/messages", where=lambda c: bool(c.custom_ids))
        assert asked.replies_to == typed["id"]
    async with running_bot(config, data_dir=data, adapters=[discord_adapter]) as tb:
        assert fake.identifies == 2
        press = await fake.press(asked.response, asked.custom_ids[0], user=BOB)
        result = await fake.wait_call("POST", followups(fake, press))
        assert "rollback tag=v3.1 finished" in result.text
        assert scripts.runs() == ["v3.1"]
        # Same conversation as the request: no separate "approved" notice was posted.
        assert [c.text for c in fake.calls_to("POST", "/messages")] == [asked.text]
        assert [e.status for e in await tb.audit() if e.kind == "approval"] == [
            "requested",
            "approved",
        ]


async def test_rate_limited_followup_and_message_are_retried(fake: FakeDiscord) -> None:
    async with discord_bot(fake):
        fake.fail_next("POST", r"^/webhooks/", retry_after=0.05)
        fake.fail_next("POST", r"^/channels/\d+/messages$", retry_after=0.05)
        interaction = await fake.slash("whoami", user=ALICE)
        reply = await fake.wait_call("POST", followups(fake, interaction))
        [limited] = [c for c in fake.calls_to("POST", "/webhooks/") if c.status == 429]
        assert reply.at - limited.at >= 0.05 and "You are alice" in reply.text

        await fake.message("!whoami", user=BOB)
        answer = await fake.wait_call("POST", f"/channels/{CHANNEL_ID}/messages")
        [limited] = [c for c in fake.calls_to("POST", "/channels/") if c.status == 429]
        assert answer.at - limited.at >= 0.05 and "You are bob" in answer.text


STEPS_ACTION = """
[[actions]]
name = "steps"
argv = ["{script}", "{{tag}}"]
env = {{ MARKER = "{marker}" }}
risk = "write"
roles = ["oncall"]
timeout = "10s"
[[actions.args]]
name = "tag"
pattern = '^v\\d+\\.\\d+$'
"""


async def test_redelivered_message_runs_the_action_once_and_progress_is_edited(
    fake: FakeDiscord, scripts: Scripts
) -> None:
    script = scripts.dir / "steps.sh"
    script.write_text(
        '#!/bin/sh\nfor i in 1 2 3 4; do echo "step $i"; sleep 0.35; done\necho "$1" >> "$MARKER"\n'
    )
    script.chmod(0o755)
    extra = STEPS_ACTION.format(script=script, marker=scripts.marker)
    async with discord_bot(fake, actions_config(scripts, extra)) as tb:
        typed = await fake.message("!run steps v4.2", user=BOB)
        await fake.redeliver("MESSAGE_CREATE", typed)
        result = await fake.wait_call(
            "POST", f"/channels/{CHANNEL_ID}/messages", where=lambda c: "finished in" in c.text
        )
        assert result.replies_to == typed["id"] and "step 4" in result.text
        assert scripts.runs() == ["v4.2"]
        posted = fake.calls_to("POST", f"/channels/{CHANNEL_ID}/messages")
        acks = [c for c in posted if "running as job" in c.text]
        assert len(acks) == 1  # one answer: the redelivery was recognised
        # Progress is posted once, as a reply, then that message is edited in place.
        [progress] = [c for c in posted if ", running for" in c.text]
        assert progress.replies_to == typed["id"]
        edits = fake.calls_to("PATCH", f"/channels/{CHANNEL_ID}/messages/{progress.response['id']}")
        assert edits and "step 2" in edits[-1].text
        await fake.redeliver("MESSAGE_CREATE", typed)  # a late retry, after the job ended
        statuses = await audited_run_statuses(tb, count=3)
        assert sorted(statuses) == ["duplicate", "duplicate", "ok"]
        assert scripts.runs() == ["v4.2"]
        assert len(fake.calls_to("POST", "/messages")) == len(posted)  # no answer to it


@pytest.mark.parametrize("resumable", [True, False], ids=["resume", "re-identify"])
async def test_commands_are_answered_after_the_gateway_drops(
    fake: FakeDiscord, resumable: bool
) -> None:
    """The library resumes the session (or identifies anew when the gateway refuses to
    resume; discord.py then waits 5 s before IDENTIFY, as Discord asks)."""
    fake.resumable = resumable
    async with discord_bot(fake) as tb:
        await fake.drop_gateway()
        await fake.wait_live()
        assert (fake.identifies, fake.resumes) == ((1, 1) if resumable else (2, 0))
        interaction = await fake.slash("whoami", user=CAROL)
        reply = await fake.wait_call("POST", followups(fake, interaction))
        assert "You are carol" in reply.text
        assert (await tb.bot.readiness())["adapter:discord"] == "connected"


async def test_a_gateway_lost_after_start_reads_reconnecting(fake: FakeDiscord) -> None:
    """discord.py reconnects by itself and keeps saying it is ready meanwhile, so a bot cut
    off from the gateway looked connected to /ready, /status and opsbot_adapter_connected.
    From its disconnect until it resumes (the test above: "connected" again) it is
    "reconnecting": degraded, as every replica loses Discord together."""
    async with discord_bot(fake) as tb:
        await fake.stop()  # gone for good: discord.py keeps trying
        state = await tb.adapter_check("discord", lambda state: state != "connected")
        assert state == "degraded: reconnecting"
        assert "discord: reconnecting" in await tb.exec("/status", as_="alice")


@pytest.mark.parametrize(
    ("event", "broken"),
    [
        ("MESSAGE_CREATE", {"id": "500000000000009001", "channel_id": CHANNEL_ID}),  # no author
        ("INTERACTION_CREATE", {"id": "500000000000009002", "type": 2}),  # no token, no data
    ],
)
async def test_an_event_discord_py_cannot_parse_is_logged_and_skipped(
    fake: FakeDiscord, event: str, broken: dict[str, Any]
) -> None:
    """discord.py's parser raises on a dispatch it cannot read, inside its gateway loop:
    the connection must not die with it. The event is logged and skipped, and the next
    ones are answered on the same session."""
    async with discord_bot(fake) as tb:
        with capture_logs() as logs:
            await fake.send_event(event, broken)
            interaction = await fake.slash("whoami", user=CAROL)
            reply = await fake.wait_call("POST", followups(fake, interaction))
        assert "You are carol" in reply.text
        typed = await fake.message("!whoami", user=BOB)
        answer = await fake.wait_call("POST", f"/channels/{CHANNEL_ID}/messages")
        assert answer.replies_to == typed["id"] and "You are bob" in answer.text
        assert (fake.identifies, fake.resumes) == (1, 0)  # the same session throughout
        assert tb.bot.adapters.states["discord"] == "connected"
        [skipped] = [e for e in logs if e.get("where") == "discord.gateway_event"]
        assert skipped["discord_event"] == event and skipped["log_level"] == "error"
        assert skipped["error"].startswith("KeyError")


async def test_a_gateway_connection_discord_py_gives_up_on_is_started_again(
    fake: FakeDiscord,
) -> None:
    """A dispatch discord.py's own gateway loop cannot read (a RESUMED without data) ends
    its connection task for good; the bot notices (the adapter says "error"), closes the
    client and connects afresh, as at start-up, without a restart."""
    fake.garble_next_resumed = True
    async with discord_bot(fake) as tb:
        with capture_logs() as logs:
            await fake.drop_gateway()
            for _ in range(200):  # the bot looks every 5 s
                if fake.identifies == 2 and tb.bot.adapters.states["discord"] == "connected":
                    break
                await asyncio.sleep(0.05)
        assert (fake.identifies, fake.resumes) == (2, 1)
        lost = [e for e in logs if e["event"] == "adapter.lost"]
        assert len(lost) == 1 and "TypeError" in lost[0]["error"], lost
        interaction = await fake.slash("whoami", user=CAROL)
        reply = await fake.wait_call("POST", followups(fake, interaction))
        assert "You are carol" in reply.text
        assert (await tb.bot.readiness())["adapter:discord"] == "connected"


async def test_missing_token_names_the_variable_and_the_bot_keeps_serving(
    fake: FakeDiscord,
) -> None:
    config = BASE_CONFIG + f'\n[discord]\napi_url = "{fake.api_url}"\n'
    async with running_bot(config, adapters=[discord_adapter]) as tb:
        state = tb.bot.adapters.states["discord"]
        assert state.startswith("error: ") and "OPSBOT_DISCORD_TOKEN" in state
        assert "You are alice" in await tb.exec("/whoami")
        assert "discord: error" in await tb.exec("/status")
    assert fake.calls == []


async def test_refused_token_is_an_adapter_error(fake: FakeDiscord) -> None:
    async with running_bot(
        BASE_CONFIG + fake.config(token="not-the-token"), adapters=[discord_adapter]
    ) as tb:
        state = tb.bot.adapters.states["discord"]
        assert state.startswith("error: Discord refused the bot token (401")
        assert "OPSBOT_DISCORD_TOKEN" in state
        assert "You are alice" in await tb.exec("/whoami")


@pytest.mark.parametrize(
    ("trouble", "expected"),
    [
        (
            "refuse_message_content",
            "error: Discord refused the gateway connection: enable the Message Content intent",
        ),
        ("silent", "connecting: Discord was not ready within 0.5 s"),
    ],
)
async def test_gateway_trouble_at_start_is_an_adapter_error(
    fake: FakeDiscord, trouble: str, expected: str
) -> None:
    setattr(fake, trouble, True)

    def impatient(
        config: Config, specs: list[CommandSpec[Any, Any]], clock: Clock
    ) -> DiscordAdapter:
        return DiscordAdapter(
            config.discord, specs, clock, guild_ready_timeout=0.05, ready_timeout=0.5
        )

    async with running_bot(BASE_CONFIG + fake.config(), adapters=[impatient]) as tb:
        # A refused intent is for good; a gateway that does not answer is tried again.
        state = tb.bot.adapters.states["discord"]
        assert state.startswith(expected), state
        assert "You are alice" in await tb.exec("/whoami")


async def test_discord_sync_puts_every_command_with_typed_options(fake: FakeDiscord) -> None:
    text = BASE_CONFIG + fake.config(extra=f'sync_guild_ids = ["{fake.guild_id}"]\n')
    config = parse_config(text, "test", {}, [s.name for s in COMMANDS])
    summary = await sync_commands(config.discord, COMMANDS)
    put = await fake.wait_call(
        "PUT", f"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands"
    )
    commands = {c["name"]: c for c in put.body}
    assert list(commands) == [s.name for s in COMMANDS]
    assert summary.startswith(
        f"registered {len(COMMANDS)} slash commands in guild(s) {fake.guild_id}"
    )
    options = {name: {o["name"]: o for o in c["options"]} for name, c in commands.items()}
    assert options["rollback"]["tag"] | {"description": ""} == {
        "name": "tag",
        "type": 3,
        "required": True,
        "description": "",
    }
    assert options["rollback"]["dry_run"]["type"] == 5
    assert not options["rollback"]["dry_run"]["required"]
    assert [c["value"] for c in options["policy"]["mode"]["choices"]] == ["off", "strict"]
    limit = options["audit"]["limit"]
    assert (limit["type"], limit["min_value"], limit["max_value"]) == (4, 1, 100)
    assert options["audit"]["user"]["max_length"] == 200
    assert list(options["deny"]) == ["id", "reason"] and options["deny"]["id"]["required"]
    assert "named" not in options["run"] and options["run"]["words"]["type"] == 3
    for command in commands.values():  # Discord wants required options first
        required = [o["required"] for o in command["options"]]
        assert required == sorted(required, reverse=True)
        assert 1 <= len(command["description"]) <= 100


async def test_umbrella_command_registers_one_command_and_runs_its_subcommands(
    fake: FakeDiscord,
) -> None:
    extra = f'sync_guild_ids = ["{fake.guild_id}"]\numbrella_command = "ops"\n'
    config = parse_config(
        BASE_CONFIG + fake.config(extra=extra), "test", {}, [s.name for s in COMMANDS]
    )
    summary = await sync_commands(config.discord, COMMANDS)
    put = await fake.wait_call(
        "PUT", f"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands"
    )
    [umbrella] = put.body
    assert umbrella["name"] == "ops" and summary.startswith(
        f"registered /ops with {len(COMMANDS)} subcommands"
    )
    subcommands = {o["name"]: o for o in umbrella["options"]}
    assert list(subcommands) == [s.name for s in COMMANDS]
    assert {o["type"] for o in subcommands.values()} == {1}  # SUB_COMMAND
    assert [o["name"] for o in subcommands["deny"]["options"]] == ["id", "reason"]

    async with running_bot(
        BASE_CONFIG + fake.config(extra='umbrella_command = "ops"\n'), adapters=[discord_adapter]
    ):
        ran = await fake.slash("whoami", user=BOB, umbrella="ops")
        answer = await fake.first_followup(ran)
        assert "You are bob" in answer.text
        bare = await fake.slash("ops", user=BOB)  # the umbrella alone is /help
        assert "/whoami" in (await fake.first_followup(bare)).text


async def test_discord_sync_cli_registers_globally(fake: FakeDiscord, tmp_path: Path) -> None:
    config = tmp_path / "opsbot.toml"
    config.write_text(BASE_CONFIG + f'\n[discord]\napi_url = "{fake.api_url}"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "discord-sync",
        "--config",
        str(config),
        cwd=ROOT,
        env=clean_env(OPSBOT_DISCORD_TOKEN=fake.token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "globally" in out.decode() and "/rollback" in out.decode()
    put = await fake.wait_call("PUT", f"/applications/{fake.app_id}/commands")
    assert len(put.body) == len(COMMANDS)


@pytest.mark.parametrize(
    ("name", "options", "text", "bound"),
    [
        (
            "rollback",
            {"tag": "v1.2", "dry_run": True},
            "/rollback v1.2 --dry-run",
            {"dry_run": True},
        ),
        ("rollback", {"tag": "v1.2", "dry_run": False}, "/rollback v1.2", {"dry_run": False}),
        (
            "deny",
            {"id": "k7m2qx", "reason": "wrong tag, don't"},
            "/deny k7m2qx 'wrong tag, don'\"'\"'t'",
            {"reason": "wrong tag, don't"},
        ),
        ("policy", {"duration": "30m", "reason": "a=b"}, "/policy duration=30m reason=a=b", {}),
        ("audit", {"limit": 5, "user": "bob smith"}, "/audit limit=5 user='bob smith'", {}),
        ("help", {"command": "--x"}, "/help command=--x", {"command": "--x"}),
        ("run", {"action": "deploy", "words": "v1 env=prod"}, "/run deploy v1 env=prod", {}),
    ],
)
def test_slash_options_become_the_text_a_person_would_type(
    name: str, options: dict[str, Any], text: str, bound: dict[str, Any]
) -> None:
    spec = next(s for s in COMMANDS if s.name == name)
    assert command_text(spec, name, options) == text
    parsed = parse(text, bot_names=frozenset({"opsbot"}), addressed=True)
    assert parsed is not None
    args = spec.bind(parsed).model_dump()
    expected = {k: v for k, v in options.items() if k not in ("words",)} | bound
    if name == "run":
        expected = {"action": "deploy", "words": ("v1",), "named": {"env": "prod"}}
    assert {k: args[k] for k in expected} == expected


async def test_long_replies_are_split_within_discord_limits() -> None:
    code = "\n".join(f"line {i:05d} " + "x" * 60 for i in range(300))
    reply = Reply(
        title="T" * 300,
        status=Status.ERROR,
        text="word " * 2000,
        fields=tuple(Field(f"field {i}", "v" * (1500 if i == 3 else 10)) for i in range(40)),
        table=Table(("a", "b"), tuple((str(i), "y" * 50) for i in range(200))),
        code=code + "\n```not a fence```",
        buttons=(Button("Approve", "/approve abc123", "primary"),),
        request_id="5d0c2f0e41a7",
    )
    messages = render(reply)
    assert len(messages) > 1
    for message in messages:
        assert 1 <= len(message.embeds) <= EMBEDS_PER_MESSAGE
        assert sum(len(e) for e in message.embeds) <= MESSAGE_TOTAL_LIMIT
        for embed in message.embeds:
            assert len(embed.title or "") <= TITLE_LIMIT
            assert len(embed.description or "") <= DESCRIPTION_LIMIT
            assert len(embed.fields) <= FIELDS_PER_EMBED
            assert all(len(f.value or "") <= FIELD_VALUE_LIMIT for f in embed.fields)
    assert [m.view is not None for m in messages] == [False] * (len(messages) - 1) + [True]
    assert messages[-1].embeds[-1].footer.text == "request 5d0c2f0e41a7"
    descriptions = "\n".join(e.description or "" for m in messages for e in m.embeds)
    assert "T" * 300 in descriptions  # the long title is shown whole
    assert all(f"line {i:05d}" in descriptions for i in range(300))
    assert "```not a fence```" not in descriptions
    fields = [f for m in messages for e in m.embeds for f in e.fields]
    assert len([f for f in fields if not (f.name or "").endswith("(cont.)")]) == 40
    assert sum(len(f.value or "") for f in fields if (f.name or "").startswith("field 3")) > 1500


async def test_channel_rules_hold_in_a_threads_parent_channel(fake: FakeDiscord) -> None:
    """/policy is allowed in #ops only; a Discord thread has its own id, yet it is in #ops."""
    async with discord_bot(fake) as tb:
        await fake.message("!policy", user=BOB, channel=THREAD_ID)
        reply = await fake.wait_call("POST", f"/channels/{THREAD_ID}/messages")
        assert "Policy mode" in reply.text, reply.text
        entries = [e for e in await tb.commands_audited() if e.command == "policy"]
        assert [(e.status, e.rule) for e in entries] == [("ok", "policy.commands.policy")]


async def test_slash_command_options_reach_the_core_as_typed_not_reparsed(
    fake: FakeDiscord,
) -> None:
    # Typed as text, typographic quotes count as plain ones (phones substitute them);
    # a slash command's option is already a value, and must arrive exactly as given.
    async with discord_bot(fake) as tb:
        value = "“status” --all"
        interaction = await fake.slash("help", {"command": value}, user=ALICE)
        reply = await fake.wait_call("POST", followups(fake, interaction))
        [embed] = reply.embeds
        assert embed["title"].startswith(f"❓ no command /{value.lower()} that you may run here")
        [entry] = [e for e in await tb.commands_audited() if e.command == "help"]
        assert dict(entry.args) == {"command": value}
