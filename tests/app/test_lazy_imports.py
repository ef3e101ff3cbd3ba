"""Import only what the configuration uses (issue 19, item 1): a console `/whoami` on the
example config loads no Redis client, no PostgreSQL driver, no chat platform SDK, no
scheduler, no HTTP stack, no Prometheus client, no SQLAlchemy and no Alembic (a new SQLite
file is made from the schema's snapshot; the start-up reads of an SQLite file go through
bot.storage.sqlite_probe)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.storage.fresh_sqlite import create_fresh
from bot.storage.migrate import check_schema, head_revision, upgrade
from tests.processes import ROOT, clean_env, run_opsbot

# Packages the example config does not need for a console `/whoami`: its only Redis is a
# [[queues]] entry (read by /queue), its database is the embedded SQLite file, a console
# schedules nothing (heartbeats and checks run when asked) and starts no chat adapter;
# with --no-http, no HTTP server either, so no /metrics to keep metrics for; it probes no
# service (httpx); on an SQLite file with nothing interrupted, queued or firing,
# SQLAlchemy has nothing to do.
NOT_FOR_WHOAMI = (
    *("redis", "asyncpg", "apscheduler", "uvicorn", "starlette", "httpx", "prometheus_client"),
    *("sqlalchemy", "aiosqlite"),
    *("slack_sdk", "slack_bolt", "telegram", "discord"),
)


def _imported(data_dir: Path) -> set[str]:
    """The top-level packages a real `opsbot console -c /whoami` imported."""
    env = clean_env(OPSBOT_DATA_DIR=str(data_dir), PYTHONPROFILEIMPORTTIME="1")
    done = run_opsbot(
        "console",
        "--config",
        str(ROOT / "examples" / "opsbot.toml"),
        "--no-http",
        "-c",
        "/whoami",
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "You are alice" in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert lines, "no -X importtime output"
    return {line.split("|")[-1].strip().split(".")[0] for line in lines[1:]}


def test_console_whoami_imports_neither_redis_nor_sqlalchemy_nor_http_nor_a_platform_sdk(
    tmp_path: Path,
) -> None:
    # A fresh data dir: the SQLite file is made from the schema's snapshot, no Alembic.
    first = _imported(tmp_path)
    assert (tmp_path / "audit.db").exists()
    assert sorted(first.intersection((*NOT_FOR_WHOAMI, "alembic"))) == []
    again = _imported(tmp_path)  # at this opsbot's schema: nothing to migrate
    assert sorted(again.intersection((*NOT_FOR_WHOAMI, "alembic"))) == []


async def test_a_new_sqlite_database_from_the_snapshot_is_what_the_migrations_make(
    tmp_path: Path,
) -> None:
    migrated, snapshot = tmp_path / "migrated.db", tmp_path / "snapshot.db"
    await upgrade(f"sqlite+aiosqlite:///{migrated}", snapshot=False)
    assert create_fresh(f"sqlite+aiosqlite:///{snapshot}", head_revision()), (
        "the snapshot is not at this opsbot's revision: run .venv/bin/python -m bot.storage.migrate"
    )
    assert _contents(snapshot) == _contents(migrated)
    await check_schema(f"sqlite+aiosqlite:///{snapshot}")
    # An existing file is never touched, and a snapshot of another revision is not used.
    assert not create_fresh(f"sqlite+aiosqlite:///{snapshot}", head_revision())
    assert not create_fresh(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}", "0001")
    assert not (tmp_path / "other.db").exists()


def _contents(path: Path) -> tuple[list[tuple[object, ...]], dict[str, list[tuple[object, ...]]]]:
    """Schema (tables, indexes, their SQL), every table's rows, and the journal mode."""
    db = sqlite3.connect(path)
    try:
        schema = db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        tables = [row[1] for row in schema if row[0] == "table"]
        rows = {t: sorted(db.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}
        rows["journal_mode"] = db.execute("PRAGMA journal_mode").fetchall()
        return schema, rows
    finally:
        db.close()
