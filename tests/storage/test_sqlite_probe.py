"""bot.storage.sqlite_probe: the sqlite3 reads that spare a bot on its SQLite file loading
SQLAlchemy must read what SQLAlchemy wrote, and say "cannot tell" rather than guess."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.storage.database import StateDatabase
from bot.storage.migrate import upgrade
from bot.storage.shared_values import SharedValues
from bot.storage.sqlite_probe import probe, sqlite_time


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 12, 4, 3, 22, 51, 347631, tzinfo=UTC),
        datetime(2026, 12, 4, 3, 22, 51, tzinfo=UTC),  # no microseconds
        datetime(2026, 12, 4, 5, 22, 51, 1, tzinfo=timezone(timedelta(hours=2))),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a year of three digits
    ],
)
async def test_a_time_reads_as_sqlalchemy_stored_it(tmp_path: Path, at: datetime) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await upgrade(url)
    db = StateDatabase(url)
    await db.start()
    try:
        await SharedValues(db).set("k", "v", expires_at=at)  # through SQLAlchemy
    finally:
        await db.close()
    same = "SELECT count(*) FROM shared_state WHERE expires_at = ?"
    assert await probe(url, same, (sqlite_time(at),)) == [(1,)]
    before = "SELECT count(*) FROM shared_state WHERE expires_at < ?"
    assert await probe(url, before, (sqlite_time(at + timedelta(microseconds=1)),)) == [(1,)]
    assert await probe(url, before, (sqlite_time(at),)) == [(0,)]
    # And back: SharedValues reads it with sqlite3, expiring at the same instant.
    await db.start()
    try:
        assert await SharedValues(db).get("k", now=at - timedelta(microseconds=1)) == "v"
        assert await SharedValues(db).get("k", now=at) is None
    finally:
        await db.close()


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        sqlite_time(datetime(2026, 1, 1))


async def test_what_it_cannot_answer_is_left_to_the_usual_path(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await upgrade(url)
    assert await probe(url, "SELECT count(*) FROM outbox") == [(0,)]
    assert await probe(url, "SELECT no_such_column FROM outbox") is None
    assert await probe(f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}", "SELECT 1") is None
    assert not (tmp_path / "missing.db").exists()  # a probe creates nothing
    assert await probe(f"{url}?mode=ro", "SELECT 1") is None  # options: SQLAlchemy decides
    assert await probe("postgresql+asyncpg://u@127.0.0.1/db", "SELECT 1") is None
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    junk = f"sqlite+aiosqlite:///{tmp_path / 'junk.db'}"
    assert await probe(junk, "SELECT count(*) FROM outbox") is None
