"""Storage faults under a running bot, counted: every message either leaves all its audit
entries (in the database, or the spool while the database cannot take them) or is refused
with one line, and the bot recovers by itself when storage returns. Real faults: a full
tmpfs, a PostgreSQL turned read-only as a failover does it, the data directory removed (CI
runs as root; mounting needs it). (Remounting a tmpfs read-only under the bot is refused
while its files are open for writing, so that fault is the PostgreSQL one.)
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from sqlalchemy.engine import make_url

from bot.audit import AuditEntry, upgrade
from bot.kernel.reply import Status
from tests import infra
from tests.auditlog_helpers import pg_database, wait_until
from tests.botharness import BASE_CONFIG, TestBot, running_bot
from tests.faults import needs_root, tmpfs

REFUSED = "The audit log cannot be written, so no command runs"


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full."""
    with open(path, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def config_with(data_dir: Path, extra: str = "") -> str:
    return BASE_CONFIG.replace(
        '[bot]\nname = "opsbot"', f'[bot]\nname = "opsbot"\ndata_dir = {json.dumps(str(data_dir))}'
    ) + (f'\n[flood]\nmax_commands = 1000\n\n[audit]\nreply_wait = "0.2s"\n{extra}')


async def whoami(tb: TestBot, count: int) -> tuple[int, int]:
    """Send /whoami as bob ``count`` times: (answered, refused)."""
    answered = refused = 0
    for _ in range(count):
        reply = await tb.send("/whoami", as_="bob")
        assert reply is not None
        if reply.title.startswith(REFUSED):
            assert reply.status is Status.ERROR
            refused += 1
        else:
            assert "You are bob" in reply.title + reply.text, reply
            answered += 1
    return answered, refused


async def ready(tb: TestBot) -> tuple[int, str]:
    assert tb.bot.http_server is not None
    base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
    async with httpx.AsyncClient() as client:
        got = await client.get(f"{base}/ready")
        metrics = (await client.get(f"{base}/metrics")).text
    writable = "opsbot_audit_writable 1.0" in metrics
    assert writable == (got.status_code == 200) or "degraded" in got.json()["checks"]["audit"]
    return got.status_code, got.json()["checks"]["audit"]


def bobs(entries: list[AuditEntry]) -> list[AuditEntry]:
    return [e for e in entries if e.user_id == "bob" and e.command == "whoami"]


def spooled(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@needs_root
async def test_a_full_disk_refuses_commands_until_there_is_room_and_loses_nothing(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        async with running_bot(config_with(disk), serve_http=True) as tb:
            assert await whoami(tb, 3) == (3, 0)
            filler = disk / "filler"
            fill(filler)
            answered, refused = await whoami(tb, 20)
            assert refused > 0, "the disk is full: something must have been refused"
            status, audit = await ready(tb)
            assert (status, audit.startswith("failing: the audit log cannot be written")) == (
                503,
                True,
            ), audit
            filler.unlink()
            store = tb.bot.audit.store
            await wait_until(lambda: store.unwritable is None, within=10)
            assert await whoami(tb, 2) == (2, 0)
            await store.flush()
            await wait_until(lambda: store.spool_depth == 0, within=15)
            assert (await ready(tb))[0] == 200
            entries = bobs(await tb.audit())
    handled = 3 + answered + 2
    # One entry per answered /whoami (read-only); none for a refused one.
    assert len(entries) == handled, (len(entries), handled, refused)
    assert len({e.request_id for e in entries}) == handled


@pytest.mark.postgres
async def test_a_database_turned_read_only_spools_and_replays_while_the_bot_runs(
    tmp_path: Path,
) -> None:
    """PostgreSQL made read-only the way a failover to a standby does it: every new session
    refuses writes (SQLSTATE 25006), and the sessions the bot had are cut."""
    async with pg_database() as url:
        await upgrade(url)
        name = make_url(url).database
        admin = await asyncpg.connect(infra.postgres_url(), timeout=10)

        async def read_only(on: bool) -> None:
            mode = "on" if on else "off"
            await admin.execute(
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = {mode}'
            )
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )

        config = config_with(tmp_path / "data", f'database_url = "{url}"\n')
        try:
            async with running_bot(config, serve_http=True) as tb:
                assert await whoami(tb, 2) == (2, 0)
                await read_only(True)
                assert await whoami(tb, 10) == (10, 0)  # the spool takes them
                store = tb.bot.audit.store
                await store.flush()
                assert store.spool_depth >= 10
                status, audit = await ready(tb)
                assert status == 200 and audit.startswith("degraded"), audit
                await read_only(False)
                # Replayed by the running bot, not at the next start.
                await wait_until(lambda: store.spool_depth == 0, within=20)
                entries = bobs(await tb.audit())
        finally:
            await admin.close()
    assert len(entries) == 12
    assert [e.stage for e in entries] == ["finished"] * 12


async def test_the_data_directory_removed_refuses_commands_then_spools_when_it_is_back(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with running_bot(config_with(data), serve_http=True) as tb:
        assert await whoami(tb, 2) == (2, 0)
        shutil.rmtree(data)
        answered, refused = await whoami(tb, 20)
        assert refused >= 18, (answered, refused)  # what was in flight may be answered
        status, audit = await ready(tb)
        assert status == 503 and "cannot be written" in audit, audit
        data.mkdir()  # storage returns (the database file does not: nothing to replay into)
        store = tb.bot.audit.store
        await wait_until(lambda: store.unwritable is None, within=10)
        assert await whoami(tb, 3) == (3, 0)
        await store.flush()
        held = [e for e in spooled(data / "audit-spool.jsonl") if e["user_id"] == "bob"]
        status, audit = await ready(tb)
        assert status == 200 and audit.startswith("degraded"), audit
    # Every message answered after the removal has its entry in the spool.
    assert len(held) == answered + 3, (len(held), answered)
