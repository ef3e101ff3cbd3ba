"""The audit log across process lives: kill -9 mid-command, schema checks at start-up.
Real `opsbot` processes, a real SQLite file, the test PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from bot.audit import AuditEntry, AuditStore, upgrade
from tests import infra
from tests.auditlog_helpers import pg_database
from tests.botharness import BASE_CONFIG
from tests.faults import needs_root, tmpfs
from tests.processes import clean_env, run_opsbot, spawn_console


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "opsbot.toml"
    text = BASE_CONFIG.replace("[http]\nport = 0", "[http]\nenabled = false")
    text = text.replace('name = "opsbot"', f'name = "opsbot"\ndata_dir = "{tmp_path / "data"}"')
    path.write_text(text + '\n[console]\nprincipal = "alice"\n' + extra)
    return path


async def test_kill_9_during_a_command_then_restart_closes_it_as_interrupted(
    tmp_path: Path,
) -> None:
    # A command that changes something (its "started" entry is committed before it runs)
    # and stays running: an action the command waits for, as it does within jobs.ack_after.
    config = _config(
        tmp_path,
        '\n[[actions]]\nname = "drain"\ndescription = "Drain the queue"\n'
        'argv = ["/bin/sleep", "30"]\nrisk = "write"\nroles = ["oncall"]\n'
        '\n[jobs]\nack_after = "60s"\n\n[policy.commands.run]\nroles = ["oncall"]\n',
    )
    config.write_text(
        config.read_text().replace('name = "opsbot"', 'name = "opsbot"\ncommand_timeout = "90s"')
    )
    database = tmp_path / "data" / "audit.db"
    started, writers = await _kill_9_once_started(config, b"/run drain\n", "run")
    assert len(writers) == 1, writers  # the audit writer process
    # The writer process sees its input close and exits: no orphan left behind.
    await _wait_gone(writers[0])

    after = await asyncio.to_thread(_console, config, clean_env())
    assert after.returncode == 0, after.stderr
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT stage, status, command, raw_text, principal, decision FROM audit_log "
            "WHERE request_id = ? AND kind = 'command' ORDER BY seq",
            (started,),
        ).fetchall()
    assert rows == [
        ("started", "started", "run", "/run drain", "alice", "allowed"),
        ("finished", "interrupted", "run", "/run drain", "alice", "allowed"),
    ]
    store = AuditStore(f"sqlite+aiosqlite:///{database}", spool_path=tmp_path / "spool")
    await store.start()
    try:
        assert (await store.verify()).ok
    finally:
        await store.close()


async def test_kill_9_during_a_runbook_closes_the_runbook_and_its_running_step(
    tmp_path: Path,
) -> None:
    # Step 1 finished before the kill: it must not pass for the whole runbook's finish.
    config = _config(
        tmp_path,
        '\n[[actions]]\nname = "prepare"\ndescription = "Prepare"\nargv = ["/bin/true"]\n'
        'risk = "write"\nroles = ["oncall"]\n'
        '\n[[actions]]\nname = "drain"\ndescription = "Drain the queue"\n'
        'argv = ["/bin/sleep", "30"]\nrisk = "write"\nroles = ["oncall"]\n'
        '\n[[runbooks]]\nname = "drain-all"\nsummary = "Prepare, then drain"\n'
        'roles = ["oncall"]\n[[runbooks.steps]]\naction = "prepare"\n'
        '[[runbooks.steps]]\naction = "drain"\n'
        '\n[policy.commands.runbook]\nroles = ["oncall"]\n',
    )
    database = tmp_path / "data" / "audit.db"
    await _kill_9_once_started(config, b"/runbook drain-all\n", "drain")  # step 2's job

    after = await asyncio.to_thread(_console, config, clean_env())
    assert after.returncode == 0, after.stderr
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT stage, status, raw_text FROM audit_log WHERE kind = 'runbook' ORDER BY seq"
        ).fetchall()
    assert rows == [
        ("started", "started", "runbook drain-all"),
        ("started", "started", "1. run prepare"),
        ("finished", "ok", "1. run prepare"),
        ("started", "started", "2. run drain"),
        ("finished", "interrupted", "runbook drain-all"),
        ("finished", "interrupted", "2. run drain"),
    ], rows


async def _kill_9_once_started(config: Path, line: bytes, command: str) -> tuple[str, list[int]]:
    """Type ``line`` into a console, and once ``command`` has a committed "started" entry,
    SIGKILL it (no clean-up, no flush, nothing): that entry's request id, and the audit
    writer processes the console had."""
    proc = await spawn_console(config)
    try:
        assert proc.stdin is not None
        proc.stdin.write(line)
        await proc.stdin.drain()
        started = await _wait_for_started(config.parent / "data" / "audit.db", command)
        writers = [pid for pid in _children(proc.pid) if _is_audit_writer(pid)]
    finally:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == -9
    return started, writers


async def _wait_for_started(database: Path, command: str, within: float = 20.0) -> str:
    """The request id of the command once its "started" entry is committed."""

    def committed() -> str | None:
        if not database.exists():
            return None
        try:
            with sqlite3.connect(database) as db:
                row = db.execute(
                    "SELECT request_id FROM audit_log WHERE stage = 'started' AND command = ?",
                    (command,),
                ).fetchone()
        except sqlite3.OperationalError:  # the table is not there yet
            return None
        return None if row is None else str(row[0])

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(committed)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no 'started' entry for /{command} within {within}s")


def _is_audit_writer(pid: int) -> bool:
    try:
        return b"bot.audit.sqlite_writer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """False once ``pid`` has exited (gone, or a zombie waiting for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def _wait_gone(pid: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(_running, pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} still running {within}s after its parent was killed")


def _console(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_opsbot("console", "--config", str(config), "-c", "/whoami", env=env, timeout=60)


@pytest.mark.postgres
async def test_start_up_refuses_an_unmigrated_then_a_newer_postgres_schema(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    async with pg_database() as url:
        env = clean_env(OPSBOT_DATABASE_URL=url)
        unmigrated = await asyncio.to_thread(_console, config, env)
        assert unmigrated.returncode == 70
        assert "audit database: not migrated yet: run `opsbot db upgrade`" in unmigrated.stderr
        assert "Traceback" not in unmigrated.stderr

        await upgrade(url)
        current = await asyncio.to_thread(_console, config, env)
        assert current.returncode == 0, current.stderr
        assert "You are alice" in current.stdout

        conn = await asyncpg.connect(
            infra.postgres_url().rsplit("/", 1)[0] + "/" + make_url(url).database, timeout=10
        )
        try:
            await conn.execute("UPDATE alembic_version SET version_num = '9999'")
        finally:
            await conn.close()
        newer = await asyncio.to_thread(_console, config, env)
        assert newer.returncode == 70
        assert "schema rev 9999 is newer than this opsbot's" in newer.stderr


async def test_start_up_refuses_a_newer_sqlite_schema_and_creates_the_default(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    first = await asyncio.to_thread(_console, config, clean_env())
    assert first.returncode == 0, first.stderr  # the embedded default migrates itself
    database = tmp_path / "data" / "audit.db"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    newer = await asyncio.to_thread(_console, config, clean_env())
    assert newer.returncode == 70
    assert "schema rev 9999 is newer than this opsbot's" in newer.stderr


@needs_root
def test_start_up_on_a_read_only_data_directory_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    with tmpfs(tmp_path / "data", "16m") as data:
        first = _console(config, clean_env())
        assert first.returncode == 0, first.stderr
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        refused = _console(config, clean_env())
    assert refused.returncode == 70 and "You are" not in refused.stdout
    assert refused.stderr.strip().splitlines() == [
        f"opsbot: audit database: cannot read the schema revision of "
        f"sqlite+aiosqlite:///{data / 'audit.db'}: unable to open database file "
        f"(its directory {data} is read-only)"
    ], refused.stderr


async def test_a_console_started_next_to_a_running_bot_leaves_its_commands_alone(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    first = await asyncio.to_thread(_console, config, clean_env())  # creates the database
    assert first.returncode == 0, first.stderr
    database = tmp_path / "data" / "audit.db"
    # What `opsbot run` on this host has in flight right now: started, not finished.
    store = AuditStore(f"sqlite+aiosqlite:///{database}", spool_path=tmp_path / "spool")
    await store.start()
    try:
        await store.append_durably(
            AuditEntry(
                request_id="running-elsewhere",
                at=datetime.now(UTC),
                stage="started",
                kind="command",
                command="health",
                status="started",
                replica=socket.gethostname()[:64],
            )
        )
    finally:
        await store.close()
    again = await asyncio.to_thread(_console, config, clean_env())
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(database) as db:
        stages = db.execute(
            "SELECT stage FROM audit_log WHERE request_id = 'running-elsewhere'"
        ).fetchall()
    assert stages == [("started",)]
