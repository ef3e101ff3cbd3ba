"""Claims of delivered platform events in the state database, written in groups: many
claims at once are one transaction, each event is claimed once (also twice in one group,
also against another replica's claims), old claims are pruned, and a database that is
down fails every claim of the group clearly. On SQLite the claims go through the audit
writer process (the one writer of the file); through the state database's own
connection otherwise."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.audit import AuditStore
from bot.audit.trail import migrate
from bot.cluster.dedup import ClaimStore, DatabaseClaims, DatabaseDedup, WriterProcessClaims
from bot.kernel.errors import DependencyError
from bot.storage.database import StateDatabase
from tests.auditlog_helpers import pg_database

WINDOW = timedelta(hours=1)
NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


async def _claims(dedup: DatabaseDedup, ids: list[str]) -> list[bool]:
    return list(await asyncio.gather(*(dedup.first_delivery("slack", i, NOW) for i in ids)))


@contextlib.asynccontextmanager
async def _claim_store(url: str, kind: str, tmp_path: Path) -> AsyncIterator[ClaimStore]:
    """Claims through the state database's connection, or through the SQLite writer
    process of an audit store on the same file."""
    if kind == "database":
        database = StateDatabase(url)
        await database.start()
        try:
            yield DatabaseClaims(database)
        finally:
            await database.close()
        return
    store = AuditStore(url, spool_path=tmp_path / f"spool-{id(url)}")
    await store.start()
    try:
        assert store.sqlite_writer is not None
        yield WriterProcessClaims(store.sqlite_writer)
    finally:
        await store.close()


async def _check_group_claims(url: str, kinds: tuple[str, str], tmp_path: Path) -> None:
    async with (
        _claim_store(url, kinds[0], tmp_path) as one,
        _claim_store(url, kinds[1], tmp_path / "2") as two,
    ):
        first, second = DatabaseDedup(one, WINDOW), DatabaseDedup(two, WINDOW)
        ids = [f"Ev{n:04d}" for n in range(300)]
        # The same event twice in one group: one claim wins.
        claimed = await _claims(first, [*ids, "Ev0007"])
        assert claimed == [True] * 300 + [False]
        # Another replica's claims of the same events, and a new one, at once.
        racing = await asyncio.gather(
            _claims(second, [*ids[:50], "EvNEW"]), _claims(first, ["EvNEW"])
        )
        assert racing[0][:50] == [False] * 50
        assert sorted([racing[0][50], racing[1][0]]) == [False, True]


@pytest.mark.parametrize(
    "kinds", [("writer", "database"), ("database", "writer"), ("database", "database")]
)
async def test_group_claims_on_sqlite(tmp_path: Path, kinds: tuple[str, str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    await migrate(url)
    (tmp_path / "2").mkdir()
    await _check_group_claims(url, kinds, tmp_path)


@pytest.mark.postgres
async def test_group_claims_on_postgresql(tmp_path: Path) -> None:
    async with pg_database() as url:
        await migrate(url)
        (tmp_path / "2").mkdir()
        await _check_group_claims(url, ("database", "database"), tmp_path)


@pytest.mark.parametrize("kind", ["writer", "database"])
async def test_claims_older_than_the_window_are_pruned(tmp_path: Path, kind: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    await migrate(url)
    async with _claim_store(url, kind, tmp_path) as claims:
        dedup = DatabaseDedup(claims, WINDOW)
        old = NOW - 2 * WINDOW
        assert await dedup.first_delivery("slack", "EvOLD", old)
        assert not await dedup.first_delivery("slack", "EvOLD", old)
        # Enough claims for a prune, which removes claims older than the window.
        await _claims(dedup, [f"Ev{n:04d}" for n in range(600)])
        assert await dedup.first_delivery("slack", "EvOLD", NOW)


async def test_a_database_that_is_down_fails_each_claim_of_the_group(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'state.db'}"  # no such directory
    database = StateDatabase(url)
    await database.start()
    try:
        dedup = DatabaseDedup(DatabaseClaims(database), WINDOW)
        results = await asyncio.gather(
            *(dedup.first_delivery("slack", f"Ev{n}", NOW) for n in range(5)),
            return_exceptions=True,
        )
    finally:
        await database.close()
    assert all(isinstance(r, DependencyError) for r in results), results
    assert "state database" in str(results[0])
