"""Slack adapter benchmark: how fast a slash command is acknowledged, with many in flight.

    .venv/bin/python bench/adapter_slack.py [--n 1000] [--in-flight 50] [--max-seconds 60]
        [--mode socket|http|both] [--repeat 3]

The real bot (strict policy, the embedded SQLite audit log in a temporary data_dir, as
bench/dispatch.py builds it) with the real Slack adapter (slack-bolt) talks to the fake
Slack of tests/fakes/slack_server.py on 127.0.0.1. ``in-flight`` senders each send
``/whoami`` and send the next once the previous one is answered (on its response_url),
so 50 commands are always in flight: being acknowledged, run, or answered.

The fake Slack and the load generator run in a process of their own (Slack is another
machine; in one process the fake's work would queue in the bot's event loop).
Measured per command, by the fake: from sending the envelope (Socket Mode) or the
signed request (HTTP mode) to receiving the acknowledgement (the websocket ack, or the
HTTP 200); and, for information, to receiving the answer on the response_url. Slack
wants the ack within 3 s; the target here is p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.slack.adapter import SlackAdapter  # noqa: E402
from bot.app.config import parse_config  # noqa: E402
from bot.app.logs import configure_logging  # noqa: E402
from bot.app.runtime import Bot  # noqa: E402
from commands import COMMANDS  # noqa: E402
from tests.fakes.slack_server import FakeSlack, sign  # noqa: E402

CONFIG = (
    (ROOT / "examples" / "opsbot.toml")
    .read_text()
    .replace("max_commands = 15", "max_commands = 1000000")
)
TARGET_P99_MS = 100.0
SECRET = "bench-signing-secret"
WARM_UP = 50


async def _drive(
    slack: FakeSlack, mode: str, http_port: int, n: int, in_flight: int, max_seconds: float
) -> dict[str, float]:
    """In the fake's process: send the commands, time each ack and each answer."""
    url = f"http://127.0.0.1:{http_port}/slack/events"
    acks: list[float] = []
    answers: list[float] = []
    async with aiohttp.ClientSession() as http:

        async def one(record: bool) -> None:
            payload = slack.slash_command("/ops", "whoami", user="U0ALICE01")
            if mode == "socket":
                envelope = await slack.send("slash_commands", payload)
                await slack.wait_ack(envelope, within=10)
                sent, acked = slack.sent_at[envelope], slack.acks[envelope][1]
            else:
                body = urlencode(payload).encode()
                headers = {
                    **sign(SECRET, body),
                    "Content-Type": "application/x-www-form-urlencoded",
                }
                sent = time.perf_counter()
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}")
                acked = time.perf_counter()
            # In flight until answered: the next command waits for this answer.
            answer = await slack.wait_answer(payload["response_url"], within=30)
            if "You are alice" not in answer.all_text():
                raise RuntimeError(f"unexpected answer {answer.body}")
            if record:
                acks.append(acked - sent)
                answers.append(answer.at - sent)

        for _ in range(WARM_UP):  # the first auth.test, first-use imports, caches
            await one(record=False)
        deadline = time.perf_counter() + max_seconds
        issued = 0

        async def sender() -> None:
            nonlocal issued
            while issued < n and time.perf_counter() < deadline:
                issued += 1
                await one(record=True)

        wall0 = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(in_flight)))
        wall = time.perf_counter() - wall0
    acks.sort()
    answers.sort()
    return {
        "count": len(acks),
        "per_s": len(acks) / wall,
        "ack_p50": _pct(acks, 0.50),
        "ack_p99": _pct(acks, 0.99),
        "ack_max": acks[-1] * 1000,
        "answer_p50": _pct(answers, 0.50),
        "answer_p99": _pct(answers, 0.99),
    }


def _fake_process(conn: Connection, mode: str, n: int, in_flight: int, seconds: float) -> None:
    """Slack is another machine: the fake and the load run in their own process, so
    their work does not queue in front of the bot's in its event loop."""

    async def serve() -> None:
        async with FakeSlack() as slack:
            conn.send(slack.port)
            http_port = await asyncio.to_thread(conn.recv)
            conn.send(await _drive(slack, mode, http_port, n, in_flight, seconds))
            await asyncio.to_thread(conn.recv)  # the bot has stopped

    asyncio.run(serve())


async def _run(mode: str, n: int, in_flight: int, max_seconds: float) -> dict[str, float]:
    configure_logging("warning", "json", io.StringIO())
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    fake = context.Process(
        target=_fake_process, args=(theirs, mode, n, in_flight, max_seconds), daemon=True
    )
    fake.start()
    try:
        port = await asyncio.to_thread(ours.recv)
        slack = FakeSlack()  # only for its config text; the fake runs in the other process
        slack.port = port
        text = CONFIG + slack.config(mode=mode, signing_secret=SECRET, http_port=0)
        config = parse_config(text, "bench", {}, [s.name for s in COMMANDS])
        data_dir = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
        config = config.model_copy(
            update={"bot": config.bot.model_copy(update={"data_dir": data_dir})}
        )
        bot = Bot(config, COMMANDS)
        adapter = SlackAdapter(config.slack, COMMANDS, bot.clock)
        await bot.start(serve_http=False)
        try:
            await bot.attach([adapter])
            gc.collect()  # as `opsbot run` does once started
            gc.freeze()
            if bot.adapters.states["slack"] != "connected":
                raise RuntimeError(f"slack adapter: {bot.adapters.states['slack']}")
            ours.send(adapter.http_port or 0)
            async with asyncio.timeout(max_seconds + 60):
                result: dict[str, float] = await asyncio.to_thread(ours.recv)
        finally:
            await bot.stop()
            ours.send("stopped")
    finally:
        await asyncio.to_thread(fake.join, 10)
        if fake.is_alive():
            fake.terminate()
    return result


def _pct(sorted_seconds: list[float], q: float) -> float:
    if not sorted_seconds:
        return float("nan")
    if q == 0.5:
        return statistics.median(sorted_seconds) * 1000
    return sorted_seconds[max(0, int(len(sorted_seconds) * q) - 1)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--mode", choices=["socket", "http", "both"], default="both")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per mode; the verdict uses the median p99"
    )
    opts = parser.parse_args()
    python = sys.version.split()[0]
    print(
        f"opsbot Slack adapter benchmark: up to N={opts.n} x /whoami per run, {opts.in_flight} "
        f"in flight, cap {opts.max_seconds:.0f} s per run, {opts.repeat} run(s) per mode, "
        f"Python {python}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'mode':<13}{'cmds':>6}{'cmds/s':>9}{'ack p50':>10}{'ack p99':>10}{'ack max':>10}"
        f"{'answer p50':>12}{'answer p99':>12}   (ms)"
    )
    verdicts: list[str] = []
    modes = ["socket", "http"] if opts.mode == "both" else [opts.mode]
    for mode in modes:
        p99s: list[float] = []
        for _ in range(opts.repeat):
            r: dict[str, Any] = asyncio.run(_run(mode, opts.n, opts.in_flight, opts.max_seconds))
            p99s.append(r["ack_p99"])
            print(
                f"{mode:<13}{r['count']:>6}{r['per_s']:>9.0f}{r['ack_p50']:>10.2f}"
                f"{r['ack_p99']:>10.2f}{r['ack_max']:>10.2f}{r['answer_p50']:>12.2f}"
                f"{r['answer_p99']:>12.2f}"
            )
        median = statistics.median(p99s)
        ok = median < TARGET_P99_MS
        verdicts.append(
            f"{'PASS' if ok else 'FAIL'} {mode}: median ack p99 {median:.1f} ms "
            f"({'<' if ok else '>='} {TARGET_P99_MS:.0f} ms)"
        )
    print("\n".join(verdicts))
    sys.exit(0 if all(v.startswith("PASS") for v in verdicts) else 1)


if __name__ == "__main__":
    main()
