"""What this machine allows the audited pipeline: the two halves of bench/audit.py's
SQLite figure measured apart, and the throughput they cap it at.

    .venv/bin/python bench/audit_ceiling.py [--n 20000] [--entries 60000] [--batch 300]

1. **The pipeline without its audit store.** bench/audit.py's /whoami run (the console
   adapter, 100 in flight, strict policy, the same config), except that the store's queue
   answers every entry at once and writes nothing. This is an experiment, not a mode of
   the bot: it patches one method of the running store. CPU microseconds per command
   (the whole process) and commands/s.
2. **The audit writer's work alone.** The SQLite writer process's own insert code
   (``bot.audit.sqlite_writer.Inserter``), called in this process, with no pipe and no
   pickling: entries shaped like the pipeline's (bench/audit.py's fill), ``--batch`` per
   transaction (300 is 100 commands' worth, more than the bot's frames hold, so this is a
   best case), into a freshly migrated database. Split into the Python part (the canonical
   form, the hash, the row tuples: ``linked_rows``) and the whole insert, with the
   schema's five indexes and with none of them.
3. **The ceiling:** CPUs x 1,000,000 / (1 + 2) commands per second. That is both cores
   busy all the time, with no cost for passing entries between the processes and none for
   two busy processes slowing each other down (both are real: see bench/audit.py's
   figures), so no design that does this work on this machine can go faster.

The issue's 15,000 audited commands/s on 2 CPUs leaves 133 CPU microseconds per command
for everything.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.app.logs import configure_logging  # noqa: E402
from bot.audit.chain import GENESIS_HASH  # noqa: E402
from bot.audit.rows import linked_rows  # noqa: E402
from bot.audit.sqlite_writer import Inserter  # noqa: E402
from bot.storage.migrate import upgrade  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_audit", ROOT / "bench" / "audit.py")
assert _spec is not None
assert _spec.loader is not None
bench_audit: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_audit"] = bench_audit
_spec.loader.exec_module(bench_audit)

INDEXES = (
    "ix_audit_log_principal_at",
    "ix_audit_log_command_at",
    "ix_audit_log_status_at",
    "ix_audit_log_at",
    "ix_audit_log_request_id",
)
TARGET_PER_S = 15_000


async def _pipeline_without_store(n: int, in_flight: int) -> tuple[float, float]:
    """(commands/s, CPU µs per command) of /whoami with the store's queue answering at once."""
    async with bench_audit._running_bot(None) as client:
        store = client.bot.audit.store

        async def answered_at_once(item: Any) -> None:
            if item.done is not None and not item.done.done():
                item.done.set_result(None)

        store._enqueue = answered_at_once
        console = client.console
        for _ in range(500):
            await console.send("/whoami")
        remaining = n

        async def sender() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                reply = await console.send("/whoami")
                if reply is None or reply.title != "You are alice":
                    raise RuntimeError(f"unexpected reply: {reply}")

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(in_flight)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


def _fresh_database(directory: Path, name: str, drop: tuple[str, ...]) -> str:
    path = directory / name
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
    with sqlite3.connect(path) as conn:
        for index in drop:
            conn.execute(f"DROP INDEX {index}")
    return str(path)


def _writer_alone(entries: list[tuple[Any, ...]], batch: int) -> dict[str, float]:
    """CPU µs per command (3 entries) of the writer's parts."""
    per_command = 3 / len(entries) * 1e6
    out: dict[str, float] = {}
    cpu = time.process_time()
    seq, prev = 0, GENESIS_HASH
    for i in range(0, len(entries), batch):
        _, seq, prev = linked_rows(seq, prev, entries[i : i + batch], sqlite=True)
    out["python"] = (time.process_time() - cpu) * per_command
    with tempfile.TemporaryDirectory(prefix="opsbot-ceiling-") as directory:
        for label, drop in (("indexed", ()), ("unindexed", INDEXES)):
            inserter = Inserter(_fresh_database(Path(directory), f"{label}.db", drop))
            cpu = time.process_time()
            for i in range(0, len(entries), batch):
                answer = inserter.insert(entries[i : i + batch])
                if answer[0] != "ok":
                    raise RuntimeError(f"insert failed: {answer}")
            out[label] = (time.process_time() - cpu) * per_command
            inserter.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="commands through the pipeline")
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--entries", type=int, default=60_000, help="entries for the writer")
    parser.add_argument("--batch", type=int, default=300, help="entries per transaction")
    opts = parser.parse_args()
    configure_logging("warning", "json", bench_audit.LOG)
    cpus = os.cpu_count() or 1
    print(
        f"opsbot audit ceiling: Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
        f"{cpus} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    per_s, pipeline_us = asyncio.run(_pipeline_without_store(opts.n, opts.in_flight))
    print(
        f"1. pipeline without the audit store (/whoami, {opts.in_flight} in flight, "
        f"N={opts.n}): {per_s:,.0f} cmds/s, {pipeline_us:.1f} CPU us/cmd"
    )
    entries = [e.values() for e in bench_audit._fill_entries(opts.entries, datetime.now(UTC))]
    writer = _writer_alone(entries, opts.batch)
    print(
        f"2. the audit writer's work alone, 3 entries per command, {opts.batch} per transaction:"
        f" {writer['indexed']:.1f} CPU us/cmd with the schema's {len(INDEXES)} indexes"
        f" (Python rows and hashes {writer['python']:.1f}, the rest SQLite);"
        f" {writer['unindexed']:.1f} with no index"
    )
    ceilings = (("as built", writer["indexed"]), ("with no index", writer["unindexed"]))
    for label, writer_us in ceilings:
        total = pipeline_us + writer_us
        print(
            f"3. ceiling {label}: {cpus} x 1e6 / ({pipeline_us:.1f} + {writer_us:.1f}) = "
            f"{cpus * 1e6 / total:,.0f} audited cmds/s"
        )
    print(
        f"   {TARGET_PER_S:,}/s on {cpus} CPUs leaves {cpus * 1e6 / TARGET_PER_S:.0f} CPU us "
        "per command for both halves together"
    )


if __name__ == "__main__":
    main()
