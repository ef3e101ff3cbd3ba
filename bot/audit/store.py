"""The durable audit store: a hash-chained table on SQLite or PostgreSQL, with a disk spool.

Writing
    ``append`` queues an entry and returns; ``append_durably`` returns once the entry is
    committed or fsynced to the spool. One writer task drains the queue in batches (group
    commit). Per batch, in one transaction: lock the chain head, give each entry the next
    ``seq`` and its hash, insert the rows, move the head, commit, then wake the waiters.

The chain lock
    PostgreSQL: ``SELECT … FROM audit_chain_head WHERE id = 1 FOR UPDATE``. A second writer
    (another replica) blocks on that row until the first commits, then reads the head the
    first one left, so both extend one chain. SQLite: the transaction starts with
    ``BEGIN IMMEDIATE``, which takes the database's write lock before the head is read
    (``busy_timeout`` makes a second writer wait for it).

Database down
    A batch that fails with a connection-level error is written as JSON lines to the spool
    file and fsynced; its waiters are released. While the spool holds entries, newer ones
    are appended behind them, and the writer retries the database with capped backoff,
    sending spooled entries in order, then empties the spool. Spooled entries get their
    ``seq`` and hash when they reach the database. Delivery is at-least-once: a commit
    whose acknowledgement is lost with the connection is sent again from the spool.

One store (one spool file) per process; never share a spool file between replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import sqlite3
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from msgspec import Struct

import bot.audit.rows as row_layout
from bot.audit.chain import GENESIS_HASH, ChainKey, ChainVerifier, TableEnds, VerifyResult
from bot.audit.record import AuditEntry, StoredEntry, format_at
from bot.audit.rows import insert_sql, linked_rows
from bot.audit.sqlite_writer import HEAD_ID, PAST_HEAD_WINDOW
from bot.audit.writer_process import SqliteWriterProcess
from bot.kernel.clock import Clock, SystemClock
from bot.kernel.errors import DependencyError, InternalError
from bot.kernel.lazy import lazy_import
from bot.storage.engine import begin_immediate, make_engine
from bot.storage.files import append_durably, fsync_dir
from bot.storage.sqlite_probe import plain_sqlite_path, probe, sqlite_time

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import RowMapping
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from bot.storage import schema
else:
    # Loaded on first use: on the embedded SQLite file the writes go through sqlite3 and
    # the start-up reads through bot.storage.sqlite_probe, so a bot may never need them.
    sa = lazy_import("sqlalchemy")
    schema = lazy_import("bot.storage.schema")

DEPENDENCY = "audit database"
_PAGE = 2_000

_log = structlog.get_logger("opsbot.auditlog")


class _Pending(Struct):
    entries: tuple[AuditEntry, ...]  # empty: a flush barrier (or the stop sign)
    done: asyncio.Future[None] | None


_STOP = _Pending((), None)
# Entries per frame sent to the SQLite writer process. Small frames keep both processes
# busy: the writer commits one while the event loop answers the commands the last one
# released; large ones made them take turns (bench/audit.py). About 40 commands a frame:
# 128 when each wrote three entries; a read-only command now writes one.
_FRAME_ENTRIES = 48


class _Inbox:
    """The writer's queue: a deque and one wake-up future.

    ``asyncio.Queue.put`` and its getter bookkeeping cost several microseconds per entry,
    which showed at thousands of commands a second (bench/audit.py); here putting an
    item is an append, and waking the writer happens once per batch, not per item.
    """

    def __init__(self, capacity: int) -> None:
        self._items: deque[_Pending] = deque()
        self._capacity = capacity
        self._wakeup: asyncio.Future[None] | None = None  # the writer waits on it
        self._room: asyncio.Future[None] | None = None  # producers wait on it when full

    async def put(self, item: _Pending) -> None:
        while len(self._items) >= self._capacity:
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)
        self._items.append(item)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    @property
    def idle(self) -> bool:
        """The writer waits for work, and none is queued."""
        wakeup = self._wakeup
        return wakeup is not None and not wakeup.done() and not self._items

    def poke(self) -> None:
        """Wake the writer even though nothing new was queued."""
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def take(self, most: int, wait_at_most: float | None = None) -> list[_Pending]:
        """At least one item, at most ``most``; none if ``wait_at_most`` seconds pass first."""
        if not self._items:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                if wait_at_most is None:
                    await self._wakeup
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup, wait_at_most)
            finally:
                self._wakeup = None
        items = self._items
        taken = [items.popleft() for _ in range(min(most, len(items)))]
        room = self._room
        if taken and room is not None and not room.done():
            room.set_result(None)
        return taken


class _DatabaseDown(Exception):
    """A batch could not reach the database; it belongs in the spool."""


@functools.cache
def _asyncpg_unavailable() -> tuple[type[BaseException], ...]:
    """asyncpg errors that mean the server went away or cannot take us now, whatever
    SQLAlchemy wrapped them in. Asked only once asyncpg is loaded: a bot on the embedded
    SQLite file never needs it."""
    import asyncpg  # type: ignore[import-untyped]

    return (
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
        # The server is there but takes no writes now: a standby after a failover, a full
        # disk, memory, a lock or a statement timeout. Worth spooling and retrying too.
        asyncpg.ReadOnlySQLTransactionError,
        asyncpg.InsufficientResourcesError,
        asyncpg.SerializationError,
        asyncpg.DeadlockDetectedError,
        asyncpg.LockNotAvailableError,
        asyncpg.QueryCanceledError,
    )


def is_connection_error(exc: BaseException) -> bool:
    """Errors that mean "the database cannot take writes right now" (unreachable, read-only,
    full), worth spooling and retrying; not "this entry is wrong"."""
    if isinstance(exc, OSError | TimeoutError | sqlite3.OperationalError):
        return True
    # Only SQLAlchemy raises its errors: when it is not loaded, there are none to check (and
    # an error of the sqlite3 writer must not load it on the event loop).
    if sys.modules.get("sqlalchemy.exc") is not None:
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            return True
        if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
            return True
    original = getattr(exc, "orig", None)
    chain = (exc, original, getattr(original, "__cause__", None), exc.__cause__)
    # asyncpg raised it only if it is loaded (a PostgreSQL engine loads it).
    unavailable = _asyncpg_unavailable() if "asyncpg" in sys.modules else ()
    return any(isinstance(e, (*unavailable, OSError)) for e in chain if e is not None)


class AuditStore:
    """The durable, tamper-evident audit trail. ``start()`` before use, ``close()`` after.

    ``url``: ``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://…`` (migrated with
    :func:`bot.storage.migrate.upgrade`). ``spool_path``: where entries wait while the
    database is unreachable; its directory must exist.
    """

    def __init__(
        self,
        url: str,
        *,
        spool_path: Path,
        schema: str | None = None,
        batch_size: int = 500,
        queue_size: int = 10_000,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        clock: Clock | None = None,
        key: ChainKey | None = None,
        reading_only: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._url = url
        self._schema = schema
        self._spool_path = spool_path
        self._offset_path = spool_path.with_name(spool_path.name + ".offset")
        self._batch_size = batch_size
        self._queue_size = queue_size
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._clock = clock or SystemClock()
        self._key = key
        self._reading_only = reading_only  # `opsbot audit …`: a keyed chain needs no key
        self._started = False
        self._engine: AsyncEngine | None = None
        # SQLite: the one process that writes the file on the hot path (entries, and the
        # dedup's claims through bot.cluster.dedup.WriterProcessClaims).
        self._sqlite_writer: SqliteWriterProcess | None = None
        sqlite_file = plain_sqlite_path(url)
        if sqlite_file is None and url.startswith("sqlite"):
            sqlite_file = Path(sa.engine.make_url(url).database or "")
        if sqlite_file is not None:
            self._sqlite_writer = SqliteWriterProcess(str(sqlite_file), key)
        self._queue: _Inbox | None = None
        # Frames sent to the SQLite writer process, oldest first; entries to write again
        # on the careful path (a frame failed).
        self._frames: deque[asyncio.Future[tuple[str, str]]] = deque()
        self._redo: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._spool_depth = 0
        # Entries neither the database nor the spool took, oldest first, and why: while
        # there are any, the bot runs no command (fail closed) and the writer keeps trying.
        self._held: list[AuditEntry] = []
        self._unwritable: str | None = None
        self._backoff = retry_initial
        self._next_retry = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            raise InternalError("AuditStore.start() called twice")
        if plain_sqlite_path(self._url) is None:
            self._engine = make_engine(self._url, schema=self._schema)
        # else: made when first needed (_require_engine); the hot path writes through sqlite3.
        self._started = True
        if self._key is None and not self._reading_only:
            await self._refuse_a_keyed_chain_without_key()
        if self._sqlite_writer is not None:
            self._sqlite_writer.start_soon()
        self._queue = _Inbox(self._queue_size)
        # Entries left in the spool by an earlier run are sent first.
        self._spool_depth = len(await asyncio.to_thread(self._read_spool))
        self._writer = asyncio.create_task(self._run(), name="auditlog-writer")

    async def _refuse_a_keyed_chain_without_key(self) -> None:
        """Rows written without the key after keyed ones would make the chain fail verify
        from there on: refuse to start instead, and say which key the chain wants."""
        found = await probe(
            self._url,
            "SELECT key_id FROM audit_log WHERE seq = "
            "(SELECT seq FROM audit_chain_head WHERE id = ?)",
            (HEAD_ID,),
        )
        if found is not None:
            key_id = found[0][0] if found else None
        else:
            key_id = await self._head_key_id()
        if key_id is not None:
            self._started = False
            engine, self._engine = self._engine, None
            if engine is not None:
                await engine.dispose()
            raise DependencyError(
                DEPENDENCY,
                f"the audit chain is keyed (its last row with key {key_id}) but no key is "
                "configured: set OPSBOT_AUDIT_KEY or [audit] key_file (docs/audit.md)",
            )

    async def _head_key_id(self) -> str | None:
        try:
            async with self._require_engine().connect() as conn:
                head_seq, _ = await _read_head(conn)
                key_id = (
                    await conn.execute(
                        sa.select(schema.audit_log.c.key_id).where(
                            schema.audit_log.c.seq == head_seq
                        )
                    )
                ).scalar()
        except Exception as exc:
            if is_connection_error(exc) or isinstance(exc, DependencyError):
                return None  # not reachable now: the writer spools until it is
            raise
        return None if key_id is None else str(key_id)

    async def close(self) -> None:
        """Write everything queued (to the database or the spool), stop, release connections."""
        if not self._started:
            return
        self._closing = True
        try:
            if self._writer is not None and self._queue is not None:
                if not self._writer.done():
                    await self._queue.put(_STOP)
                await asyncio.shield(self._writer)
        finally:
            for entry in self._held:
                # Nowhere to write them, and the process is stopping: the error log is
                # the record.
                _log.error("auditlog.entry_lost", entry=entry.to_json_dict())
            self._held = []
            self._writer = None
            self._started = False
            engine, self._engine = self._engine, None
            if self._sqlite_writer is not None:
                await self._sqlite_writer.close()
            if engine is not None:
                await engine.dispose()

    @property
    def url(self) -> str:
        return self._url

    @property
    def sqlite_writer(self) -> SqliteWriterProcess | None:
        """The SQLite writer process (None on PostgreSQL)."""
        return self._sqlite_writer

    @property
    def writer_pid(self) -> int | None:
        """The SQLite writer process's pid while it runs (None on PostgreSQL)."""
        return None if self._sqlite_writer is None else self._sqlite_writer.pid

    @property
    def spool_depth(self) -> int:
        """Entries waiting in the spool for the database to come back."""
        return self._spool_depth

    @property
    def unwritable(self) -> str | None:
        """Why entries can be written nowhere (neither the database nor the spool), or
        None while they can."""
        return self._unwritable

    # ------------------------------------------------------------------ writing

    async def append(self, *entries: AuditEntry) -> None:
        """Queue ``entries`` (in this order); returns at once (or when the queue has room)."""
        await self._enqueue(_Pending(entries, None))

    async def append_durably(self, *entries: AuditEntry, alone: bool = False) -> None:
        """Return once ``entries`` are committed, or fsynced to the spool if the database
        is down. ``alone``: the caller is the one command running (see :meth:`_commit_now`)."""
        if alone and self._commit_now(entries):
            return
        done = asyncio.get_running_loop().create_future()
        await self._enqueue(_Pending(entries, done))
        await done

    async def append_with_receipt(
        self, *entries: AuditEntry, alone: bool = False
    ) -> asyncio.Future[None]:
        """Queue ``entries``; the future completes once they are committed or spooled.
        ``alone``: the caller is the one command running (see :meth:`_commit_now`)."""
        done = asyncio.get_running_loop().create_future()
        if alone and self._commit_now(entries):
            done.set_result(None)
            return done
        await self._enqueue(_Pending(entries, done))
        return done

    async def flush(self) -> None:
        """Return once everything queued before this call is committed or spooled."""
        done = asyncio.get_running_loop().create_future()
        await self._enqueue(_Pending((), done))
        await done

    def _commit_now(self, entries: Sequence[AuditEntry]) -> bool:
        """Commit one command's ``entries`` here and now, when the writer has nothing to
        do (so nothing is ahead of them): for one person typing, the queue and the hop to
        the writer process and back cost more than the commit itself (issue 19). Only for
        a command running alone: with others in flight, their entries committed together
        by the process on the other core are what keeps the rate up. False: queue them."""
        writer = self._sqlite_writer
        return (
            writer is not None
            and self._queue is not None
            and self._queue.idle
            and not self._closing
            and not self._frames
            and not self._spool_depth
            and not self._held
            and not self._redo
            and writer.commit_inline(entries)
        )

    async def _enqueue(self, item: _Pending) -> None:
        if self._queue is None or self._closing:
            raise InternalError("the audit store is not running (start() it; not after close())")
        if self._writer is not None and self._writer.done():
            raise InternalError("the audit store's writer has stopped")
        await self._queue.put(item)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            items = await self._take_batch(loop)
            if any(item is _STOP for item in items):
                stopping = True
                items = [item for item in items if item is not _STOP]
            if self._sqlite_writer is not None and any(item.entries for item in items):
                # Batches go as they did once the process runs; only a lone command's
                # entries commit inline meanwhile (_commit_now). A flush with nothing
                # to write (start-up's) does not wait for it.
                await self._sqlite_writer.started()
            if not stopping and self._pipeline(items):
                continue
            # The careful path: one batch at a time, spooling what cannot be written.
            # Frames still in flight go first (and whatever failed of them), to keep order.
            await self._drain_frames()
            if self._redo:
                items, self._redo = [*self._redo, *items], []
            try:
                await self._process(items, loop, final=stopping)
            except Exception as exc:
                # Never let the writer die: waiters would hang. Tell them and go on.
                _log.exception("auditlog.writer_error")
                _settle(items, DependencyError(DEPENDENCY, f"audit write failed: {exc}", exc))
            else:
                _settle(items, None)

    def _pipeline(self, items: list[_Pending]) -> bool:
        """Send ``items`` to the SQLite writer process in frames without waiting for the
        answers (settled by :meth:`_frame_done`, in order). False when the careful path
        must take them: not SQLite, the spool in use, a failure being redone, a flush."""
        writer = self._sqlite_writer
        if (
            writer is None
            or not items
            or self._spool_depth
            or self._held
            or self._redo
            or not writer.ready
            or any(not item.entries for item in items)
        ):
            return False
        start = 0
        while start < len(items):
            frame: list[_Pending] = []
            count = 0
            while start < len(items) and (not frame or count < _FRAME_ENTRIES):
                frame.append(items[start])
                count += len(items[start].entries)
                start += 1
            answer = writer.submit([entry for item in frame for entry in item.entries])
            self._frames.append(answer)
            answer.add_done_callback(functools.partial(self._frame_done, frame))
        return True

    def _frame_done(self, items: list[_Pending], answer: asyncio.Future[tuple[str, str]]) -> None:
        self._frames.popleft()
        if (
            not self._redo
            and not answer.cancelled()
            and answer.exception() is None
            and answer.result()[0] == "ok"
        ):
            _settle(items, None)
            return
        # Not written (or after one that was not): the careful path writes or spools them,
        # before anything newer.
        if self._sqlite_writer is not None:
            self._sqlite_writer.note_failure()
        self._redo.extend(items)
        if self._queue is not None:
            self._queue.poke()

    async def _drain_frames(self) -> None:
        while self._frames:
            last = self._frames[-1]
            if last.done():
                await asyncio.sleep(0)  # its callback (and those before it) run next
            else:
                await asyncio.wait([last])

    async def _take_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Pending]:
        assert self._queue is not None
        if self._spool_depth or self._held:
            # Wake up for the next replay even when nothing new arrives.
            timeout = max(0.0, self._next_retry - loop.time())
            return await self._queue.take(self._batch_size, timeout)
        return await self._queue.take(self._batch_size)

    async def _process(
        self, items: list[_Pending], loop: asyncio.AbstractEventLoop, *, final: bool
    ) -> None:
        entries = [entry for item in items for entry in item.entries]
        if self._held:
            if not final and loop.time() < self._next_retry:
                # Still nowhere to write: behind the held ones, in order; their waiters
                # (a command about to run) hear at once that it cannot be recorded.
                self._hold(entries)
                if any(item.done is not None for item in items):
                    error = DependencyError(DEPENDENCY, f"cannot be written: {self._unwritable}")
                    _settle(items, error)
                return
            entries, self._held = [*self._held, *entries], []
        try:
            rejected = await self._store(entries, loop, final=final)
        except OSError as exc:
            # Neither the database nor the spool: hold on to them, refuse commands, retry.
            self._hold(entries)
            reason = f"the database is unreachable and the spool cannot be written ({exc})"
            if self._unwritable is None:
                _log.error("auditlog.unwritable", reason=reason, held=len(self._held))
            self._unwritable = reason
            # Every command waits on this: try again soon, not with the database's backoff.
            self._next_retry = loop.time() + self._retry_initial
            _settle(items, DependencyError(DEPENDENCY, f"cannot be written: {reason}", exc))
            return
        if rejected:
            # The database refused the entries themselves, not the connection: a table
            # tampered with (a head moved to the end of the seq range), a constraint added
            # by hand. Nothing may run unrecorded: hold them, refuse commands, keep trying,
            # and say why (the error log keeps each entry too).
            for entry, err in rejected:
                _log.error("auditlog.entry_rejected", error=str(err), entry=entry.to_json_dict())
            first = rejected[0][1]
            self._hold([entry for entry, _ in rejected])
            reason = f"the audit database refuses entries ({str(first).splitlines()[0][:300]})"
            if self._unwritable is None:
                _log.error("auditlog.unwritable", reason=reason, held=len(self._held))
            self._unwritable = reason
            self._next_retry = loop.time() + self._retry_initial
            bad = {id(entry) for entry, _ in rejected}
            for item in items:
                if any(id(entry) in bad for entry in item.entries):
                    _resolve(item, DependencyError(DEPENDENCY, f"entry rejected: {first}", first))
            return
        if self._unwritable is not None:
            _log.warning("auditlog.writable_again", was=self._unwritable)
            self._unwritable = None

    def _hold(self, entries: list[AuditEntry]) -> None:
        room = self._queue_size - len(self._held)
        for entry in entries[max(room, 0) :]:
            # Memory is bounded too: past the cap, the error log is the record.
            _log.error("auditlog.entry_lost", entry=entry.to_json_dict())
        self._held.extend(entries[: max(room, 0)])

    async def _store(
        self, entries: list[AuditEntry], loop: asyncio.AbstractEventLoop, *, final: bool
    ) -> list[tuple[AuditEntry, Exception]]:
        """Write ``entries`` to the database, or the spool; OSError when neither took them."""
        if self._spool_depth and (final or loop.time() >= self._next_retry):
            await self._replay(loop)
        if not entries:
            return []
        if self._spool_depth:
            # Order is the chain's order: newer entries queue up behind the spooled ones.
            await self._spool(entries)
            return []
        try:
            return await self._write(entries)
        except _DatabaseDown as exc:
            _log.warning("auditlog.database_down", error=str(exc.__cause__), spooled=len(entries))
            await self._spool(entries)
            self._schedule_retry(loop, reset=True)
            return []

    async def _write(self, entries: Sequence[AuditEntry]) -> list[tuple[AuditEntry, Exception]]:
        """Commit ``entries`` as one batch; on a data error, one by one. Returns the rejects.

        Raises :class:`_DatabaseDown` on a connection-level failure.
        """
        try:
            await self._insert(entries)
        except Exception as exc:
            if is_connection_error(exc):
                raise _DatabaseDown(str(exc)) from exc
            if len(entries) == 1:
                return [(entries[0], exc)]
            _log.warning("auditlog.batch_rejected", error=str(exc), size=len(entries))
            rejected: list[tuple[AuditEntry, Exception]] = []
            for entry in entries:
                rejected.extend(await self._write([entry]))
            return rejected
        return []

    async def _insert(self, entries: Sequence[AuditEntry]) -> None:
        if self._sqlite_writer is not None:
            await self._sqlite_writer.insert(entries)
            return
        # PostgreSQL; SQLite batches go to the writer process above.
        async with self._write_transaction() as conn:
            rows, seq, prev = await self._chain(conn, entries, sqlite=False)
            # Straight to the driver: SQLAlchemy's per-row parameter processing cost more
            # than the rest of the write path together (bench/audit.py).
            await conn.exec_driver_sql(_insert_sql(conn.dialect.paramstyle), rows)
            await conn.execute(
                schema.audit_chain_head.update()
                .where(schema.audit_chain_head.c.id == HEAD_ID)
                .values(seq=seq, hash=prev)
            )

    async def _chain(
        self, conn: AsyncConnection, entries: Sequence[AuditEntry], *, sqlite: bool
    ) -> tuple[list[tuple[Any, ...]], int, str]:
        """``entries`` as rows after the locked head, and the new head (in a write
        transaction). Rows past the head (forged, or left by hand) must not jam the log:
        new rows go after them, linked to the head, and verify names the first of them."""
        head_seq, head_hash = await _lock_head(conn)
        top, head_key_id = (
            await conn.execute(
                sa.select(
                    # Within reach of the head only: one forged row at seq 2**63-1 must
                    # not make every later seq overflow.
                    sa.select(sa.func.max(schema.audit_log.c.seq))
                    .where(
                        schema.audit_log.c.seq > head_seq,
                        schema.audit_log.c.seq <= head_seq + PAST_HEAD_WINDOW,
                    )
                    .scalar_subquery(),
                    sa.select(schema.audit_log.c.key_id)
                    .where(schema.audit_log.c.seq == head_seq)
                    .scalar_subquery(),
                )
            )
        ).one()
        return linked_rows(
            max(head_seq, int(top or 0)),
            head_hash,
            [e.values() for e in entries],
            sqlite=sqlite,
            canonicals=[e.canonical() for e in entries],
            key=self._key,
            head_key_id=head_key_id,
        )

    def _write_transaction(self) -> _WriteTransaction:
        return _WriteTransaction(self._require_engine())

    def _require_engine(self) -> AsyncEngine:
        if not self._started:
            raise InternalError("the audit store is not running (call start() first)")
        if self._engine is None:
            self._engine = make_engine(self._url, schema=self._schema)
        return self._engine

    def _schedule_retry(self, loop: asyncio.AbstractEventLoop, *, reset: bool) -> None:
        self._backoff = self._retry_initial if reset else min(self._backoff * 2, self._retry_max)
        self._next_retry = loop.time() + self._backoff

    # ------------------------------------------------------------------ the spool

    async def _spool(self, entries: Sequence[AuditEntry]) -> None:
        lines = "".join(e.canonical() + "\n" for e in entries)
        await asyncio.to_thread(self._append_spool, lines.encode("utf-8"))
        self._spool_depth += len(entries)

    def _append_spool(self, data: bytes) -> None:
        append_durably(self._spool_path, data)

    def _read_spool(self) -> list[tuple[AuditEntry, int]]:
        """Entries not yet replayed, each with the spool offset just after its line."""
        try:
            data = self._spool_path.read_bytes()
        except FileNotFoundError:
            return []
        start = self._read_offset()
        out: list[tuple[AuditEntry, int]] = []
        pos = start
        while pos < len(data):
            end = data.find(b"\n", pos)
            if end < 0:
                # A line cut short by a crash while it was written: it was never acknowledged.
                _log.warning("auditlog.spool_torn_line", offset=pos)
                break
            line = data[pos:end]
            pos = end + 1
            if not line.strip():
                continue
            try:
                out.append((AuditEntry.from_json_dict(json.loads(line)), pos))
            except (ValueError, TypeError, KeyError) as exc:
                # Damaged by something outside opsbot (appends are all or nothing): the
                # error log keeps the line, and the entries after it are not held back.
                _log.error(
                    "auditlog.spool_line_unreadable",
                    offset=pos,
                    error=str(exc),
                    line=line[:4000].decode("utf-8", "backslashreplace"),
                )
        return out

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text(encoding="ascii").strip() or 0)
        except FileNotFoundError:
            return 0

    def _write_offset(self, offset: int) -> None:
        tmp = self._offset_path.with_name(self._offset_path.name + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._offset_path)

    def _clear_spool(self) -> None:
        self._spool_path.unlink(missing_ok=True)
        self._offset_path.unlink(missing_ok=True)
        fsync_dir(self._spool_path.parent)

    async def _replay(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = await asyncio.to_thread(self._read_spool)
        sent = 0
        try:
            for start in range(0, len(pending), self._batch_size):
                chunk = pending[start : start + self._batch_size]
                for entry, exc in await self._write([entry for entry, _ in chunk]):
                    _log.error(
                        "auditlog.entry_rejected", error=str(exc), entry=entry.to_json_dict()
                    )
                # Remember progress, so a crash now does not send this chunk twice.
                await asyncio.to_thread(self._write_offset, chunk[-1][1])
                sent += len(chunk)
                self._spool_depth = len(pending) - sent
        except _DatabaseDown as exc:
            self._schedule_retry(loop, reset=False)
            _log.warning(
                "auditlog.replay_failed",
                error=str(exc.__cause__),
                waiting=self._spool_depth,
                retry_in_s=round(self._backoff, 2),
            )
            return
        await asyncio.to_thread(self._clear_spool)
        self._spool_depth = 0
        self._backoff = self._retry_initial
        _log.info("auditlog.replayed", entries=sent)

    # ------------------------------------------------------------------ reading

    async def head(self) -> tuple[int, str]:
        """The chain head as committed: (seq, hash)."""
        async with self._require_engine().connect() as conn:
            return await _read_head(conn)

    async def verify(
        self,
        keys: Sequence[ChainKey] = (),
        witness: Mapping[int, tuple[str, str]] | None = None,
    ) -> VerifyResult:
        """Walk every row the table holds, from the anchor, and report the first problem:
        a broken link, a gap, a row past the chain head, a missing or inconsistent head, a
        keyed row whose key is not in ``keys`` (or does not verify with it), an anchor
        without the retention event that recorded it; with ``witness`` (seq -> (hash,
        when)), a witnessed point that is missing or differs."""
        engine = self._require_engine()
        async with engine.connect() as conn:
            head = (
                await conn.execute(
                    sa.select(schema.audit_chain_head.c.seq, schema.audit_chain_head.c.hash).where(
                        schema.audit_chain_head.c.id == HEAD_ID
                    )
                )
            ).first()
            anchor = (
                await conn.execute(sa.select(schema.audit_anchor.c.seq, schema.audit_anchor.c.hash))
            ).first()
        anchor_seq, anchor_hash = (0, GENESIS_HASH) if anchor is None else anchor
        verifier = ChainVerifier(
            int(anchor_seq),
            str(anchor_hash),
            keys={key.key_id: key for key in keys},
            witness=witness,
        )
        after: int | None = None
        while not verifier.failed:
            query = sa.select(schema.audit_log)
            if after is not None:
                query = query.where(schema.audit_log.c.seq > after)
            async with engine.connect() as conn:
                rows = (
                    (await conn.execute(query.order_by(schema.audit_log.c.seq).limit(_PAGE)))
                    .mappings()
                    .all()
                )
            for row in rows:
                if not verifier.feed(_stored_from_row(row)):
                    break
            if len(rows) < _PAGE:
                break
            after = rows[-1]["seq"]
            await asyncio.sleep(0)  # hashing is CPU work: let the loop breathe between pages
        return verifier.finish_with(
            TableEnds(
                head=None if head is None else (int(head[0]), str(head[1])),
                anchor=None if anchor is None else (int(anchor[0]), str(anchor[1])),
            )
        )

    async def query(
        self,
        user: str | None = None,
        command: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        *,
        platform: str | None = None,
        user_id: str | None = None,
        exclude_status: Sequence[str] = (),
    ) -> list[StoredEntry]:
        """Newest first. ``user`` is the principal (the person, across platforms);
        ``platform`` + ``user_id`` find people the config does not know."""
        query = sa.select(schema.audit_log)
        if user is not None:
            query = query.where(schema.audit_log.c.principal == user)
        if platform is not None:
            query = query.where(schema.audit_log.c.platform == platform)
        if user_id is not None:
            query = query.where(schema.audit_log.c.user_id == user_id)
        if exclude_status:
            query = query.where(schema.audit_log.c.status.not_in(exclude_status))
        if command is not None:
            query = query.where(schema.audit_log.c.command == command)
        if status is not None:
            query = query.where(schema.audit_log.c.status == status)
        if since is not None:
            query = query.where(schema.audit_log.c.at >= since)
        query = query.order_by(schema.audit_log.c.at.desc(), schema.audit_log.c.seq.desc()).limit(
            limit
        )
        async with self._require_engine().connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_stored_from_row(row) for row in rows]

    async def of_request(self, request_id: str, limit: int = 200) -> list[StoredEntry]:
        """Every entry of one request, oldest first: those whose request id is
        ``request_id``, and those of its jobs (``<request id>:<job id>``)."""
        column = schema.audit_log.c.request_id
        query = (
            sa.select(schema.audit_log)
            .where(
                sa.or_(column == request_id, column.startswith(f"{request_id}:", autoescape=True))
            )
            .order_by(schema.audit_log.c.seq)
            .limit(limit)
        )
        async with self._require_engine().connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_stored_from_row(row) for row in rows]

    async def export(self, since: datetime, *, after_seq: int = 0) -> AsyncIterator[StoredEntry]:
        """Every row with ``at >= since`` and ``seq > after_seq``, in chain order, a page
        at a time.

        No connection is held between pages, so a consumer that stops early leaks nothing.
        """
        after = after_seq
        while True:
            query = (
                sa.select(schema.audit_log)
                .where(schema.audit_log.c.at >= since, schema.audit_log.c.seq > after)
                .order_by(schema.audit_log.c.seq)
                .limit(_PAGE)
            )
            async with self._require_engine().connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
            for row in rows:
                yield _stored_from_row(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1]["seq"]

    # ------------------------------------------------------------------ maintenance

    async def close_interrupted(
        self, lookback: timedelta = timedelta(days=7), *, replica: str | None = None
    ) -> int:
        """Finish, as "interrupted", every command that started but never finished.

        Call at start-up, after a crash. Looks back ``lookback`` (the table may be huge).
        Entries still in the spool count, so a finish that is waiting there is not doubled.
        ``replica`` limits it to the entries that replica wrote: with several replicas on
        one database, another replica's running commands are not interrupted.
        """
        await self.flush()
        since = self._clock.now() - lookback
        # Mostly nothing was interrupted: say so without SQLAlchemy (bot.storage.sqlite_probe).
        found = await probe(
            self._url,
            "SELECT 1 FROM audit_log AS s WHERE s.stage = 'started' AND s.at >= ?"
            " AND (? IS NULL OR s.replica = ?) AND NOT EXISTS (SELECT 1 FROM audit_log AS f"
            " WHERE f.request_id = s.request_id AND f.stage = 'finished') LIMIT 1",
            (sqlite_time(since), replica, replica),
        )
        if found == []:
            return 0
        finish = schema.audit_log.alias("finish")
        has_finish = (
            sa.select(finish.c.seq)
            .where(
                finish.c.request_id == schema.audit_log.c.request_id, finish.c.stage == "finished"
            )
            .exists()
        )
        query = (
            sa.select(schema.audit_log)
            .where(
                schema.audit_log.c.stage == "started", schema.audit_log.c.at >= since, ~has_finish
            )
            .order_by(schema.audit_log.c.seq)
        )
        if replica is not None:
            query = query.where(schema.audit_log.c.replica == replica)
        async with self._require_engine().connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        spooled = await asyncio.to_thread(self._read_spool)
        done_in_spool = {e.request_id for e, _ in spooled if e.stage == "finished"}
        closed = 0
        seen: set[str] = set()
        now = self._clock.now()
        for row in rows:
            started = _stored_from_row(row).entry
            if started.request_id in done_in_spool or started.request_id in seen:
                continue
            seen.add(started.request_id)
            await self.append_durably(
                dataclasses.replace(
                    started,
                    at=now,
                    stage="finished",
                    status="interrupted",
                    detail="opsbot stopped before this command finished; its outcome is unknown",
                )
            )
            closed += 1
        return closed

    async def apply_retention(self, older_than: datetime) -> int:
        """Delete the oldest rows, up to the first one at or after ``older_than``.

        Only a prefix of the chain goes (a row newer than the cutoff is never deleted, so an
        older row behind it waits for a later run); the last deleted row becomes the anchor
        verification starts from, and an "event" entry records the removal. Returns how many
        rows were deleted.
        """
        await self.flush()
        # Mostly nothing is that old yet: say so without SQLAlchemy (bot.storage.sqlite_probe).
        found = await probe(
            self._url, "SELECT 1 FROM audit_log WHERE at < ? LIMIT 1", (sqlite_time(older_than),)
        )
        if found == []:
            return 0
        async with self._write_transaction() as conn:
            await _lock_head(conn)  # one retention or batch at a time, on either database
            first_kept = (
                await conn.execute(
                    sa.select(sa.func.min(schema.audit_log.c.seq)).where(
                        schema.audit_log.c.at >= older_than
                    )
                )
            ).scalar()
            if first_kept is None:
                last = (await conn.execute(sa.select(sa.func.max(schema.audit_log.c.seq)))).scalar()
            else:
                last = first_kept - 1
            if last is None:
                return 0
            boundary = (
                await conn.execute(
                    sa.select(schema.audit_log.c.hash).where(schema.audit_log.c.seq == last)
                )
            ).scalar()
            if boundary is None:  # nothing at or below `last`: already removed
                return 0
            removed = (
                await conn.execute(schema.audit_log.delete().where(schema.audit_log.c.seq <= last))
            ).rowcount
            if not removed:
                return 0
            values = {"seq": last, "hash": boundary, "applied_at": self._clock.now()}
            if (
                await conn.execute(
                    schema.audit_anchor.update()
                    .where(schema.audit_anchor.c.id == HEAD_ID)
                    .values(**values)
                )
            ).rowcount == 0:
                await conn.execute(schema.audit_anchor.insert().values(id=HEAD_ID, **values))
            # The event goes in the same transaction as the removal: an anchor without the
            # event that names it is what a removal by hand looks like (verify says so).
            event = AuditEntry(
                request_id=f"retention-{last}",
                at=self._clock.now(),
                stage="event",
                kind="retention",
                args={
                    "removed": removed,
                    "up_to_seq": last,
                    "anchor_hash": boundary,
                    "cutoff": format_at(older_than),
                },
                status="ok",
                detail=f"retention removed {removed} row(s) older than "
                f"{format_at(older_than)}, up to seq {last}",
            )
            rows, seq, prev = await self._chain(
                conn, [event], sqlite=self._sqlite_writer is not None
            )
            await conn.exec_driver_sql(_insert_sql(conn.dialect.paramstyle), rows)
            await conn.execute(
                schema.audit_chain_head.update()
                .where(schema.audit_chain_head.c.id == HEAD_ID)
                .values(seq=seq, hash=prev)
            )
        return removed


class _WriteTransaction:
    """``async with``: a connection in a write transaction, committed on success."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> AsyncConnection:
        conn = await self._engine.connect()
        try:
            await begin_immediate(conn)
            await conn.begin()
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        conn = self._conn
        assert conn is not None
        try:
            if exc_type is None:
                await conn.commit()
            else:
                await conn.rollback()
        finally:
            await conn.close()


async def _lock_head(conn: AsyncConnection) -> tuple[int, str]:
    """The chain head, locked until the transaction ends (FOR UPDATE; SQLite already holds
    the write lock from BEGIN IMMEDIATE and ignores the clause)."""
    return await _read_head(conn, lock=True)


async def _read_head(conn: AsyncConnection, *, lock: bool = False) -> tuple[int, str]:
    query = sa.select(schema.audit_chain_head.c.seq, schema.audit_chain_head.c.hash).where(
        schema.audit_chain_head.c.id == HEAD_ID
    )
    return _head_values((await conn.execute(query.with_for_update() if lock else query)).first())


def _head_values(head: Any) -> tuple[int, str]:
    if head is None:
        raise DependencyError(
            DEPENDENCY, "the audit chain head row is missing: run `opsbot db upgrade`"
        )
    return int(head[0]), str(head[1])


_insert_sql = insert_sql


def _row_tuple(
    seq: int, prev_hash: str, digest: str, e: AuditEntry, *, sqlite: bool
) -> tuple[Any, ...]:
    """One row in ``bot.audit.rows.COLUMNS`` order, as the driver takes it."""
    return row_layout.row(seq, prev_hash, digest, e.values(), sqlite=sqlite)


def _stored_from_row(row: RowMapping) -> StoredEntry:
    values = dict(row)
    seq, prev_hash, digest = values.pop("seq"), values.pop("prev_hash"), values.pop("hash")
    key_id = values.pop("key_id")
    values["args"] = json.loads(values["args"])
    values["approvers"] = tuple(json.loads(values["approvers"]))
    return StoredEntry(
        seq=int(seq), prev_hash=prev_hash, hash=digest, entry=AuditEntry(**values), key_id=key_id
    )


def _resolve(item: _Pending, error: BaseException | None) -> None:
    if item.done is None or item.done.done():
        return
    if error is None:
        item.done.set_result(None)
    else:
        item.done.set_exception(error)


def _settle(items: list[_Pending], error: BaseException | None) -> None:
    for item in items:
        _resolve(item, error)
