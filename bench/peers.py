"""opsbot beside its peer, opsdroid 0.31, measured in one interleaved run (issue 19).

    .venv/bin/python bench/peers.py [--runs 5] [--quick]

On first use it creates ``bench/.cache/opsdroid-venv`` and installs opsdroid==0.31.0 into
it (opsdroid is not a dependency of opsbot). Then, ``--runs`` times, it starts a fresh
opsdroid child and a fresh opsbot child, alternately (which goes first alternates too),
and each child measures, in order:

- start-up: wall time from just before the parent spawns it to the moment it has the
  answer of its first ``/whoami`` (the child stamps that moment with ``time.time()``);
- peak RSS idle after start: the child's ``VmHWM`` after start-up, the first answer and
  a second of idling. For opsbot this is the bot's process, as for opsdroid; the SQLite
  audit writer (a process of its own) is shown apart, not in the ratio;
- sequential: ``--seq`` commands one after the other: p50 round trip and CPU per command;
- 100 in flight: a closed loop of 100 senders, ``--flight`` commands: commands/s and CPU
  per command.

CPU is user + system time of the child and every process under it (for opsbot, the audit
writer). Machine noise is the CPU the rest of the machine used meanwhile (``/proc/stat``
busy time minus the child tree's), in cores: a noisy run shows there, not as a verdict.

The peers answer the same thing the same way. opsdroid: a ``whoami`` regex skill, no
policy and no audit, messages handed to ``OpsDroid.parse`` as a connector does, answers
caught by the connector's ``send``. opsbot: built as ``opsbot console --no-http`` builds
it (examples/opsbot.toml, policy strict, every command audited in the SQLite log of a
fresh data dir, no metrics kept: there is no /metrics to serve them), the flood budget
raised so one sender is not throttled, ``/whoami`` through the console adapter's
``send``. Both log at INFO (``--log-level``), to a file.

Each peer runs in a virtual environment holding its own runtime dependencies only:
``bench/.cache/opsdroid-venv`` and ``bench/.cache/opsbot-venv`` (``pip install .``, as
the Docker image installs it; the child runs the working tree's code), so neither carries
a development tool's imports. This file is also the children: ``--child opsdroid`` runs
under the opsdroid venv's Python, ``--child opsbot`` under opsbot's; the top of the file
imports the standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
OPSDROID_VENV = CACHE / "opsdroid-venv"
OPSBOT_VENV = CACHE / "opsbot-venv"
OPSDROID_VERSION = "0.31.0"
PACKAGES = ("bot", "commands", "adapters")
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARM_UP = 200
IDLE_S = 1.0

# figure key, label, unit, better ("lower"/"higher"), target ratio opsbot/opsdroid
FIGURES = (
    ("startup_ms", "start-up, fresh process to first answer", "ms", "lower", 0.5),
    ("rss_mib", "peak RSS, idle after start", "MiB", "lower", 0.85),
    ("seq_p50_us", "sequential round trip p50", "us", "lower", 3.0),
    ("seq_cpu_us", "sequential CPU per command", "us", "lower", 2.0),
    ("flight_per_s", "100 in flight, commands/s", "/s", "higher", 1.2),
    ("flight_cpu_us", "100 in flight, CPU per command", "us", "lower", 1.0),
)
NOISE_OF = {
    "startup_ms": "startup_noise",
    "rss_mib": "startup_noise",
    "seq_p50_us": "seq_noise",
    "seq_cpu_us": "seq_noise",
    "flight_per_s": "flight_noise",
    "flight_cpu_us": "flight_noise",
}


# ---------------------------------------------------------------------------- /proc


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (every core), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is inside user already)
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def _tree_cpu(root: int) -> float:
    """User + system CPU seconds of ``root`` and every live process under it (this
    process's own from the clock, not /proc's 10 ms ticks)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    total, frontier = 0.0, {root}
    while frontier:
        total += sum(
            time.process_time() if pid == os.getpid() else stats[pid][1]
            for pid in frontier
            if pid in stats
        )
        frontier = {pid for pid, (ppid, _) in stats.items() if ppid in frontier}
    return total


def _descendants(root: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == root:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _hwm_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------------------- the children


class _Phase:
    """CPU of this process tree and of the rest of the machine over one phase."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = _tree_cpu(os.getpid())
        self.busy = _machine_busy()

    def end(self) -> tuple[float, float, float]:
        """(wall seconds, tree CPU seconds, noise in cores)."""
        wall = time.perf_counter() - self.wall
        cpu = _tree_cpu(os.getpid()) - self.cpu
        other = _machine_busy() - self.busy - cpu
        return wall, cpu, max(0.0, other) / wall


async def _measure(send: Callable[[], Awaitable[None]], opts: argparse.Namespace) -> dict[str, Any]:
    """Runs in a child once its first command is answered: idle, sequential, in flight."""
    result: dict[str, Any] = {}
    await asyncio.sleep(IDLE_S)
    result["rss_mib"] = _hwm_mib()
    result["rss_children_mib"] = sum(_hwm_mib(pid) for pid in _descendants(os.getpid()))
    for _ in range(WARM_UP):
        await send()
    latencies: list[float] = []
    phase = _Phase()
    for _ in range(opts.seq):
        sent = time.perf_counter()
        await send()
        latencies.append(time.perf_counter() - sent)
    _, cpu, result["seq_noise"] = phase.end()
    result["seq_p50_us"] = statistics.median(latencies) * 1e6
    result["seq_cpu_us"] = cpu / opts.seq * 1e6
    remaining = opts.flight

    async def sender() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    phase = _Phase()
    await asyncio.gather(*(sender() for _ in range(opts.in_flight)))
    wall, cpu, result["flight_noise"] = phase.end()
    result["flight_per_s"] = opts.flight / wall
    result["flight_cpu_us"] = cpu / opts.flight * 1e6
    return result


def _first_answer() -> dict[str, Any]:
    """Stamped when the first command is answered: the start-up phase's end."""
    return {
        "answered_at": time.time(),
        "startup_cpu": _tree_cpu(os.getpid()),
        "startup_busy": _machine_busy(),
    }


async def _opsdroid_child(opts: argparse.Namespace) -> dict[str, Any]:
    import gettext

    gettext.install("opsdroid")  # opsdroid's modules log through a global _(), as its CLI sets
    from opsdroid.connector import Connector, register_event  # type: ignore[import-not-found]
    from opsdroid.core import OpsDroid  # type: ignore[import-not-found]
    from opsdroid.events import Message  # type: ignore[import-not-found]
    from opsdroid.matchers import match_regex  # type: ignore[import-not-found]

    class Replies(Connector):  # type: ignore[misc,untyped-decorator,unused-ignore]
        """A connector that hands each answer to the sender waiting for it."""

        def __init__(self, config: dict[str, Any], opsdroid: Any = None) -> None:
            super().__init__(config, opsdroid=opsdroid)
            self.name = "bench"
            self.waiting: dict[str, asyncio.Future[str]] = {}

        async def connect(self) -> None:
            return None

        async def listen(self) -> None:
            return None

        @register_event(Message)  # type: ignore[misc,untyped-decorator,unused-ignore]
        async def send_message(self, message: Any) -> None:
            self.waiting.pop(message.target).set_result(message.text)

    @match_regex(r"^/?whoami$")  # type: ignore[misc,untyped-decorator,unused-ignore]
    async def whoami(opsdroid: Any, config: Any, message: Any) -> None:
        await message.respond(f"You are {message.user}")

    with OpsDroid(config={}, loopless=True) as droid:  # respond() finds it as the instance
        droid.eventloop = asyncio.get_running_loop()
        connector = Replies({}, opsdroid=droid)
        droid.connectors = [connector]
        droid.register_skill(whoami, config={"name": "whoami"})
        counter = iter(range(10**9))

        async def send() -> None:
            target = f"t{next(counter)}"
            answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            connector.waiting[target] = answered
            await droid.parse(Message("whoami", user="alice", target=target, connector=connector))
            if await answered != "You are alice":
                raise RuntimeError("unexpected answer")

        await send()
        first = _first_answer()
        return first | await _measure(send, opts)


async def _opsbot_child(opts: argparse.Namespace) -> dict[str, Any]:
    # As bot/app/cli.py's console builds the bot, with --no-http.
    sys.path.insert(0, str(ROOT))
    from adapters.console.adapter import ConsoleAdapter
    from bot.app.config import parse_config, read_environment
    from bot.app.logs import configure_logging
    from bot.app.runtime import Bot
    from commands import COMMANDS

    path = ROOT / "examples" / "opsbot.toml"
    text = path.read_text("utf-8").replace("max_commands = 15", "max_commands = 10000000")
    env = read_environment(os.environ)
    config = parse_config(text, str(path), env, [spec.name for spec in COMMANDS])
    configure_logging(opts.log_level, config.bot.log_format)
    bot_section = config.bot.model_copy(update={"replica_id": config.bot.replica_id + "-console"})
    config = config.model_copy(update={"bot": bot_section})
    bot = Bot(config, COMMANDS, config_source=str(path), export_metrics=False)
    console = ConsoleAdapter("alice", "ops", bot.clock)
    await bot.start(serve_http=False, defer_scheduled=True)
    await bot.start_on_demand()
    try:
        await console.start(bot.handle)
        bot.outbox.register("console", console.post, console.limits)
        bot.adapters.set("console", "connected")

        async def send() -> None:
            reply = await console.send("/whoami")
            if reply is None or reply.title != "You are alice":
                raise RuntimeError(f"unexpected reply {reply}")

        await send()
        first = _first_answer()
        return first | await _measure(send, opts)
    finally:
        await console.stop()
        await bot.stop()


def _child(opts: argparse.Namespace) -> None:
    if opts.child == "opsdroid":
        logging.basicConfig(level=opts.log_level.upper(), stream=sys.stderr)
        result = asyncio.run(_opsdroid_child(opts))
    else:
        result = asyncio.run(_opsbot_child(opts))
    # stdout carries the result only; logs go to stderr (a file).
    print("PEERS " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- the parent


def _opsdroid_python() -> Path:
    """The opsdroid venv's Python, built on first use from the interpreter running opsbot:
    a distribution's Python (built with PGO/LTO) can be 1.5 times a pyenv build's speed,
    which would be measured as a difference between the peers."""
    python = OPSDROID_VENV / "bin" / "python"
    marker = OPSDROID_VENV / f".opsdroid-{OPSDROID_VERSION}"
    base = str(Path(sys.base_prefix).resolve())
    if not marker.exists() or marker.read_text("utf-8") != base:
        print(f"installing opsdroid {OPSDROID_VERSION} into {OPSDROID_VENV} (first use)...")
        shutil.rmtree(OPSDROID_VENV, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(OPSDROID_VENV)], check=True)
        subprocess.run(
            # opsdroid 0.31's loader imports pkg_resources, which setuptools 81 dropped.
            [
                str(python),
                *("-m", "pip", "install", "-q"),
                *(f"opsdroid=={OPSDROID_VERSION}", "setuptools<81"),
            ],
            check=True,
        )
        marker.write_text(base, "utf-8")
    return python


def _opsbot_python() -> Path:
    """A virtual environment with opsbot's runtime dependencies only, as its Docker image
    has them: the development one also holds the linters' (import-linter pulls in rich,
    which structlog then imports at start-up: 0.1 s and several MiB opsbot never carries
    in production). Rebuilt when pyproject.toml changes. The child imports the working
    tree's code (it puts the repository first on its path), not the installed copy, with
    its bytecode compiled beforehand as an installed package has it."""
    python = OPSBOT_VENV / "bin" / "python"
    marker = OPSBOT_VENV / ".opsbot-deps"
    base = str(Path(sys.base_prefix).resolve())
    stamp = base + " " + hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not marker.exists() or marker.read_text("utf-8") != stamp:
        print(f"installing opsbot's runtime dependencies into {OPSBOT_VENV} (first use)...")
        shutil.rmtree(OPSBOT_VENV, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(OPSBOT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True)
        marker.write_text(stamp, "utf-8")
    # pip compiled the installed copy, as it compiles opsdroid's; the working tree that the
    # child imports gets its bytecode here (a PYTHONDONTWRITEBYTECODE environment would
    # otherwise make every child compile ~150 modules from source: 0.1-0.3 s of start-up
    # that neither a pip install nor the Docker image pays).
    subprocess.run(
        [str(python), "-m", "compileall", "-q", *(str(ROOT / d) for d in PACKAGES)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return python


def _run_child(peer: str, python: Path, opts: argparse.Namespace) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix=f"peers-{peer}-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSBOT_")}
    env["OPSBOT_DATA_DIR"] = data_dir
    args = [
        str(python),
        str(Path(__file__).resolve()),
        "--child",
        peer,
        "--seq",
        str(opts.seq),
        "--flight",
        str(opts.flight),
        "--in-flight",
        str(opts.in_flight),
        "--log-level",
        opts.log_level,
    ]
    log_path = Path(data_dir) / "child.log"
    with open(log_path, "w", encoding="utf-8") as log:
        busy0 = _machine_busy()
        spawned = time.time()
        proc = subprocess.run(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PEERS ")]
    tail = log_path.read_text("utf-8", errors="replace")[-2000:]
    shutil.rmtree(data_dir, ignore_errors=True)
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{peer} child failed ({proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1][len("PEERS ") :])
    startup = result["answered_at"] - spawned
    result["startup_ms"] = startup * 1000
    other = result["startup_busy"] - busy0 - result["startup_cpu"]
    result["startup_noise"] = max(0.0, other) / startup
    return result


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def _table(results: dict[str, list[dict[str, Any]]]) -> bool:
    width = 42
    print()
    print(
        f"{'figure (medians)':<{width}}{'opsdroid':>11}{'opsbot':>11}{'ratio':>8}"
        f"{'target':>9}  {'met':<4}{'noise, cores: droid / bot (max)':>34}"
    )
    every_met = True
    for key, label, unit, better, target in FIGURES:
        droid = statistics.median(r[key] for r in results["opsdroid"])
        ours = statistics.median(r[key] for r in results["opsbot"])
        ratio = ours / droid
        met = ratio <= target if better == "lower" else ratio >= target
        every_met &= met
        noise = NOISE_OF[key]
        noises = " / ".join(
            f"{statistics.median(r[noise] for r in results[p]):.2f}"
            f" ({max(r[noise] for r in results[p]):.2f})"
            for p in ("opsdroid", "opsbot")
        )
        sign = "<=" if better == "lower" else ">="
        print(
            f"{label + ' (' + unit + ')':<{width}}{_fmt(droid):>11}{_fmt(ours):>11}"
            f"{ratio:>8.2f}{sign + ' ' + str(target):>9}  {'yes' if met else 'NO':<4}{noises:>34}"
        )
    writer = statistics.median(r["rss_children_mib"] for r in results["opsbot"])
    print(f"(opsbot's audit writer process, not in the RSS ratio: peak RSS {writer:.1f} MiB)")
    print("every target met" if every_met else "some targets not met")
    return every_met


def _parent(opts: argparse.Namespace) -> int:
    opsdroid_python = _opsdroid_python()
    pythons = {"opsdroid": opsdroid_python, "opsbot": _opsbot_python()}
    print(
        f"peers: {opts.runs} runs each, alternating; sequential {opts.seq}, "
        f"{opts.in_flight} in flight {opts.flight}; log level {opts.log_level}; "
        f"{os.cpu_count()} CPUs"
    )
    results: dict[str, list[dict[str, Any]]] = {"opsdroid": [], "opsbot": []}
    for run in range(opts.runs):
        order = ("opsdroid", "opsbot") if run % 2 == 0 else ("opsbot", "opsdroid")
        for peer in order:
            r = _run_child(peer, pythons[peer], opts)
            results[peer].append(r)
            print(
                f"run {run + 1} {peer:<8} start-up {r['startup_ms']:6.0f} ms  "
                f"RSS {r['rss_mib']:5.1f} MiB  seq p50 {r['seq_p50_us']:6.0f} us "
                f"CPU {r['seq_cpu_us']:6.0f} us  in flight {r['flight_per_s']:7.0f}/s "
                f"CPU {r['flight_cpu_us']:5.0f} us  noise {r['startup_noise']:.2f}/"
                f"{r['seq_noise']:.2f}/{r['flight_noise']:.2f}",
                flush=True,
            )
    return 0 if _table(results) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each peer (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 runs, fewer commands: a smoke run")
    parser.add_argument("--seq", type=int, default=5000, help="sequential commands per run")
    parser.add_argument("--flight", type=int, default=20000, help="commands per in-flight run")
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    parser.add_argument("--child", choices=("opsdroid", "opsbot"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        _child(opts)
        return
    if opts.quick:
        opts.runs, opts.seq, opts.flight = 2, 500, 2000
    sys.exit(_parent(opts))


if __name__ == "__main__":
    main()
