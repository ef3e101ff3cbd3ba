"""The statements that claim delivered events (``delivered_events``), as SQL text.

Shared by the state database (PostgreSQL, or SQLite without the writer process) and the
SQLite audit writer process, which must not import SQLAlchemy.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

PRUNE_SQL = "DELETE FROM delivered_events WHERE at < {}"


@functools.lru_cache(maxsize=64)
def claim_sql(rows: int, *, dollar: bool) -> str:
    """One multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING``: the rows it returns
    are the claims won. ``dollar``: asyncpg's ``$1`` placeholders, else ``?``."""
    if dollar:
        values = ", ".join(f"(${3 * i + 1}, ${3 * i + 2}, ${3 * i + 3})" for i in range(rows))
    else:
        values = ", ".join("(?, ?, ?)" for _ in range(rows))
    # Our own table and placeholders; the values are bound.
    return (
        f"INSERT INTO delivered_events (platform, event_id, at) VALUES {values} "  # noqa: S608
        "ON CONFLICT DO NOTHING RETURNING platform, event_id"
    )


def sqlite_datetime(at: datetime) -> str:
    """SQLAlchemy's DATETIME text form on SQLite (naive UTC), as UTCDateTime writes it."""
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
