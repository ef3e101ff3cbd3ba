"""The pipeline's promises: parse edge cases, one place for failures, flood protection,
audit records for everything, request ids in replies and logs, nothing silently cut."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.app.logs import configure_logging
from bot.kernel.command import Args, NoArgs, NoDeps, Request, Risk
from bot.kernel.errors import DependencyError
from bot.kernel.message import Location, Message
from bot.kernel.render import render_text, split_message
from bot.kernel.reply import Reply, Status
from bot.pipeline.parse import parse
from tests.botharness import BASE_CONFIG, TestBot, extra_command, running_bot

NAMES = frozenset({"opsbot"})


class EchoArgs(Args):
    words: str = ""
    url: str | None = None
    count: int = 1
    dry_run: bool = False


async def _echo(_: Request, args: EchoArgs, _deps: NoDeps) -> Reply:
    return Reply(title="echo", text=json.dumps(args.model_dump(), sort_keys=True))


async def _crash(_: Request, __: NoArgs, _deps: NoDeps) -> Reply:
    raise KeyError("secret internals")


async def _unreachable(_: Request, __: NoArgs, _deps: NoDeps) -> Reply:
    raise DependencyError("payments-db", "connection reset")


async def _slow(_: Request, __: NoArgs, _deps: NoDeps) -> Reply:
    await asyncio.sleep(30)
    return Reply(title="never")


async def _long(_: Request, __: NoArgs, _deps: NoDeps) -> Reply:
    return Reply(title="long", code="\n".join(f"line {i:05d}" for i in range(3000)))


EXTRA = [
    extra_command("echo", _echo, EchoArgs, positional=(), rest="words", risk=Risk.READ),
    extra_command("crash", _crash),
    extra_command("unreachable", _unreachable),
    extra_command("slow", _slow),
    extra_command("long", _long),
]
FAST_TIMEOUT = BASE_CONFIG.replace('name = "opsbot"', 'name = "opsbot"\ncommand_timeout = "0.3s"')


@pytest.fixture
async def tb() -> Any:
    async with running_bot(FAST_TIMEOUT, extra_commands=EXTRA) as bot:
        yield bot


async def _echoed(tb: TestBot, text: str) -> dict[str, Any]:
    reply = await tb.send(text)
    assert reply is not None, text
    assert reply.status is Status.INFO, render_text(reply)
    return dict(json.loads(reply.text))


# --- parsing, through the chat entry point -------------------------------------------


async def test_quoting_flags_and_key_value_with_equals_in_value(tb: TestBot) -> None:
    got = await _echoed(
        tb, '/echo "two words" url=https://x.test/a?b=c&d=e --count=3 --dry-run tail'
    )
    assert got == {
        "words": "two words tail",
        "url": "https://x.test/a?b=c&d=e",
        "count": 3,
        "dry_run": True,
    }


async def test_addressed_to_this_bot_or_another(tb: TestBot) -> None:
    assert (await _echoed(tb, "/echo@opsbot hi"))["words"] == "hi"
    assert (await _echoed(tb, "/echo@OpsBot hi"))["words"] == "hi"
    assert await tb.send("/echo@otherbot hi") is None
    assert (await tb.commands_audited())[-1].command == "echo"  # the ignored one left no record


async def test_typographic_quotes_and_double_dash(tb: TestBot) -> None:
    assert (await _echoed(tb, "/echo “a b” -- --count=2"))["words"] == "a b --count=2"


async def test_slash_is_optional_when_addressed(tb: TestBot) -> None:
    assert "You are alice" in await tb.exec("whoami")


async def test_bad_quoting_is_that_commands_usage_line_not_a_trace(tb: TestBot) -> None:
    out = await tb.exec('/echo "unterminated')
    assert out.startswith("❓ no closing quotation. Usage: /echo")
    assert "Traceback" not in out
    assert (await tb.commands_audited())[-1].command == "echo"


async def test_malformed_text_from_a_stranger_is_denied_not_parsed(tb: TestBot) -> None:
    assert "I don't know you" in await tb.exec('/echo "unterminated', as_="mallory")


async def test_bad_argument_types_and_unknown_options(tb: TestBot) -> None:
    assert "bad value for 'count'" in await tb.exec("/echo --count=many")
    assert "unknown option 'colour'. Usage: /echo" in await tb.exec("/echo colour=red")
    assert "option 'count' given twice" in await tb.exec("/echo --count=1 count=2")
    assert "unexpected argument 'extra'. Usage: /whoami" in await tb.exec("/whoami extra")


async def test_unknown_command_suggests_a_close_one(tb: TestBot) -> None:
    out = await tb.exec("/whoamii")
    assert out.startswith("❓ Unknown command /whoamii. Did you mean /whoami?")
    assert (await tb.commands_audited())[-1].status == "unknown-command"


def test_parse_unit_cases() -> None:
    assert parse("hello there", bot_names=NAMES, addressed=False) is None
    assert parse("   ", bot_names=NAMES, addressed=True) is None
    assert parse("/", bot_names=NAMES, addressed=False) is None
    parsed = parse("/Rollback\tv1.2\n--dry-run", bot_names=NAMES, addressed=False)
    assert parsed is not None
    assert (parsed.name, parsed.positionals, parsed.options) == (
        "rollback",
        ("v1.2",),
        {"dry_run": True},
    )
    too_long = parse("/echo " + "x" * 5000, bot_names=NAMES, addressed=False)
    assert too_long is not None
    assert too_long.problem == "arguments longer than 4000 characters"
    twice = parse("/echo --a=1 a=2", bot_names=NAMES, addressed=False)
    assert twice is not None
    assert twice.problem == "option 'a' given twice"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_raises(text: str) -> None:
    parsed = parse(text, bot_names=NAMES, addressed=True)
    assert parsed is None or parsed.name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda a, b: f"/{a} {b}",
            st.sampled_from(["echo", "policy", "help", "x"]),
            st.text(max_size=100),
        ),
    )
)
def test_any_chat_input_gets_a_reply_or_silence_never_an_exception(text: str) -> None:
    async def scenario() -> None:
        async with running_bot(extra_commands=EXTRA) as bot:
            reply = await bot.send(text, as_="bob")
            if reply is not None:
                assert reply.request_id
                rendered = render_text(reply)
                assert "Traceback" not in rendered
                assert reply.status is not Status.ERROR or "failed inside" not in rendered

    asyncio.run(scenario())


# --- one place for failures ------------------------------------------------------------


async def test_a_crash_is_one_line_with_the_request_id_and_the_log_has_detail() -> None:
    buffer = io.StringIO()
    configure_logging("info", "json", buffer)  # before the bot is built
    async with running_bot(FAST_TIMEOUT, extra_commands=EXTRA) as tb:
        reply = await tb.send("/crash")
        assert reply is not None
        out = render_text(reply)
        expected = "❌ /crash failed inside the bot; the details are in the log"
        assert out == f"{expected}  · request {reply.request_id}"
        assert "secret internals" not in out
        lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
        crash = next(line for line in lines if line["event"] == "failure")
        assert crash["where"] == "command"
        assert crash["request_id"] == reply.request_id
        assert "secret internals" in crash["exception"]
        done = next(line for line in lines if line["event"] == "command.done")
        assert (done["request_id"], done["outcome"], done["command"]) == (
            reply.request_id,
            "error",
            "crash",
        )
        record = (await tb.commands_audited())[-1]
        assert record.status == "error" and "secret internals" in (record.error or "")
        # the process keeps serving
        assert "You are alice" in await tb.exec("/whoami")


async def test_dependency_failure_names_the_dependency(tb: TestBot) -> None:
    out = await tb.exec("/unreachable")
    assert "/unreachable could not reach payments-db; the details are in the log" in out


async def test_a_hanging_command_times_out_with_one_line(tb: TestBot) -> None:
    out = await tb.exec("/slow")
    assert out.startswith("❌ /slow did not finish within")
    assert (await tb.commands_audited())[-1].status == "timeout"
    assert 'opsbot_errors_total{command="slow"} 1.0' in tb.bot.metrics.render().decode()


async def test_every_log_line_of_a_command_carries_its_request_id() -> None:
    buffer = io.StringIO()
    configure_logging("debug", "json", buffer)  # before the bot is built
    async with running_bot(FAST_TIMEOUT, extra_commands=EXTRA) as tb:
        reply = await tb.send("/policy off 10m window", as_="alice")
    assert reply is not None
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    mine = [line for line in lines if line["event"] in ("policy.switched", "command.done")]
    assert len(mine) == 2
    assert all(line["request_id"] == reply.request_id for line in mine)


# --- audit, flood, splitting -------------------------------------------------------------


async def test_audit_record_has_who_where_what_decision_outcome_duration(tb: TestBot) -> None:
    reply = await tb.send("/echo hello --count=2", as_="bob", channel="incident")
    assert reply is not None
    record = (await tb.commands_audited())[-1]
    assert record.request_id == reply.request_id
    assert (record.platform, record.channel, record.user_id, record.principal) == (
        "console",
        "incident",
        "bob",
        "bob",
    )
    assert (record.command, record.raw_text) == ("echo", "/echo hello --count=2")
    assert record.args == {"words": "hello", "count": 2}
    assert (record.decision, record.rule, record.status) == (
        "allowed",
        "builtin:any-principal",
        "ok",
    )
    assert record.duration_ms > 0


async def test_flooding_user_gets_one_notice_and_others_are_unaffected() -> None:
    # A budget that refills over an hour, so the test does not race the leak.
    config = BASE_CONFIG + '\n[flood]\nmax_commands = 5\nper = "1h"\n'
    async with running_bot(config) as tb:
        replies = [await tb.send("/whoami", as_="bob") for _ in range(12)]
        answered = [r for r in replies if r is not None and r.title == "You are bob"]
        notices = [r for r in replies if r is not None and "faster than a person" in r.title]
        assert len(answered) == 5
        assert len(notices) == 1
        assert replies.count(None) == 6
        assert "You are alice" in await tb.exec("/whoami", as_="alice")
        # The notice is recorded; the six ignored after it are counted, not recorded one
        # by one (tests/pipeline/test_floods.py), and their count lands when the window ends.
        throttled = [r for r in (await tb.commands_audited()) if r.status == "throttled"]
        assert [(r.user_id, r.raw_text) for r in throttled] == [("bob", "/whoami")]
        await tb.bot.dispatcher.close()
        await tb.bot.audit.store.flush()
        throttled = [r for r in (await tb.commands_audited()) if r.status == "throttled"]
        assert throttled[-1].detail.startswith("6 more message(s) throttled")


async def test_long_output_is_split_never_cut(tb: TestBot) -> None:
    reply = await tb.send("/long")
    assert reply is not None
    text = render_text(reply)
    chunks = split_message(text, 4000)
    assert len(chunks) > 1
    assert all(len(chunk) <= 4000 for chunk in chunks)
    rejoined = "\n".join(chunk.split("\n", 1)[1] if i else chunk for i, chunk in enumerate(chunks))
    assert rejoined == text
    assert chunks[1].startswith(f"(cont. 2/{len(chunks)})")


def test_split_cuts_overlong_lines_without_losing_characters() -> None:
    text = "a" * 250 + "\nb"
    chunks = split_message(text, 100)
    body = "".join(chunk.split("\n", 1)[1] if i else chunk for i, chunk in enumerate(chunks))
    assert body.replace("\n", "") == text.replace("\n", "")


# Any Python str, lone UTF-16 surrogates included (st.characters() leaves them out).
ANY_CHARACTER = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.sampled_from(["\x00", "/", " ", "=", "-", '"', "“", "\u202e", "\U0001f600"]),
)
# Joined from characters: st.text() drops lone surrogates whatever its alphabet says.
ANY_TEXT = st.lists(ANY_CHARACTER, max_size=120).map("".join)
ANY_MESSAGE = st.one_of(
    ANY_TEXT,
    st.builds(
        lambda name, rest: f"/{name} {rest}",
        st.sampled_from(["echo", "help", "whoami", "audit", "policy", "nosuch"]),
        ANY_TEXT,
    ),
)


# derandomize: CI sees the same 12 lists every run (run it with other seeds to explore).
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(ANY_MESSAGE, min_size=1, max_size=40))
@example(["/\ud800", "/e\x00cho x", "/echo \udfff"])  # a name that is no name; found by CI
def test_any_str_gets_a_reply_and_an_audit_record_never_an_exception(texts: list[str]) -> None:
    async def scenario() -> None:
        async with running_bot(extra_commands=EXTRA) as tb:
            answered: list[str] = []
            for text in texts:
                reply = await tb.bot.handle(
                    Message(
                        location=Location("console", "ops"),
                        user_id="bob",
                        text=text,
                        event_id=f"ev-{len(answered)}-{id(text)}",
                        received_at=tb.bot.clock.now(),
                        addressed=False,
                    )
                )
                if reply is None:
                    continue
                assert reply.request_id
                assert "failed inside" not in render_text(reply), text
                render_text(reply).encode("utf-8")  # a platform can take it
                answered.append(reply.request_id)
            audited = {e.request_id for e in await tb.commands_audited()}
            assert set(answered) <= audited  # every answer left its record

    asyncio.run(scenario())


NUMBER_OR_DURATION_SLOTS = [
    "/audit since={}",
    "/audit limit={}",
    "/heartbeat pause {}",
    "/policy off {}",
    "/silence alertname=X {} reason",
]
NUMBER_LIKE = st.one_of(
    ANY_TEXT,
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.integers(min_value=0, max_value=10**30).map(lambda n: f"{n}d"),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["²", "1e308", "0x10", "1_000", "٣", "-0", "1.5h", "9" * 5000]),
)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(NUMBER_OR_DURATION_SLOTS), NUMBER_LIKE), max_size=25))
def test_any_string_as_a_number_or_duration_in_chat_is_answered_never_an_error(
    cases: list[tuple[str, str]],
) -> None:
    async def scenario() -> None:
        config = BASE_CONFIG.replace("max_commands = 15", "max_commands = 100000")
        async with running_bot(config) as tb:
            for slot, value in cases:
                text = slot.format(value)
                reply = await tb.send(text, as_="alice")
                assert reply is not None, text
                assert reply.status is not Status.ERROR, (text, reply.title)
                assert "Traceback" not in render_text(reply)

    asyncio.run(scenario())
