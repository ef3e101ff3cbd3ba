"""The bot's side of the SQLite writer process (``bot.audit.sqlite_writer``).

Hashing and inserting run in the other process, on the other core, which is what lifted
the audited command rate (bench/audit.py); this side only pickles tuples.

Frames are pipelined: :meth:`SqliteWriterProcess.submit` writes a frame and returns a
future for its answer at once, and a reader task hands answers out in order. Waiting for
each answer before sending the next batch made the bot and the writer take turns: the
writer idle while the event loop answered the commands the last commit released, the
loop idle while the writer committed.

One command at a time (nothing in flight) does not pay for the round trip: its entries
are committed by the bot itself, inline (:meth:`SqliteWriterProcess.commit_inline`), on a
connection that never waits for a lock and never checkpoints; every
``_CHECKPOINT_EVERY``-th such batch still goes through the process, whose connection
checkpoints the WAL. Anything unusual (a lock held, a fault) goes the process's way,
which knows how to report and spool it.

If the process exits or the pipe breaks, pending answers fail with ``OSError`` (a
connection error: the store spools the entries and retries) and the next
:meth:`~SqliteWriterProcess.insert` starts a new process. A batch whose answer was lost
may have been committed; the spool sends it again (at-least-once, as with a database
connection lost after COMMIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from bot.audit.chain import ChainKey
from bot.audit.record import AuditEntry
from bot.audit.sqlite_writer import HEADER, Inserter

_log = structlog.get_logger("opsbot.auditlog")
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0
# The directory that holds the ``bot`` package, for the child's import path.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])
# (status, detail): why it failed, or what a claims frame won.
Answer = tuple[str, Any]
# The most entries committed inline: one command's, a few at once; more is load, and the
# process on the other core is what takes load.
INLINE_ENTRIES = 16
_CHECKPOINT_EVERY = 64
# After an inline commit failed (a lock held, a fault), the process's way for a while.
_INLINE_PAUSE_S = 1.0


class SqliteWriterProcess:
    def __init__(self, path: str, key: ChainKey | None = None) -> None:
        self._path = path
        self._key = key
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._answers: deque[asyncio.Future[Answer]] = deque()
        # After a failed frame the process skips everything until told to go on (reset).
        self._needs_reset = False
        self._closed = False
        self._inline: Inserter | None = None
        self._inline_batches = 0
        self._inline_paused_until = 0.0
        # One process at a time: start_soon's and a batch's (or a claim's) start wait for
        # the same spawn.
        self._spawning = asyncio.Lock()
        self._starting: asyncio.Task[None] | None = None
        self._spawned_once = False  # a start finished, well or not

    @property
    def pid(self) -> int | None:
        """The writer process's pid while it runs (bench/audit.py reads its CPU time)."""
        return None if self._proc is None else self._proc.pid

    @property
    def ready(self) -> bool:
        """Running, and taking frames: :meth:`submit` may be called."""
        return (
            self._proc is not None
            and self._proc.returncode is None
            and self._reader is not None
            and not self._reader.done()
            and not self._needs_reset
        )

    @property
    def in_flight(self) -> int:
        return len(self._answers)

    async def start(self) -> None:
        await self._running()

    def start_soon(self) -> None:
        """Start the process in the background. Until it runs, one command at a time
        commits inline (nothing can be ahead of it), so the bot answers its first command
        without waiting the process's own start-up (a Python, its imports: 60-70 ms)."""
        self._starting = asyncio.create_task(self._start_quietly(), name="auditlog-writer-start")

    async def started(self) -> None:
        """Return once the start begun by :meth:`start_soon` is over (well or not)."""
        starting = self._starting
        if starting is not None and not starting.done():
            await asyncio.wait([starting])  # never raises: _start_quietly keeps its errors

    async def _start_quietly(self) -> None:
        try:
            await self._running()
        except Exception as exc:
            # Not fatal, whatever it was: the first batch starts it again (the careful
            # path), and spools or holds its entries if that fails too.
            if not self._closed:
                _log.warning("auditlog.writer_process_failed", error=f"{type(exc).__name__}: {exc}")

    def submit(self, entries: Sequence[AuditEntry]) -> asyncio.Future[Answer]:
        """Send ``entries`` as one transaction; the future gets the answer: ``("ok", "")``,
        ``("down" | "rejected" | "skipped", why)``, or fails with ``OSError``. Only while
        :attr:`ready`."""
        assert self.ready
        return self._send([e.values() for e in entries])

    def commit_inline(self, entries: Sequence[AuditEntry]) -> bool:
        """Commit ``entries`` now, on the bot's own connection, if the process has nothing
        in flight (so the chain's order holds): True when committed; False when not tried,
        or when it failed (nothing written: then :meth:`submit` them)."""
        if self._answers or len(entries) > INLINE_ENTRIES:
            return False
        if not self.ready and self._spawned_once:
            return False  # stopped, or failed: the careful path restarts it first
        self._inline_batches += 1
        if self._inline_batches % _CHECKPOINT_EVERY == 0:
            return False
        now = time.monotonic()
        if now < self._inline_paused_until:
            return False
        if self._inline is None:
            self._inline = Inserter(self._path, self._key, busy_timeout_s=0, checkpoints=False)
        status, why = self._inline.insert([e.values() for e in entries])
        if status == "ok":
            return True
        self._inline_paused_until = now + _INLINE_PAUSE_S
        _log.debug("auditlog.inline_commit_skipped", status=status, error=why)
        return False

    async def insert(self, entries: Sequence[AuditEntry]) -> None:
        """Commit ``entries`` as one transaction and wait for it (starting the process if
        it is not running, and telling it to go on after an earlier failure).

        Raises ``sqlite3.OperationalError`` (database locked or unreachable) or
        ``OSError`` (the process stopped): both mean "spool and retry"; and
        ``sqlite3.IntegrityError`` when the database refused the batch itself.
        """
        await self._running()
        if self._needs_reset:
            await self._exchange(None)
            self._needs_reset = False
        status, why = await self._exchange(entries)
        if status == "ok":
            return
        self._needs_reset = True
        if status == "down":
            raise sqlite3.OperationalError(why)
        raise sqlite3.IntegrityError(why)

    async def claim_events(
        self, rows: Sequence[tuple[str, str, str]], prune_before: str | None
    ) -> list[tuple[str, str]]:
        """Claim delivered events (platform, event id, time as SQLite text) in one
        transaction of their own; returns the (platform, event id) pairs won. Deletes
        claims older than ``prune_before`` (same text form) in the same transaction.

        Raises as :meth:`insert` does. A claim does not wait for, or hold back, entries."""
        await self._running()
        status, detail = await self._send(("claims", list(rows), prune_before))
        if status == "ok":
            return [(str(platform), str(event_id)) for platform, event_id in detail]
        if status == "down":
            raise sqlite3.OperationalError(detail)
        raise sqlite3.IntegrityError(detail)

    def note_failure(self) -> None:
        """A submitted frame did not commit: frames after it are skipped until the next
        :meth:`insert`, which tells the process to go on."""
        self._needs_reset = True

    async def close(self) -> None:
        """Let the process commit what it has and exit. No new process starts after this."""
        self._closed = True
        async with self._spawning:  # a start under way finishes first: its process is closed
            pass
        await self.started()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # the process commits what it has, then exits
        try:
            await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
        except TimeoutError:
            _log.error("auditlog.writer_process_stuck", pid=proc.pid)
            proc.kill()
            await proc.wait()
        await self._stop_reader()

    async def _exchange(self, entries: Sequence[AuditEntry] | None) -> Answer:
        return await self._send(None if entries is None else [e.values() for e in entries])

    def _send(self, frame: object) -> asyncio.Future[Answer]:
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        payload = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._answers.append(answer)
        proc.stdin.write(HEADER.pack(len(payload)) + payload)
        return answer

    async def _running(self) -> asyncio.subprocess.Process:
        proc = self._live()
        if proc is not None:
            return proc
        async with self._spawning:
            try:
                return self._live() or await self._spawn()
            finally:
                self._spawned_once = True

    def _live(self) -> asyncio.subprocess.Process | None:
        if (
            self._proc is not None
            and self._proc.returncode is None
            and self._reader is not None
            and not self._reader.done()
        ):
            return self._proc
        return None

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self._closed:
            raise OSError("the audit writer process was closed")
        await self._discard()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_SOURCE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.audit.sqlite_writer",
            self._path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            # A process group of its own: Ctrl-C in a terminal signals the bot's group, and
            # must not reach a writer still starting (it ignores SIGINT only once its code
            # runs). It stops when the bot closes its stdin, or dies with it (EOF).
            process_group=0,
        )
        assert proc.stdin is not None
        secret = pickle.dumps(None if self._key is None else self._key.secret)
        proc.stdin.write(HEADER.pack(len(secret)) + secret)
        try:
            status, why = await asyncio.wait_for(_read_answer(proc), _START_TIMEOUT_S)
            if status != "ok":
                raise sqlite3.OperationalError(why)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, asyncio.IncompleteReadError | TimeoutError):
                raise OSError(f"the audit writer process did not start: {exc}") from exc
            raise
        self._proc = proc
        self._needs_reset = False
        self._reader = asyncio.create_task(self._read(proc), name="auditlog-writer-answers")
        return proc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        try:
            while True:
                answer = await _read_answer(proc)
                if not self._answers:
                    raise OSError(f"the audit writer process answered unasked: {answer}")
                waiter = self._answers.popleft()
                if not waiter.done():
                    waiter.set_result(answer)
        except (OSError, asyncio.IncompleteReadError, pickle.UnpicklingError) as exc:
            if self._proc is proc:  # not a close(): say so
                _log.warning("auditlog.writer_process_stopped", error=str(exc))
            self._fail_waiting(OSError(f"the audit writer process stopped: {exc}"))

    def _fail_waiting(self, error: OSError) -> None:
        while self._answers:
            waiter = self._answers.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_waiting(OSError("the audit writer process was stopped"))

    async def _discard(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await self._stop_reader()


async def _read_answer(proc: asyncio.subprocess.Process) -> Answer:
    assert proc.stdout is not None
    (size,) = HEADER.unpack(await proc.stdout.readexactly(HEADER.size))
    status, detail = pickle.loads(await proc.stdout.readexactly(size))  # noqa: S301  (our child)
    return str(status), detail
