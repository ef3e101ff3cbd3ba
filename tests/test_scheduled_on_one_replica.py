"""Two replicas' schedulers on one Redis lease: the scheduled job runs on the leader only;
when the leader goes away the other replica's runs take over. The real APScheduler at a
short interval (the facade has no minimum; heartbeats' 5 minutes is a config rule)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from bot.clock import SystemClock
from bot.leader import LeaderLease
from bot.redis_clients import RedisClients
from bot.scheduler import Every, Scheduler
from tests.infra import redis_url

pytestmark = pytest.mark.redis

TICK = timedelta(milliseconds=100)


async def test_only_the_leader_runs_scheduled_jobs_and_the_other_takes_over() -> None:
    key = f"opsbot-test:leader:{uuid.uuid4().hex[:10]}"
    clients = RedisClients()
    runs: list[str] = []
    replicas: dict[str, tuple[LeaderLease, Scheduler]] = {}
    for name in ("one", "two"):
        lease = LeaderLease(clients, redis_url(), key=key, holder=name, lease=0.6, renew_every=0.2)
        scheduler = Scheduler(SystemClock(), leadership=lease)

        async def tick(name: str = name) -> None:
            runs.append(name)

        scheduler.add("heartbeat", tick, Every(TICK))
        replicas[name] = (lease, scheduler)
    try:
        for lease, scheduler in replicas.values():
            await lease.start()
            await scheduler.start()
        await asyncio.sleep(1.5)
        first = set(runs)
        assert len(first) == 1, runs  # one replica runs the job, never both
        leader = first.pop()
        follower = "two" if leader == "one" else "one"
        assert runs.count(leader) >= 5

        # The leader dies (its scheduler and lease stop); the follower takes over within
        # about a lease.
        lease, scheduler = replicas.pop(leader)
        await scheduler.stop()
        await lease.stop()
        runs.clear()
        await asyncio.sleep(1.5)
        assert set(runs) == {follower} and len(runs) >= 3, runs
    finally:
        for lease, scheduler in replicas.values():
            await scheduler.stop()
            await lease.stop()
        await clients.close()
