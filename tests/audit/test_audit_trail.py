"""The audit trail as an auditor sees it after an incident: chat messages in, then the
real audit database (SQLite file, or the test PostgreSQL) read back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from bot.audit import AuditEntry, upgrade
from bot.audit.trail import AuditTrail
from bot.kernel.command import Args, NoArgs, NoDeps, Request, Risk
from bot.kernel.message import Location, Message
from bot.kernel.render import render_text
from bot.kernel.reply import Field, Reply, Status
from tests.auditlog_helpers import TcpProxy, pg_database, wait_until, with_port
from tests.botharness import BASE_CONFIG, ManualClock, TestBot, extra_command, running_bot
from tests.httpfakes import refused_url

SLACK_TOKEN = "xoxb-1234567890-abcdefghijklmnop"


class EchoArgs(Args):
    words: str = ""
    count: int = 1


async def _echo(_: Request, args: EchoArgs, _deps: NoDeps) -> Reply:
    return Reply(title=f"echo {args.words}", status=Status.OK, fields=(Field("n", "1"),))


# What /touch saw in the database when it ran: the proof its "started" entry came first.
SEEN_BY_TOUCH: list[list[tuple[str, str]]] = []


class TouchDeps(msgspec.Struct, frozen=True):
    audit: AuditTrail


async def _touch(request: Request, _: NoArgs, deps: TouchDeps) -> Reply:
    url = deps.audit.store.url
    path = url.removeprefix("sqlite+aiosqlite:///")

    def committed() -> list[tuple[str, str]]:
        # A separate connection sees only what was committed.
        with sqlite3.connect(path) as db:
            rows = db.execute(
                "SELECT stage, status FROM audit_log WHERE request_id = ? ORDER BY seq",
                (request.request_id,),
            )
            return [(str(stage), str(status)) for stage, status in rows]

    SEEN_BY_TOUCH.append(await asyncio.to_thread(committed))
    return Reply(title="touched", status=Status.OK)


async def _leak(_: Request, __: NoArgs, _deps: NoDeps) -> Reply:
    return Reply(
        title=f"token is {SLACK_TOKEN}",
        status=Status.ERROR,
        text="db at postgresql+asyncpg://ops:hunter2hunter2@db/ops",
        code="Authorization: Bearer abcdefghijklmnop.qrs",
    )


EXTRA = [
    extra_command("echo", _echo, EchoArgs, rest="words"),
    extra_command("touch", _touch, risk=Risk.WRITE, needs=TouchDeps),
    extra_command("leak", _leak),
]


@pytest.fixture
async def tb() -> Any:
    async with running_bot(extra_commands=EXTRA, clock=ManualClock()) as bot:
        yield bot


def _by_request(entries: list[AuditEntry], request_id: str) -> list[AuditEntry]:
    return [e for e in entries if e.request_id == request_id]


# --- what is written ------------------------------------------------------------------


async def test_a_read_only_command_that_runs_leaves_one_entry_with_every_field(
    tb: TestBot,
) -> None:
    message = Message(
        location=Location(
            platform="slack",
            channel_id="C0INCIDENT",
            thread_id="1700000000.000100",
            workspace="T0ACME",
        ),
        user_id="U0ALICE01",
        text="/echo hello --count=2",
        event_id="Ev1",
        received_at=tb.bot.clock.now(),
        addressed=True,
    )
    reply = await tb.bot.handle(message)
    assert reply is not None
    # Its decision and its outcome together, written when it finished: nothing to record
    # before a command that only looks.
    (finished,) = _by_request(await tb.audit(), reply.request_id)
    assert finished.stage == "finished"
    for e in (finished,):
        assert (e.kind, e.platform, e.workspace, e.channel, e.thread) == (
            "command",
            "slack",
            "T0ACME",
            "C0INCIDENT",
            "1700000000.000100",
        )
        assert (e.user_id, e.principal, e.command) == ("U0ALICE01", "alice", "echo")
        assert (e.raw_text, e.args) == ("/echo hello --count=2", {"words": "hello", "count": 2})
        assert (e.decision, e.rule) == ("allowed", "builtin:any-principal")
        assert e.at == datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
        assert e.replica == tb.bot.config.bot.replica_id
    assert finished.status == "ok"
    assert finished.duration_ms is not None and finished.duration_ms > 0
    rendered = render_text(reply)
    assert finished.output_digest == hashlib.sha256(rendered.encode()).hexdigest()
    assert finished.output_excerpt == rendered
    assert finished.error is None and finished.exit_code is None and finished.approvers == ()
    assert (await tb.bot.audit.store.verify()).ok


async def test_denied_unknown_and_malformed_commands_leave_one_decided_entry(
    tb: TestBot,
) -> None:
    await tb.send("/whoami", as_="mallory")
    await tb.send("/policy off 1h", as_="bob")
    await tb.send("/nosuch", as_="bob")
    await tb.send("/echo --count=many", as_="bob")
    finals = (await tb.commands_audited())[-4:]
    assert [(e.stage, e.status, e.decision, e.rule) for e in finals] == [
        ("decided", "denied", "denied", "deny:unknown-user"),
        ("decided", "denied", "denied", "builtin:policy.mode->policy.admin_roles"),
        ("decided", "unknown-command", None, None),
        ("decided", "usage", "allowed", "builtin:any-principal"),
    ]
    assert finals[0].principal is None and finals[0].user_id == "mallory"
    assert "I don't know you" in (finals[0].error or "")
    assert finals[0].output_excerpt is not None and "Denied" in finals[0].output_excerpt
    # Turned away means nothing started.
    entries = await tb.audit()
    for e in finals:
        assert [x.stage for x in _by_request(entries, e.request_id)] == ["decided"]


async def test_a_mutating_command_runs_only_after_its_started_entry_is_committed(
    tb: TestBot,
) -> None:
    SEEN_BY_TOUCH.clear()
    reply = await tb.send("/touch")
    assert reply is not None and reply.status is Status.OK
    # One entry before it ran, carrying the decision; "finished" after.
    assert SEEN_BY_TOUCH == [[("started", "started")]]
    started, finished = _by_request(await tb.audit(), reply.request_id)
    assert (started.stage, started.decision, started.rule) == (
        "started",
        "allowed",
        "builtin:any-principal",
    )
    assert (finished.stage, finished.status) == ("finished", "ok")


async def test_a_log_written_with_three_entries_per_command_reads_and_verifies_with_new_ones(
    tb: TestBot,
) -> None:
    """Logs from before the one-entry model hold decided (allowed), started and finished
    for every command that ran: nothing is migrated, and both read and verify alike."""
    audit = tb.bot.audit
    at = tb.bot.clock.now()
    old = [
        audit.entry(
            request_id="old000000001",
            at=at,
            stage=stage,
            kind="command",
            location=Location(platform="console", channel_id="ops"),
            user_id="bob",
            principal="bob",
            command="whoami",
            raw_text="/whoami",
            decision="allowed",
            rule="builtin:any-principal",
            status=status,
        )
        for stage, status in (("decided", "allowed"), ("started", "started"), ("finished", "ok"))
    ]
    await audit.record_durably(*old)
    new = await tb.send("/whoami", as_="bob")
    assert new is not None

    listed = await tb.send("/audit user=bob", as_="alice")
    assert listed is not None and listed.table is not None
    # One line per invocation, old or new: its last word.
    assert [(r[1], r[2], r[3]) for r in listed.table.rows] == [
        ("bob", "/whoami", "ok"),
        ("bob", "/whoami", "ok"),
    ]
    exported = [e for e in await tb.audit() if e.user_id == "bob"]
    assert [(e.request_id, e.stage) for e in exported] == [
        ("old000000001", "decided"),
        ("old000000001", "started"),
        ("old000000001", "finished"),
        (new.request_id, "finished"),
    ]
    verified = await audit.store.verify()
    assert verified.ok and verified.checked >= 4, verified


async def test_a_mutating_command_is_refused_when_its_start_cannot_be_recorded(
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    config = BASE_CONFIG + (
        f'\n[audit]\ndatabase_url = "{_pg_refused()}"\n'
        f'spool_path = "{spool_dir / "audit.jsonl"}"\nreply_wait = "0.5s"\n'
    )
    SEEN_BY_TOUCH.clear()
    async with running_bot(config, extra_commands=EXTRA) as tb:
        # The database is unreachable and now the spool cannot be written either (its
        # directory became a file): the start cannot be made durable, so /touch must not run.
        spool_dir.rename(tmp_path / "spool-gone")
        spool_dir.write_text("")
        reply = await tb.send("/touch")
        assert reply is not None and reply.status is Status.ERROR
        assert "could not reach audit database" in reply.title
        assert SEEN_BY_TOUCH == []
        # Fail closed: nothing can be recorded, so nothing runs, read-only or not.
        refused = "The audit log cannot be written, so no command runs"
        assert refused in await tb.exec("/whoami")
        off = await tb.send("/policy off 30m", as_="alice")
        assert off is not None and off.status is Status.ERROR
        assert refused in off.title
        # The spool's directory back: the bot recovers by itself, the mode stayed strict.
        spool_dir.unlink()
        (tmp_path / "spool-gone").rename(spool_dir)
        store = tb.bot.audit.store
        await wait_until(lambda: store.unwritable is None, within=10)
        assert "policy    strict" in await tb.exec("/status", as_="alice")
        assert SEEN_BY_TOUCH == []


def _pg_refused() -> str:
    port = int(refused_url().rsplit(":", 1)[1].split("/")[0])
    return f"postgresql+asyncpg://opsbot@127.0.0.1:{port}/opsbot"


# --- secrets ---------------------------------------------------------------------------


async def test_secrets_are_redacted_from_the_store_and_the_replies() -> None:
    config = BASE_CONFIG + '\n[audit]\nredact_patterns = ["ACME-[0-9]{6}"]\n'
    async with running_bot(config, extra_commands=EXTRA) as tb:
        sent = await tb.send(f"/echo deploy with {SLACK_TOKEN} password: s3cret! ACME-123456")
        assert sent is not None
        shown = render_text(sent)
        leaked = await tb.send("/leak")
        assert leaked is not None
        leaked_text = render_text(leaked)
        entries = await tb.audit()
    for secret in (SLACK_TOKEN, "s3cret!", "ACME-123456"):
        assert secret not in shown
    assert "echo deploy with *** password: *** ***" in shown
    for secret in (SLACK_TOKEN, "hunter2hunter2", "abcdefghijklmnop.qrs"):
        assert secret not in leaked_text
    assert "postgresql+asyncpg://ops:***@db/ops" in leaked_text
    stored = json.dumps([e.to_json_dict() for e in entries])
    for secret in (SLACK_TOKEN, "s3cret!", "ACME-123456", "hunter2hunter2", "abcdefghijklmnop"):
        assert secret not in stored
    echo = next(e for e in entries if e.command == "echo" and e.stage == "finished")
    assert echo.raw_text == "/echo deploy with *** password: *** ***"
    assert echo.args == {"words": "deploy with *** password: *** ***"}


# --- reading it in chat ----------------------------------------------------------------


async def test_audit_command_filters_newest_first_and_is_policy_gated(tb: TestBot) -> None:
    clock = tb.bot.clock
    assert isinstance(clock, ManualClock)
    await tb.send("/whoami", as_="bob")
    clock.advance(timedelta(minutes=1))
    await tb.send("/policy off 1h", as_="bob")  # denied: bob is not an admin
    clock.advance(timedelta(minutes=1))
    await tb.send("/whoami", as_="carol")
    await tb.send("/whoami", as_="mallory")
    clock.advance(timedelta(hours=2))
    await tb.send("/echo late", as_="bob")

    reply = await tb.send("/audit user=bob", as_="alice")
    assert reply is not None and reply.table is not None
    rows = reply.table.rows
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("bob", "/echo late", "ok"),
        ("bob", "/policy off 1h", "denied"),
        ("bob", "/whoami", "ok"),
    ]
    assert "3 audit entries user=bob in the last 24h" in reply.title

    recent = await tb.send("/audit since=1h", as_="alice")
    assert recent is not None and recent.table is not None
    assert [r[2] for r in recent.table.rows] == ["/audit user=bob", "/echo late"]

    denied = await tb.send("/audit status=denied", as_="alice")
    assert denied is not None and denied.table is not None
    assert [(r[1], r[4]) for r in denied.table.rows] == [
        ("console:mallory", "deny:unknown-user"),
        ("bob", "builtin:policy.mode->policy.admin_roles"),
    ]
    by_id = await tb.send("/audit user=console:mallory command=whoami", as_="alice")
    assert by_id is not None and by_id.table is not None and len(by_id.table.rows) == 1

    limited = await tb.send("/audit limit=2", as_="alice")
    assert limited is not None and limited.table is not None
    assert len(limited.table.rows) == 2 and "raise limit=" in limited.title

    nothing = await tb.send("/audit command=health", as_="alice")
    assert (
        nothing is not None and nothing.title == "No audit entries command=health in the last 24h"
    )

    refused = await tb.send("/audit", as_="carol")
    assert refused is not None and refused.status is Status.DENIED

    bad = await tb.send("/audit since=yesterday", as_="alice")
    assert bad is not None and bad.status is Status.USAGE and "since" in bad.title

    # A status no entry can have would only ever answer "No audit entries": say so instead.
    bogus = await tb.send("/audit status=bogus", as_="alice")
    assert bogus is not None and bogus.status is Status.USAGE
    shown = f"{bogus.title} {bogus.text}"
    assert "status" in shown and "denied" in shown and "unknown-command" in shown


async def test_audit_command_says_so_when_the_database_is_unreachable() -> None:
    config = BASE_CONFIG + f'\n[audit]\ndatabase_url = "{_pg_refused()}"\nreply_wait = "0.2s"\n'
    async with running_bot(config) as tb:
        reply = await tb.send("/audit", as_="alice")
    assert reply is not None and reply.status is Status.ERROR
    assert reply.title.startswith("/audit could not reach the audit database")


# --- the database going away -----------------------------------------------------------


async def test_database_down_spools_then_replays_in_order_and_ready_shows_it() -> None:
    async with pg_database() as url:
        await upgrade(url)
        proxy = TcpProxy(*_host_port(url))
        await proxy.start()
        config = BASE_CONFIG + (f'\n[audit]\ndatabase_url = "{with_port(url, proxy.port)}"\n')
        try:
            async with running_bot(config, serve_http=True) as tb:
                assert "You are alice" in await tb.exec("/whoami")
                await proxy.stop()  # the database "goes away"
                for i in range(5):
                    assert "You are bob" in await tb.exec("/whoami", as_="bob"), i
                store = tb.bot.audit.store
                await store.flush()
                assert store.spool_depth >= 5
                base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"  # type: ignore[union-attr]
                async with httpx.AsyncClient() as client:
                    ready = (await client.get(f"{base}/ready")).json()
                    metrics = (await client.get(f"{base}/metrics")).text
                assert ready["checks"]["audit"].startswith("degraded: audit database unreachable")
                assert f"opsbot_audit_spool_depth {float(store.spool_depth)}" in metrics
                await proxy.start()  # back
                await wait_until(lambda: store.spool_depth == 0, within=15)
                entries = await tb.audit()
        finally:
            await proxy.stop()
    bobs = [e for e in entries if e.user_id == "bob"]
    assert [e.stage for e in bobs] == ["finished"] * 5  # read-only: one entry each
    assert len({e.request_id for e in bobs}) == 5


def _host_port(url: str) -> tuple[str, int]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.host or "127.0.0.1", int(parsed.port or 5432)


# --- retention -------------------------------------------------------------------------


async def test_retention_job_removes_old_entries_records_it_and_the_chain_still_verifies() -> None:
    config = BASE_CONFIG + '\n[audit]\nretention_days = 30\nretention_every = "0.05s"\n'
    clock = ManualClock()
    async with running_bot(config, clock=clock) as tb:
        await tb.send("/whoami")
        await tb.send("/whoami", as_="bob")
        clock.advance(timedelta(days=31))
        await tb.send("/whoami", as_="carol")

        async def retention_entry() -> AuditEntry | None:
            return next((e for e in await tb.audit() if e.kind == "retention"), None)

        for _ in range(200):
            if await retention_entry() is not None:
                break
            await asyncio.sleep(0.02)
        event = await retention_entry()
        assert event is not None and event.stage == "event"
        assert event.args["removed"] == 2  # alice's and bob's /whoami, one entry each
        remaining = await tb.audit()
        assert {e.user_id for e in remaining if e.kind == "command"} == {"carol"}
        result = await tb.bot.audit.store.verify()
        assert result.ok, str(result)
