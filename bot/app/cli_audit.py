"""``opsbot db …`` and ``opsbot audit …``: the audit database from a shell.

Each function returns the process exit code and raises :class:`~bot.kernel.errors.OpsbotError`
for the caller (``bot.app.cli``) to report; nothing here exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
from sqlalchemy.engine import make_url

from bot.app.config.models import Config, read_key_file
from bot.app.storage import database_url
from bot.audit import AuditEntry, AuditStore, StoredEntry, canonical_json, check_schema
from bot.audit.record import FIELD_NAMES, format_at
from bot.audit.trail import is_embedded, migrate
from bot.audit.witness import read_points
from bot.kernel.durations import parse_duration
from bot.kernel.errors import DependencyError, UserError
from bot.storage.engine import display_url
from bot.storage.migrate import DEPENDENCY, current_revision

EXIT_SCHEMA_NOT_CURRENT = 1
EXIT_CHAIN_BROKEN = 1

EXPORT_COLUMNS = ("seq", "prev_hash", "hash", "key_id", *FIELD_NAMES)
FOLLOW_POLL_S = 0.5
DEFAULT_TAIL = 20
MAX_OF_REQUEST = 100_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``24h``/``7d``/``90m`` ago, or an ISO-8601 time (naive means UTC). Raises ValueError."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError as exc:
        if "longer than" in str(exc):
            raise  # a duration, just too long: say that, not "neither"
    except OverflowError:
        raise ValueError(f"{text!r} reaches back before year 1") from None
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (24h, 7d, 90m) nor an ISO-8601 time "
            "(2026-11-23T03:00:00Z)"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# ---------------------------------------------------------------------- db


async def db_upgrade(config: Config) -> int:
    url = database_url(config)
    await migrate(url)
    print(f"audit database {display_url(url)} is at revision {await current_revision(url)}")
    return 0


async def db_check(config: Config) -> int:
    """0 when the schema is this opsbot's; 1 when it is not (the reason on stderr)."""
    url = database_url(config)
    try:
        _require_sqlite_file(url)
        await check_schema(url)
    except DependencyError as exc:
        # With an original, the database could not be read at all: that is not an
        # answer to "is the schema current?", so it goes up as a failure.
        if exc.original is not None:
            raise
        print(f"opsbot: {exc}", file=sys.stderr)
        return EXIT_SCHEMA_NOT_CURRENT
    print(f"audit database {display_url(url)} is current (revision {await current_revision(url)})")
    return 0


# ---------------------------------------------------------------------- audit


async def audit_tail(
    config: Config, count: int | None, *, follow: bool, request: str | None = None
) -> int:
    """The newest ``count`` entries (20 when None), oldest first; with ``request``, the
    entries of that request and of its jobs (all of them when ``count`` is None)."""
    async with _reading(config) as store:
        newest_of_all = await _newest(store) if request is not None and follow else None
        if request is not None:
            rows = await store.of_request(request, MAX_OF_REQUEST)
            if count is not None:
                rows = rows[len(rows) - count :] if count else []
        else:
            count = DEFAULT_TAIL if count is None else count
            rows = list(reversed(await store.query(limit=count))) if count else []
        for row in rows:
            print(tail_line(row))
        sys.stdout.flush()
        if follow:
            # Following one request: after the newest entry of all, or of the request's
            # when it came meanwhile; nothing shown twice, nothing of it missed.
            last = max(
                (r for r in (newest_of_all, rows[-1] if rows else None) if r is not None),
                key=lambda r: r.seq,
                default=None,
            )
            await _follow(store, last, request)
    return 0


async def _newest(store: AuditStore) -> StoredEntry | None:
    newest = await store.query(limit=1)
    return newest[0] if newest else None


def of_request(row: StoredEntry, request: str) -> bool:
    """Whether ``row`` is an entry of ``request`` or of one of its jobs."""
    request_id = row.entry.request_id
    return request_id == request or request_id.startswith(f"{request}:")


async def audit_export(config: Config, since: datetime, fmt: str, output: Path | None) -> int:
    async with _reading(config) as store:
        if output is None:
            await _write_export(store, since, fmt, sys.stdout)
            return 0
        with _replace_on_success(output) as out:
            written = await _write_export(store, since, fmt, out)
    print(f"exported {written} audit entries to {output}", file=sys.stderr)
    return 0


async def audit_verify(
    config: Config, *, key_files: Sequence[Path] = (), witness: Path | None = None
) -> int:
    keys = [key for key in [config.audit.chain_key()] if key is not None]
    for path in key_files:
        try:
            keys.append(read_key_file(path))
        except ValueError as exc:
            raise UserError(f"--key-file: {exc}") from None
    points: dict[int, tuple[str, str]] | None = None
    if witness is not None:
        try:
            found, problems = read_points(witness)
        except OSError as exc:
            raise UserError(f"--witness: cannot read {witness}: {exc.strerror}") from None
        for problem in problems:
            print(f"opsbot: witness: {problem}", file=sys.stderr)
        if problems:
            print(f"audit witness BROKEN: {problems[0]}")
            return EXIT_CHAIN_BROKEN
        points = {seq: (p.hash, format_at(p.at)) for seq, p in found.items()}
    async with _reading(config) as store:
        result = await store.verify(keys, points)
    print(result)
    if result.ok and points is None:
        # What the table alone cannot show: say it, every time (docs/audit.md).
        print(
            "note: without --witness, rows cut from the end (or a log emptied) would not "
            "show; pass the witness file to rule that out",
            file=sys.stderr,
        )
    return 0 if result.ok else EXIT_CHAIN_BROKEN


@contextlib.asynccontextmanager
async def _reading(config: Config) -> AsyncIterator[AuditStore]:
    """A started store on the configured database, for reading only."""
    url = database_url(config)
    _require_sqlite_file(url)
    await check_schema(url)
    # The configured spool belongs to the running bot: a store started on it would replay
    # it into the database when closed, racing the bot's own writer. This one never writes.
    with tempfile.TemporaryDirectory(prefix="opsbot-cli-") as scratch:
        store = AuditStore(url, spool_path=Path(scratch) / "unused-spool.jsonl", reading_only=True)
        await store.start()
        try:
            yield store
        finally:
            await store.close()


def _sqlite_path(url: str) -> Path:
    return Path(make_url(url).database or "")


def _require_sqlite_file(url: str) -> None:
    # Opening a missing SQLite file creates it: an empty file the bot would then migrate
    # is harmless, but one in a mistyped data_dir would only hide the mistake.
    if is_embedded(url) and not _sqlite_path(url).exists():
        raise DependencyError(
            DEPENDENCY,
            f"{_sqlite_path(url)} does not exist yet "
            "(the bot creates it on first start, or run `opsbot db upgrade`)",
        )


# ---------------------------------------------------------------------- tail


def tail_line(row: StoredEntry) -> str:
    """``2026-11-23 03:00:01Z  #7  finished  ok  alice(U01@slack)  /health api  rule  2ms``"""
    e = row.entry
    what = e.raw_text or (f"/{e.command}" if e.command else f"[{e.kind}] {e.detail}")
    parts = [
        e.at.strftime("%Y-%m-%d %H:%M:%SZ"),
        f"#{row.seq}",
        e.stage,
        e.status or "-",
        _who(e),
        _one_line(what),
        e.rule or "-",
        _format_ms(e.duration_ms),
    ]
    if e.error:
        parts.append(_one_line(e.error))
    return "  ".join(parts)


def _who(e: AuditEntry) -> str:
    if not e.user_id:
        return e.principal or "-"
    platform_id = f"{e.user_id}@{e.platform}"
    # No principal: someone the config does not know; the platform id is all there is.
    return f"{e.principal}({platform_id})" if e.principal else platform_id


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _format_ms(duration_ms: float | None) -> str:
    if duration_ms is None:
        return "-"
    return f"{duration_ms:.1f}ms" if duration_ms < 10 else f"{duration_ms:.0f}ms"


async def _follow(
    store: AuditStore, newest: StoredEntry | None, request: str | None = None
) -> None:
    """Print entries committed after ``newest`` (of ``request`` only, when given) until
    SIGINT or SIGTERM."""
    last_seq = newest.seq if newest else 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            # By seq, not time: a spool replayed late still shows up, in chain order.
            async for row in store.export(EPOCH, after_seq=last_seq):
                if request is None or of_request(row, request):
                    print(tail_line(row))
                last_seq = row.seq
            sys.stdout.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FOLLOW_POLL_S)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# ---------------------------------------------------------------------- export


async def _write_export(store: AuditStore, since: datetime, fmt: str, out: TextIO) -> int:
    written = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        async for row in store.export(since):
            writer.writerow(_csv_record(row))
            written += 1
    else:
        async for row in store.export(since):
            out.write(orjson.dumps(export_record(row)).decode("utf-8") + "\n")
            written += 1
    out.flush()
    return written


def export_record(row: StoredEntry) -> dict[str, Any]:
    """One exported entry: its place in the chain, then its fields in declaration order."""
    chain = {"seq": row.seq, "prev_hash": row.prev_hash, "hash": row.hash, "key_id": row.key_id}
    return chain | row.entry.to_json_dict()


def _csv_record(row: StoredEntry) -> dict[str, Any]:
    record = export_record(row)
    record["args"] = canonical_json(record["args"])
    record["approvers"] = canonical_json(record["approvers"])
    return record


@contextlib.contextmanager
def _replace_on_success(path: Path) -> Iterator[TextIO]:
    """A text file that appears at ``path`` only once it is complete: an export that fails
    half-way must not leave a file that looks like a whole one. Only a regular file (or a
    new one) is written: a symlink, FIFO, device or directory at ``path`` is refused,
    whoever runs this (as root, renaming over a device node would replace it)."""
    _refuse_unless_regular(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    partial = Path(name)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        _refuse_unless_regular(path)  # it may have changed while the export ran
        os.replace(partial, path)
    except OSError as exc:
        # A full disk, a quota, the directory gone: one line, and no partial file left.
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


def _refuse_unless_regular(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if stat.S_ISREG(mode):
        return
    kind = (
        "a symlink"
        if stat.S_ISLNK(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a directory"
        if stat.S_ISDIR(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise UserError(
        f"refusing to write {path}: it is {kind}; --output writes a regular file "
        "(leave it out to write to stdout)"
    )
