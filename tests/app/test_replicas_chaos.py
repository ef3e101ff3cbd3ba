"""Real ``opsbot run`` replicas on one PostgreSQL and a fake Telegram, under faults a
cluster meets: a replica frozen (SIGSTOP) while its platform client sleeps out a 429, and
a Redis outage.

Each process is started as tests/app/test_replicas_run.py starts them (``Replica``); the
faults are real signals and a real Redis server stopped and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.audit import upgrade
from tests.app.test_replicas_run import START_WITHIN, Replica, Replicas, shared_redis
from tests.auditlog_helpers import pg_database
from tests.fakes.telegram_server import FakeTelegram

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(120)]

OPS = -1001000000001
TOKEN = "alerts-token-for-the-chaos-tests"
# The shortest the config allows, so a frozen replica's message is taken over in seconds.
OUTBOX_LEASE = 3.0
RETRY_AFTER = 2  # what the fake Telegram asks the first post to wait (whole seconds)


def config(
    replica: str,
    *,
    data_dir: Path,
    database_url: str,
    redis: str,
    tg: FakeTelegram,
    lease: str = "5s",
    renew: str = "1s",
) -> str:
    return f"""
[bot]
name = "opsbot"
replica_id = "{replica}"
data_dir = "{data_dir}"
log_format = "json"

[http]
port = 0

[roles.admin]

[channels.ops]
ids = ["telegram:{OPS}"]

[alerts]
token = "{TOKEN}"
default_channels = ["ops"]

[state]
redis_url = "{redis}"
leader_lease = "{lease}"
leader_renew_every = "{renew}"
outbox_lease = "{OUTBOX_LEASE:g}s"

[audit]
database_url = "{database_url}"
""" + tg.config(set_commands_on_start=False)


@contextlib.asynccontextmanager
async def replicas_running(
    tmp_path: Path, database_url: str, redis: str, tg: FakeTelegram, *names: str
) -> AsyncIterator[Replicas]:
    replicas = Replicas([Replica(name, tmp_path / f"{name}.log") for name in names])
    try:
        for replica in replicas.all:
            path = tmp_path / f"{replica.name}.toml"
            path.write_text(
                config(
                    replica.name,
                    data_dir=tmp_path / replica.name,
                    database_url=database_url,
                    redis=redis,
                    tg=tg,
                )
            )
            await replica.start(path)
        await replicas.until(
            lambda: all(r.started for r in replicas.all), START_WITHIN, "all replicas start"
        )
        yield replicas
    finally:
        for replica in replicas.all:
            if replica.process is not None and replica.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(replica.process.pid, signal.SIGCONT)
            await replica.stop()


def http_port(replica: Replica) -> int:
    port = replica.events("opsbot.started")[0]["http_port"]
    assert isinstance(port, int), port
    return port


def alert_posts(tg: FakeTelegram, name: str) -> list[str]:
    return [
        call.text
        for call in tg.calls_of("sendMessage")
        if call.params.get("chat_id") == OPS and name in call.text
    ]


async def test_a_replica_frozen_during_a_429_does_not_post_what_another_took_over(
    tmp_path: Path,
) -> None:
    """The first replica's post of an alert is refused with 429 (retry after 2 s) and the
    replica is frozen right then, past its outbox lease: the second replica takes the
    message over and posts it. Woken, the first must not post it again (python-telegram-
    bot's rate limiter would send it once its sleep was over)."""
    async with (
        pg_database() as database_url,
        shared_redis() as redis,
        FakeTelegram() as tg,
    ):
        await upgrade(database_url)
        async with replicas_running(tmp_path, database_url, redis, tg, "one", "two") as replicas:
            one, two = replicas.all
            assert one.process is not None
            tg.fail_next("sendMessage", retry_after=RETRY_AFTER)
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    f"http://127.0.0.1:{http_port(one)}/alerts",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    json={"alerts": [{"name": "DiskFull", "summary": "frozen replica test"}]},
                )
            assert response.status_code == 202, response.text
            await replicas.until(
                lambda: any(c.status == 429 for c in tg.calls_of("sendMessage", ok=False)),
                15,
                "the first replica's post reaches Telegram and is refused with 429",
            )
            os.kill(one.process.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                await replicas.until(
                    lambda: bool(alert_posts(tg, "DiskFull")),
                    OUTBOX_LEASE * 3 + 10,
                    "the second replica takes the message over and posts it",
                )
                # Frozen well past its lease and the 429's wait, as in the issue.
                await asyncio.sleep(max(0.0, frozen_at + OUTBOX_LEASE * 2 - time.monotonic()))
            finally:
                os.kill(one.process.pid, signal.SIGCONT)
            # Awake: the SDK's sleep is over at once; the lease renewal follows within a
            # third of the lease. Time enough for a second post to show.
            await asyncio.sleep(RETRY_AFTER + OUTBOX_LEASE)
            posts = alert_posts(tg, "DiskFull")
            assert len(posts) == 1, replicas.report(f"posted {len(posts)} times: {posts}")
            assert two.events("outbox.claimed"), replicas.report("two never claimed the message")
            assert one.running and two.running, replicas.report("a replica exited")
