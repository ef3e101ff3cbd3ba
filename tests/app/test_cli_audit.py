"""``opsbot db`` and ``opsbot audit``, run as real processes on a log the real bot wrote."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import os
import queue
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.app.cli_audit import parse_since
from bot.audit import AuditEntry, head_revision
from tests.auditlog_helpers import pg_database
from tests.processes import ROOT, clean_env, run_opsbot

CONFIG = """
[bot]
data_dir = {data_dir}
log_level = "warning"

[http]
enabled = false

[console]
principal = "alice"

[roles.admin]

[identities.alice]
roles = ["admin"]
ids = ["console:alice"]

[channels.ops]
ids = ["console:ops"]

[policy.commands.status]
roles = ["*"]
"""
COLUMNS = [
    "seq",
    "prev_hash",
    "hash",
    "key_id",
    *(f.name for f in dataclasses.fields(AuditEntry) if not f.name.startswith("_")),
]
CompletedProcess = subprocess.CompletedProcess[str]


def opsbot(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> CompletedProcess:
    return run_opsbot(*args, env=clean_env(**(env or {})), stdin=stdin)


def write_config(directory: Path) -> str:
    """A config keeping its audit log in ``directory/data``; returns its path."""
    path = directory / "opsbot.toml"
    path.write_text(CONFIG.format(data_dir=json.dumps(str(directory / "data"))))
    return str(path)


def database(config: str) -> Path:
    return Path(config).parent / "data" / "audit.db"


@pytest.fixture(scope="module")
def written_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The config of a log of six entries, as alice made them: read-only commands that ran
    (one "finished" entry each) and an unknown command (one "decided" entry, seq 3)."""
    config = write_config(tmp_path_factory.mktemp("log"))
    typed = "/whoami\n/status\n/nosuch\n/whoami\n/whoami\n/status\n"
    session = opsbot("console", "--config", config, stdin=typed)
    assert session.returncode == 0, session.stderr
    return config


@pytest.fixture
def log_copy(written_log: str, tmp_path: Path) -> str:
    """A copy of ``written_log`` that a test may add to or tamper with."""
    config = write_config(tmp_path)
    database(config).parent.mkdir()
    with (
        contextlib.closing(sqlite3.connect(database(written_log))) as src,
        contextlib.closing(sqlite3.connect(database(config))) as dst,
    ):
        src.backup(dst)
    return config


def sql(config: str, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(database(config))) as conn, conn:
        conn.execute(statement)


def test_audit_commands_on_a_missing_database_say_so_and_create_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    tail = opsbot("audit", "tail", "--config", config)
    assert tail.returncode == 70
    assert tail.stderr.splitlines() == [
        f"opsbot: audit database: {database(config)} does not exist yet "
        "(the bot creates it on first start, or run `opsbot db upgrade`)"
    ]
    assert not (tmp_path / "data").exists()

    upgrade = opsbot("db", "upgrade", "--config", config)
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout == (
        f"audit database sqlite+aiosqlite:///{database(config)} is at revision {head_revision()}\n"
    )
    check = opsbot("db", "check", "--config", config)
    assert check.returncode == 0, check.stderr
    assert "is current" in check.stdout


def test_db_check_fails_on_a_never_migrated_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    database(config).parent.mkdir()
    sqlite3.connect(database(config)).close()
    assert database(config).exists()
    check = opsbot("db", "check", "--config", config)
    assert check.returncode == 1
    assert "run `opsbot db upgrade`" in check.stderr
    assert len(check.stderr.splitlines()) == 1


def test_tail_shows_the_newest_entries_oldest_first(written_log: str) -> None:
    tail = opsbot("audit", "tail", "-n", "2", "--config", written_log)
    assert tail.returncode == 0, tail.stderr
    whoami, status = (line.split("  ") for line in tail.stdout.splitlines())
    assert whoami[1:7] == [
        "#5",
        "finished",
        "ok",
        "alice(alice@console)",
        "/whoami",
        "builtin:any-principal",
    ]
    assert status[1:7] == [
        "#6",
        "finished",
        "ok",
        "alice(alice@console)",
        "/status",
        "policy.commands.status",
    ]
    assert status[-1].endswith("ms")
    assert datetime.strptime(status[0], "%Y-%m-%d %H:%M:%SZ")


def test_export_jsonl_is_every_entry_in_chain_order(written_log: str) -> None:
    export = opsbot("audit", "export", "--since", "1h", "--config", written_log)
    assert export.returncode == 0, export.stderr
    records = [json.loads(line) for line in export.stdout.splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(list(r) == COLUMNS for r in records)
    assert [r["command"] for r in records] == [
        "whoami",
        "status",
        "nosuch",
        "whoami",
        "whoami",
        "status",
    ]
    assert [r["prev_hash"] for r in records[1:]] == [r["hash"] for r in records[:-1]]
    assert [r["stage"] for r in records] == ["finished"] * 2 + ["decided"] + ["finished"] * 3
    assert records[0]["principal"] == "alice" and records[0]["decision"] == "allowed"


def test_export_csv_to_a_file(written_log: str, tmp_path: Path) -> None:
    out = tmp_path / "audit.csv"
    export = opsbot(
        "audit",
        "export",
        "--since",
        "2000-01-01T00:00:00",
        "--format",
        "csv",
        "--output",
        str(out),
        "--config",
        written_log,
    )
    assert export.returncode == 0, export.stderr
    assert export.stdout == ""
    reader = csv.DictReader(io.StringIO(out.read_text(), newline=""))
    rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert [row["seq"] for row in rows] == ["1", "2", "3", "4", "5", "6"]
    assert {row["args"] for row in rows} == {"{}"}
    assert {row["approvers"] for row in rows} == {"[]"}
    assert [row["status"] for row in rows[:3]] == ["ok", "ok", "unknown-command"]
    assert list(tmp_path.iterdir()) == [out]  # no partial file left behind


def test_tail_follow_prints_new_entries_until_sigterm(log_copy: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "bot", "audit", "tail", "-n", "1", "--follow"],
        cwd=ROOT,
        env=clean_env(OPSBOT_CONFIG=log_copy),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follower:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(follower, lines))
        reader.start()
        try:
            assert "#6  finished" in lines.get(timeout=15)
            ran = opsbot("console", "--config", log_copy, "-c", "/whoami")
            assert ran.returncode == 0, ran.stderr
            new = [lines.get(timeout=10)]
            follower.send_signal(signal.SIGTERM)
            assert follower.wait(timeout=10) == 0, follower.stderr and follower.stderr.read()
        finally:
            if follower.poll() is None:
                follower.kill()
            reader.join()
    assert [line.split("  ")[1:3] for line in new] == [["#7", "finished"]]
    assert "/whoami" in new[0]

    verify = opsbot("audit", "verify", "--config", log_copy)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout == "audit chain ok: 7 row(s) verified, none keyed\n"


def _read_lines(proc: subprocess.Popen[str], into: queue.Queue[str]) -> None:
    # A thread of its own, so a follower that prints nothing fails the test by timeout.
    assert proc.stdout is not None
    for line in proc.stdout:
        into.put(line)


def test_verify_names_an_edited_row(log_copy: str) -> None:
    sql(log_copy, "UPDATE audit_log SET raw_text = '/status --quiet' WHERE seq = 5")
    verify = opsbot("audit", "verify", "--config", log_copy)
    assert verify.returncode == 1
    assert verify.stdout == (
        "audit chain BROKEN after 4 good row(s): seq 5: hash mismatch (row edited)\n"
    )


def test_verify_finds_a_deleted_row(log_copy: str) -> None:
    sql(log_copy, "DELETE FROM audit_log WHERE seq = 3")
    verify = opsbot("audit", "verify", "--config", log_copy)
    assert verify.returncode == 1
    assert "gap in the chain: expected seq 3, found 4" in verify.stdout


def test_a_keyed_log_with_a_witness_verifies_and_finds_a_truncation(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    witness = tmp_path / "elsewhere" / "witness.jsonl"
    witness.parent.mkdir()
    with open(config, "a") as f:
        f.write(f"\n[audit]\nwitness_path = {json.dumps(str(witness))}\n")
    old_key, key = tmp_path / "old.key", "n" * 64
    old_key.write_text("o" * 64 + "\n")
    first = opsbot(
        "console", "--config", config, "-c", "/whoami", env={"OPSBOT_AUDIT_KEY": "o" * 64}
    )
    assert first.returncode == 0, first.stderr
    session = opsbot("console", "--config", config, "-c", "/status", env={"OPSBOT_AUDIT_KEY": key})
    assert session.returncode == 0, session.stderr
    points = [json.loads(line) for line in witness.read_text().splitlines()]
    assert points[-1]["seq"] == 4  # key event, /whoami, rotation event, /status: at shutdown

    without = opsbot("audit", "verify", "--config", config)
    assert without.returncode == 1
    assert "seq 1: keyed with key" in without.stdout
    only_new = opsbot("audit", "verify", "--config", config, env={"OPSBOT_AUDIT_KEY": key})
    assert only_new.returncode == 1
    both = ["audit", "verify", "--config", config, "--key-file", str(old_key)]
    ok = opsbot(*both, "--witness", str(witness), env={"OPSBOT_AUDIT_KEY": key})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("audit chain ok: 4 row(s) verified, 4 keyed, ")

    with sqlite3.connect(database(config)) as db:
        (digest,) = db.execute("SELECT hash FROM audit_log WHERE seq = 3").fetchone()
        db.execute("DELETE FROM audit_log WHERE seq > 3")
        db.execute("UPDATE audit_chain_head SET seq = 3, hash = ?", (digest,))
    assert opsbot(*both, env={"OPSBOT_AUDIT_KEY": key}).returncode == 0  # the table agrees
    found = opsbot(*both, "--witness", str(witness), env={"OPSBOT_AUDIT_KEY": key})
    assert found.returncode == 1
    assert found.stdout.startswith("audit chain BROKEN after 3 good row(s): seq 4 was witnessed")


@pytest.mark.postgres
async def test_db_upgrade_then_verify_on_a_fresh_postgresql_database() -> None:
    async with pg_database() as url:
        env = {"OPSBOT_DATABASE_URL": url}
        before = await asyncio.to_thread(opsbot, "db", "check", env=env)
        upgrade = await asyncio.to_thread(opsbot, "db", "upgrade", env=env)
        verify = await asyncio.to_thread(opsbot, "audit", "verify", env=env)
    assert before.returncode == 1
    assert "run `opsbot db upgrade`" in before.stderr
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout.startswith("audit database postgresql+asyncpg://")
    assert upgrade.stdout.endswith(f"is at revision {head_revision()}\n")
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout == "audit chain ok: 0 row(s) verified, none keyed\n"


def test_since_is_a_duration_back_from_now_or_an_iso_time() -> None:
    now = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-20T10:00:00", now) == datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert parse_since("2026-11-20T12:00:00+02:00", now) == datetime(2026, 11, 20, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", now)


def _export_to(config: str, output: Path) -> CompletedProcess:
    return opsbot("audit", "export", "--since", "1h", "--output", str(output), "--config", config)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device", "directory"])
def test_export_writes_only_a_regular_file(written_log: str, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root (CI runs as root)")
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    before = target.lstat()
    export = _export_to(written_log, target)
    assert export.returncode == 70
    assert export.stderr.startswith(f"opsbot: refusing to write {target}: it is a")
    assert len(export.stderr.splitlines()) == 1
    after = target.lstat()
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)  # untouched
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "victim.txt"]


def test_export_to_a_full_disk_is_one_line_and_leaves_no_partial_file(
    written_log: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        with (disk / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:  # until the disk is full
                filler.write(b"x" * 1024)
        export = _export_to(written_log, disk / "audit.jsonl")
        assert export.returncode == 70, export.stderr
        assert (
            export.stderr
            == f"opsbot: cannot write {disk / 'audit.jsonl'}: No space left on device\n"
        )
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
