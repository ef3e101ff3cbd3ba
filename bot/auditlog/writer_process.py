"""The bot's side of the SQLite writer process (``bot.auditlog.sqlite_writer``).

One batch at a time: the store's writer task sends a batch and awaits its answer, while
the event loop goes on serving and queueing the next batch. Hashing and inserting run in
the other process, on the other core, which is what lifted the audited command rate
(bench/audit.py); this side only pickles tuples.

If the process exits or the pipe breaks, :meth:`insert` raises ``OSError`` (a connection
error: the store spools the batch and retries) and the next call starts a new process.
A batch whose answer was lost may have been committed; the spool sends it again
(at-least-once, as with a database connection lost after COMMIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from bot.auditlog.record import AuditEntry
from bot.auditlog.sqlite_writer import HEADER

_log = structlog.get_logger("opsbot.auditlog")
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0
# The directory that holds the ``bot`` package, for the child's import path.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


class SqliteWriterProcess:
    def __init__(self, path: str) -> None:
        self._path = path
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The writer process's pid while it runs (bench/audit.py reads its CPU time)."""
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        await self._running()

    async def insert(self, entries: Sequence[AuditEntry]) -> None:
        """Commit ``entries`` as one transaction, chained after the current head.

        Raises ``sqlite3.OperationalError`` (database locked or unreachable) or
        ``OSError`` (the process stopped): both mean "spool and retry"; and
        ``sqlite3.IntegrityError`` when the database refused the batch itself.
        """
        proc = await self._running()
        payload = pickle.dumps([e.values() for e in entries], protocol=pickle.HIGHEST_PROTOCOL)
        try:
            status, why = await self._exchange(proc, payload)
        except BaseException as exc:
            # Cancelled or broken mid-exchange: the pipe is out of step; start afresh.
            await self._discard()
            if isinstance(exc, ConnectionError | asyncio.IncompleteReadError | OSError):
                raise OSError(f"the audit writer process stopped: {exc}") from exc
            raise
        _raise_for(status, why)

    async def close(self) -> None:
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

    async def _running(self) -> asyncio.subprocess.Process:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        if self._proc is not None:
            _log.warning("auditlog.writer_process_exited", returncode=self._proc.returncode)
            self._proc = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_SOURCE_ROOT, env.get("PYTHONPATH", "")) if p
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.auditlog.sqlite_writer",
            self._path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            status, why = await asyncio.wait_for(_read_answer(proc), _START_TIMEOUT_S)
            _raise_for(status, why)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, asyncio.IncompleteReadError | TimeoutError):
                raise OSError(f"the audit writer process did not start: {exc}") from exc
            raise
        self._proc = proc
        return proc

    async def _exchange(self, proc: asyncio.subprocess.Process, payload: bytes) -> tuple[str, str]:
        assert proc.stdin is not None
        proc.stdin.write(HEADER.pack(len(payload)) + payload)
        await proc.stdin.drain()
        return await _read_answer(proc)

    async def _discard(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _read_answer(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    assert proc.stdout is not None
    (size,) = HEADER.unpack(await proc.stdout.readexactly(HEADER.size))
    status, why = pickle.loads(await proc.stdout.readexactly(size))  # noqa: S301  (our child)
    return str(status), str(why)


def _raise_for(status: str, why: str) -> None:
    if status == "ok":
        return
    if status == "down":
        raise sqlite3.OperationalError(why)
    raise sqlite3.IntegrityError(why)
