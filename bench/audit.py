"""Audit benchmark: audited commands/s through the full pipeline, and the /audit query.

    .venv/bin/python bench/audit.py [--n 20000] [--seconds 60] [--postgres-url URL]
                                    [--postgres-query] [--rebuild] [--profile]

Prints, for SQLite (always) and PostgreSQL (with ``--postgres-url`` or
``OPSBOT_BENCH_POSTGRES_URL``):

1. Sustained audited commands/s with 100 in flight (a closed loop of 100 senders through
   the console adapter, as bench/dispatch.py), for the read-only ``/whoami`` and for
   ``/touch``, a do-nothing command registered here with ``risk=Risk.WRITE``: its
   "started" entry is committed before it runs, and its reply waits for its "finished"
   entry's commit. A /whoami that ran is one entry (its decision and outcome), a /touch two
   (started, carrying the decision, and finished), all through
   the store's group commit. Also CPU microseconds per command (the bot's process plus,
   on SQLite, the audit writer process that hashes and inserts; the event-loop thread
   alone; the writer process alone, read from /proc), p50/p99
   reply latency, and how many replies went out without waiting for their commit
   (``audit.reply_not_waiting``: must be 0).
2. A check that the figures are real: the rows added equal 1 per /whoami and 2 per /touch, and
   ``AuditStore.verify()`` walks the whole chain of that database.
3. p50/p95/max of the ``/audit user=X since=24h`` query over 1,000,000 stored entries:
   ``store.query`` as given in the issue, ``store.query`` as the /audit command calls it
   (statuses "allowed"/"started" excluded), and, when ``commands/audit.py`` exists, the
   whole chat command through the bot (pipeline, audit entries of its own and rendering
   included), 200 runs each, one at a time, X cycling through the 200 principals.

The bot runs with the settings a deployment has: SQLite in WAL mode with
``synchronous=NORMAL`` (as bot/storage/engine.py sets it), PostgreSQL as the server is
configured, ``audit.reply_wait`` at its default. Policy is strict; the flood budget is
raised so one benchmark user is not throttled; logging is at warning.

The 1,000,000-entry database is filled without the pipeline: entries are built and
hash-chained here (``bot.audit.chain.entry_hash``), turned into rows by the store's
own ``_row_tuple`` and inserted in large batches with the indexes dropped and rebuilt
afterwards (raw sqlite3 ``executemany``; asyncpg ``COPY`` on PostgreSQL), so the chain
is valid (``--verify-query-db`` walks it). 770k requests over 30 days, 200 principals
with a skewed (Zipf-like) share, a dozen commands, 90% ok / 5% error (one "finished"
entry for a read-only command, "started" and "finished" for the third that change
something) and 5% denied (one "decided" entry), ending at the moment of the fill. "Now"
for the queries is the newest entry (the bot runs on a clock shifted to it), so a cached
database gives the same figures days later. SQLite is not ANALYZEd (the bot never
does); PostgreSQL is, standing in for autovacuum. The SQLite file is cached in
bench/.cache/, keyed by the schema revision (``--rebuild`` refills it). Rows the /audit
runs add are removed afterwards (and the chain head put back), so the cache stays
exactly the fill.

PostgreSQL: the Bot takes its database from the config URL only (no schema option), so
the bench uses dedicated databases on the given server instead of a schema:
``opsbot_bench`` for the throughput runs (created if missing, migrated with
``bot.audit.upgrade``, then emptied before every run: TRUNCATE audit_log, chain head
reset to seq 0 / genesis hash, audit_anchor emptied; dropped at the end) and, only with
``--postgres-query``, ``opsbot_bench_query_<revision>_f<format>_<rows>`` for the 1M-entry
query (kept between runs like the SQLite cache, and put back to exactly the fill after
each run; ``--rebuild`` refills it). The role in the URL needs CREATEDB, or pass a URL
whose database name already starts with ``opsbot_bench``: it is then used (emptied, not
dropped) as the throughput database. The PostgreSQL figures count only this process's
CPU, not the server's (which shares the machine when it is local).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.util
import io
import itertools
import json
import os
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import URL, make_url  # noqa: E402

from adapters.console.adapter import ConsoleAdapter  # noqa: E402
from bot.app.config import parse_config  # noqa: E402
from bot.app.logs import configure_logging  # noqa: E402
from bot.app.runtime import Bot  # noqa: E402
from bot.audit import (  # noqa: E402
    GENESIS_HASH,
    AuditEntry,
    AuditStore,
    entry_hash,
    head_revision,
    upgrade,
)
from bot.audit.rows import COLUMNS  # noqa: E402
from bot.audit.store import _insert_sql, _row_tuple  # noqa: E402
from bot.kernel.command import CommandSpec, NoArgs, NoDeps, Request, Risk  # noqa: E402  # noqa: E402
from bot.kernel.reply import Reply, Status  # noqa: E402
from bot.storage.engine import make_engine  # noqa: E402
from commands import COMMANDS  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
PROFILES: list[str] = []  # cProfile reports, printed at the end
FILL_FORMAT = 2  # bump when the generated data changes, to invalidate caches
FILL_REPLICA = "bench-fill"
PG_THROUGHPUT_DB = "opsbot_bench"
QUERY_RUNS = 200
WARM_UP = 200
PRINCIPALS = tuple(f"user{i:03d}" for i in range(200))
FILL_COMMANDS = (
    "status",
    "health",
    "version",
    "whoami",
    "deploy",
    "restart",
    "scale",
    "rollback",
    "logs",
    "policy",
    "audit",
    "help",
)
PLATFORMS = ("slack", "slack", "slack", "telegram", "discord", "console")
CHANNELS = ("ops", "incident", "deploys", "general")
MUTATING = ("deploy", "rollback", "restart", "scale")


# ---------------------------------------------------------------------------- the bot


class _StartedCheck:
    """Every ``every``-th /touch looks, through a connection of its own, for its own
    "started" row: the pipeline must have committed it before running the command.

    On SQLite the look is a blocking sqlite3 query (well under a millisecond): an await in
    the handler would shift the closed loop's batching and cost several percent."""

    SQL = "SELECT count(*) FROM audit_log WHERE request_id = {} AND stage = 'started'"

    def __init__(self, every: int = 1000) -> None:
        self.every = every
        self.calls = self.checked = self.found = 0
        self.sqlite: sqlite3.Connection | None = None
        self.pg: Any = None

    async def open(self, url: str) -> None:
        self.calls = self.checked = self.found = 0
        parsed = make_url(url)
        if parsed.drivername.startswith("sqlite"):
            self.sqlite = sqlite3.connect(parsed.database or "", isolation_level=None)
        else:
            self.pg = await _pg_connect(parsed)

    async def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.pg is not None:
            await self.pg.close()
        self.sqlite = self.pg = None

    async def sample(self, request_id: str) -> None:
        self.calls += 1
        if self.calls % self.every:
            return
        if self.sqlite is not None:
            (count,) = self.sqlite.execute(self.SQL.format("?"), (request_id,)).fetchone()
        elif self.pg is not None:
            count = await self.pg.fetchval(self.SQL.format("$1"), request_id)
        else:
            return
        self.checked += 1
        self.found += count == 1


STARTED_CHECK = _StartedCheck()


async def _touch(ctx: Request, _: NoArgs, _deps: NoDeps) -> Reply:
    await STARTED_CHECK.sample(ctx.request_id)
    return Reply(title="touched", status=Status.OK)


TOUCH = CommandSpec(
    name="touch",
    summary="Benchmark: a mutating command that changes nothing",
    usage="/touch",
    args_model=NoArgs,
    run=_touch,
    needs=NoDeps,
    risk=Risk.WRITE,
)
SPECS = [*COMMANDS, TOUCH]
HAVE_AUDIT_COMMAND = importlib.util.find_spec("commands.audit") is not None and any(
    spec.name == "audit" for spec in COMMANDS
)

CONFIG = """
[bot]
name = "opsbot"
data_dir = {data_dir}
replica_id = "bench"
log_level = "warning"

[http]
enabled = false

[flood]
max_commands = 10000000
per = "1s"

[roles.admin]
includes = ["oncall"]
[roles.oncall]

[identities.alice]
roles = ["admin"]
ids = ["console:alice"]

[channels.ops]
ids = ["console:ops"]

[policy]
mode = "strict"
admin_roles = ["admin"]

[policy.commands.touch]
roles = ["oncall"]
{audit_rule}
{audit_section}
"""


def _config(data_dir: Path, database_url: str | None) -> Any:
    text = CONFIG.format(
        data_dir=json.dumps(str(data_dir)),
        audit_rule='[policy.commands.audit]\nroles = ["oncall"]' if HAVE_AUDIT_COMMAND else "",
        audit_section=f"[audit]\ndatabase_url = {json.dumps(database_url)}" if database_url else "",
    )
    # No environment: OPSBOT_DATABASE_URL must not redirect the SQLite runs.
    return parse_config(text, "bench", {}, [s.name for s in SPECS])


class _LogCounter(io.TextIOBase):
    """The log stream: counts events the figures depend on, passes everything to stderr."""

    EVENTS = ("audit.reply_not_waiting", "audit.record_failed", "auditlog.")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.EVENTS, 0)

    def write(self, s: str) -> int:
        for name in self.EVENTS:
            if name in s:
                self.counts[name] += 1
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


LOG = _LogCounter()


class ShiftedClock:
    """System time moved so that the bot's "now" starts at ``start``."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._t0)

    def monotonic(self) -> float:
        return time.monotonic()


@contextlib.asynccontextmanager
async def _running_bot(database_url: str | None, clock: Any = None) -> AsyncIterator[_Client]:
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as data_dir:
        bot = Bot(_config(Path(data_dir), database_url), SPECS, clock=clock, config_source="bench")
        console = ConsoleAdapter("alice", "ops", bot.clock)
        await bot.start(serve_http=False)
        await console.start(bot.handle)
        try:
            yield _Client(bot, console)
        finally:
            await console.stop()
            await bot.stop()


@dataclass
class _Client:
    bot: Bot
    console: ConsoleAdapter


# ---------------------------------------------------------------------------- databases


def _sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path.absolute()}"


async def _sql(url: str, statement: str) -> Any:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            return (await conn.execute(sa.text(statement))).scalar()
    finally:
        await engine.dispose()


async def _row_count(url: str) -> int:
    return int(await _sql(url, "SELECT count(*) FROM audit_log"))


def _pg_url(url: str) -> URL:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername != "postgresql+asyncpg":
        raise SystemExit(f"--postgres-url: not a PostgreSQL URL: {parsed.drivername}")
    return parsed


async def _pg_connect(url: URL) -> Any:
    return await asyncpg.connect(
        user=url.username,
        password=url.password,
        host=url.host or "localhost",
        port=url.port or 5432,
        database=url.database,
        timeout=10,
    )


async def _pg_database(base: URL, name: str, *, fresh: bool = False) -> tuple[str, bool]:
    """(sqlalchemy URL of database ``name`` on ``base``'s server, whether it was created)."""
    conn = await _pg_connect(base)
    try:
        if fresh:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return base.set(database=name).render_as_string(hide_password=False), not exists


async def _pg_drop(base: URL, name: str) -> None:
    conn = await _pg_connect(base)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _pg_empty(url: str) -> None:
    """Migrate, then empty the audit tables and put the chain head back to genesis."""
    await upgrade(url)
    conn = await _pg_connect(make_url(url))
    try:
        async with conn.transaction():
            await conn.execute("TRUNCATE audit_log")
            await conn.execute("UPDATE audit_chain_head SET seq = 0, hash = $1", GENESIS_HASH)
            await conn.execute("DELETE FROM audit_anchor")
    finally:
        await conn.close()


# ---------------------------------------------------------------------------- throughput


@dataclass
class Throughput:
    commands: int
    per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    loop_cpu_us: float
    writer_cpu_us: float
    rows_added: int
    not_waiting: int
    verify: str
    verify_s: float


async def _throughput(
    database_url: str | None,
    text: str,
    expect: str,
    n: int,
    in_flight: int,
    seconds: float,
    profiler: cProfile.Profile | None,
) -> Throughput:
    async with _running_bot(database_url) as client:
        store = client.bot.audit.store
        url = database_url or _sqlite_url(client.bot.config.bot.data_dir / "audit.db")
        console = client.console
        for _ in range(WARM_UP):
            await console.send(text)
        await store.flush()
        rows_before = await _row_count(url)
        waiting_before = LOG.counts["audit.reply_not_waiting"]
        await STARTED_CHECK.open(url)
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def sender(count: int) -> None:
            # A closed loop: each sender sends its next command once the last is answered.
            for _ in range(count):
                submitted = time.perf_counter()
                if submitted >= deadline:
                    return
                reply = await console.send(text)
                latencies.append(time.perf_counter() - submitted)
                if reply is None or reply.title != expect:
                    raise RuntimeError(f"unexpected reply to {text}: {reply}")

        share, extra = divmod(n, in_flight)
        if profiler is not None:
            profiler.enable()
        writer_pid = store.writer_pid
        writer0 = _process_cpu(writer_pid)
        cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        await asyncio.gather(*(sender(share + (i < extra)) for i in range(in_flight)))
        wall = time.perf_counter() - wall0
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        writer_cpu = _process_cpu(writer_pid) - writer0 if store.writer_pid == writer_pid else 0.0
        if profiler is not None:
            profiler.disable()
        done = len(latencies)
        await STARTED_CHECK.close()
        await store.flush()
        rows_added = await _row_count(url) - rows_before
        verify0 = time.perf_counter()
        result = await store.verify()
        verify_s = time.perf_counter() - verify0
    if not result.ok:
        raise RuntimeError(f"audit chain broken after the run: {result}")
    # A read-only command that ran is one entry; a mutating one two (started, finished).
    expected = done * (1 if text == "/whoami" else 2)
    if rows_added != expected:
        raise RuntimeError(f"{done} commands added {rows_added} audit rows, not {expected}")
    if STARTED_CHECK.found != STARTED_CHECK.checked:
        raise RuntimeError(
            f"/touch ran before its 'started' entry was committed "
            f"({STARTED_CHECK.checked - STARTED_CHECK.found} of {STARTED_CHECK.checked} sampled)"
        )
    verified = f"chain ok ({result.checked} rows)"
    if STARTED_CHECK.checked:
        verified += f"; started committed before run: {STARTED_CHECK.found}/{STARTED_CHECK.checked}"
    latencies.sort()
    return Throughput(
        commands=done,
        per_s=done / wall,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        cpu_us=(cpu + writer_cpu) / done * 1e6,
        loop_cpu_us=loop_cpu / done * 1e6,
        writer_cpu_us=writer_cpu / done * 1e6,
        rows_added=rows_added,
        not_waiting=LOG.counts["audit.reply_not_waiting"] - waiting_before,
        verify=verified,
        verify_s=verify_s,
    )


def _process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of another process (the SQLite writer), from /proc."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _print_throughput_header() -> None:
    print(
        f"{'backend / command':<28}{'cmds':>7}{'cmds/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU us/cmd':>12}{'loop-thread':>13}{'writer':>8}{'rows added':>12}{'no-wait':>9}"
        "  verify"
    )


def _print_throughput(label: str, r: Throughput) -> None:
    print(
        f"{label:<28}{r.commands:>7}{r.per_s:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
        f"{r.cpu_us:>12.1f}{r.loop_cpu_us:>13.1f}{r.writer_cpu_us:>8.1f}{r.rows_added:>12}"
        f"{r.not_waiting:>9}"
        f"  {r.verify} in {r.verify_s:.1f} s",
        flush=True,
    )


# ---------------------------------------------------------------------------- the 1M fill


def _fill_entries(rows: int, end: datetime, seed: int = 42) -> Iterator[AuditEntry]:
    """``rows`` entries as the pipeline writes them, over the 30 days before ``end``."""
    rng = random.Random(seed)
    # As the pipeline writes them: a refusal or a read-only command one entry, a command
    # that changes something two (started, finished). Fewer requests than rows is fine:
    # the generator stops at ``rows``.
    requests = int(rows / 1.3) + 1  # 95% allowed, a third of them mutating; 5% denied
    span = timedelta(days=30).total_seconds()
    gap = span / requests
    start = end - timedelta(days=30)
    weights = [1 / (i + 1) ** 0.7 for i in range(len(PRINCIPALS))]
    who = rng.choices(range(len(PRINCIPALS)), weights=weights, k=requests)
    what = rng.choices(FILL_COMMANDS, k=requests)
    made = 0
    for k in itertools.count():
        at = start + timedelta(seconds=k * gap + rng.random() * gap * 0.5)
        p = who[k % requests]
        principal, command = PRINCIPALS[p], what[k % requests]
        platform = PLATFORMS[p % len(PLATFORMS)]
        args: dict[str, Any] = {}
        if command in MUTATING:
            args = {"service": f"svc{k % 17}"}
            if command == "deploy":
                args["version"] = f"1.{k % 40}.{k % 7}"
        raw = f"/{command}" + "".join(f" {key}={value}" for key, value in args.items())
        roll = rng.random()
        common: dict[str, Any] = {
            "request_id": f"{k:012x}",
            "kind": "command",
            "platform": platform,
            "workspace": "T0BENCH" if platform == "slack" else "",
            "channel": CHANNELS[k % len(CHANNELS)],
            "user_id": f"U{p:08d}",
            "principal": principal,
            "command": command,
            "raw_text": raw,
            "args": args,
            "rule": f"policy.commands.{command}",
            "replica": FILL_REPLICA,
        }
        if roll < 0.05:
            stages = [("decided", at, "denied", {"decision": "denied", "error": "not allowed"})]
        else:
            status = "error" if roll < 0.10 else "ok"
            duration = rng.uniform(2, 3000)
            done: dict[str, Any] = {
                "decision": "allowed",
                "duration_ms": round(duration, 3),
                "output_digest": f"{rng.getrandbits(256):064x}",
                "output_excerpt": f"{command}: {status}",
            }
            if status == "error":
                done["error"] = f"ConnectError: svc{k % 17} unreachable"
            finished = ("finished", at + timedelta(milliseconds=duration), status, done)
            if command in MUTATING:
                started = (
                    "started",
                    at + timedelta(microseconds=200),
                    "started",
                    {"decision": "allowed"},
                )
                stages = [started, finished]
            else:
                stages = [finished]
        for stage, stage_at, status, extra in stages:
            if made == rows:
                return
            yield AuditEntry(at=stage_at, stage=stage, status=status, **common, **extra)
            made += 1


def _chained_rows(rows: int, end: datetime, *, sqlite: bool) -> Iterator[tuple[Any, ...]]:
    prev = GENESIS_HASH
    for seq, entry in enumerate(_fill_entries(rows, end), start=1):
        digest = entry_hash(prev, entry, seq)
        yield _row_tuple(seq, prev, digest, entry, sqlite=sqlite)
        prev = digest


def _batches(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class QueryDb:
    url: str
    rows: int
    end: datetime
    fill_s: float | None  # None: from the cache
    note: str


def _sqlite_query_db(rows: int, rebuild: bool) -> QueryDb:
    revision = head_revision()
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    path = CACHE / f"audit-{rows}-rev{revision}-f{FILL_FORMAT}.db"
    meta_path = path.with_suffix(".json")
    url = _sqlite_url(path)
    if path.exists() and meta_path.exists() and not rebuild and _restore_sqlite(path, rows):
        meta = json.loads(meta_path.read_text())
        note = f"cached {path.relative_to(ROOT)} (filled in {meta['fill_s']:.1f} s)"
        return QueryDb(url, rows, datetime.fromisoformat(meta["end"]), None, note)
    for stale in (path, meta_path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    end = datetime.now(UTC).replace(microsecond=0)
    t0 = time.perf_counter()
    asyncio.run(upgrade(url))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'audit_log' AND sql IS NOT NULL"
        ).fetchall()
        conn.execute("BEGIN IMMEDIATE")
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        insert = _insert_sql("qmark")
        last: tuple[Any, ...] = ()
        for batch in _batches(_chained_rows(rows, end, sqlite=True), 50_000):
            conn.executemany(insert, batch)
            last = batch[-1]
        conn.execute("UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = 1", last[:3:2])
        built = time.perf_counter() - t0
        for _, create in indexes:
            conn.execute(create)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # "Now" for the queries is the newest entry, as on a live system.
        (newest,) = conn.execute("SELECT max(at) FROM audit_log").fetchone()
        end = datetime.fromisoformat(newest).replace(tzinfo=UTC)
    finally:
        conn.close()
    fill_s = time.perf_counter() - t0
    meta_path.write_text(json.dumps({"end": end.isoformat(), "fill_s": fill_s, "rows": rows}))
    size = path.stat().st_size / 2**20
    note = (
        f"filled {path.relative_to(ROOT)} in {fill_s:.1f} s ({built:.1f} s entries, hashes and "
        f"inserts, {fill_s - built:.1f} s indexes; {size:.0f} MiB)"
    )
    return QueryDb(url, rows, end, fill_s, note)


def _restore_sqlite(path: Path, rows: int) -> bool:
    """Remove rows added after the fill (by /audit runs) and put the chain head back;
    ``False`` when the file does not hold a complete fill."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        last = conn.execute(
            "SELECT hash FROM audit_log WHERE seq = ? AND replica = ?", (rows, FILL_REPLICA)
        ).fetchone()
        if last is None:
            return False
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM audit_log WHERE seq > ?", (rows,))
        conn.execute("UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = 1", (rows, last[0]))
        conn.execute("COMMIT")
        return True
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


async def _pg_query_db(base: URL, rows: int, rebuild: bool) -> QueryDb:
    name = f"opsbot_bench_query_{head_revision()}_f{FILL_FORMAT}_{rows}".lower()
    url, created = await _pg_database(base, name, fresh=rebuild)
    if not created and not rebuild:
        conn = await _pg_connect(make_url(url))
        try:
            with contextlib.suppress(asyncpg.UndefinedTableError):
                end = await conn.fetchval(
                    "SELECT max(at) FROM audit_log WHERE seq <= $1 AND replica = $2",
                    rows,
                    FILL_REPLICA,
                )
                have = await conn.fetchval("SELECT count(*) FROM audit_log WHERE seq <= $1", rows)
                if end is not None and have == rows:
                    await _restore_pg(conn, rows)
                    return QueryDb(url, rows, end, None, f"cached database {name}")
        finally:
            await conn.close()
        url, _ = await _pg_database(base, name, fresh=True)
    end = datetime.now(UTC).replace(microsecond=0)
    t0 = time.perf_counter()
    await upgrade(url)
    conn = await _pg_connect(make_url(url))
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'audit_log' AND indexname LIKE 'ix_%'"
        )
        async with conn.transaction():
            for index in indexes:
                await conn.execute(f'DROP INDEX "{index["indexname"]}"')
            last: tuple[Any, ...] = ()
            for batch in _batches(_chained_rows(rows, end, sqlite=False), 50_000):
                await conn.copy_records_to_table("audit_log", records=batch, columns=COLUMNS)
                last = batch[-1]
            await conn.execute(
                "UPDATE audit_chain_head SET seq = $1, hash = $2 WHERE id = 1", last[0], last[2]
            )
            built = time.perf_counter() - t0
            for index in indexes:
                await conn.execute(index["indexdef"])
        await conn.execute("ANALYZE audit_log")
        end = await conn.fetchval("SELECT max(at) FROM audit_log")
    finally:
        await conn.close()
    fill_s = time.perf_counter() - t0
    note = (
        f"filled database {name} in {fill_s:.1f} s ({built:.1f} s entries, hashes and COPY, "
        f"{fill_s - built:.1f} s indexes and ANALYZE)"
    )
    return QueryDb(url, rows, end, fill_s, note)


async def _restore_pg(conn: Any, rows: int) -> None:
    async with conn.transaction():
        await conn.execute("DELETE FROM audit_log WHERE seq > $1", rows)
        digest = await conn.fetchval("SELECT hash FROM audit_log WHERE seq = $1", rows)
        await conn.execute(
            "UPDATE audit_chain_head SET seq = $1, hash = $2 WHERE id = 1", rows, digest
        )


# ---------------------------------------------------------------------------- the query


@dataclass
class QueryTimes:
    label: str
    p50_ms: float
    p95_ms: float
    max_ms: float
    rows: float  # mean rows (or reply table lines) returned


async def _time_runs(label: str, one: Callable[[str], Any]) -> QueryTimes:
    for user in PRINCIPALS[:10]:  # warm-up: connection pool, statement caches
        await one(user)
    times: list[float] = []
    returned = 0
    for i in range(QUERY_RUNS):
        user = PRINCIPALS[i % len(PRINCIPALS)]
        t0 = time.perf_counter()
        returned += await one(user)
        times.append(time.perf_counter() - t0)
    times.sort()
    return QueryTimes(
        label,
        statistics.median(times) * 1000,
        times[int(len(times) * 0.95) - 1] * 1000,
        times[-1] * 1000,
        returned / QUERY_RUNS,
    )


async def _query_store(db: QueryDb) -> list[QueryTimes]:
    since = db.end - timedelta(hours=24)
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as spool_dir:
        store = AuditStore(db.url, spool_path=Path(spool_dir) / "spool")
        await store.start()
        try:

            async def plain(user: str) -> int:
                return len(await store.query(user=user, since=since, limit=20))

            async def as_command(user: str) -> int:
                rows = await store.query(
                    user=user, since=since, limit=20, exclude_status=("allowed", "started")
                )
                return len(rows)

            return [
                await _time_runs("store.query(user=X, since=24h, limit=20)", plain),
                await _time_runs("store.query as /audit calls it", as_command),
            ]
        finally:
            await store.close()


async def _query_chat(db: QueryDb) -> QueryTimes:
    async with _running_bot(db.url, clock=ShiftedClock(db.end)) as client:

        async def one(user: str) -> int:
            reply = await client.console.send(f"/audit user={user} since=24h")
            if reply is None or reply.status is not Status.INFO:
                raise RuntimeError(f"unexpected /audit reply: {reply}")
            return len(reply.table.rows) if reply.table is not None else 0

        return await _time_runs("chat `/audit user=X since=24h`", one)


def _sqlite_plan(db: QueryDb) -> str:
    path = make_url(db.url).database or ""
    conn = sqlite3.connect(path)
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM audit_log WHERE principal = ? "
            "AND status NOT IN ('allowed', 'started') AND at >= ? "
            "ORDER BY at DESC, seq DESC LIMIT 20",
            ("user000", "2000-01-01 00:00:00.000000"),
        ).fetchall()
    finally:
        conn.close()
    return "; ".join(row[-1] for row in plan)


async def _pg_plan(db: QueryDb) -> str:
    conn = await _pg_connect(make_url(db.url))
    try:
        rows = await conn.fetch(
            "EXPLAIN SELECT * FROM audit_log WHERE principal = $1 "
            "AND status NOT IN ('allowed', 'started') AND at >= $2 "
            "ORDER BY at DESC, seq DESC LIMIT 20",
            "user000",
            db.end - timedelta(hours=24),
        )
    finally:
        await conn.close()
    nodes = (row[0].split("  (cost=")[0].strip(" ->") for row in rows)
    return " / ".join(node for node in nodes if node and ":" not in node)


def _print_query(backend: str, db: QueryDb, times: list[QueryTimes]) -> None:
    print(f"{backend}: {db.rows:,} entries, {db.note}")
    print(f"  {'':<44}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'rows':>7}")
    for t in times:
        print(f"  {t.label:<44}{t.p50_ms:>9.2f}{t.p95_ms:>9.2f}{t.max_ms:>9.2f}{t.rows:>7.1f}")


async def _verify_query_db(db: QueryDb) -> str:
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as spool_dir:
        store = AuditStore(db.url, spool_path=Path(spool_dir) / "spool")
        await store.start()
        try:
            t0 = time.perf_counter()
            result = await store.verify()
            return f"{result} in {time.perf_counter() - t0:.0f} s"
        finally:
            await store.close()


# ---------------------------------------------------------------------------- main


def _run_throughput(
    backend: str, url: str | None, opts: argparse.Namespace, before: Callable[[], None]
) -> None:
    for text, expect in (("/whoami", "You are alice"), ("/touch", "touched")):
        before()
        r = asyncio.run(_throughput(url, text, expect, opts.n, opts.in_flight, opts.seconds, None))
        risk = "read" if text == "/whoami" else "write"
        _print_throughput(f"{backend} {text} ({risk})", r)
        if opts.profile and url is None:
            # A run of its own: the profiler slows the loop thread down about twofold.
            profiler = cProfile.Profile()
            run = _throughput(url, text, expect, opts.n, opts.in_flight, opts.seconds, profiler)
            slowed = asyncio.run(run)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            PROFILES.append(
                f"cProfile of {backend} {text}, event-loop thread only (the store's "
                f"writer process is not profiled), by tottime; {slowed.per_s:.0f} cmds/s "
                "under the profiler:\n" + out.getvalue()
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="commands per throughput run")
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0, help="cap per throughput run")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("OPSBOT_BENCH_POSTGRES_URL") or None
    )
    parser.add_argument(
        "--postgres-query", action="store_true", help="also fill and query 1M rows on PostgreSQL"
    )
    parser.add_argument("--query-rows", type=int, default=1_000_000)
    parser.add_argument("--rebuild", action="store_true", help="refill the 1M-entry databases")
    parser.add_argument(
        "--verify-query-db", action="store_true", help="walk the 1M-entry chain (slow)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the SQLite throughput runs"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-query", action="store_true")
    opts = parser.parse_args()
    # Before any Bot exists: the pipeline binds its logger when it is built.
    configure_logging("warning", "json", LOG)
    started = time.perf_counter()
    pg = _pg_url(opts.postgres_url) if opts.postgres_url else None
    python = sys.version.split()[0]
    print(
        f"opsbot audit benchmark: Python {python}, SQLite {sqlite3.sqlite_version}, "
        f"schema rev {head_revision()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} (other work on the machine skews every figure)"
    )

    if not opts.skip_throughput:
        print(
            f"\nAudited commands through the full pipeline, {opts.in_flight} in flight, "
            f"N={opts.n} per run (cap {opts.seconds:.0f} s), 1 entry per /whoami, 2 per /touch"
        )
        _print_throughput_header()
        _run_throughput("SQLite", None, opts, lambda: None)
        if pg is not None:
            # A database named opsbot_bench* is the caller's throwaway: used and kept.
            given = (pg.database or "").startswith(PG_THROUGHPUT_DB)
            if given:
                url = pg.render_as_string(hide_password=False)
            else:
                url, _ = asyncio.run(_pg_database(pg, PG_THROUGHPUT_DB))
            try:
                _run_throughput("PostgreSQL", url, opts, lambda: asyncio.run(_pg_empty(url)))
            finally:
                if not given:
                    asyncio.run(_pg_drop(pg, PG_THROUGHPUT_DB))
        else:
            print("PostgreSQL: skipped (no --postgres-url / OPSBOT_BENCH_POSTGRES_URL)")
        print(
            "CPU us/cmd: the bot's process plus, on SQLite, its audit writer process (not the"
            " PostgreSQL server); loop-thread: the event loop's thread alone; writer: the SQLite"
            " writer process alone. no-wait: replies sent before their entry committed."
        )

    if not opts.skip_query:
        chat = "" if HAVE_AUDIT_COMMAND else " (commands/audit.py not found: store.query only)"
        print(f"\n/audit query, {QUERY_RUNS} runs one at a time, X = 200 principals in turn{chat}")
        dbs: list[tuple[str, QueryDb]] = [
            ("SQLite", _sqlite_query_db(opts.query_rows, opts.rebuild))
        ]
        if pg is not None and opts.postgres_query:
            dbs.append(("PostgreSQL", asyncio.run(_pg_query_db(pg, opts.query_rows, opts.rebuild))))
        for backend, db in dbs:
            times = asyncio.run(_query_store(db))
            if HAVE_AUDIT_COMMAND:
                times.append(asyncio.run(_query_chat(db)))
            _print_query(backend, db, times)
            if backend == "SQLite":
                print(f"  plan: {_sqlite_plan(db)}")
                _restore_sqlite(Path(make_url(db.url).database or ""), db.rows)
            else:
                print(f"  plan: {asyncio.run(_pg_plan(db))}")
                asyncio.run(_pg_restore_url(db))
            if opts.verify_query_db:
                print(f"  {asyncio.run(_verify_query_db(db))}")
        if pg is not None and not opts.postgres_query:
            print("PostgreSQL: 1M query skipped (pass --postgres-query)")

    for text in PROFILES:
        print()
        print(text, end="")
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f}")


async def _pg_restore_url(db: QueryDb) -> None:
    conn = await _pg_connect(make_url(db.url))
    try:
        await _restore_pg(conn, db.rows)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
