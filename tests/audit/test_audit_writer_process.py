"""The SQLite writer process: a real child process on a real SQLite file.

Frames are pipelined, so these check what pipelining could break: order when a frame
fails while later ones are in flight, nothing lost when the process is killed mid-stream,
and the chain valid afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from bot.audit import AuditStore, upgrade
from tests.auditlog_helpers import Db, entry, wait_until


@pytest.fixture
async def db(tmp_path: Path) -> Db:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await upgrade(url)
    return Db("sqlite", url, None)


async def writer_pid(store: AuditStore) -> int:
    # The process starts in the background, after start() returns.
    await wait_until(lambda: store.writer_pid is not None)
    pid = store.writer_pid
    assert pid is not None
    return pid


async def test_entries_are_written_by_a_process_of_their_own(db: Db, tmp_path: Path) -> None:
    store = db.store(tmp_path)
    await store.start()
    try:
        pid = await writer_pid(store)
        assert pid != os.getpid()
        await asyncio.gather(*(store.append_durably(entry(i)) for i in range(300)))
        assert await db.request_ids() == [f"req-{i:04d}" for i in range(300)]
        assert (await store.verify()).ok
    finally:
        await store.close()
    # close() ends it: stdin closed, everything committed, process gone.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_failed_frame_holds_back_the_frames_sent_after_it(db: Db, tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = db.store(tmp_path, retry_initial=0.05, retry_max=0.2)
    await store.start()
    try:
        await asyncio.gather(*(store.append_durably(entry(i)) for i in range(10)))
        # The table goes away under the writer: its next INSERT fails ("no such table",
        # an OperationalError: spool and retry), with more frames already in flight.
        with sqlite3.connect(path) as conn:
            conn.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
        await asyncio.gather(*(store.append_durably(entry(i)) for i in range(10, 400)))
        assert store.spool_depth == 390
        with sqlite3.connect(path) as conn:
            conn.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
        await store.append_durably(entry(400))
        await wait_until(lambda: store.spool_depth == 0)
        await store.flush()
        # Nothing lost, nothing doubled, and in the order it happened.
        assert await db.request_ids() == [f"req-{i:04d}" for i in range(401)]
        result = await store.verify()
        assert (result.ok, result.checked) == (True, 401), result
    finally:
        await store.close()


async def test_a_killed_writer_process_is_replaced_and_nothing_is_lost(
    db: Db, tmp_path: Path
) -> None:
    store = db.store(tmp_path, retry_initial=0.05, retry_max=0.2)
    await store.start()
    try:
        first = await writer_pid(store)
        waiting = [asyncio.ensure_future(store.append_durably(entry(i))) for i in range(2000)]
        await asyncio.sleep(0)  # queued; the writer starts sending frames
        await asyncio.sleep(0)
        os.kill(first, signal.SIGKILL)
        await asyncio.gather(*waiting)
        await store.append_durably(entry(2000))
        await wait_until(lambda: store.spool_depth == 0)
        await store.flush()
        assert await writer_pid(store) != first
        ids = await db.request_ids()
        # At least once: a frame committed just before the kill may be sent again from
        # the spool. Every entry is there, and the first copies are in order.
        first_seen = list(dict.fromkeys(ids))
        assert first_seen == [f"req-{i:04d}" for i in range(2001)]
        assert (await store.verify()).ok
    finally:
        await store.close()


async def test_a_refused_entry_does_not_let_later_frames_overtake_it(
    db: Db, tmp_path: Path
) -> None:
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as conn:
        # The database refuses one entry (a constraint error: not "down", not spooled).
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_log WHEN NEW.request_id = 'req-0100' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    store = db.store(tmp_path)
    await store.start()
    try:
        # Several frames in flight at once; the one holding req-0100 fails.
        results = await asyncio.gather(
            *(store.append_durably(entry(i)) for i in range(600)), return_exceptions=True
        )
        refused = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert refused == [100]
        assert store.spool_depth == 0
        # The frames after the failed one were held back and written after it, in order.
        assert await db.request_ids() == [f"req-{i:04d}" for i in range(600) if i != 100]
        assert (await store.verify()).ok
    finally:
        await store.close()
