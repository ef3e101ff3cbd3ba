"""The yardstick of issue 3, measured on this machine: opsdroid 0.31 answering a trivial
skill with 100 messages in flight, no audit at all (the issue quotes about 14,000/s "on
this machine").

    python -m venv /tmp/odvenv && /tmp/odvenv/bin/pip install opsdroid==0.31.0
    /tmp/odvenv/bin/python bench/opsdroid_baseline.py [--n 20000] [--in-flight 100]

opsdroid is not a dependency of opsbot: this runs in a virtualenv of its own. A closed loop
of ``--in-flight`` senders each hands opsdroid a ``Message("whoami")`` (``OpsDroid.parse``,
what a connector calls) and waits for the skill's ``respond``, which reaches a connector
whose ``send`` records the answer; the same shape as bench/audit.py's /whoami run through
opsbot's console adapter. Prints msgs/s, p50/p99 latency and CPU microseconds per message.
"""

from __future__ import annotations

import argparse
import asyncio
import gettext
import logging
import statistics
import time
from typing import Any

gettext.install("opsdroid")  # opsdroid's modules log through a global _(), as its CLI sets

from opsdroid.connector import Connector, register_event  # type: ignore[import-not-found]  # noqa: E402
from opsdroid.core import OpsDroid  # type: ignore[import-not-found]  # noqa: E402
from opsdroid.events import Message  # type: ignore[import-not-found]  # noqa: E402
from opsdroid.matchers import match_regex  # type: ignore[import-not-found]  # noqa: E402


class Replies(Connector):  # type: ignore[misc]
    """A connector that hands each answer to the sender waiting for it."""

    def __init__(self, config: dict[str, Any], opsdroid: Any = None) -> None:
        super().__init__(config, opsdroid=opsdroid)
        self.name = "bench"
        self.waiting: dict[str, asyncio.Future[str]] = {}

    async def connect(self) -> None:
        return None

    async def listen(self) -> None:
        return None

    @register_event(Message)  # type: ignore[misc]
    async def send_message(self, message: Any) -> None:
        self.waiting.pop(message.target).set_result(message.text)


@match_regex(r"^/?whoami$")  # type: ignore[misc]
async def whoami(opsdroid: Any, config: Any, message: Any) -> None:
    await message.respond(f"You are {message.user}")


async def _run(n: int, in_flight: int) -> None:
    with OpsDroid(config={}, loopless=True) as droid:  # respond() finds it as the instance
        droid.eventloop = asyncio.get_running_loop()
        await _measure(droid, n, in_flight)


async def _measure(droid: Any, n: int, in_flight: int) -> None:
    connector = Replies({}, opsdroid=droid)
    droid.connectors = [connector]
    droid.register_skill(whoami, config={"name": "whoami"})
    counter = iter(range(10**9))
    latencies: list[float] = []

    async def one() -> None:
        target = f"t{next(counter)}"
        answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        connector.waiting[target] = answered
        sent = time.perf_counter()
        await droid.parse(Message("whoami", user="alice", target=target, connector=connector))
        text = await answered
        latencies.append(time.perf_counter() - sent)
        assert text == "You are alice", text

    for _ in range(500):  # warm-up
        await one()
    latencies.clear()
    remaining = n

    async def sender() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(in_flight)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies.sort()
    print(
        f"opsdroid 0.31, {in_flight} in flight, no audit: {n / wall:,.0f} msgs/s, "
        f"p50 {statistics.median(latencies) * 1000:.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms, "
        f"CPU {cpu / n * 1e6:.1f} us/msg"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=100)
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_run(opts.n, opts.in_flight))


if __name__ == "__main__":
    main()
