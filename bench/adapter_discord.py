"""Discord adapter benchmark: how fast a slash command is acknowledged.

    .venv/bin/python bench/adapter_discord.py [--n 1000] [--in-flight 50] [--max-seconds 60]
                                              [--no-gc-freeze]

The fake Discord (tests/fakes/discord_server.py) runs in this process and drives the load;
the bot runs in a child process, built as `opsbot run` builds it (examples/opsbot.toml,
policy strict, the embedded SQLite audit log in a temporary data_dir, the flood budget
raised so one benchmark user is not throttled) with the real discord.py adapter connected
to the fake over 127.0.0.1. Two processes, so the fake's own work does not queue behind
the bot's in one event loop and the figures are the bot's.

Measured per command, from the moment the fake writes INTERACTION_CREATE (a /whoami slash
command) on the gateway websocket:
- ack: until the fake receives the interaction callback (the defer). Discord's deadline
  is 3 s; the target here is p99 under 100 ms with 50 commands in flight;
- reply: until the fake receives the followup carrying the rendered reply.
A closed loop: each of the in-flight senders sends its next command once its previous
one is answered. New commands stop at --max-seconds.

The bot process runs ``gc.collect(); gc.freeze()`` once started, as `opsbot run` does;
``--no-gc-freeze`` leaves it out. Without it, the first full garbage collection after
start-up (some 70-100 ms: every object of the imported libraries is scanned) tends to fall
into the measured run and to stall all commands in flight at that moment.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.discord_server import FakeDiscord  # noqa: E402

ALICE = "100000000000000001"  # alice in examples/opsbot.toml
TARGET_P99_MS = 100.0


Rows = list[tuple[str, dict[str, float]]]


async def _against(
    fake: FakeDiscord, config: Path, opts: argparse.Namespace
) -> tuple[Rows, list[str]] | str:
    """Start the bot process, run the loads; the rows and what the bot process reported
    when it stopped, or why it did not start."""
    bot = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-bot",
        str(config),
        *([] if opts.gc_freeze else ["--no-gc-freeze"]),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert bot.stdin is not None
    assert bot.stdout is not None
    rows: Rows = []
    try:
        async with asyncio.timeout(60):
            line = (await bot.stdout.readline()).decode().strip()
        if line != "ready":
            return repr(line)
        for label, n, in_flight in (
            ("warm-up, sequential", min(opts.n, 100), 1),
            ("sequential", min(opts.n, 200), 1),
            (f"{opts.in_flight} in flight", opts.n, opts.in_flight),
        ):
            rows.append((label, await _load(fake, n, in_flight, opts.max_seconds)))
    finally:
        bot.stdin.close()
        async with asyncio.timeout(60):
            rest = (await bot.stdout.read()).decode().split()
        await bot.wait()
    return rows, rest


def _config_text(fake: FakeDiscord, data_dir: Path) -> str:
    text = (ROOT / "examples" / "opsbot.toml").read_text()
    text = text.replace("max_commands = 15", "max_commands = 1000000")
    text = text.replace('name = "opsbot"', f'name = "opsbot"\ndata_dir = "{data_dir}"', 1)
    return text + fake.config()


async def _drive(opts: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-discord-") as work:
        async with FakeDiscord() as fake:
            config = Path(work) / "opsbot.toml"
            config.write_text(_config_text(fake, Path(work) / "data"))
            outcome = await _against(fake, config, opts)
    if isinstance(outcome, str):
        print(f"the bot did not start: {outcome}")
        return 2
    rows, rest = outcome
    bot_cpu_s, bot_rss_mib = float(rest[1]), float(rest[3])
    total = sum(r["count"] for _, r in rows)

    print(
        f"opsbot Discord adapter benchmark: /whoami slash commands, policy strict, "
        f"discord.py, Python {sys.version.split()[0]}, "
        f"gc.freeze after start-up: {'yes' if opts.gc_freeze else 'no'}"
    )
    print(
        f"{'mode':<22}{'commands':>9}{'cmd/s':>8}{'ack p50':>10}{'ack p99':>10}"
        f"{'ack max':>10}{'reply p50':>11}{'reply p99':>11}   (ms)"
    )
    for label, r in rows:
        capped = "  (time cap)" if r["capped"] else ""
        print(
            f"{label:<22}{r['count']:>9}{r['per_s']:>8.0f}{r['ack_p50']:>10.2f}"
            f"{r['ack_p99']:>10.2f}{r['ack_max']:>10.2f}{r['reply_p50']:>11.2f}"
            f"{r['reply_p99']:>11.2f}{capped}"
        )
    print(
        f"bot process: {bot_cpu_s / total * 1e6:.0f} us CPU per command "
        f"(all {total} commands, gateway and REST included), peak RSS {bot_rss_mib:.1f} MiB"
    )
    driver_cpu = sum(r["driver_cpu_s"] for _, r in rows)
    print(
        f"fake Discord and load driver (this process): {driver_cpu / total * 1e6:.0f} us CPU "
        f"per command; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end"
    )
    p99 = rows[-1][1]["ack_p99"]
    verdict = "PASS" if p99 < TARGET_P99_MS else "FAIL"
    print(
        f"{verdict}: ack p99 {p99:.2f} ms with {opts.in_flight} in flight "
        f"(target < {TARGET_P99_MS:.0f} ms; Discord's deadline 3000 ms)"
    )
    return 0 if verdict == "PASS" else 1


async def _load(fake: FakeDiscord, n: int, in_flight: int, max_seconds: float) -> dict[str, float]:
    acks: list[float] = []
    replies: list[float] = []
    deadline = time.perf_counter() + max_seconds
    budget = iter(range(n))
    capped = False

    async def sender() -> None:
        nonlocal capped
        for _ in budget:  # shared: the senders take from one budget of n commands
            if time.perf_counter() > deadline:
                capped = True
                return
            interaction = await fake.slash("whoami", user=ALICE)
            sent = fake.sent_at.pop(interaction["id"])
            ack = await fake.ack_of(interaction)
            reply = await fake.first_followup(interaction)
            if "You are alice" not in reply.text:
                raise RuntimeError(f"unexpected reply {reply.text!r}")
            acks.append(ack.at - sent)
            replies.append(reply.at - sent)

    started, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender() for _ in range(in_flight)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    acks.sort()
    replies.sort()
    return {
        "count": len(acks),
        "per_s": len(acks) / wall,
        "ack_p50": statistics.median(acks) * 1000,
        "ack_p99": _p99(acks) * 1000,
        "ack_max": acks[-1] * 1000,
        "reply_p50": statistics.median(replies) * 1000,
        "reply_p99": _p99(replies) * 1000,
        "capped": capped,
        "driver_cpu_s": cpu,
    }


def _p99(ordered: list[float]) -> float:
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


async def _serve_bot(config_path: Path, text: str, gc_freeze: bool) -> int:
    """The child: the bot with the Discord adapter, until stdin closes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # discord.py imports audioop
        from adapters.discord.adapter import DiscordAdapter
    from bot.app.config import parse_config
    from bot.app.logs import configure_logging
    from bot.app.runtime import Bot
    from commands import COMMANDS

    configure_logging("warning", "json", io.StringIO())
    config = parse_config(text, str(config_path), {}, [s.name for s in COMMANDS])
    bot = Bot(config, COMMANDS)
    await bot.start(serve_http=False)
    try:
        await bot.attach(
            [DiscordAdapter(config.discord, COMMANDS, bot.clock, guild_ready_timeout=0.05)]
        )
        state = bot.adapters.states.get("discord")
        if state != "connected":
            print(f"discord adapter: {state}", flush=True)
            return 1
        if gc_freeze:
            gc.collect()
            gc.freeze()
        print("ready", flush=True)
        cpu0 = time.process_time()
        await asyncio.to_thread(sys.stdin.read)  # until the driver closes our stdin
        cpu = time.process_time() - cpu0
    finally:
        await bot.stop()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"cpu_s {cpu:.6f} rss_mib {rss_mib:.1f}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000, help="commands in the loaded run")
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per run")
    parser.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="skip the gc.collect() and gc.freeze() `opsbot run` does once started",
    )
    parser.add_argument("--serve-bot", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve_bot is not None:
        text = opts.serve_bot.read_text()
        return asyncio.run(_serve_bot(opts.serve_bot, text, opts.gc_freeze))
    return asyncio.run(_drive(opts))


if __name__ == "__main__":
    sys.exit(main())
