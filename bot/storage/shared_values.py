"""Small named values in the state database that every process on it shares: what Redis
keeps for replicas (the policy mode, heartbeat pauses), for a bot without Redis, so a
console opened beside ``opsbot run`` on the same data directory sees and changes the same.

Each operation is one transaction; a value past ``expires_at`` reads as absent.
Errors leave as :class:`~bot.kernel.errors.DependencyError`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from bot.kernel.lazy import lazy_import
from bot.storage.database import StateDatabase
from bot.storage.sqlite_probe import from_sqlite_time, probe

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection

    from bot.storage import state_schema as tables
else:
    sa = lazy_import("sqlalchemy")
    tables = lazy_import("bot.storage.state_schema")


class SharedValues:
    def __init__(self, database: StateDatabase) -> None:
        self._db = database

    async def get(self, key: str, now: datetime | None = None) -> str | None:
        row = await self._read_directly(key)
        if row is None:
            row = await self._read(key)
        if not row:
            return None
        value, expires_at = row
        if expires_at is not None and now is not None and expires_at <= now:
            return None
        return value

    async def _read(self, key: str) -> tuple[()] | tuple[str, datetime | None]:
        shared_state = tables.shared_state
        async with self._db.transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(shared_state.c.value, shared_state.c.expires_at).where(
                        shared_state.c.key == key
                    )
                )
            ).first()
        return () if row is None else (str(row[0]), row[1])

    async def _read_directly(self, key: str) -> tuple[()] | tuple[str, datetime | None] | None:
        """The row as sqlite3 reads it from the SQLite file, ``()`` when there is none: the
        policy mode is read this way at start-up and for every high-risk action, without
        SQLAlchemy (bot.storage.sqlite_probe). None when that cannot tell."""
        found = await probe(
            self._db.url, "SELECT value, expires_at FROM shared_state WHERE key = ?", (key,)
        )
        if found is None:
            return None
        if not found:
            return ()
        value, expires_text = found[0]
        if expires_text is None:
            return str(value), None
        expires_at = from_sqlite_time(expires_text)
        return None if expires_at is None else (str(value), expires_at)

    async def set(self, key: str, value: str, *, expires_at: datetime | None = None) -> None:
        shared_state = tables.shared_state
        async with self._db.transaction() as conn:
            await self._delete(conn, key)
            await conn.execute(
                shared_state.insert().values(key=key, value=value, expires_at=expires_at)
            )

    async def set_if_absent(self, key: str, value: str) -> bool:
        shared_state = tables.shared_state
        async with self._db.transaction() as conn:
            present = (
                await conn.execute(sa.select(shared_state.c.key).where(shared_state.c.key == key))
            ).first()
            if present is not None:
                return False
            await conn.execute(shared_state.insert().values(key=key, value=value))
        return True

    async def swap(self, key: str, expected: str, value: str) -> bool:
        """Replace ``expected`` by ``value``; False if the key holds anything else (another
        process changed it first)."""
        shared_state = tables.shared_state
        async with self._db.transaction() as conn:
            result = await conn.execute(
                shared_state.update()
                .where(shared_state.c.key == key, shared_state.c.value == expected)
                .values(value=value)
            )
        return result.rowcount == 1

    @staticmethod
    async def _delete(conn: AsyncConnection, key: str) -> None:
        shared_state = tables.shared_state
        await conn.execute(shared_state.delete().where(shared_state.c.key == key))
