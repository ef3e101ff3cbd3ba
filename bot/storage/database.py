"""The connection to the bot's database (the audit database) for state other than the
audit trail. Errors leave here as :class:`DependencyError` with a one-line reason."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.kernel.errors import DependencyError, InternalError
from bot.storage.engine import begin_immediate, error_reason, make_engine

DEPENDENCY = "state database"


class StateDatabase:
    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: AsyncEngine | None = None

    @property
    def url(self) -> str:
        return self._url

    async def start(self) -> None:
        self._engine = make_engine(self._url)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, so two writers queue up)."""
        if self._engine is None:
            raise InternalError("StateDatabase used before start()")
        try:
            async with self._engine.connect() as conn:
                await begin_immediate(conn)
                async with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise DependencyError(DEPENDENCY, _reason(exc), exc) from exc
        except OSError as exc:
            raise DependencyError(DEPENDENCY, f"unreachable ({exc})", exc) from exc


def _reason(exc: SQLAlchemyError) -> str:
    return f"unreachable or failing ({error_reason(exc)})"
