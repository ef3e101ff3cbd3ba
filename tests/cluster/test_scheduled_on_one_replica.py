"""Two replicas' schedulers on one Redis lease: the scheduled job runs on the leader only;
when the leader goes away the other replica's runs take over. The real APScheduler at a
short interval (the facade has no minimum; heartbeats' 5 minutes is a config rule)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from bot.cluster.leader import LeaderLease
from bot.cluster.pauses import RedisPauses
from bot.cluster.redis_clients import RedisClients
from bot.cluster.scheduler import Every, Scheduler
from bot.kernel.clock import SystemClock
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


async def test_a_run_that_stalls_past_a_takeover_does_not_post() -> None:
    """The fence is checked at the start of a scheduled run and again right before the
    post (confirm_leadership): a leader that stalls in between, while the lease moves to
    another replica, never posts."""
    key = f"opsbot-test:leader:{uuid.uuid4().hex[:10]}"
    clients = RedisClients()
    old = LeaderLease(clients, redis_url(), key=key, holder="old", lease=3.0, renew_every=1.5)
    new = LeaderLease(clients, redis_url(), key=key, holder="new", lease=3.0, renew_every=0.05)
    scheduler = Scheduler(SystemClock(), leadership=old)
    stalled, release = asyncio.Event(), asyncio.Event()
    posts: list[str] = []

    async def heartbeat() -> None:
        stalled.set()
        await release.wait()  # composing takes long (a slow probe, a GC pause)
        await scheduler.confirm_leadership()
        posts.append("old")

    scheduler.add("heartbeat", heartbeat, Every(TICK))
    try:
        await old.start()
        await scheduler.start()
        async with asyncio.timeout(5):
            await stalled.wait()
        took_over = asyncio.Event()
        new.on_change(lambda leading: took_over.set() if leading else None)
        await new.start()
        await clients.client(redis_url(), timeout=2).delete(key)  # a failover lost the key
        async with asyncio.timeout(2):
            await took_over.wait()
        release.set()
        await scheduler.join()
        assert posts == []
        # run_now is a person asking: it runs on any replica, unfenced.
        await scheduler.run_now("heartbeat")
        assert posts == ["old"]
    finally:
        release.set()
        await scheduler.stop()
        await asyncio.gather(old.stop(), new.stop())
        await clients.client(redis_url(), timeout=2).delete(key, f"{key}:fence")
        await clients.close()


async def test_a_pause_asked_for_on_another_replica_holds_on_the_leader() -> None:
    """``/heartbeat pause`` lands on whichever replica the person talks to; the leader,
    which posts, must skip its runs until the pause ends."""
    key = f"opsbot-test:leader:{uuid.uuid4().hex[:10]}"
    job = f"beat-{uuid.uuid4().hex[:8]}"
    clients = RedisClients()
    runs: list[str] = []
    ticked = asyncio.Event()
    replicas: dict[str, tuple[LeaderLease, Scheduler]] = {}
    for name in ("one", "two"):
        lease = LeaderLease(clients, redis_url(), key=key, holder=name, lease=0.6, renew_every=0.2)
        pauses = RedisPauses(clients, redis_url())
        scheduler = Scheduler(SystemClock(), leadership=lease, shared_pauses=pauses)

        async def tick(name: str = name) -> None:
            runs.append(name)
            ticked.set()

        scheduler.add(job, tick, Every(TICK))
        replicas[name] = (lease, scheduler)
    try:
        for lease, scheduler in replicas.values():
            await lease.start()
            await scheduler.start()
        await _runs_reach(runs, 2, ticked)
        leaders = set(runs)
        assert len(leaders) == 1, runs
        leader = leaders.pop()
        follower = "two" if leader == "one" else "one"

        until = datetime.now(UTC) + timedelta(seconds=1)
        await replicas[follower][1].pause_everywhere(job, until)
        assert await replicas[leader][1].paused_until_everywhere(job) == until
        paused_at = len(runs)
        await asyncio.sleep(0.8)
        assert len(runs) <= paused_at + 1  # at most a run that had already started
        await _runs_reach(runs, paused_at + 3, ticked)  # the pause ended by itself
        assert set(runs) == {leader}
    finally:
        for lease, scheduler in replicas.values():
            await scheduler.stop()
            await lease.stop()
        pause_key = f"opsbot:pause:{job}"
        await clients.client(redis_url(), timeout=2).delete(key, f"{key}:fence", pause_key)
        await clients.close()


async def _runs_reach(runs: list[str], count: int, ticked: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        while len(runs) < count:
            ticked.clear()
            await ticked.wait()
