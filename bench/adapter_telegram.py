"""Telegram adapter benchmark: how fast a command is acknowledged, with many in flight.

    .venv/bin/python bench/adapter_telegram.py [--n 1000] [--in-flight 50] [--cap 60]

This process runs the real bot (examples/opsbot.toml, a temporary data_dir with the real
SQLite audit log, strict policy, the flood budget raised so one benchmark user is not
throttled) with the real Telegram adapter. A child process runs the fake Bot API of
tests/fakes/telegram_server.py on 127.0.0.1 and the load: ``/whoami`` from alice in a
private chat, ``--in-flight`` at once in a closed loop (each sender sends its next command
once the previous one is both acknowledged and answered, so at most ``--in-flight``
commands are unanswered at any time). The fake has its own process, as Telegram's servers
are not on the bot's CPU; all time stamps come from the child's clock.

Two latencies per command, each from the moment the command reaches the bot:
  ack     what Telegram's protocol takes as the bot having accepted the update, after
          which Telegram stops redelivering it:
            polling  from the fake handing the update out in a getUpdates answer to the
                     fake receiving the bot's next getUpdates whose ``offset`` is past the
                     update's update_id (the offset confirms every update below it);
            webhook  from the webhook POST leaving the client to its HTTP response (a 2xx
                     confirms it; Telegram retries otherwise).
  answer  to the sendMessage replying to the command (the command fully handled: policy,
          audit row in SQLite, rendering, the outbound HTTP call). A reference figure: it
          is bound by the bot's CPU on a small machine, not by the adapter's protocol.
The outbound rate limiter is off for these runs (Telegram's own limits, 30 msg/s overall,
would set the pace); a last run keeps them on, to show they hold.
PASS when the polling and webhook ack p99 are under 100 ms and every command was answered;
the answer rows are printed for reference and do not decide PASS/FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.telegram.adapter import RateLimits, TelegramAdapter  # noqa: E402
from bot.app.config import parse_config  # noqa: E402
from bot.app.logs import configure_logging  # noqa: E402
from bot.app.runtime import Bot  # noqa: E402
from commands import COMMANDS  # noqa: E402
from tests.fakes.telegram_server import TOKEN, Call, FakeTelegram  # noqa: E402

ALICE = 111111111
TARGET_P99_MS = 100.0
SECRET = "bench-secret_1"
WARM_UP = 50
CONFIG = (
    (ROOT / "examples" / "opsbot.toml")
    .read_text()
    .replace("max_commands = 15", "max_commands = 1000000")
)
NO_LIMITS = RateLimits(overall_per_second=0, group_per_minute=0)


# -- the child: fake Bot API and load -----------------------------------------------------


class Recorder:
    """Futures for the commands in flight: the ack (polling: the arrival time of the first
    getUpdates whose offset confirms the update) and the answer (the replying sendMessage).
    ``polls`` keeps (arrival time, offset) of every getUpdates the fake received."""

    def __init__(self) -> None:
        self.answers: dict[int, asyncio.Future[Call]] = {}  # message_id -> sendMessage
        self.acks: dict[int, asyncio.Future[float]] = {}  # update_id -> confirmed at
        self.polls: list[tuple[float, int]] = []

    def on_call(self, call: Call) -> None:
        if call.method == "sendMessage" and call.status == 200 and call.reply_to is not None:
            future = self.answers.pop(call.reply_to, None)
            if future is not None and not future.done():
                future.set_result(call)

    def on_poll(self, at: float, offset: int) -> None:
        self.polls.append((at, offset))
        for update_id in [u for u in self.acks if u < offset]:
            future = self.acks.pop(update_id)
            if not future.done():
                future.set_result(at)

    def expect(
        self, update: dict[str, Any], *, polled: bool = True
    ) -> tuple[asyncio.Future[float], asyncio.Future[Call]]:
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[float] = loop.create_future()
        answered: asyncio.Future[Call] = loop.create_future()
        if polled:  # a webhook update is confirmed by the POST's response instead
            self.acks[update["update_id"]] = acked
        self.answers[update["message"]["message_id"]] = answered
        return acked, answered


class RecordingTelegram(FakeTelegram):
    """The fake Bot API, noting when each getUpdates arrives and its offset (the fake's own
    ``calls`` time a getUpdates when its long poll ends, not when it arrives)."""

    def __init__(self, recorder: Recorder, **kwargs: Any) -> None:
        super().__init__(on_call=recorder.on_call, **kwargs)
        self.recorder = recorder

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.recorder.on_poll(time.perf_counter(), int(params.get("offset") or 0))
        return await super()._get_updates(params)


async def _closed_loop(
    n: int, in_flight: int, cap: float, one: Callable[[bool], Awaitable[None]]
) -> tuple[int, float]:
    """Run ``one`` n times, ``in_flight`` at once; (done, wall seconds), cut at ``cap``."""
    for _ in range(WARM_UP):  # first-use imports, connections
        await one(False)
    done = 0

    async def sender(count: int) -> None:
        nonlocal done
        for _ in range(count):
            await one(True)
            done += 1

    share, extra = divmod(n, in_flight)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(cap):
            await asyncio.gather(*(sender(share + (i < extra)) for i in range(in_flight)))
    except TimeoutError:
        pass
    return done, time.perf_counter() - started


async def _open_loop(
    n: int, rate: float, cap: float, one: Callable[[bool], Awaitable[None]]
) -> tuple[int, float]:
    """Send n commands at ``rate`` per second, whether or not earlier ones were answered."""
    for _ in range(WARM_UP):
        await one(False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(cap):
            for i in range(n):
                await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
                tasks.append(asyncio.ensure_future(one(True)))
            await asyncio.gather(*tasks)
    except TimeoutError:
        for task in tasks:
            task.cancel()
    return sum(1 for t in tasks if t.done() and not t.cancelled()), loop.time() - started


async def _load(
    pipe: Connection, mode: str, n: int, in_flight: int, rate: float | None, cap: float
) -> None:
    recorder = Recorder()
    ack: list[float] = []  # seconds, to the protocol's ack
    answer: list[float] = []  # seconds, to the replying sendMessage
    async with RecordingTelegram(recorder, long_poll=1.0) as tg:
        pipe.send(tg.port)
        webhook_port = await asyncio.to_thread(pipe.recv)  # the bot is connected
        if mode == "polling":

            async def one(measure: bool) -> None:
                update = tg.command("/whoami", user_id=ALICE, queue=False)
                acked, answered = recorder.expect(update)
                tg.queue(update)
                call = await answered
                confirmed = await acked
                if measure:
                    handed = tg.handed_at[update["update_id"]]
                    ack.append(confirmed - handed)
                    answer.append(call.at - handed)

            if rate is None:
                done, wall = await _closed_loop(n, in_flight, cap, one)
            else:
                done, wall = await _open_loop(n, rate, cap, one)
        else:
            url = f"http://127.0.0.1:{webhook_port}/telegram"
            headers = {
                "Content-Type": "application/json",
                "X-Telegram-Bot-Api-Secret-Token": SECRET,
            }
            connector = aiohttp.TCPConnector(limit=in_flight)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one(measure: bool) -> None:
                    update = tg.command("/whoami", user_id=ALICE, queue=False)
                    _, answered = recorder.expect(update, polled=False)
                    sent = time.perf_counter()
                    async with session.post(url, json=update, headers=headers) as response:
                        await response.read()
                        responded = time.perf_counter()
                    if response.status != 200:
                        raise RuntimeError(f"the webhook answered {response.status}")
                    call = await answered
                    if measure:
                        ack.append(responded - sent)
                        answer.append(call.at - sent)

                done, wall = await _closed_loop(n, in_flight, cap, one)
    pipe.send({"done": done, "wall": wall, "ack": _stats(ack), "answer": _stats(answer)})


def _child(
    pipe: Connection, mode: str, n: int, in_flight: int, rate: float | None, cap: float
) -> None:
    asyncio.run(_load(pipe, mode, n, in_flight, rate, cap))


# -- this process: the bot ----------------------------------------------------------------


async def _serve_bot(pipe: Connection, mode: str, limits: RateLimits) -> dict[str, Any]:
    api_port = pipe.recv()
    webhook_port = _free_port()
    api = f"http://127.0.0.1:{api_port}"
    text = CONFIG + (
        f'\n[telegram]\nmode = "{mode}"\ntoken = "{TOKEN}"\napi_url = "{api}/bot"\n'
        f'file_url = "{api}/file/bot"\nwebhook_url = "https://bot.example.org/telegram"\n'
        f'webhook_secret = "{SECRET}"\nwebhook_port = {webhook_port}\n'
    )
    config = parse_config(text, "bench", {}, [s.name for s in COMMANDS])
    data_dir = Path(tempfile.mkdtemp(prefix="opsbot-bench-"))
    config = config.model_copy(update={"bot": config.bot.model_copy(update={"data_dir": data_dir})})
    bot = Bot(config, COMMANDS)
    await bot.start(serve_http=False)
    cpu = time.process_time()
    try:
        await bot.attach([TelegramAdapter(config.telegram, COMMANDS, bot.clock, limits=limits)])
        gc.collect()  # as `opsbot run` does once started
        gc.freeze()
        if bot.adapters.states["telegram"] != "connected":
            raise RuntimeError(f"the adapter did not start: {bot.adapters.states['telegram']}")
        pipe.send(webhook_port)
        result: dict[str, Any] = await asyncio.to_thread(pipe.recv)  # the load is done
    finally:
        await bot.stop()
    result["cpu_s"] = time.process_time() - cpu
    return result


def run(
    mode: str,
    n: int,
    in_flight: int,
    cap: float,
    limits: RateLimits,
    rate: float | None = None,
) -> dict[str, Any]:
    """One run: ``in_flight`` senders in a closed loop, or arrivals at ``rate`` per s."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=_child, args=(theirs, mode, n, in_flight, rate, cap), daemon=True
    )
    child.start()
    try:
        return asyncio.run(_serve_bot(ours, mode, limits))
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()


def _stats(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    latencies = sorted(latencies)
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100.0, help="commands/s of the open-loop run")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per run at most")
    opts = parser.parse_args()
    n = max(1, min(opts.n, 100_000))
    configure_logging("warning", "json", io.StringIO())
    print(
        f"opsbot Telegram adapter benchmark: N={n} x /whoami, {opts.in_flight} in flight "
        f"(closed loop), policy strict, SQLite audit, Python {sys.version.split()[0]}"
    )
    print(
        f"{'run: latency measured':<62}{'done':>6}{'cmd/s':>7}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU ms':>8}"
    )

    def row(label: str, r: dict[str, Any], which: str, count: int) -> None:
        rate = r["done"] / r["wall"] if r["wall"] else 0.0
        cpu = r["cpu_s"] * 1000 / max(1, r["done"] + WARM_UP)
        stats = r[which]
        print(
            f"{label:<62}{r['done']:>6}{rate:>7.0f}{stats['p50_ms']:>9.1f}"
            f"{stats['p99_ms']:>9.1f}{cpu:>8.2f}"
            + ("" if r["done"] == count else f"  (cut at {opts.cap:.0f} s)")
        )

    poll = run("polling", n, opts.in_flight, opts.cap, NO_LIMITS)
    row("polling ACK: hand-out -> getUpdates with offset > update_id", poll, "ack", n)
    row("polling answer: hand-out -> replying sendMessage (reference)", poll, "answer", n)
    hook = run("webhook", n, opts.in_flight, opts.cap, NO_LIMITS)
    row("webhook ACK: POST -> HTTP response", hook, "ack", n)
    row("webhook answer: POST -> replying sendMessage (reference)", hook, "answer", n)
    paced_n = min(n, 500)
    paced = run("polling", paced_n, opts.in_flight, opts.cap, NO_LIMITS, rate=opts.rate)
    arriving = f"{opts.rate:.0f} commands/s arriving (open loop)"
    row(f"polling ACK, {arriving}", paced, "ack", paced_n)
    row(f"polling answer, {arriving}", paced, "answer", paced_n)
    limited_n = min(n, 150)
    limited = run("polling", limited_n, opts.in_flight, opts.cap, RateLimits())
    row("polling ACK, Telegram's 30 msg/s limit on (reference)", limited, "ack", limited_n)
    row("polling answer, Telegram's 30 msg/s limit on (reference)", limited, "answer", limited_n)
    print(
        "ACK: Telegram's own acknowledgement of an update (polling: the next getUpdates whose\n"
        "  offset confirms it; webhook: the 2xx response to the POST); Telegram stops\n"
        "  redelivering the update then. PASS/FAIL is decided on the ACK rows.\n"
        "answer: to the sendMessage replying to the command (fully handled); reference only.\n"
        "CPU ms: the bot process's CPU time per command (bot, adapter, PTB, HTTP client)"
    )

    ok = (
        poll["done"] == n
        and hook["done"] == n
        and poll["ack"]["p99_ms"] < TARGET_P99_MS
        and hook["ack"]["p99_ms"] < TARGET_P99_MS
    )
    print(
        f"{'PASS' if ok else 'FAIL'}: ack p99 polling {poll['ack']['p99_ms']:.1f} ms, webhook "
        f"{hook['ack']['p99_ms']:.1f} ms (target < {TARGET_P99_MS:.0f} ms with "
        f"{opts.in_flight} in flight, every command answered); answer p99 (reference) "
        f"polling {poll['answer']['p99_ms']:.1f} ms, webhook {hook['answer']['p99_ms']:.1f} ms"
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
