"""A new embedded SQLite database, made from a snapshot of the schema at this opsbot's
revision (``sqlite_head.sql``) instead of by replaying every Alembic migration: loading
Alembic and running its migrations was a sixth of a fresh ``opsbot console``'s start-up.

The snapshot is what the migrations produce (a test compares the two, tables, indexes and
rows). When it is not at this opsbot's revision (a migration was added and the snapshot
not rewritten) it is not used: the migrations run, as before. Rewrite it with

    .venv/bin/python -m bot.storage.fresh_sqlite
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from pathlib import Path

from bot.storage.files import fsync_dir
from bot.storage.sqlite_probe import plain_sqlite_path

SNAPSHOT = Path(__file__).resolve().parent / "sqlite_head.sql"
_HEADER = "-- opsbot SQLite schema at revision "


def snapshot_revision(text: str) -> str | None:
    first = text.split("\n", 1)[0]
    return first[len(_HEADER) :].split()[0] if first.startswith(_HEADER) else None


def create_fresh(url: str, revision: str) -> bool:
    """Create the SQLite database of ``url`` from the snapshot when its file does not exist
    yet and the snapshot is at ``revision``. False when it did nothing (the file exists,
    the URL is not a plain SQLite file path, the snapshot is older or newer): the caller
    migrates as usual. Blocking: run it in a thread."""
    path = plain_sqlite_path(url)
    if path is None or path.exists():
        return False
    try:
        script = SNAPSHOT.read_text("utf-8")
    except OSError:
        return False
    if snapshot_revision(script) != revision:
        return False
    # Built aside and linked into place: a crash leaves no half-made database, and of two
    # processes starting on one new data directory, one makes it, the other finds it.
    # SQLite creates it, with the permissions it gives any new database file.
    temp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new"
    try:
        try:
            db = sqlite3.connect(temp, isolation_level=None)
            try:
                db.executescript(script)
                db.execute("PRAGMA journal_mode=WAL")
            finally:
                db.close()
        except sqlite3.Error:
            return False  # the usual path says what is wrong (the directory, the disk)
        try:
            os.link(temp, path)
        except OSError:
            return False  # made meanwhile by another process, or no hard links here
        fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def snapshot_text(revision: str, dump: list[str]) -> str:
    """The snapshot file for ``dump`` (sqlite3's iterdump of a database at ``revision``)."""
    header = f"{_HEADER}{revision} (written by `python -m bot.storage.migrate`)"
    return "\n".join([header, *dump]) + "\n"
