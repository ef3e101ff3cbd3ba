"""Dispatch benchmark: N trivial commands through the real pipeline via the console
adapter's programmatic entry, sequentially and with many in flight.

    .venv/bin/python bench/dispatch.py [--n 2000] [--in-flight 100]

Prints msgs/s, p50/p99 latency, CPU microseconds per command, peak RSS and the
start-up-to-first-reply time of a fresh ``opsbot console -c /whoami`` process.
Policy is strict and every command is authorized, flood-checked, audited (the
embedded SQLite audit log in a temporary data_dir, as `opsbot console` runs),
counted in metrics and logged; the flood budget is raised so one benchmark user
is not throttled. bench/audit.py looks at the audit log's share in detail.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.console.adapter import ConsoleAdapter  # noqa: E402
from bot.app.config import parse_config  # noqa: E402
from bot.app.logs import configure_logging  # noqa: E402
from bot.app.runtime import Bot  # noqa: E402
from commands import COMMANDS  # noqa: E402

CONFIG = (
    (ROOT / "examples" / "opsbot.toml")
    .read_text()
    .replace("max_commands = 15", "max_commands = 1000000")
)


async def _run(n: int, in_flight: int, log_level: str) -> dict[str, float]:
    configure_logging(log_level, "json", io.StringIO() if log_level != "warning" else sys.stderr)
    config = parse_config(CONFIG, "bench", {}, [s.name for s in COMMANDS])
    data_dir = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
    config = config.model_copy(update={"bot": config.bot.model_copy(update={"data_dir": data_dir})})
    bot = Bot(config, COMMANDS)
    console = ConsoleAdapter("alice", "ops", bot.clock)
    await bot.start(serve_http=False)
    await console.start(bot.handle)
    try:
        for _ in range(200):  # warm-up: caches, first-use imports
            await console.send("/whoami")
        latencies: list[float] = []

        async def one(submitted: float) -> None:
            # Latency counts from submission, so time spent queued behind others shows.
            reply = await console.send("/whoami")
            latencies.append(time.perf_counter() - submitted)
            if reply is None or reply.title != "You are alice":
                raise RuntimeError(f"unexpected reply {reply}")

        cpu0, wall0 = time.process_time(), time.perf_counter()
        if in_flight <= 1:
            for _ in range(n):
                await one(time.perf_counter())
        else:
            # A closed loop: `in_flight` senders, each sending its next command as soon as
            # the previous one is answered, as concurrent chat users would.
            async def sender(count: int) -> None:
                for _ in range(count):
                    await one(time.perf_counter())

            share, extra = divmod(n, in_flight)
            await asyncio.gather(*(sender(share + (i < extra)) for i in range(in_flight)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await console.stop()
        await bot.stop()
    latencies.sort()
    return {
        "msgs_per_s": n / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_us": cpu / n * 1e6,
    }


def _startup(args: list[str], runs: int = 7) -> float:
    """Median time from process launch until the reply's first line is printed."""
    times = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSBOT_")}
    env["OPSBOT_DATA_DIR"] = tempfile.mkdtemp(prefix="opsbot-bench-")
    command = [
        sys.executable,
        "-m",
        "bot",
        "console",
        "--config",
        str(ROOT / "examples" / "opsbot.toml"),
    ]
    for _ in range(runs):
        started = time.perf_counter()
        with subprocess.Popen(
            [*command, "-c", "/whoami", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            times.append(time.perf_counter() - started)
            proc.communicate()
        if "You are alice" not in first:
            raise RuntimeError(f"unexpected first line {first!r}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=100)
    opts = parser.parse_args()
    python = sys.version.split()[0]
    print(f"opsbot dispatch benchmark: N={opts.n} x /whoami, policy strict, Python {python}")
    print(f"{'mode':<38}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/cmd':>12}")
    for log_level, label in (
        ("warning", "console default logging"),
        ("info", "info JSON log per command"),
    ):
        for in_flight in (1, opts.in_flight):
            r = asyncio.run(_run(opts.n, in_flight, log_level))
            mode = f"{'sequential' if in_flight == 1 else f'{in_flight} in flight'}, {label}"
            print(
                f"{mode:<38}{r['msgs_per_s']:>10.0f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['cpu_us']:>12.1f}"
            )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS of this process: {peak_kib / 1024:.1f} MiB")
    print(
        f"start-up to first reply, `opsbot console -c /whoami --no-http` (median of 7): "
        f"{_startup(['--no-http']) * 1000:.0f} ms"
    )
    print(
        f"start-up to first reply, `opsbot console -c /whoami` with HTTP server (median of 7): "
        f"{_startup([]) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
