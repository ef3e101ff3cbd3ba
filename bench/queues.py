"""/queue benchmark: the whole chat command over 20 Redis stream queues on a local Redis.

    .venv/bin/python bench/queues.py [--redis-url redis://127.0.0.1:6379/0] [--runs 200]
                                    [--queues 20] [--blackhole-timeout 0.25]

Without ``--redis-url`` (or ``OPSBOT_BENCH_REDIS_URL``) it starts its own throwaway
``redis-server`` on a free port (no persistence) and stops it at the end.

Prints p50/p95/max of:

1. ``/queue`` over N configured queues, all healthy, one at a time through the full bot
   (console adapter, strict policy, flood check, audit log on SQLite, rendering), and
   ``inspect_queues`` alone (the Redis part). Target: p95 under 50 ms.
2. The same with one of the N on a blackhole (a TCP listener that accepts connections and
   never answers) whose queue has a short timeout. Target: max under that timeout + 50 ms,
   and the other queues still reported.

Each queue is a stream of 200 entries with a consumer group, 3 consumers and some entries
pending, as a worker pool leaves it; the keys get a unique prefix and are deleted
afterwards. Every reply is checked, so a fast wrong answer fails the run. Logging is at
warning, as ``opsbot console`` logs by default.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the standard library's ``queue``, which asyncio and redis
# import: take its own directory off the path Python put first, before anything imports it.
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Awaitable, Callable, Iterator  # noqa: E402

import redis.asyncio as aioredis  # noqa: E402

from adapters.console.adapter import ConsoleAdapter  # noqa: E402
from bot.app.config import parse_config  # noqa: E402
from bot.app.logs import configure_logging  # noqa: E402
from bot.app.runtime import Bot  # noqa: E402
from bot.cluster.redis_clients import RedisClients  # noqa: E402
from bot.features.queues.config import QueueConfig  # noqa: E402
from bot.features.queues.inspect import inspect_queues  # noqa: E402
from commands import COMMANDS  # noqa: E402

TARGET_P95_MS = 50.0
BLACKHOLE_MARGIN_MS = 50.0
PHASE_LIMIT_S = 300.0  # a hung phase ends the benchmark instead of holding the machine

BASE = """
[bot]
name = "opsbot"
log_level = "warning"

[http]
enabled = false

[flood]
max_commands = 1000000

[roles.oncall]

[identities.alice]
roles = ["oncall"]
ids = ["console:alice"]

[channels.ops]
ids = ["console:ops"]

[policy]
admin_roles = ["oncall"]

[policy.commands.queue]
roles = ["oncall"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def _own_redis() -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("bench/queues.py: redis-server is not on PATH; pass --redis-url")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-redis-") as work:
        proc = subprocess.Popen(
            [
                *(server, "--bind", "127.0.0.1", "--port", str(port), "--save", ""),
                *("--appendonly", "no", "--dir", work, "--logfile", f"{work}/redis.log"),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"bench/queues.py: redis-server did not start on port {port}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _blackhole() -> Iterator[int]:
    """Accepts connections and never answers, in its own thread so the bot's loop does
    not pay for it."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


async def _fill(client: aioredis.Redis, streams: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        for i in range(200):
            pipe.xadd(stream, {"job": str(i)})
        pipe.xgroup_create(stream, "workers", id="0")
    await pipe.execute()
    for stream in streams:
        for consumer, count in (("w-1", 30), ("w-2", 20), ("w-3", 10)):
            await client.xreadgroup("workers", consumer, {stream: ">"}, count=count)


def _queue_toml(name: str, url: str, stream: str, timeout: str = "1s") -> str:
    return (
        f'[[queues]]\nname = "{name}"\nredis_url = "{url}"\nstream = "{stream}"\n'
        f'group = "workers"\ntimeout = "{timeout}"\n'
        # The fill is 200 entries with 140 not yet read: above the default warn levels.
        "thresholds = { length = { warn = 1000, critical = 5000 }, "
        "lag = { warn = 1000, critical = 5000 } }\n"
    )


async def _timed(runs: int, once: Callable[[], Awaitable[None]]) -> list[float]:
    latencies: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        await once()
        latencies.append((time.perf_counter() - started) * 1000)
    return sorted(latencies)


def _figures(latencies: list[float]) -> str:
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)]
    return (
        f"p50 {statistics.median(latencies):7.2f} ms  p95 {p95:7.2f} ms  "
        f"max {latencies[-1]:7.2f} ms  ({len(latencies)} runs)"
    )


async def _phase(config_text: str, runs: int, expect_title: str) -> tuple[list[float], float]:
    config = parse_config(config_text, "bench", {}, [s.name for s in COMMANDS])
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as data_dir:
        config = config.model_copy(
            update={"bot": config.bot.model_copy(update={"data_dir": Path(data_dir)})}
        )
        bot = Bot(config, COMMANDS)
        console = ConsoleAdapter("alice", "ops", bot.clock)
        await bot.start(serve_http=False)
        await console.start(bot.handle)
        try:

            async def once() -> None:
                reply = await console.send("/queue")
                if reply is None or reply.title != expect_title:
                    raise RuntimeError(f"unexpected reply: {reply}")

            for _ in range(min(20, runs)):  # warm-up: connections, first-use imports
                await once()
            cpu0 = time.process_time()
            latencies = await _timed(runs, once)
            cpu_ms = (time.process_time() - cpu0) / runs * 1000
        finally:
            await console.stop()
            await bot.stop()
    return latencies, cpu_ms


async def _run(url: str, runs: int, count: int, hole_timeout: float) -> bool:
    configure_logging("warning", "json", sys.stderr)
    prefix = f"opsbot-bench:{uuid.uuid4().hex[:8]}:"
    streams = [f"{prefix}q{i:02d}" for i in range(count)]
    client = aioredis.Redis.from_url(url, decode_responses=True)
    ok = True
    try:
        await _fill(client, streams)
        names = [f"q{i:02d}" for i in range(count)]
        healthy = BASE + "".join(
            _queue_toml(n, url, s) for n, s in zip(names, streams, strict=True)
        )

        async with asyncio.timeout(PHASE_LIMIT_S):
            clients = RedisClients()
            queues = parse_config(healthy, "bench", {}, [s.name for s in COMMANDS]).queues
            try:
                await inspect_queues(clients, queues)
                direct = await _timed(runs, lambda: _inspect_only(clients, queues))
            finally:
                await clients.close()
            full, cpu_ms = await _phase(healthy, runs, f"{count} queues: {count} ok")
        p95 = full[max(0, int(len(full) * 0.95) - 1)]
        verdict = "PASS" if p95 < TARGET_P95_MS else "FAIL"
        ok &= p95 < TARGET_P95_MS
        print(f"1. {count} healthy queues, one /queue at a time")
        print(f"   inspect_queues alone     {_figures(direct)}")
        print(f"   /queue through the bot   {_figures(full)}  CPU {cpu_ms:.2f} ms/run")
        print(f"   target: p95 < {TARGET_P95_MS:.0f} ms  -> {verdict}")

        hole_runs = max(5, min(runs, int(20 / hole_timeout)))  # about 20 s at most
        with _blackhole() as port:
            text = BASE + "".join(
                _queue_toml(n, url, s)
                if i
                else _queue_toml(n, f"redis://127.0.0.1:{port}/0", s, f"{hole_timeout:g}s")
                for i, (n, s) in enumerate(zip(names, streams, strict=True))
            )
            async with asyncio.timeout(PHASE_LIMIT_S):
                blocked, _ = await _phase(
                    text, hole_runs, f"{count} queues: 1 error, {count - 1} ok"
                )
        limit = hole_timeout * 1000 + BLACKHOLE_MARGIN_MS
        print(f"2. the same with {names[0]} on a blackhole, timeout {hole_timeout:g}s")
        print(f"   /queue through the bot   {_figures(blocked)}")
        verdict = "PASS" if blocked[-1] < limit else "FAIL"
        margin = f"timeout + {BLACKHOLE_MARGIN_MS:.0f} ms"
        print(f"   target: max < {margin} = {limit:.0f} ms  -> {verdict}")
        ok &= blocked[-1] < limit
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return ok


async def _inspect_only(clients: RedisClients, queues: list[QueueConfig]) -> None:
    reports = await inspect_queues(clients, queues)
    if any(r.severity for r in reports):
        raise RuntimeError(f"unexpected report: {reports}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default=os.environ.get("OPSBOT_BENCH_REDIS_URL"))
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--blackhole-timeout", type=float, default=0.25)
    opts = parser.parse_args()
    python = sys.version.split()[0]
    with contextlib.ExitStack() as stack:
        url = opts.redis_url or stack.enter_context(_own_redis())
        where = "given" if opts.redis_url else "own redis-server"
        print(
            f"opsbot /queue benchmark: {opts.queues} queues on {url} ({where}), "
            f"Python {python}, load average {os.getloadavg()[0]:.2f}"
        )
        ok = asyncio.run(_run(url, opts.runs, opts.queues, opts.blackhole_timeout))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
