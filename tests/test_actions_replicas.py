"""Two bot replicas on one PostgreSQL (and Redis): an approval is used once, a redelivered
event runs once, whichever replica each delivery reaches."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.message import Message
from tests.actionkit import Scripts, actions_config, approval_id
from tests.botharness import running_bot
from tests.infra import redis_url
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
    config = actions_config(scripts) + f'\n[state]\nredis_url = "{redis_url()}"\n'
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
        platform="console",
        channel_id="ops",
        user_id="bob",
        text=text,
        event_id=event_id,
        received_at=datetime.now(UTC),
        addressed=True,
    )
