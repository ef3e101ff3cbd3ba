"""The Telegram adapter against a fake Bot API (tests/fakes/telegram_server.py): the real
python-telegram-bot code over real sockets on 127.0.0.1, the real bot behind it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.commands import set_commands, telegram_name
from adapters.telegram.render import TEXT_LIMIT, render_html, utf16_len
from bot.app.config import parse_config
from bot.kernel.adapter import AdapterError
from bot.kernel.command import Args, CommandSpec, NoDeps, Request
from bot.kernel.reply import Reply, Status
from commands import COMMANDS
from tests.actionkit import Scripts, actions_config
from tests.botharness import BASE_CONFIG, TestBot, extra_command, running_bot
from tests.fakes.telegram_server import (
    BOT_USERNAME,
    Call,
    FakeTelegram,
    message_id,
    parse_html,
    post_webhook,
)

ALICE, BOB, DAVE, STRANGER = 111111111, 222222222, 444444444, 999999999
OPS = -1001000000001


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


def telegram(**kw: Any) -> Callable[..., TelegramAdapter]:
    return lambda config, commands, clock: TelegramAdapter(
        config.telegram, commands, clock, poll_timeout=1, **kw
    )


@contextlib.asynccontextmanager
async def telegram_bot(
    tg: FakeTelegram, config_text: str = BASE_CONFIG, **kw: Any
) -> AsyncIterator[TestBot]:
    async with running_bot(config_text + tg.config(), adapters=[telegram()], **kw) as tb:
        assert tb.bot.adapters.states["telegram"] == "connected"
        yield tb


def quick_actions(scripts: Scripts) -> str:
    """More actions: ``mark`` records each run, ``special`` prints HTML-hostile text,
    ``steps`` prints a line every 0.4 s for 1.6 s (its progress changes)."""
    mark = _script(scripts.dir / "mark.sh", 'echo "marked $1"; echo "$1" >> "$MARKER"\n')
    special = _script(scripts.dir / "special.sh", "echo 'a < b & c_d <b>not bold</b>'\n")
    steps = _script(
        scripts.dir / "steps.sh", 'for i in 1 2 3 4; do echo "step $i"; sleep 0.4; done\n'
    )
    return actions_config(
        scripts,
        f"""
[[actions]]
name = "mark"
argv = ["{mark}", "{{tag}}"]
env = {{ MARKER = "{scripts.marker}" }}
risk = "write"
roles = ["oncall"]
[[actions.args]]
name = "tag"
pattern = '^v\\d+$'

[[actions]]
name = "special"
argv = ["{special}"]
risk = "write"
roles = ["oncall"]

[[actions]]
name = "steps"
argv = ["{steps}"]
risk = "write"
roles = ["oncall"]
""",
    )


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll ``check`` until it returns something truthy (for effects in another process)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.05)


def replies(tg: FakeTelegram, update: dict[str, Any]) -> list[Call]:
    return [c for c in tg.calls_of("sendMessage") if c.reply_to == message_id(update)]


# -- commands in, replies out ---------------------------------------------------------------


async def test_command_in_private_chat_gets_an_html_reply_to_it(tg: FakeTelegram) -> None:
    async with telegram_bot(tg):
        update = tg.command("/whoami", user_id=ALICE)
        call = await tg.wait_call("sendMessage", replying_to=update)
        assert call.params["chat_id"] == ALICE
        assert call.params["parse_mode"] == "HTML"
        assert call.params["text"].startswith("ℹ️ <b>You are alice</b>")
        assert "<b>roles:</b> admin, oncall" in call.params["text"]
        assert "telegram:111111111" in call.text


async def test_group_commands_are_addressed_by_the_adapter(tg: FakeTelegram) -> None:
    async with telegram_bot(tg) as tb:
        other = tg.command("/health@otherbot", user_id=BOB, chat_id=OPS)
        chatter = tg.command("whoami do you know", user_id=BOB, chat_id=OPS)
        plain = tg.command("/whoami", user_id=BOB, chat_id=OPS)
        ours = tg.command(f"/whoami@{BOT_USERNAME.upper()}", user_id=BOB, chat_id=OPS)
        dm = tg.command("whoami", user_id=BOB)  # plain text counts in a private chat
        for update in (plain, ours, dm):
            call = await tg.wait_call("sendMessage", replying_to=update)
            assert "You are bob" in call.text
        assert replies(tg, other) == [] and replies(tg, chatter) == []
        audited = [(e.command, e.channel) for e in await tb.commands_audited()]
        assert audited.count(("whoami", str(OPS))) == 2
        assert ("health", str(OPS)) not in audited


async def test_unknown_user_is_denied(tg: FakeTelegram) -> None:
    async with telegram_bot(tg):
        update = tg.command("/whoami", user_id=STRANGER)
        call = await tg.wait_call("sendMessage", replying_to=update)
        assert call.text.startswith("⛔ Denied: I don't know you (telegram:999999999)")
        assert "<code>" in call.params["text"]  # the request id, to quote to an admin


async def test_start_shows_help_and_topics_keep_their_thread(tg: FakeTelegram) -> None:
    async with telegram_bot(tg):
        start = tg.command("/start", user_id=ALICE)
        assert "/whoami" in (await tg.wait_call("sendMessage", replying_to=start)).text
        topic = tg.command("/whoami", user_id=BOB, chat_id=OPS, topic=77)
        call = await tg.wait_call("sendMessage", replying_to=topic)
        assert call.params["message_thread_id"] == 77


async def test_output_with_html_characters_is_escaped(tg: FakeTelegram, scripts: Scripts) -> None:
    async with telegram_bot(tg, quick_actions(scripts)):
        update = tg.command("/run special", user_id=BOB, chat_id=OPS)
        call = await tg.wait_call("sendMessage", replying_to=update)
        raw = call.params["text"]
        assert "a &lt; b &amp; c_d &lt;b&gt;not bold&lt;/b&gt;" in raw
        text, entities = parse_html(raw)  # what Telegram shows: the output as printed
        assert "a < b & c_d <b>not bold</b>" in text
        pre = [e for e in entities if e["type"] == "pre"]
        assert pre and "c_d" in text[pre[-1]["offset"] : pre[-1]["offset"] + pre[-1]["length"]]


async def test_a_long_reply_is_split_and_nothing_is_lost(tg: FakeTelegram) -> None:
    lines = tuple(f"line {i:05d} <&> {'x' * 60}" for i in range(200))

    async def long(ctx: Request, args: Args, _deps: NoDeps) -> Reply:
        return Reply(title="Long output", status=Status.OK, code="\n".join(lines))

    async with telegram_bot(tg, extra_commands=[extra_command("long", long)]):
        update = tg.command("/long", user_id=ALICE)
        await tg.wait_call("sendMessage", lambda c: "(cont. 4/4)" in c.text, replying_to=update)
        parts = replies(tg, update)
        assert len(parts) == 4
        assert all(utf16_len(p.text) <= TEXT_LIMIT for p in parts)
        shown = "\n".join(p.text for p in parts)
        assert all(line in shown for line in lines)


def test_renderer_splits_within_the_limit_keeping_formatting() -> None:
    reply = Reply(title="T & <t>", status=Status.ERROR, code="é😀<" * 3000, request_id="abc")
    chunks = render_html(reply)
    assert len(chunks) == 3
    texts = [parse_html(chunk)[0] for chunk in chunks]  # each is valid Telegram HTML
    assert all(utf16_len(t) <= TEXT_LIMIT for t in texts)
    assert texts[0].startswith("❌ T & <t>  · request abc")
    assert texts[2].startswith("(cont. 3/3)")
    assert all(parse_html(c)[1][-1]["type"] == "pre" for c in chunks)
    assert "".join(t.split("\n", 1)[1] for t in texts).count("😀") == 3000


# -- buttons -----------------------------------------------------------------------------


async def _approval_request(tg: FakeTelegram) -> tuple[dict[str, Any], dict[str, str]]:
    """dave asks for a rollback in #ops; the bot's message with the buttons, by label."""
    update = tg.command(f"/rollback@{BOT_USERNAME} v1.2", user_id=DAVE, chat_id=OPS)
    call = await tg.wait_call("sendMessage", replying_to=update)
    assert "Approval needed: rollback tag=v1.2" in call.text
    keyboard = call.params["reply_markup"]["inline_keyboard"]
    buttons = {b["text"]: b["callback_data"] for row in keyboard for b in row}
    return tg.message_of(call), buttons


async def test_approve_button_runs_the_action_once_and_edits_the_request(
    tg: FakeTelegram, scripts: Scripts
) -> None:
    async with telegram_bot(tg, quick_actions(scripts)) as tb:
        message, buttons = await _approval_request(tg)
        assert buttons["Approve"].startswith("/approve ") and buttons["Deny"].startswith("/deny ")
        assert scripts.runs() == []

        press = tg.press(message, buttons["Approve"], user_id=BOB)
        query_id = press["callback_query"]["id"]
        answer = await tg.wait_call(
            "answerCallbackQuery", lambda c: c.params["callback_query_id"] == query_id
        )
        assert not answer.params.get("show_alert")
        result = await tg.wait_call("sendMessage", replying_to=press)
        assert "rollback tag=v1.2 finished" in result.text and "rolling back to v1.2" in result.text
        edit = await tg.wait_call("editMessageText")
        assert edit.params["message_id"] == message["message_id"]
        assert "Approval needed" in edit.text and edit.text.endswith("\n\n✅ approved by bob")
        assert "reply_markup" not in tg.message_of(tg.calls_of("sendMessage")[0])
        assert scripts.runs() == ["v1.2"]

        approvals = [(e.status, e.principal) for e in await tb.audit() if e.kind == "approval"]
        assert approvals == [("requested", "dave"), ("approved", "bob")]
        approve = [e for e in await tb.commands_audited() if e.command == "approve"]
        assert [(e.platform, e.user_id, e.status) for e in approve] == [
            ("telegram", "222222222", "ok")
        ]


async def test_requester_pressing_approve_gets_an_alert_and_nothing_runs(
    tg: FakeTelegram, scripts: Scripts
) -> None:
    async with telegram_bot(tg, quick_actions(scripts)):
        message, buttons = await _approval_request(tg)
        press = tg.press(message, buttons["Approve"], user_id=DAVE)
        query_id = press["callback_query"]["id"]
        answer = await tg.wait_call(
            "answerCallbackQuery", lambda c: c.params["callback_query_id"] == query_id
        )
        assert answer.params["show_alert"] is True
        assert "you requested this" in answer.params["text"]
        assert len(answer.params["text"]) <= 200
        assert tg.calls_of("editMessageText") == [] and replies(tg, press) == []
        assert "reply_markup" in tg.message_of(tg.calls_of("sendMessage")[0])
        assert scripts.runs() == []


async def test_deny_button_closes_the_request(tg: FakeTelegram, scripts: Scripts) -> None:
    async with telegram_bot(tg, quick_actions(scripts)):
        message, buttons = await _approval_request(tg)
        press = tg.press(message, buttons["Deny"], user_id=BOB)
        reply = await tg.wait_call("sendMessage", replying_to=press)
        assert "denied by bob" in reply.text
        edit = await tg.wait_call("editMessageText")
        assert edit.text.endswith("\n\n❌ denied by bob")
        assert "reply_markup" not in tg.message_of(tg.calls_of("sendMessage")[0])
        assert scripts.runs() == []


# -- delivery ------------------------------------------------------------------------------


async def test_the_same_update_delivered_twice_runs_once(
    tg: FakeTelegram, scripts: Scripts
) -> None:
    async with telegram_bot(tg, quick_actions(scripts)) as tb:
        update = tg.command("/run mark v7", user_id=BOB, chat_id=OPS)
        tg.redeliver(update)  # in the same batch
        await tg.wait_call("sendMessage", replying_to=update)

        await _runs_audited(tb, ["duplicate", "ok"])
        tg.redeliver(update)  # late, after the first finished
        await _runs_audited(tb, ["duplicate", "duplicate", "ok"])
        assert scripts.runs() == ["v7"]
        assert len(replies(tg, update)) == 1


async def test_429_on_send_is_retried_after_the_wait(
    tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PTB 22's RetryAfter warns about its own int attribute unless opted in to timedelta.
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    async with telegram_bot(tg):
        tg.fail_next("sendMessage", 429, retry_after=1)
        update = tg.command("/whoami", user_id=ALICE)
        call = await tg.wait_call("sendMessage", replying_to=update)
        limited = [c for c in tg.calls if c.method == "sendMessage" and c.status == 429]
        assert len(limited) == 1
        assert call.at - limited[0].at >= 1.0  # retry_after was honoured
        assert "You are alice" in call.text


async def test_polling_survives_failed_get_updates(tg: FakeTelegram) -> None:
    async with telegram_bot(tg) as tb:
        tg.fail_next("getUpdates", drop=True)  # the connection breaks
        tg.fail_next("getUpdates", 502)
        await eventually(lambda: len(_failed_polls(tg)) == 2)
        update = tg.command("/whoami", user_id=ALICE)
        call = await tg.wait_call("sendMessage", replying_to=update, within=15)
        assert "You are alice" in call.text
        assert _failed_polls(tg) == [0, 502]  # 0: the connection was dropped
        assert tb.bot.adapters.states["telegram"] == "connected"


async def test_webhook_needs_the_secret_token(tg: FakeTelegram, scripts: Scripts) -> None:
    port = _free_port()
    secret = "s3cret_Token-1"
    config = quick_actions(scripts) + tg.config(
        mode="webhook",
        webhook_url="https://bot.example.org/telegram",
        webhook_secret=secret,
        webhook_host="127.0.0.1",
        webhook_port=port,
        webhook_path="/telegram",
    )
    async with running_bot(config, adapters=[telegram()]) as tb:
        assert tb.bot.adapters.states["telegram"] == "connected"
        assert tg.webhook is not None
        assert tg.webhook["url"] == "https://bot.example.org/telegram"
        assert tg.webhook["secret_token"] == secret
        url = f"http://127.0.0.1:{port}/telegram"

        forged = tg.command("/run mark v1", user_id=BOB, chat_id=OPS, queue=False)
        assert await post_webhook(url, forged, "wrong") == 403
        assert await post_webhook(url, forged, None) == 403
        genuine = tg.command("/run mark v2", user_id=BOB, chat_id=OPS, queue=False)
        assert await post_webhook(url, genuine, secret) == 200
        call = await tg.wait_call("sendMessage", replying_to=genuine)
        assert "marked v2" in call.text
        assert scripts.runs() == ["v2"]
        assert replies(tg, forged) == []
        runs = [e for e in await tb.commands_audited() if e.command == "run"]
        assert [e.status for e in runs] == ["ok"]
        assert tg.calls_of("getUpdates") == []


async def test_stop_finishes_the_replies_in_hand(tg: FakeTelegram) -> None:
    started = asyncio.Event()

    async def slow(ctx: Request, args: Args, _deps: NoDeps) -> Reply:
        started.set()
        await asyncio.sleep(0.3)
        return Reply(title="slow done", status=Status.OK)

    async with telegram_bot(tg, extra_commands=[extra_command("slow", slow)]):
        update = tg.command("/slow", user_id=ALICE)
        async with asyncio.timeout(5):
            await started.wait()
    assert [c.text for c in replies(tg, update)] == ["✅ slow done"]


# -- start-up ------------------------------------------------------------------------------


async def test_missing_token_is_reported_and_the_bot_keeps_serving(tg: FakeTelegram) -> None:
    section = f'\n[telegram]\napi_url = "{tg.api_url}"\n'
    async with running_bot(BASE_CONFIG + section, adapters=[telegram()]) as tb:
        state = tb.bot.adapters.states["telegram"]
        assert state.startswith("error: ") and "OPSBOT_TELEGRAM_TOKEN" in state
        assert "You are alice" in await tb.exec("/whoami")
        assert tg.calls == []


@pytest.mark.parametrize("down", ["not listening", "answering 502"])
async def test_an_unreachable_bot_api_is_tried_again_until_it_answers(down: str) -> None:
    """Telegram down when the bot starts: /ready says so (503) while the bot keeps trying
    in the background; once the Bot API answers, the adapter connects by itself, /ready
    is 200 and commands are answered, without a restart."""
    port = _free_port()
    tg = FakeTelegram(listen_port=port)
    if down == "answering 502":
        tg.fail_next("getMe", 502, times=2)
        await tg.__aenter__()
    async with running_bot(BASE_CONFIG + tg.config(), adapters=[telegram()], serve_http=True) as tb:
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            ready = await client.get("/ready")
            assert ready.status_code == 503
            state = ready.json()["checks"]["adapter:telegram"]
            assert re.fullmatch(
                r"connecting: cannot reach the Telegram Bot API at .*, next try in \d+ s", state
            ), state
            assert tg.token not in state
            assert "You are alice" in await tb.exec("/whoami")  # the rest serves meanwhile
            if down == "not listening":
                await tg.__aenter__()
            try:
                for _ in range(100):  # 1 s, then 2 s of back-off (at most), and jitter
                    ready = await client.get("/ready")
                    if ready.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                assert ready.json()["checks"]["adapter:telegram"] == "connected"
                update = tg.command("/whoami", user_id=ALICE)
                call = await tg.wait_call("sendMessage", replying_to=update)
                assert "You are alice" in call.text
            finally:
                await tg.__aexit__(None, None, None)


async def test_a_bot_api_lost_after_start_reads_reconnecting_until_a_poll_gets_through(
    tg: FakeTelegram,
) -> None:
    """python-telegram-bot keeps polling through a Bot API outage, so the updater runs on
    and looked connected: /ready, /status and opsbot_adapter_connected could not tell.
    Now a failed getUpdates makes it "reconnecting" (degraded, as every replica loses the
    platform together) until a poll gets through again."""
    async with telegram_bot(tg) as tb:
        tg.fail_next("getUpdates", 502, times=2)
        state = await tb.adapter_check("telegram", lambda state: state != "connected")
        assert state == "degraded: reconnecting: getUpdates failed: HTTP 502 Bad Gateway", state
        assert tg.token not in state
        assert "telegram: reconnecting" in await tb.exec("/status", as_="alice")
        # PTB waits 1 s, then 1.5 s, before the next tries.
        assert await tb.adapter_check("telegram", lambda state: state == "connected") == (
            "connected"
        )
        update = tg.command("/whoami", user_id=ALICE)
        assert "You are alice" in (await tg.wait_call("sendMessage", replying_to=update)).text


async def test_an_error_text_no_json_can_carry_is_shown_escaped_by_ready() -> None:
    """The platform's own words end up in an adapter's state, and JSON may carry what UTF-8
    cannot (a lone surrogate, as ``\\udc80``): /ready still answers, with it escaped."""
    tg = FakeTelegram()
    tg.fail_next("getMe", 502, times=1000, description="Bad \udc80 Gateway\x00")
    await tg.__aenter__()
    try:
        config = BASE_CONFIG + tg.config()
        async with running_bot(config, adapters=[telegram()], serve_http=True) as tb:
            assert tb.bot.http_server is not None
            base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
            async with httpx.AsyncClient(base_url=base) as client:
                ready = await client.get("/ready")
            assert ready.status_code == 503, ready.text
            state = ready.json()["checks"]["adapter:telegram"]
            assert "Bad \\udc80 Gateway\\x00" in state, state
            assert "telegram: connecting: " in await tb.exec("/status", as_="alice")
    finally:
        await tg.__aexit__(None, None, None)


async def test_stopping_cancels_a_pending_retry() -> None:
    tg = FakeTelegram(listen_port=_free_port())
    async with asyncio.timeout(5):
        async with running_bot(BASE_CONFIG + tg.config(), adapters=[telegram()]) as tb:
            assert tb.bot.adapters.states["telegram"].startswith("connecting: ")
    async with tg:  # the Bot API is back, and nobody asks it any more
        await asyncio.sleep(2.5)
        assert tg.calls == []


async def test_refused_token_is_reported_without_the_token(tg: FakeTelegram) -> None:
    config = BASE_CONFIG + tg.config().replace(tg.token, "999:WRONG-token")
    async with running_bot(config, adapters=[telegram()]) as tb:
        state = tb.bot.adapters.states["telegram"]
        assert state.startswith("error: ") and "refused the bot token" in state
        assert "WRONG" not in state
        assert [c.status for c in tg.calls] == [401]


async def test_set_my_commands_lists_every_registry_command(tg: FakeTelegram) -> None:
    async def ok(ctx: Request, args: Args, _deps: NoDeps) -> Reply:
        return Reply(title="dashed ran", status=Status.OK)

    dashed = extra_command("slow-thing", ok)
    async with telegram_bot(tg, extra_commands=[dashed]):
        names = [entry["command"] for entry in tg.commands]
        assert names == [telegram_name(spec.name) for spec in [*COMMANDS, dashed]]
        assert "slow_thing" in names
        help_entry = next(e for e in tg.commands if e["command"] == "help")
        assert help_entry["description"] == next(s.summary for s in COMMANDS if s.name == "help")
        update = tg.command("/slow_thing", user_id=ALICE)  # tapped in the menu
        assert "dashed ran" in (await tg.wait_call("sendMessage", replying_to=update)).text

    specs: list[CommandSpec[Any, Any]] = list(COMMANDS)
    config = parse_config(BASE_CONFIG + tg.config(), "test", {}, [s.name for s in specs])
    tg.commands = []
    summary = await set_commands(config.telegram, specs)
    assert summary.startswith(
        f"Telegram command menu of @{BOT_USERNAME} set: {len(specs)} commands"
    )
    assert len(tg.commands) == len(specs)
    no_token = parse_config(BASE_CONFIG + "\n[telegram]\n", "test", {}, [s.name for s in specs])
    with pytest.raises(AdapterError, match="OPSBOT_TELEGRAM_TOKEN"):
        await set_commands(no_token.telegram, specs)


async def test_job_progress_edits_one_message(tg: FakeTelegram, scripts: Scripts) -> None:
    async with telegram_bot(tg, quick_actions(scripts)):
        update = tg.command("/run steps", user_id=BOB, chat_id=OPS)
        ack = await tg.wait_call("sendMessage", replying_to=update)
        assert "running as job" in ack.text
        result = await tg.wait_call(
            "sendMessage", lambda c: "finished in" in c.text, replying_to=update
        )
        assert "step 4" in result.text
        progress = [c for c in replies(tg, update) if "running for" in c.text]
        assert len(progress) == 1  # posted once under its key ...
        edits = tg.calls_of("editMessageText")
        assert edits  # ... then edited in place
        assert {e.params["message_id"] for e in edits} == {progress[0].params["_message_id"]}
        assert "step" in tg.message_of(progress[0])["text"]


async def _runs_audited(tb: TestBot, statuses: list[str], within: float = 5.0) -> None:
    """Wait until the /run commands' audit statuses (sorted) are ``statuses``."""
    seen: list[str] = []
    for _ in range(int(within / 0.05)):
        seen = sorted(e.status for e in await tb.commands_audited() if e.command == "run")
        if seen == statuses:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/run audited as {seen}, not {statuses}")


def _failed_polls(tg: FakeTelegram) -> list[int]:
    return [c.status for c in tg.calls if c.method == "getUpdates" and c.status != 200]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
