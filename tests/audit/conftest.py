"""The audit database every store test runs on: a real SQLite file, and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.audit import upgrade
from tests.auditlog_helpers import Db, pg_schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
        await upgrade(url)
        yield Db("sqlite", url, None)
    else:
        async with pg_schema() as (url, schema):
            await upgrade(url, schema=schema)
            yield Db("postgres", url, schema)
