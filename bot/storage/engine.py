"""Async engines for the audit database: ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://…``.

SQLite runs in WAL mode (readers never block the writer) and every transaction this package
opens for writing starts with ``BEGIN IMMEDIATE``, so two writers on one file serialise on
the database lock instead of failing half-way. pysqlite's own transaction handling is
switched off for that (the recipe from SQLAlchemy's SQLite documentation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.kernel.errors import ConfigError
from bot.kernel.lazy import lazy_import

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
else:
    # Loaded when the first engine is made: a bot on its SQLite file reads what it needs
    # at start-up without it (bot.storage.sqlite_probe).
    sa = lazy_import("sqlalchemy")

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5.0
PG_COMMAND_TIMEOUT_S = 30.0

_BEGIN_OPTION = "opsbot_sqlite_begin"


def make_engine(url: str, *, schema: str | None = None) -> AsyncEngine:
    """An engine for ``url``; ``schema`` (PostgreSQL only) becomes the search_path."""
    from sqlalchemy.ext.asyncio import create_async_engine

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError("audit database url", [f"not a database URL: {exc}"]) from exc
    if parsed.drivername == "sqlite+aiosqlite":
        if schema is not None:
            raise ConfigError("audit database url", ["a schema is only supported on PostgreSQL"])
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                "audit database url", ["SQLite needs a file path (sqlite+aiosqlite:///path)"]
            )
        engine = create_async_engine(parsed)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_connect)
        sa.event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    if parsed.drivername == "postgresql+asyncpg":
        connect_args: dict[str, Any] = {
            "timeout": PG_CONNECT_TIMEOUT_S,
            "command_timeout": PG_COMMAND_TIMEOUT_S,
        }
        if schema is not None:
            connect_args["server_settings"] = {"search_path": schema}
        # pre_ping: after the database restarts, pooled connections are dead; find out
        # before a batch is sent rather than spooling it.
        return create_async_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    raise ConfigError(
        "audit database url",
        [
            f"unsupported driver {parsed.drivername!r}: use sqlite+aiosqlite:///path "
            "or postgresql+asyncpg://user@host/db"
        ],
    )


def display_url(url: str) -> str:
    """``url`` without its password, for messages."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def error_reason(exc: BaseException, url: str | None = None) -> str:
    """One line for a person: the driver's own message (not SQLAlchemy's wrapping with its
    statement and link), and for an SQLite file whose directory cannot be written, that."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    reason = text.splitlines()[0][:200] if text else type(original).__name__
    if url is not None:
        parsed = sa.engine.make_url(url)
        if parsed.drivername.startswith("sqlite") and parsed.database:
            directory = Path(parsed.database).parent
            if directory.is_dir() and not os.access(directory, os.W_OK):
                reason += f" (its directory {directory} is read-only)"
    return reason


async def begin_immediate(conn: AsyncConnection) -> None:
    """Make the next transaction on ``conn`` a write transaction (SQLite: BEGIN IMMEDIATE)."""
    await conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # None = autocommit at the driver level; transactions are begun by _sqlite_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN_OPTION, "BEGIN"))
