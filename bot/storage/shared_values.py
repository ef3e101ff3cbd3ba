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
from bot.storage.sqlite_probe import probe

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
        # Mostly nothing was ever set (the policy mode at start-up): say so without SQLAlchemy.
        found = await probe(self._db.url, "SELECT 1 FROM shared_state WHERE key = ?", (key,))
        if found == []:
            return None
        shared_state = tables.shared_state
        async with self._db.transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(shared_state.c.value, shared_state.c.expires_at).where(
                        shared_state.c.key == key
                    )
                )
            ).first()
        if row is None:
            return None
        value, expires_at = row
        if expires_at is not None and now is not None and expires_at <= now:
            return None
        return str(value)

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
