"""Two replicas on one PostgreSQL and one Redis: an alert delivered to both is posted once,
both list the same alerts, an acknowledgement on one holds on the other, and a check run
on both at once is announced once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.kernel.render import render_text
from tests.botharness import BASE_CONFIG, TestBot
from tests.features.alerts.test_alerts import ALERTS, AUTH, am_alert, webhook
from tests.httpfakes import Route, serve
from tests.infra import redis_url
from tests.replicas import two_replicas

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CHECK_RULES = """
[policy.commands.checks]
roles = ["oncall"]
"""


@contextlib.asynccontextmanager
async def two_serving(
    config: str, tmp_path: Path
) -> AsyncIterator[tuple[tuple[TestBot, httpx.AsyncClient], tuple[TestBot, httpx.AsyncClient]]]:
    """Two replicas with their HTTP servers and a client on each, Redis for dedup."""
    extra = f'[state]\nredis_url = "{redis_url()}"\n'
    async with (
        two_replicas(config, tmp_path, extra=extra, serve_http=True) as (one, two),
        _client(one) as client_one,
        _client(two) as client_two,
    ):
        yield (one, client_one), (two, client_two)


def _client(tb: TestBot) -> httpx.AsyncClient:
    assert tb.bot.http_server is not None
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{tb.bot.http_server.bound_port}")


async def posts(*bots: TestBot) -> list[str]:
    for tb in bots:
        assert await tb.bot.outbox.drain(5.0)
    return [render_text(r) for tb in bots for _, r in tb.console.posted]


def _cpu_check_config(check: str, url: str, *options: str) -> str:
    """A bot with a CPU check named ``check`` on ``url``'s JSON (runs come from /checks
    now, not from the clock); ``options`` are extra TOML lines of the check."""
    lines = [
        "[[checks]]",
        f'name = "{check}"',
        'kind = "http_json"',
        f'url = "{url}"',
        'field = "cpu"',
        "warn = 70",
        "critical = 90",
        'interval = "1h"',
        *options,
    ]
    return BASE_CONFIG + ALERTS + CHECK_RULES + "\n" + "\n".join(lines) + "\n"


async def test_an_alert_delivered_to_both_replicas_is_posted_once(tmp_path: Path) -> None:
    name = f"Disk{uuid.uuid4().hex[:8]}"  # Redis outlives the test: a name of its own
    body = webhook(am_alert(name, severity="critical", fp=f"fp-{name}"), group=f"g-{name}")
    async with two_serving(BASE_CONFIG + ALERTS, tmp_path) as ((one, c1), (two, c2)):
        answers = await asyncio.gather(
            c1.post("/alerts/alertmanager", json=body, headers=AUTH),
            c2.post("/alerts/alertmanager", json=body, headers=AUTH),
        )
        assert [a.status_code for a in answers] == [202, 202]
        await asyncio.gather(one.bot.alert_intake.drained(), two.bot.alert_intake.drained())
        posted = [p for p in await posts(one, two) if name in p]
        listing_two = await two.exec("/alerts", as_="bob")
        alert = (await two.bot.alert_board.firing())[0]
        acked = await two.exec(f"/ack {alert.id}", as_="bob")
        listing_one = await one.exec("/alerts", as_="bob")
    assert len(posted) == 1, posted
    assert name in listing_two and "1 alert(s) firing, 0 acknowledged" in listing_two
    assert "acknowledged by bob" in acked
    assert "1 alert(s) firing, 1 acknowledged" in listing_one


async def test_a_check_run_on_both_replicas_is_announced_once(tmp_path: Path) -> None:
    check = f"cpu-{uuid.uuid4().hex[:8]}"
    async with serve({"/stats": Route.of_json({"cpu": 97})}) as server:
        config = _cpu_check_config(check, server.url("/stats"))
        async with two_serving(config, tmp_path) as ((one, _), (two, _)):
            await asyncio.gather(
                one.exec(f"/checks now {check}", as_="bob"),
                two.exec(f"/checks now {check}", as_="bob"),
            )
            fired = [p for p in await posts(one, two) if check in p]
            server.routes["/stats"] = Route.of_json({"cpu": 12})
            await two.exec(f"/checks now {check}", as_="bob")
            await one.exec(f"/checks now {check}", as_="bob")
            resolved = [p for p in await posts(one, two) if check in p and "RESOLVED" in p]
    assert len(fired) == 1, fired
    assert fired[0].startswith(f"❌ CRITICAL: {check}")
    assert len(resolved) == 1, resolved


async def test_a_checks_bad_runs_count_on_whichever_replica_runs_it(tmp_path: Path) -> None:
    # A new leader (or /checks now typed to another replica) goes on from the count so
    # far: two bad runs on two replicas fire a check with for = 2.
    check = f"cpu-{uuid.uuid4().hex[:8]}"
    async with serve({"/stats": Route.of_json({"cpu": 97})}) as server:
        config = _cpu_check_config(check, server.url("/stats"), "for = 2")
        async with two_serving(config, tmp_path) as ((one, _), (two, _)):
            await one.exec(f"/checks now {check}", as_="bob")
            assert [p for p in await posts(one, two) if check in p] == []
            await two.exec(f"/checks now {check}", as_="bob")
            fired = [p for p in await posts(one, two) if check in p]
            server.routes["/stats"] = Route.of_json({"cpu": 12})
            await one.exec(f"/checks now {check}", as_="bob")  # resolves, and resets the count
            server.routes["/stats"] = Route.of_json({"cpu": 97})
            await two.exec(f"/checks now {check}", as_="bob")
            after_reset = [p for p in await posts(one, two) if check in p]
    assert len(fired) == 1 and fired[0].startswith(f"❌ CRITICAL: {check}"), fired
    assert len(after_reset) == 2, after_reset  # the firing and its resolution, no new one
