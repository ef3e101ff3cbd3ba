"""The outside witness: the chain head, written where the database cannot reach.

Nothing inside one database can detect its own truncation: delete the last rows, move
``audit_chain_head`` back, and every remaining row still verifies (with or without the
key). So the head (seq, hash, time) is also appended to a file meant for another volume
(``[audit] witness_path``), every ``witness_every`` and at shutdown, and can be posted to
chat channels, whose history the platform keeps. ``opsbot audit verify --witness FILE``
then checks that every witnessed (seq, hash) is still in the chain: a truncation, or a
rewrite at or before a witnessed point, is found even by someone who holds the key.

A witness line is one canonical JSON object: ``{"at": …, "hash": …, "seq": …}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from datetime import datetime
from pathlib import Path

import orjson
import structlog
from msgspec import Struct

from bot.audit.record import canonical_json, format_at
from bot.audit.store import AuditStore
from bot.kernel.clock import Clock

_log = structlog.get_logger("opsbot.audit")
MAX_WITNESS_LINE = 512  # bytes: a point is ~150; a longer line is not one


class WitnessPoint(Struct, frozen=True):
    seq: int
    hash: str
    at: datetime

    def line(self) -> str:
        return canonical_json({"seq": self.seq, "hash": self.hash, "at": format_at(self.at)})

    def text(self) -> str:
        """The point as a chat message says it (verify reads the file, a person the chat)."""
        return f"audit chain head: seq {self.seq}, hash {self.hash}, at {format_at(self.at)}"


def append_point(path: Path, point: WitnessPoint) -> None:
    """Append ``point`` to the witness file and fsync it (and its directory, when the file
    is new). Refuses anything but a regular file (a symlink swapped in, a FIFO)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    created = not path.exists()
    fd = os.open(path, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.write(fd, (point.line() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_points(path: Path) -> tuple[dict[int, WitnessPoint], list[str]]:
    """The points in a witness file by seq (the last line for a seq wins: they agree
    unless the file itself was edited), and a problem per line that is not a point.
    Raises OSError when the file cannot be read."""
    points: dict[int, WitnessPoint] = {}
    problems: list[str] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                if len(line) > MAX_WITNESS_LINE:
                    raise ValueError("too long")
                data = orjson.loads(line)
                point = WitnessPoint(
                    seq=int(data["seq"]),
                    hash=str(data["hash"]),
                    at=datetime.fromisoformat(str(data["at"])),
                )
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                problems.append(f"{path}:{number}: not a witness point")
                continue
            earlier = points.get(point.seq)
            if earlier is not None and earlier.hash != point.hash:
                problems.append(
                    f"{path}:{number}: seq {point.seq} witnessed with two different hashes"
                )
            points[point.seq] = point
    return points, problems


class WitnessWriter:
    """Appends the head to the witness file every ``every`` seconds (when it moved) and
    once more at :meth:`close`. A point that cannot be written is logged as an error and
    tried again next time: the witness must not stop the bot."""

    def __init__(self, store: AuditStore, path: Path, every: float, clock: Clock) -> None:
        self._store = store
        self._path = path
        self._every = every
        self._clock = clock
        self._last: tuple[int, str] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self._path

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-witness")

    async def close(self) -> None:
        """Stop, then witness the head as it is now (call after the last entry is written)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.write_now()

    async def write_now(self) -> WitnessPoint | None:
        """Witness the head now, unless it has not moved since the last point."""
        try:
            seq, digest = await self._store.head()
            if self._last == (seq, digest):
                return None
            point = WitnessPoint(seq, digest, self._clock.now())
            await asyncio.to_thread(append_point, self._path, point)
        except Exception as exc:
            _log.error("audit.witness_failed", path=str(self._path), error=str(exc))
            return None
        self._last = (seq, digest)
        return point

    async def _run(self) -> None:
        while True:
            await self.write_now()
            await asyncio.sleep(self._every)
