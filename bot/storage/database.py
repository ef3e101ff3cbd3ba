"""The connection to the bot's database (the audit database) for state other than the
audit trail. Errors leave here as :class:`DependencyError` with a one-line reason."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from bot.kernel.errors import DependencyError, InternalError
from bot.kernel.lazy import lazy_import
from bot.storage.engine import begin_immediate, error_reason, make_engine
from bot.storage.sqlite_probe import plain_sqlite_path

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
else:
    sa = lazy_import("sqlalchemy")

DEPENDENCY = "state database"


class StateDatabase:
    def __init__(self, url: str) -> None:
        self._url = url
        self._started = False
        self._engine: AsyncEngine | None = None

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        self._started = True
        # On the embedded SQLite file the engine (and SQLAlchemy) comes with the first
        # transaction: a bot that only probes it (bot.storage.sqlite_probe) needs none.
        if plain_sqlite_path(self._url) is None:
            self._engine = make_engine(self._url)

    async def close(self) -> None:
        self._started = False
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so two writers queue up)."""
        if not self._started:
            raise InternalError("StateDatabase used before start()")
        if self._engine is None:
            self._engine = make_engine(self._url)
        try:
            async with self._engine.connect() as conn:
                await begin_immediate(conn)
                async with conn.begin():
                    yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise DependencyError(DEPENDENCY, _reason(exc), exc) from exc
        except OSError as exc:
            raise DependencyError(DEPENDENCY, f"unreachable ({exc})", exc) from exc


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    return f"unreachable or failing ({error_reason(exc)})"
