"""Two real ``opsbot run`` processes on one Redis and one PostgreSQL, both connected to one
fake Telegram (tests/fakes/telegram_server.py, in this process): a heartbeat scheduled every
minute is posted once per minute, by the lease holder; when that process is killed (-9, no
release) the other takes the lease and posts the next one.

Slow by nature (cron has minute resolution): about two minutes. The config refuses a
heartbeat more often than every 5 minutes, cron lines included, so each process is
``opsbot run`` with that one constant lowered (see ``_LAUNCH``); everything else is the
command as an operator runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from bot.audit import upgrade
from tests.auditlog_helpers import pg_database
from tests.fakes.telegram_server import Call, FakeTelegram
from tests.infra import redis_url
from tests.processes import ROOT, clean_env

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(240)]

OPS = -1001000000001
# Short, so a takeover is quick, yet a renewal may be late by 3 s on a busy machine.
LEASE, RENEW = "5s", "1s"
# A Redis database of its own: the lease key (opsbot:leader) is fixed, and a lease left
# behind by another test's bot in database 0 would hold ours off for up to 15 s.
REDIS_DB = 13
MARGIN = 4.0  # seconds: closer to a minute boundary than this, wait for the next one
FIRST_WITHIN = 15.0  # seconds after the boundary for the heartbeat to reach Telegram
QUIET = 5.0  # then this long without a second one
SLACK = 0.5  # seconds: a heartbeat this long before its boundary counts (clock rounding)
START_WITHIN = 60.0  # both processes started (imports on a busy 2-core machine are slow)

_LAUNCH = """
import sys
from datetime import timedelta

import bot.features.heartbeats.config

# The test cannot wait 5 minutes between heartbeats: allow one a minute.
bot.features.heartbeats.config.MIN_INTERVAL = timedelta(minutes=1)

from bot.app.cli import main

sys.exit(main())
"""


def replica_config(
    replica: str, *, data_dir: Path, database_url: str, redis: str, tg: FakeTelegram
) -> str:
    return f"""
[bot]
name = "opsbot"
replica_id = "{replica}"
data_dir = "{data_dir}"
log_format = "json"

[http]
enabled = false

[roles.admin]

[channels.ops]
ids = ["telegram:{OPS}"]

[[heartbeat]]
name = "ops"
channels = ["ops"]
cron = "* * * * *"

[state]
redis_url = "{redis}"
leader_lease = "{LEASE}"
leader_renew_every = "{RENEW}"

[audit]
database_url = "{database_url}"
""" + tg.config(set_commands_on_start=False)


@dataclass
class Replica:
    """One ``opsbot run`` process; its log (JSON lines on stderr) goes to a file."""

    name: str
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    async def start(self, config: Path) -> None:
        self._log = self.log_path.open("wb")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LAUNCH,
            "run",
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._log,
            cwd=ROOT,
            env=clean_env(),
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def events(self, *names: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") in names:
                    found.append(event)
        return found

    @property
    def started(self) -> bool:
        return bool(self.events("opsbot.started"))

    @property
    def leading(self) -> bool:
        """What its log says: the last leadership change was an acquisition."""
        changes = self.events("leader.acquired", "leader.lost", "leader.stood_down")
        return bool(changes) and changes[-1]["event"] == "leader.acquired"

    def posted_since(self, since: float) -> int:
        """Heartbeats it composed and queued for every destination from ``since`` (epoch)."""
        return sum(
            datetime.fromisoformat(event["timestamp"]).timestamp() >= since
            for event in self.events("heartbeat.posted")
        )

    def tail(self, lines: int = 25) -> str:
        if not self.log_path.exists():
            return "(no output)"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        code = "running" if self.running else f"exit {self.process and self.process.returncode}"
        return f"--- {self.name} ({code}), last {len(text)} log lines ---\n" + "\n".join(text)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM (a graceful stop releases the lease), SIGKILL if that takes too long."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                await self.kill()
        if self._log is not None:
            self._log.close()


def heartbeats(tg: FakeTelegram, since: float = 0.0) -> list[tuple[float, Call]]:
    """Heartbeats Telegram took for the ops chat, with when (epoch seconds), from ``since``."""
    # The fake stamps calls with time.perf_counter(); the cron runs by the wall clock.
    offset = time.time() - time.perf_counter()
    found = [
        (call.at + offset, call)
        for call in tg.calls_of("sendMessage")
        if call.params.get("chat_id") == OPS and "💓" in call.text
    ]
    return [(at, call) for at, call in found if at >= since]


def next_boundary(margin: float = MARGIN) -> float:
    """The next minute boundary (epoch seconds) at least ``margin`` seconds away."""
    return float((math.floor((time.time() + margin) / 60) + 1) * 60)


def utc(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch))


@contextlib.asynccontextmanager
async def shared_redis() -> AsyncIterator[str]:
    """The test Redis, in a database of its own, without lease keys before and after."""
    parts = urlsplit(redis_url())
    url = urlunsplit(parts._replace(path=f"/{REDIS_DB}"))
    client = aioredis.Redis.from_url(url)

    async def clear() -> None:
        keys = [key async for key in client.scan_iter(match="opsbot:*")]
        if keys:
            await client.delete(*keys)

    try:
        await clear()
        yield url
    finally:
        await clear()
        await client.aclose()


class Replicas:
    def __init__(self, replicas: list[Replica]) -> None:
        self.all = replicas
        self.killed: set[str] = set()  # by the test: their exit is no failure

    def report(self, what: str) -> str:
        return what + "\n" + "\n".join(r.tail() for r in self.all)

    async def until(self, check: Callable[[], bool], within: float, what: str) -> None:
        """Poll ``check``; fail with both logs if it stays false or a process dies."""
        deadline = time.monotonic() + within
        while not check():
            dead = [r.name for r in self.all if r.process is not None and not r.running]
            dead = [d for d in dead if d not in self.killed]
            if dead:
                raise AssertionError(self.report(f"{', '.join(dead)} exited while {what}"))
            if time.monotonic() > deadline:
                raise AssertionError(self.report(f"not within {within:g}s: {what}"))
            await asyncio.sleep(0.1)

    async def one_heartbeat_at_next_boundary(self, tg: FakeTelegram, label: str) -> Replica:
        """Wait for the next minute boundary: exactly one heartbeat must reach Telegram for
        it, posted by exactly one process. Returns that process."""
        boundary = next_boundary()
        since = boundary - SLACK
        await asyncio.sleep(max(0.0, boundary - time.time()))
        await self.until(
            lambda: bool(heartbeats(tg, since)),
            FIRST_WITHIN,
            f"{label}: a heartbeat for {utc(boundary)} UTC reaches Telegram",
        )
        await asyncio.sleep(QUIET)
        new = [call.text.splitlines()[0] for _, call in heartbeats(tg, since)]
        assert len(new) == 1, self.report(
            f"{label}: {len(new)} heartbeats for {utc(boundary)} UTC, not one: {new}"
        )
        posters = [r for r in self.all if r.posted_since(since)]
        assert len(posters) == 1, self.report(
            f"{label}: heartbeat.posted for {utc(boundary)} UTC logged by "
            f"{[r.name for r in posters]}, not by one replica"
        )
        return posters[0]


async def test_two_processes_post_one_heartbeat_a_minute_and_the_survivor_takes_over(
    tmp_path: Path,
) -> None:
    replicas = Replicas([Replica(name, tmp_path / f"{name}.log") for name in ("one", "two")])
    async with pg_database() as database_url, shared_redis() as redis, FakeTelegram() as tg:
        await upgrade(database_url)  # what `opsbot db upgrade` does before replicas start
        try:
            for replica in replicas.all:
                config = tmp_path / f"{replica.name}.toml"
                text = replica_config(
                    replica.name,
                    data_dir=tmp_path / replica.name,
                    database_url=database_url,
                    redis=redis,
                    tg=tg,
                )
                config.write_text(text)
                await replica.start(config)
            await replicas.until(
                lambda: all(r.started for r in replicas.all), START_WITHIN, "both start"
            )
            await replicas.until(
                lambda: sum(r.leading for r in replicas.all) == 1, 10, "one of them leads"
            )

            # (a) Both up: one heartbeat at the minute, from the leader.
            leader = await replicas.one_heartbeat_at_next_boundary(tg, "both running")
            assert leader.leading, replicas.report(f"{leader.name} posted but does not lead")
            assert all(r.running for r in replicas.all), replicas.report("a process died")

            # (b) The leader dies without releasing the lease; the other takes it over
            # once it lapses and posts the next heartbeat, alone.
            survivor = next(r for r in replicas.all if r is not leader)
            assert not survivor.leading, replicas.report("both replicas say they lead")
            replicas.killed.add(leader.name)
            await leader.kill()
            await replicas.until(
                lambda: survivor.leading, 15, f"{survivor.name} takes the lease over"
            )
            poster = await replicas.one_heartbeat_at_next_boundary(tg, "after the kill")
            assert poster is survivor, replicas.report(f"{poster.name} posted after the kill")
            assert survivor.running, replicas.report(f"{survivor.name} died")

            # Over the whole run, start-up included: never two heartbeats for one minute,
            # and none long after its minute began.
            minutes = Counter(math.floor(at / 60) for at, _ in heartbeats(tg))
            late = [utc(at) for at, _ in heartbeats(tg) if at % 60 > FIRST_WITHIN]
            assert max(minutes.values()) == 1 and not late, replicas.report(
                f"heartbeats at {[utc(at) for at, _ in heartbeats(tg)]} UTC"
            )
        finally:
            for replica in replicas.all:
                await replica.stop()
