"""The SQLite audit writer process: hashes and inserts batches of entries, so that this
work runs on a core of its own instead of holding the bot's GIL (bench/audit.py).

    python -m bot.audit.sqlite_writer /path/to/audit.db

Started by :class:`bot.audit.writer_process.SqliteWriterProcess`. Frames on stdin and
stdout are a 4-byte big-endian length and a pickle. The first frame is the chain key's
secret (bytes) or None: a key never goes on the command line, where ``ps`` shows it. After
opening the database the process answers one frame (the handshake); then, for each frame
of entries (a list of :meth:`AuditEntry.values` tuples) it answers one frame once they are
committed or refused:
``("ok", "")``, ``("down", why)`` for ``sqlite3.OperationalError`` (locked, disk, cannot
open: worth spooling and retrying), or ``("rejected", why)`` for anything else.

The bot sends frames without waiting for answers. So that a later frame never commits
ahead of an earlier one that failed (the chain's order is the order things happened),
after a failure every frame is answered ``("skipped", "")`` unwritten, until a ``None``
frame says the bot has taken the failed entries back; that one is answered ``("ok", "")``.
Frames that arrived while a transaction ran are written together in the next one, each
still answered on its own.

A ``("claims", rows, prune_before)`` frame claims delivered events for the bot's dedup
(``bot.cluster.dedup``) in a transaction of its own, whatever state the entries are in,
and is answered ``("ok", [(platform, event_id) won, ...])``. This process is the one
writer of the SQLite file on the hot path: claims written from the bot's own connection
waited for its transactions.

It exits when stdin closes, which includes the bot being killed: a batch it has received
is still committed.

Imports only the chain, the row layout and the claim statement: no SQLAlchemy, no asyncio.
"""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
import struct
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

from bot.audit.chain import ChainKey
from bot.audit.rows import insert_sql, linked_rows
from bot.storage.claim_sql import PRUNE_SQL, claim_sql

HEADER = struct.Struct("!I")
BUSY_TIMEOUT_S = 10.0  # bot.storage.engine.SQLITE_BUSY_TIMEOUT_MS, without its imports
HEAD_ID = 1
_HEAD_SQL = (
    "SELECT h.seq, h.hash, (SELECT max(seq) FROM audit_log WHERE seq > h.seq AND seq <= h.seq + ?)"
    " FROM audit_chain_head AS h WHERE h.id = ?"
)
_INSERT_SQL = insert_sql("qmark")
PAST_HEAD_WINDOW = 1_000_000  # rows past the head that new rows are written after
Answer = tuple[str, str]
ClaimAnswer = tuple[str, list[tuple[str, str]]]
_SKIPPED: Answer = ("skipped", "")


class Inserter:
    """One connection; one transaction per batch: the write lock (BEGIN IMMEDIATE) before
    the chain head is read, so another writer (retention, a second process, the bot's
    inline commits) extends the same chain.

    ``busy_timeout_s``: how long to wait for another writer's lock. ``checkpoints``: False
    leaves the WAL's checkpoints (and their fsyncs) to other connections."""

    def __init__(
        self,
        path: str,
        key: ChainKey | None = None,
        *,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        checkpoints: bool = True,
    ) -> None:
        self._path = path
        self._key = key
        self._busy_timeout_s = busy_timeout_s
        self._checkpoints = checkpoints
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        # (seq, key id) of the last row this process wrote: the key of the head row,
        # without a query, while no other writer came in between.
        self._written: tuple[int, str | None] | None = None

    def open(self) -> Answer:
        try:
            self._connection()
        except sqlite3.Error as exc:
            return _answer(exc)
        return ("ok", "")

    def insert(self, entries: Sequence[Sequence[Any]]) -> Answer:
        try:
            self._insert(entries)
        except Exception as exc:
            return _answer(exc)
        return ("ok", "")

    def claim(
        self, rows: Sequence[Sequence[str]], prune_before: str | None
    ) -> Answer | ClaimAnswer:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                params = [value for row in rows for value in row]
                won = conn.execute(claim_sql(len(rows), dollar=False), params).fetchall()
                if prune_before is not None:
                    conn.execute(PRUNE_SQL.format("?"), (prune_before,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            return _answer(exc)
        return ("ok", [(str(platform), str(event_id)) for platform, event_id in won])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        # An open connection keeps writing to a file that was deleted or moved away (its
        # directory removed, say), and every commit "succeeds" into a file nobody will
        # read again. So the path must still lead to the file opened, or nothing is written.
        try:
            found = os.stat(self._path)
        except OSError as exc:
            self.close()
            raise sqlite3.OperationalError(
                f"the audit database file {self._path} is gone ({exc.strerror})"
            ) from exc
        if self._conn is not None and self._file != (found.st_dev, found.st_ino):
            self.close()  # replaced (restored from a backup?): write to what the path holds
        if self._conn is None:
            # Autocommit at the driver level: this code says BEGIN IMMEDIATE itself.
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout_s)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if not self._checkpoints:
                conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn = conn
            self._file = (found.st_dev, found.st_ino)
            self._written = None
        return self._conn

    def _insert(self, entries: Sequence[Sequence[Any]]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The head, and the last of any rows past it (forged, or left by hand): they must
            # not jam the log, so the new rows go after them, linked to the head; verify
            # names the first of them. Within reach of the head only: one forged row at seq
            # 2**63-1 must not make every later seq overflow. One statement: this runs for
            # every command typed alone (inline), where each round trip shows.
            head = conn.execute(_HEAD_SQL, (PAST_HEAD_WINDOW, HEAD_ID)).fetchone()
            if head is None:
                raise sqlite3.IntegrityError(
                    "the audit chain head row is missing: run `opsbot db upgrade`"
                )
            head_seq = int(head[0])
            head_key_id = self._head_key_id(conn, head_seq)
            top = head[2]
            rows, seq, prev = linked_rows(
                max(head_seq, int(top or 0)),
                str(head[1]),
                entries,
                sqlite=True,
                key=self._key,
                head_key_id=head_key_id,
            )
            if len(rows) == 1:
                conn.execute(_INSERT_SQL, rows[0])  # executemany costs more for one
            else:
                conn.executemany(_INSERT_SQL, rows)
            conn.execute(
                "UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = ?", (seq, prev, HEAD_ID)
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._written = (seq, None if self._key is None else self._key.key_id)

    def _head_key_id(self, conn: sqlite3.Connection, head_seq: int) -> str | None:
        if self._written is not None and self._written[0] == head_seq:
            return self._written[1]
        found = conn.execute("SELECT key_id FROM audit_log WHERE seq = ?", (head_seq,)).fetchone()
        return None if found is None else found[0]


def _answer(exc: Exception) -> Answer:
    if isinstance(exc, sqlite3.OperationalError):
        return ("down", str(exc))
    return ("rejected", f"{type(exc).__name__}: {exc}")


class FrameReader:
    """Frames from a pipe, as many as have arrived: when the bot sends faster than one
    transaction commits, the frames waiting are written together, in one transaction
    (fewer commits under load; one frame per transaction when idle)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._early: list[bytes] = []

    def push_back(self, frames: list[bytes]) -> None:
        """Frames read ahead of their turn, handed out first by :meth:`frames`."""
        self._early = frames + self._early

    def frames(self) -> list[bytes] | None:
        """Every complete frame received so far, waiting for at least one; None at the
        end of the stream (a torn last frame counts as the end)."""
        while True:
            frames, self._early = self._early + self._complete(), []
            if frames:
                return frames
            chunk = os.read(self._fd, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk

    def _complete(self) -> list[bytes]:
        frames, start, buffer = [], 0, self._buffer
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + size
            if end > len(buffer):
                break
            frames.append(bytes(buffer[start + HEADER.size : end]))
            start = end
        del buffer[:start]
        return frames


def write_frame(stream: BinaryIO, *answers: Answer | ClaimAnswer) -> None:
    """One frame per answer, in one write."""
    out = bytearray()
    for answer in answers:
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        out += HEADER.pack(len(data)) + data
    stream.write(out)
    stream.flush()


def _commit(inserter: Inserter, group: list[list[Any]], out: BinaryIO, *, failed: bool) -> bool:
    """Write the frames of ``group`` in one transaction and answer each. After a failure
    (this one or an earlier one) the first frame that did not commit gets the reason and
    the rest are skipped. Returns whether the process is now in the failed state."""
    if not group:
        return failed
    if failed:
        write_frame(out, *(_SKIPPED for _ in group))
        return True
    answer = inserter.insert([entry for frame in group for entry in frame])
    if answer[0] == "ok":
        write_frame(out, *(answer for _ in group))
        return False
    write_frame(out, answer, *(_SKIPPED for _ in group[1:]))
    return True


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bot.audit.sqlite_writer DATABASE_PATH", file=sys.stderr)
        return 2
    # Ctrl-C in a terminal reaches the whole process group; the bot decides when to stop
    # (it closes stdin after its last batch), so the writer must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the original stdout; a stray print must not corrupt it.
    frames_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    reader = FrameReader(sys.stdin.fileno())
    first = reader.frames()
    if not first:
        return 0
    secret = pickle.loads(first[0])  # noqa: S301  (our parent's pipe)
    inserter = Inserter(argv[1], None if secret is None else ChainKey(secret))
    reader.push_back(first[1:])
    failed = False
    try:
        write_frame(frames_out, inserter.open())
        while (frames := reader.frames()) is not None:
            group: list[list[Any]] = []  # entry frames to commit together
            for frame in frames:
                entries = pickle.loads(frame)  # noqa: S301  (our parent's pipe)
                if isinstance(entries, tuple):  # ("claims", rows, prune_before)
                    failed = _commit(inserter, group, frames_out, failed=failed)
                    group = []
                    write_frame(frames_out, inserter.claim(entries[1], entries[2]))
                    continue
                if entries is not None:
                    group.append(entries)
                    continue
                _commit(inserter, group, frames_out, failed=failed)
                group = []
                failed = False  # the bot has taken the failed entries back: go on
                write_frame(frames_out, ("ok", ""))
            if group:
                failed = _commit(inserter, group, frames_out, failed=failed)
    except BrokenPipeError:
        pass  # the bot went away; whatever it sent is committed
    finally:
        inserter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
