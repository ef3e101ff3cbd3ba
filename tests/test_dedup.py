"""Claims of delivered platform events in the state database, written in groups: many
claims at once are one transaction, each event is claimed once (also twice in one group,
also against another replica's claims), and a database that is down fails every claim of
the group clearly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.audit import migrate
from bot.errors import DependencyError
from bot.state.database import StateDatabase
from bot.state.dedup import DatabaseDedup
from tests.auditlog_helpers import pg_database

WINDOW = timedelta(hours=1)
NOW = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


async def _claims(dedup: DatabaseDedup, ids: list[str]) -> list[bool]:
    return list(await asyncio.gather(*(dedup.first_delivery("slack", i, NOW) for i in ids)))


async def _check_group_claims(url: str) -> None:
    one, two = StateDatabase(url), StateDatabase(url)
    await one.start()
    await two.start()
    try:
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
    finally:
        await one.close()
        await two.close()


async def test_group_claims_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    await migrate(url)
    await _check_group_claims(url)


@pytest.mark.postgres
async def test_group_claims_on_postgresql() -> None:
    async with pg_database() as url:
        await migrate(url)
        await _check_group_claims(url)


async def test_a_database_that_is_down_fails_each_claim_of_the_group(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'state.db'}"  # no such directory
    database = StateDatabase(url)
    await database.start()
    try:
        dedup = DatabaseDedup(database, WINDOW)
        results = await asyncio.gather(
            *(dedup.first_delivery("slack", f"Ev{n}", NOW) for n in range(5)),
            return_exceptions=True,
        )
    finally:
        await database.close()
    assert all(isinstance(r, DependencyError) for r in results), results
    assert "state database" in str(results[0])
