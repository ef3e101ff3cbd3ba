"""Files written so that a crash cannot take back what was acknowledged."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created 0600 if missing) and fsync it; a new file's
    directory is fsynced too, so the file itself survives a crash.

    All of ``data`` or none of it: a short write (the disk filled up half-way) is
    completed or, failing that, cut back off before the error is raised, so what follows
    never lands after a torn record.
    """
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
