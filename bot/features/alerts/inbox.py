"""The alert inbox: what ``POST /alerts…`` took, made durable before the 202.

An HTTP answer must come before the work (Alertmanager waits at most its group interval,
then sends again): the intake validates a delivery, appends it to this journal, answers
202, and the processor (:class:`bot.features.alerts.intake.AlertIntake`) takes deliveries
in order, puts their alerts on the board and posts what is new. A crash after the 202
loses nothing: at start the replica processes what its journal holds past the offset of
the last delivery processed (the board and the dedup make a second pass harmless).

One journal per process (``<data_dir>/alert-inbox.journal``, beside the audit spool), so
that appending never waits for a database lock: concurrent deliveries are written with one
``write`` and one ``fsync`` (group commit). A record is a JSON header line, then the body
as received (already validated) and a newline; a record cut short by a crash was never
acknowledged and is ignored. Once everything is processed, the journal is emptied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime
from pathlib import Path

import orjson
import structlog
from msgspec import Struct

from bot.storage.files import append_durably, fsync_dir

log = structlog.get_logger("opsbot.alerts")


class Delivery(Struct, frozen=True):
    source: str  # "alertmanager" or "generic"
    received_at: datetime
    alerts: int
    body: bytes
    start: int  # the journal offset where it begins (taken again from here after a failure)
    end: int  # the journal offset just past it: processed up to here


class AlertInbox:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset_path = path.with_name(path.name + ".offset")
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._lock = asyncio.Lock()  # one writer (or compaction) at a time
        self._read_at = 0  # where the next take() reads from
        self._size = 0  # bytes written

    @property
    def path(self) -> Path:
        return self._path

    async def prepare(self) -> int:
        """Open the journal; how many deliveries wait in it from an earlier run."""
        self._read_at = await asyncio.to_thread(self._read_offset)
        self._size = await asyncio.to_thread(self._file_size)
        if self._read_at > self._size:
            # A crash while the journal was emptied: the offset outlived the records.
            self._read_at = 0
        return len(await asyncio.to_thread(self._scan, self._read_at, None))

    async def put(self, source: str, body: bytes, alerts: int, at: datetime) -> None:
        """Return once the delivery is on disk (written and fsynced)."""
        header = orjson.dumps(
            {"source": source, "at": at.isoformat(), "alerts": alerts, "size": len(body)}
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((header + b"\n" + body + b"\n", done))
        async with self._lock:
            if self._pending and not done.done():
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self._append, b"".join(data for data, _ in batch))
                except BaseException as exc:
                    for _, waiter in batch:
                        # Not our own: raised here, it would be a future nobody retrieves.
                        if waiter is not done and not waiter.done():
                            waiter.set_exception(exc)
                    raise
                self._size += sum(len(data) for data, _ in batch)
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_result(None)
        await done

    async def take(self, limit: int) -> list[Delivery]:
        """The next deliveries not yet taken, oldest first."""
        if self._read_at >= self._size:
            return []
        found = await asyncio.to_thread(self._scan, self._read_at, limit)
        if found:
            self._read_at = found[-1].end
        return found

    def rewind(self, delivery: Delivery) -> None:
        """Take ``delivery`` (and what follows it) again: its processing failed."""
        self._read_at = min(self._read_at, delivery.start)

    async def done(self, deliveries: list[Delivery]) -> None:
        """Processed up to the last of ``deliveries``; an empty journal is emptied."""
        if not deliveries:
            return
        async with self._lock:
            if self._read_at >= self._size and not self._pending:
                await asyncio.to_thread(self._clear)
                self._read_at = self._size = 0
            else:
                await asyncio.to_thread(self._write_offset, deliveries[-1].end)

    # ------------------------------------------------------------------ files (threads)

    def _append(self, data: bytes) -> None:
        append_durably(self._path, data)

    def _scan(self, start: int, limit: int | None) -> list[Delivery]:
        out: list[Delivery] = []
        try:
            f = open(self._path, "rb")  # noqa: SIM115  (closed below)
        except FileNotFoundError:
            return out
        with f:
            f.seek(start)
            position = start
            while limit is None or len(out) < limit:
                header = f.readline()
                if not header.endswith(b"\n"):
                    break  # the end, or a record cut short by a crash: never acknowledged
                begin = position
                try:
                    meta = orjson.loads(header)
                    size = int(meta["size"])
                    body = f.read(size + 1)
                    if len(body) != size + 1 or body[-1:] != b"\n":
                        break
                    position += len(header) + size + 1
                    out.append(
                        Delivery(
                            source=str(meta["source"]),
                            received_at=datetime.fromisoformat(meta["at"]),
                            alerts=int(meta["alerts"]),
                            body=body[:-1],
                            start=begin,
                            end=position,
                        )
                    )
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    log.error("alerts.journal_unreadable", path=str(self._path), offset=position)
                    break
        return out

    def _file_size(self) -> int:
        try:
            return self._path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text(encoding="ascii").strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_offset(self, offset: int) -> None:
        tmp = self._offset_path.with_name(self._offset_path.name + ".tmp")
        tmp.write_text(str(offset), encoding="ascii")
        os.replace(tmp, self._offset_path)

    def _clear(self) -> None:
        # The offset first: a crash between the two leaves records to take again from the
        # start (harmless), never an offset past the end of an emptied journal.
        self._offset_path.unlink(missing_ok=True)
        fsync_dir(self._offset_path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.truncate(self._path, 0)
