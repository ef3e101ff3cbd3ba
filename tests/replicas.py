"""Two bot replicas on one PostgreSQL database, as production runs them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bot.audit import upgrade
from tests.auditlog_helpers import pg_database
from tests.botharness import TestBot, running_bot


@contextlib.asynccontextmanager
async def two_replicas(
    config: str, tmp_path: Path, *, extra: str = "", serve_http: bool = False
) -> AsyncIterator[tuple[TestBot, TestBot]]:
    """Replicas "one" and "two" of ``config`` on a fresh, migrated PostgreSQL database;
    ``extra`` is appended to both configs (a ``[state]`` section with Redis)."""
    async with pg_database() as url:
        await upgrade(url)
        text = config + f'\n[audit]\ndatabase_url = "{url}"\n' + extra
        first = text.replace('name = "opsbot"', 'name = "opsbot"\nreplica_id = "one"', 1)
        second = text.replace('name = "opsbot"', 'name = "opsbot"\nreplica_id = "two"', 1)
        async with (
            running_bot(first, data_dir=tmp_path / "one", serve_http=serve_http) as one,
            running_bot(second, data_dir=tmp_path / "two", serve_http=serve_http) as two,
        ):
            yield one, two
