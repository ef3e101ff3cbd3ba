"""Reads of the embedded SQLite file with the standard library's sqlite3, for what a bot
asks its database at start-up and while idle (is there an interrupted command, a queued
message, a firing alert, a policy mode?), so that a bot with nothing to do there never
loads SQLAlchemy: a quarter of a second and 23 MiB (issue 19).

A probe only ever shortens the way: it answers from the file when it can, and ``None``
when it cannot tell (not a plain SQLite path, an error of any kind). Then the caller takes
its usual SQLAlchemy path, which reports faults as it always has.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

_BUSY_TIMEOUT_S = 10.0


def plain_sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite+aiosqlite:///path`` URL; None for anything else (options or
    escapes too: SQLAlchemy's URL parsing decides those, on the usual path)."""
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix):
        return None
    rest = url[len(prefix) :]
    if not rest or rest == ":memory:" or any(c in rest for c in "?#%"):
        return None
    return Path(rest)


def sqlite_time(value: datetime) -> str:
    """``value`` as SQLAlchemy stores a UTC datetime in SQLite (bot.storage.schema's
    UTCDateTime: naive UTC, SQLite's DATETIME text), so that text comparisons order it."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: stored times are timezone-aware")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def from_sqlite_time(text: object) -> datetime | None:
    """A time as :func:`sqlite_time` (and SQLAlchemy) stores it, back as an aware UTC
    datetime; None for anything else (then the caller asks through SQLAlchemy)."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else None


async def probe(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]] | None:
    """The rows of one read-only statement on the SQLite file of ``url``; None when this
    cannot answer (the caller then asks through SQLAlchemy)."""
    path = plain_sqlite_path(url)
    if path is None:
        return None
    return await asyncio.to_thread(_read, path, sql, tuple(params))


def _read(path: Path, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]] | None:
    try:
        # mode=rw: a probe never creates the file. (Not mode=ro: a WAL file opened read-only
        # cannot be read while the -shm file is missing.)
        db = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=_BUSY_TIMEOUT_S)
    except (sqlite3.Error, OSError, ValueError):
        return None
    try:
        return db.execute(sql, params).fetchall()
    except (sqlite3.Error, OSError, ValueError, OverflowError):
        return None
    finally:
        db.close()
