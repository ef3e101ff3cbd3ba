"""Schema migrations for the audit database (Alembic, configured in code).

``upgrade(url)`` brings the database to this opsbot's revision; ``check_schema(url)`` is
the start-up check: it raises :class:`~bot.kernel.errors.DependencyError` unless the database
is at exactly that revision.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from bot.kernel.errors import DependencyError
from bot.kernel.lazy import lazy_import
from bot.storage.engine import begin_immediate, display_url, error_reason, make_engine
from bot.storage.fresh_sqlite import SNAPSHOT, create_fresh, snapshot_text
from bot.storage.sqlite_probe import probe

if TYPE_CHECKING:
    import sqlalchemy as sa
    from alembic.config import Config
    from sqlalchemy.engine import Connection
else:
    sa = lazy_import("sqlalchemy")

DEPENDENCY = "audit database"
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Two replicas starting at once must not both run the same DDL.
_PG_MIGRATION_LOCK = 0x6F707362_6F7401  # "opsbot" + 1; any constant shared by all replicas
# Every revision in migrations/versions, oldest first. Start-up checks the schema against
# this list without importing Alembic (a tenth of a second on every `opsbot` start); a
# test keeps it equal to Alembic's own history.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008")


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def head_revision() -> str:
    return REVISIONS[-1]


async def upgrade(url: str, *, schema: str | None = None, snapshot: bool = True) -> None:
    """Create or upgrade the audit tables at ``url`` to this opsbot's revision.

    A schema newer than this opsbot raises :class:`SchemaMismatch`; nothing is touched.
    A new SQLite file is made from the schema's snapshot (bot.storage.fresh_sqlite)
    unless ``snapshot`` is False.
    """
    if snapshot and await asyncio.to_thread(create_fresh, url, head_revision()):
        return
    try:
        await check_schema(url, schema=schema)
    except SchemaMismatch as exc:
        if exc.newer:
            raise
    else:
        return
    engine = make_engine(url, schema=schema)
    try:
        async with engine.connect() as conn:
            await begin_immediate(conn)
            async with conn.begin():
                await conn.run_sync(_upgrade_sync)
    except sa.exc.SQLAlchemyError as exc:
        raise DependencyError(
            DEPENDENCY, f"migration of {display_url(url)} failed: {error_reason(exc, url)}", exc
        ) from exc
    except OSError as exc:
        raise DependencyError(
            DEPENDENCY, f"cannot connect to {display_url(url)}: {error_reason(exc)}", exc
        ) from exc
    finally:
        await engine.dispose()


async def current_revision(url: str, *, schema: str | None = None) -> str | None:
    # An SQLite file at one revision (every start but the first and an upgrade's) is read
    # without SQLAlchemy (bot.storage.sqlite_probe); anything else takes the long way.
    found = await probe(url, "SELECT version_num FROM alembic_version")
    if found is not None and len(found) == 1 and found[0][0] in REVISIONS:
        return str(found[0][0])
    engine = make_engine(url, schema=schema)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current_sync)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        where = display_url(url)
        raise DependencyError(
            DEPENDENCY,
            f"cannot read the schema revision of {where}: {error_reason(exc, url)}",
            exc,
        ) from exc
    finally:
        await engine.dispose()


class SchemaMismatch(DependencyError):
    """The database is not at this opsbot's revision; ``newer`` when upgrading cannot help."""

    def __init__(self, message: str, *, newer: bool) -> None:
        super().__init__(DEPENDENCY, message)
        self.newer = newer


async def check_schema(url: str, *, schema: str | None = None) -> None:
    """Raise :class:`SchemaMismatch` unless the database is at this opsbot's revision
    (:class:`DependencyError` when it cannot be read at all)."""
    current = await current_revision(url, schema=schema)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaMismatch("not migrated yet: run `opsbot db upgrade`", newer=False)
    if current in REVISIONS:
        raise SchemaMismatch(
            f"schema rev {current} is older than this opsbot's (rev {head}): "
            "run `opsbot db upgrade`",
            newer=False,
        )
    raise SchemaMismatch(
        f"schema rev {current} is newer than this opsbot's (rev {head}); "
        "run the opsbot version that wrote it, or restore a backup",
        newer=True,
    )


def _upgrade_sync(connection: Connection) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
        )
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current_sync(connection: Connection) -> str | None:
    """What Alembic's MigrationContext reports, read with plain SQL (no Alembic import)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    version = sa.table("alembic_version", sa.column("version_num"))
    revisions = connection.execute(sa.select(version.c.version_num)).scalars().all()
    if len(revisions) > 1:
        raise DependencyError(
            DEPENDENCY, f"several schema heads {sorted(revisions)}: run `opsbot db upgrade`"
        )
    return str(revisions[0]) if revisions else None


async def write_sqlite_snapshot() -> None:
    """Migrate a new SQLite database with Alembic and write its dump as the snapshot new
    embedded databases are made from (bot.storage.fresh_sqlite)."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "audit.db"
        await upgrade(f"sqlite+aiosqlite:///{path}", snapshot=False)
        db = sqlite3.connect(path)
        try:
            dump = list(db.iterdump())
        finally:
            db.close()
    SNAPSHOT.write_text(snapshot_text(head_revision(), dump), "utf-8")
    print(f"wrote {SNAPSHOT} (revision {head_revision()})")


if __name__ == "__main__":
    # After adding a migration: python -m bot.storage.migrate
    asyncio.run(write_sqlite_snapshot())
