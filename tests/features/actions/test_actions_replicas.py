"""Two bot replicas on one PostgreSQL (and Redis): an approval is used once, a redelivered
event runs once, whichever replica each delivery reaches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.features.policy.store import KEY as POLICY_KEY
from bot.kernel.message import Location, Message
from tests.actionkit import Scripts, actions_config, approval_id, pid_in, process_alive
from tests.botharness import running_bot
from tests.infra import redis_url, state_redis
from tests.replicas import two_replicas

pytestmark = pytest.mark.postgres


async def test_two_approvers_on_two_replicas_run_the_action_once(
    scripts: Scripts, tmp_path: Path
) -> None:
    async with two_replicas(actions_config(scripts), tmp_path) as (one, two):
        request = approval_id(await one.exec("/rollback v5.0", as_="dave"))
        by_bob, by_alice = await asyncio.gather(
            one.exec(f"/approve {request}", as_="bob"),
            two.exec(f"/approve {request}", as_="alice"),
        )
        finished = [r for r in (by_bob, by_alice) if "finished" in r]
        refused = [r for r in (by_bob, by_alice) if "an approval is used once" in r]
        assert len(finished) == 1 and len(refused) == 1, (by_bob, by_alice)
        assert scripts.runs() == ["v5.0"]
        entries = await one.audit()
        assert [e.status for e in entries if e.kind == "approval"] == ["requested", "approved"]
        assert (await one.bot.audit.store.verify()).ok


async def test_a_redelivery_to_the_other_replica_is_not_run(
    scripts: Scripts, tmp_path: Path
) -> None:
    async with two_replicas(actions_config(scripts), tmp_path) as (one, two):
        message = _message("Ev0TWOREPLICAS", "/run fail")
        assert await one.bot.handle(message) is not None
        assert await two.bot.handle(message) is None
        runs = [e for e in await one.audit() if e.kind == "job" and e.stage == "started"]
        assert len(runs) == 1


@pytest.mark.redis
async def test_redis_dedup_spans_replicas(scripts: Scripts, tmp_path: Path) -> None:
    config = actions_config(scripts) + state_redis()
    event = f"Ev{datetime.now(UTC).timestamp():.6f}".replace(".", "")
    async with (
        running_bot(config, data_dir=tmp_path / "one") as one,
        running_bot(config, data_dir=tmp_path / "two") as two,
    ):
        # Separate SQLite files: only Redis can tell the second replica it is a repeat.
        assert await one.bot.handle(_message(event, "/run fail")) is not None
        assert await two.bot.handle(_message(event, "/run fail")) is None
        assert [e.status for e in await two.commands_audited()] == ["duplicate"]


def _message(event_id: str, text: str) -> Message:
    return Message(
        location=Location(platform="console", channel_id="ops"),
        user_id="bob",
        text=text,
        event_id=event_id,
        received_at=datetime.now(UTC),
        addressed=True,
    )


def _held_actions(scripts: Scripts, tag: str) -> str:
    """Actions that run until cancelled: ``hold-<tag>`` (max_concurrent 1), and
    ``pair-a-<tag>`` / ``pair-b-<tag>`` sharing lock group ``g-<tag>``. A tag per test
    keeps their Redis keys apart from every other run's."""
    d = scripts.dir
    return "".join(
        f"""
[[actions]]
name = "{name}-{tag}"
argv = ["{d}/hang.sh"]
env = {{ PIDFILE = "{d}/{name}.pid" }}
risk = "write"
roles = ["oncall"]
timeout = "30s"
kill_grace = "0.5s"
{group}
"""
        for name, group in (
            ("hold", ""),
            ("pair-a", f'lock_group = "g-{tag}"'),
            ("pair-b", f'lock_group = "g-{tag}"'),
        )
    )


def _job_id(ack: str) -> str:
    assert "running as job " in ack, ack
    return ack.split("running as job ")[1].split()[0]


@pytest.mark.redis
async def test_max_concurrent_and_lock_groups_hold_across_replicas(
    scripts: Scripts, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    # A lease of 1 s, so that the wait below outlasts it: the running job's slot is
    # renewed, not merely still unexpired.
    state = state_redis(leader_lease='"1s"', leader_renew_every='"0.3s"')
    config = actions_config(scripts, _held_actions(scripts, tag))
    async with two_replicas(config, tmp_path, extra=state) as (one, two):
        held = _job_id(await one.exec(f"/run hold-{tag}", as_="bob"))
        await asyncio.sleep(1.5)
        refused = await two.exec(f"/run hold-{tag}", as_="alice")
        assert f"/hold-{tag} is already running once (max_concurrent = 1)" in refused
        assert f"job {held} (hold-{tag}, by bob, on replica one" in refused

        grouped = _job_id(await one.exec(f"/run pair-a-{tag}", as_="bob"))
        waiting = await two.exec(f"/run pair-b-{tag}", as_="alice")
        assert f"pair-b-{tag} must wait: job {grouped} (pair-a-{tag}" in waiting
        assert f"holds lock group 'g-{tag}'" in waiting

        for job in (held, grouped):
            assert "cancelled" in await one.exec(f"/cancel {job}", as_="alice")
            await one.posted("was cancelled by alice after")
        # Released when the jobs ended, not when their lease ran out.
        again = _job_id(await two.exec(f"/run hold-{tag}", as_="alice"))
        assert "cancelled" in await two.exec(f"/cancel {again}", as_="alice")

        runs = [e for e in await two.commands_audited() if e.command == "run"]
        turned_away = [
            e
            for e in runs
            if "already running" in (e.error or "") or "must wait" in (e.error or "")
        ]
        assert len(runs) == 5 and len(turned_away) == 2, runs
        jobs = [e for e in await one.audit() if e.kind == "job" and e.stage == "started"]
        assert len(jobs) == 3  # hold, pair-a, hold again: never the two turned away


@pytest.mark.redis
async def test_a_job_on_one_replica_is_listed_and_cancelled_from_the_other(
    scripts: Scripts, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    state = state_redis()
    config = actions_config(scripts, _held_actions(scripts, tag))
    async with two_replicas(config, tmp_path, extra=state) as (one, two):
        job = _job_id(await one.exec(f"/run hold-{tag}", as_="bob"))
        pid = await pid_in(scripts.dir / "hold.pid")

        listing = await two.exec("/jobs", as_="carol")
        assert "1 running" in listing
        assert job in listing and f"hold-{tag}" in listing and "running on one" in listing

        denied = await two.exec(f"/cancel {job}", as_="dave")  # a deployer: not hold's role
        assert denied.startswith("⛔") and f"may run 'hold-{tag}'" in denied
        assert process_alive(pid)

        cancelled = await two.exec(f"/cancel {job}", as_="alice")
        assert f"Job {job} (hold-{tag}) on replica one cancelled" in cancelled
        assert not process_alive(pid)
        # The job's own replica reports it where it was started, and audits it.
        result = await one.posted(f"(job {job})")
        assert "was cancelled by alice" in result
        finished = [e for e in await one.audit() if e.kind == "job" and e.stage == "finished"]
        assert [(e.status, "cancelled by alice" in e.detail) for e in finished] == [
            ("cancelled", True)
        ]

        assert "running on any replica" in await two.exec(f"/cancel {job}", as_="alice")
        assert "No jobs since opsbot started" in await two.exec("/jobs", as_="carol")


@pytest.fixture
async def shared_policy_key() -> AsyncIterator[None]:
    """The one policy key every replica on the test Redis shares: cleared around a test
    that switches it, so no other test runs in its window."""
    client = aioredis.Redis.from_url(redis_url())
    await client.delete(POLICY_KEY)
    try:
        yield
    finally:
        await client.delete(POLICY_KEY)
        await client.aclose()


@pytest.mark.redis
@pytest.mark.usefixtures("shared_policy_key")
async def test_the_policy_mode_is_the_same_on_every_replica(
    scripts: Scripts, tmp_path: Path
) -> None:
    state = state_redis()
    async with two_replicas(actions_config(scripts), tmp_path, extra=state) as (one, two):
        assert "OFF until" in await one.exec("/policy off 10m migration", as_="alice")
        shown = await two.exec("/policy", as_="bob")
        assert "Policy mode OFF until" in shown and "migration" in shown
        assert "finished" in await two.exec("/rollback v1.6", as_="dave")  # no approval

        assert "STRICT" in await two.exec("/policy strict done", as_="alice")
        assert "Policy mode STRICT" in await one.exec("/policy", as_="bob")
        asked = await one.exec("/rollback v1.7", as_="dave")
        assert "(request " in asked  # a second person again
        assert scripts.runs() == ["v1.6"]
        switches = [e.status for e in await one.audit() if e.kind == "policy"]
        assert switches == ["off", "strict"]


@pytest.mark.redis
@pytest.mark.usefixtures("shared_policy_key")
async def test_an_off_window_ends_on_every_replica_and_is_recorded_once(
    scripts: Scripts, tmp_path: Path
) -> None:
    state = state_redis()
    async with two_replicas(actions_config(scripts), tmp_path, extra=state) as (one, two):
        await one.exec("/policy off 1s", as_="alice")
        assert "OFF until" in await two.exec("/policy", as_="bob")  # both time the window
        await asyncio.sleep(1.5)
        for replica in (one, two):
            shown = await replica.exec("/policy", as_="bob")
            assert "Policy mode STRICT" in shown and "timer" in shown
        switches = [e.status for e in await one.audit() if e.kind == "policy"]
        assert switches == ["off", "expired"]
