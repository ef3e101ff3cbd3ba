"""Checks (``[[checks]]``) end to end: a real HTTP endpoint, a real Redis, the bot's own
scheduler job run through ``/checks now`` (a chat message in), alerts out to console
channels. Time that matters (reminders) moves on a ManualClock."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.app.config import parse_config
from bot.kernel.errors import ConfigError
from bot.kernel.render import render_text
from commands import COMMANDS
from tests.botharness import BASE_CONFIG, ManualClock, TestBot, running_bot
from tests.httpfakes import Route, refused_url, serve

RULES = """
[policy.commands.checks]
roles = ["oncall"]
[policy.commands.alerts]
roles = ["oncall"]
[policy.commands.ack]
roles = ["oncall"]

[alerts]
default_channels = ["ops"]
[[alerts.routes]]
matchers = { severity = "critical" }
channels = ["incident"]
"""


def cpu_check(url: str, **options: str) -> str:
    lines = [
        "[[checks]]",
        'name = "api-cpu"',
        'kind = "http_json"',
        f'url = "{url}"',
        'field = "system.cpu_percent"',
        "warn = 70",
        "critical = 90",
        'interval = "1h"',  # runs come from /checks now, not from the clock
        *(f"{k} = {v}" for k, v in options.items()),
    ]
    return "\n".join(lines) + "\n"


def stats(cpu: float) -> Route:
    return Route.of_json({"system": {"cpu_percent": cpu}, "uptime": 5})


async def run_check(tb: TestBot, name: str = "api-cpu") -> list[tuple[str, str]]:
    """Run the check through chat; what it posted (channel, text) since the last call."""
    before = len(tb.console.posted)
    reply = await tb.exec(f"/checks now {name}", as_="bob")
    assert reply.startswith(("✅", "⚠️", "❌")), reply
    assert await tb.bot.outbox.drain(5.0)
    return [(d.channel_id, render_text(r)) for d, r in list(tb.console.posted)[before:]]


async def test_fires_after_for_runs_escalates_and_resolves_by_editing_nothing_twice() -> None:
    async with serve({"/stats": stats(95)}) as server:
        config = BASE_CONFIG + RULES + cpu_check(server.url("/stats"), **{"for": "2"})
        async with running_bot(config) as tb:
            first = await run_check(tb)
            pending = await tb.exec("/checks", as_="bob")
            fired = await run_check(tb)
            listing = await tb.exec("/alerts", as_="bob")
            same = await run_check(tb)
            server.routes["/stats"] = stats(80)
            lower = await run_check(tb)
            server.routes["/stats"] = stats(20)
            resolved = await run_check(tb)
            calm = await run_check(tb)
            after = await tb.exec("/alerts", as_="bob")
            state = await tb.exec("/checks", as_="bob")
    assert first == [], first  # one bad run of the two "for" asks
    assert "pending (1/2)" in pending
    assert len(fired) == 1, fired
    channel, text = fired[0]
    assert channel == "incident"  # severity=critical routes there
    assert text.startswith("❌ CRITICAL: api-cpu")
    assert "system.cpu_percent 95 (warn above 70, critical above 90)" in text
    assert "/ack " in text
    assert "1 alert(s) firing" in listing and "api-cpu" in listing and "critical" in listing
    assert same == []  # still critical: nothing new before the repeat interval
    assert len(lower) == 1
    assert lower[0][0] == "ops"  # a warning routes to the default channel
    assert lower[0][1].startswith("⚠️ WARNING (was critical): api-cpu")
    assert len(resolved) == 1
    assert resolved[0][1].startswith("✅ RESOLVED: api-cpu")
    assert "was warning for" in resolved[0][1] and "cpu_percent 20" in resolved[0][1]
    assert calm == []
    assert "No alerts firing" in after
    assert "api-cpu" in state and "0 firing" in state


async def test_reminders_follow_the_repeat_interval_and_stop_when_acknowledged() -> None:
    clock = ManualClock()
    async with serve({"/stats": stats(75)}) as server:
        config = BASE_CONFIG + RULES + cpu_check(server.url("/stats"), repeat='"30m"')
        async with running_bot(config, clock=clock) as tb:
            fired = await run_check(tb)
            clock.advance(timedelta(minutes=29))
            early = await run_check(tb)
            clock.advance(timedelta(minutes=2))
            reminder = await run_check(tb)
            alert = next(a for a in await tb.bot.alert_board.firing() if a.name == "api-cpu")
            acked = await tb.exec(f"/ack {alert.id}", as_="bob")
            clock.advance(timedelta(hours=2))
            quiet = await run_check(tb)
            server.routes["/stats"] = stats(99)
            escalated = await run_check(tb)
            audited = [e for e in await tb.audit() if e.kind == "alert"]
    assert [t.split("\n")[0] for _, t in fired] == ["⚠️ WARNING: api-cpu"]
    assert early == []
    assert len(reminder) == 1
    assert reminder[0][1].startswith("⚠️ STILL WARNING: api-cpu")
    assert re.search(r"firing for\s+31m", reminder[0][1]), reminder
    assert "acknowledged by bob" in acked
    assert quiet == []  # acknowledged: no more reminders
    # A change of level is news even when acknowledged.
    assert [t.split("\n")[0] for _, t in escalated] == ["❌ CRITICAL (was warning): api-cpu"]
    assert [(e.principal, e.status) for e in audited] == [("bob", "acked")]


async def test_unreadable_values_count_as_on_error_says() -> None:
    refused = refused_url("/stats")
    async with serve({"/stats": Route.of_json({"system": {"load": 1}})}) as server:
        config = (
            BASE_CONFIG
            + RULES
            + cpu_check(refused)
            + cpu_check(server.url("/stats"), on_error='"warn"').replace("api-cpu", "api-cpu2")
            + cpu_check(refused, on_error='"ignore"').replace("api-cpu", "api-cpu3")
        )
        async with running_bot(config) as tb:
            down = await run_check(tb, "api-cpu")
            missing = await run_check(tb, "api-cpu2")
            ignored = await run_check(tb, "api-cpu3")
    assert len(down) == 1
    assert down[0][1].startswith("❌ CRITICAL: api-cpu")
    assert "refused" in down[0][1]
    assert len(missing) == 1
    assert missing[0][1].startswith("⚠️ WARNING: api-cpu2")
    assert "field 'system.cpu_percent' is missing from the answer" in missing[0][1]
    assert ignored == []


async def test_service_health_check() -> None:
    async with serve({"/health": Route.of_json({"status": "ok"})}) as server:
        config = (
            BASE_CONFIG
            + RULES
            + f"""
[[services]]
name = "api"
health_url = "{server.url("/health")}"

[[checks]]
name = "api-health"
kind = "health"
service = "api"
channels = ["ops"]
labels = {{ team = "payments" }}
"""
        )
        async with running_bot(config) as tb:
            healthy = await run_check(tb, "api-health")
            server.routes["/health"] = Route.of_json({"status": "degraded"})
            degraded = await run_check(tb, "api-health")
            server.routes["/health"] = Route(status=503, body="down")
            down = await run_check(tb, "api-health")
            metrics = tb.bot.metrics.render().decode()
    assert healthy == []
    assert [c for c, _ in degraded + down] == ["ops", "ops"]  # its own channels
    assert degraded[0][1].startswith("⚠️ WARNING: api-health")
    assert re.search(r"labels\s+team=payments", degraded[0][1])
    assert down[0][1].startswith("❌ CRITICAL (was warning): api-health")
    assert "api down" in down[0][1]
    assert 'opsbot_check_state{check="api-health"} 2.0' in metrics


@pytest.mark.redis
async def test_queue_checks_on_a_real_redis(rds: tuple[aioredis.Redis, str]) -> None:
    client, prefix = rds
    stream = f"{prefix}jobs"
    for i in range(12):
        await client.xadd(stream, {"n": str(i)})
    await client.xgroup_create(stream, "workers", id="0")
    await client.xreadgroup("workers", "w1", {stream: ">"}, count=3)
    from tests.infra import redis_url

    config = (
        BASE_CONFIG
        + RULES
        + f"""
[[queues]]
name = "jobs"
redis_url = "{redis_url()}"
stream = "{stream}"
group = "workers"

[[checks]]
name = "jobs-length"
kind = "queue_length"
queue = "jobs"
warn = 5
critical = 10

[[checks]]
name = "jobs-workers"
kind = "workers"
queue = "jobs"
warn = 3
critical = 0

[[checks]]
name = "jobs-idle"
kind = "pending_idle"
queue = "jobs"
warn = "1h"
critical = "2h"
"""
    )
    async with running_bot(config) as tb:
        length = await run_check(tb, "jobs-length")
        workers = await run_check(tb, "jobs-workers")
        idle = await run_check(tb, "jobs-idle")
        await client.xtrim(stream, maxlen=2, approximate=False)
        shorter = await run_check(tb, "jobs-length")
    assert length[0][1].startswith("❌ CRITICAL: jobs-length")
    assert "queue jobs length 12 (warn above 5, critical above 10)" in length[0][1]
    assert workers[0][1].startswith("⚠️ WARNING: jobs-workers")
    assert "queue jobs workers 1 (warn below 3, critical at 0 or below)" in workers[0][1]
    assert idle == []  # entries pending for seconds, not hours
    assert shorter[0][1].startswith("✅ RESOLVED: jobs-length")


async def test_a_restarted_bot_continues_where_the_last_one_stopped(tmp_path: Path) -> None:
    """State lives in the database: the next leader (here: the next start) neither
    announces a firing check again nor forgets to resolve it."""
    async with serve({"/stats": stats(95)}) as server:
        config = BASE_CONFIG + RULES + cpu_check(server.url("/stats"))
        async with running_bot(config, data_dir=tmp_path) as tb:
            fired = await run_check(tb)
        async with running_bot(config, data_dir=tmp_path) as tb:
            again = await run_check(tb)
            listed = await tb.exec("/alerts", as_="bob")
            server.routes["/stats"] = stats(10)
            resolved = await run_check(tb)
    assert len(fired) == 1
    assert again == []
    assert "api-cpu" in listed
    assert [t.split("\n")[0] for _, t in resolved] == ["✅ RESOLVED: api-cpu"]


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE_CONFIG + text, "test.toml", {}, [s.name for s in COMMANDS])
    return str(caught.value)


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (
            'name = "c"\nkind = "http_json"\nurl = "http://127.0.0.1/"\nfield = "x"\n'
            'warn = 1\ncritical = 2\ninterval = "5s"',
            "checks[0].interval: must be at least 10s (got 5s)",
        ),
        ('name = "c"\nkind = "http_json"\nurl = "http://127.0.0.1/"', "needs 'field'"),
        ('name = "c"\nkind = "health"', "kind 'health' needs 'service'"),
        ('name = "c"\nkind = "health"\nservice = "nope"', "checks[0].service: unknown service"),
        (
            'name = "c"\nkind = "queue_length"\nqueue = "q"\nwarn = 10\ncritical = 5',
            "critical (5) must not be below warn (10)",
        ),
        (
            'name = "c"\nkind = "workers"\nqueue = "q"\nwarn = 1\ncritical = 3',
            "critical (3) must not be above warn (1)",
        ),
        ('name = "c"\nkind = "queue_length"\nqueue = "q"\nwarn = 1\ncritical = 3', "unknown queue"),
        (
            'name = "c"\nkind = "health"\nservice = "x"\nrepeat = "1m"',
            "checks[0].repeat: must be at least 5m",
        ),
        ('name = "c"\nkind = "health"\nservice = "x"\nfor = 0', "checks[0].for"),
    ],
)
def test_check_config_errors_name_the_key(check: str, expected: str) -> None:
    assert expected in problems(f"[[checks]]\n{check}\n")


async def test_checks_without_config() -> None:
    async with running_bot(BASE_CONFIG + RULES) as tb:
        reply = await tb.exec("/checks", as_="bob")
    assert "No checks configured" in reply


async def test_unknown_check_name_is_a_usage_error() -> None:
    async with (
        serve({"/stats": stats(1)}) as server,
        running_bot(BASE_CONFIG + RULES + cpu_check(server.url("/stats"))) as tb,
    ):
        reply = await tb.exec("/checks now nope", as_="bob")
    assert "name a check: api-cpu" in reply


async def test_a_silenced_check_is_not_posted_nor_its_resolution() -> None:
    async with serve({"/stats": stats(95)}) as server:
        config = BASE_CONFIG + RULES + SILENCE_RULES + cpu_check(server.url("/stats"))
        async with running_bot(config) as tb:
            silenced = await tb.exec("/silence alertname=api-cpu 1h planned load test", as_="bob")
            muted = await run_check(tb)
            listing = await tb.exec("/alerts", as_="bob")
            server.routes["/stats"] = stats(10)
            resolved = await run_check(tb)
            silence_id = silenced.split("Silence ")[1].split()[0]
            assert "ended" in await tb.exec(f"/unsilence {silence_id}", as_="bob")
            server.routes["/stats"] = stats(95)
            loud = await run_check(tb)
    assert muted == [] and resolved == []
    assert "api-cpu" in listing  # silenced, still firing and listed
    assert [t.split("\n")[0] for _, t in loud] == ["❌ CRITICAL: api-cpu"]


SILENCE_RULES = """
[policy.commands.silence]
roles = ["oncall"]
[policy.commands.unsilence]
roles = ["oncall"]
"""


async def test_a_check_never_announced_is_announced_not_reminded_of() -> None:
    async with serve({"/stats": stats(95)}) as server:
        config = BASE_CONFIG + RULES + SILENCE_RULES + cpu_check(server.url("/stats"))
        async with running_bot(config) as tb:
            silenced = await tb.exec("/silence alertname=api-cpu 1h planned load test", as_="bob")
            assert await run_check(tb) == []  # fired while silenced: nobody was told
            silence_id = silenced.split("Silence ")[1].split()[0]
            assert "ended" in await tb.exec(f"/unsilence {silence_id}", as_="bob")
            still = await run_check(tb)  # the same level again
            listed = await tb.exec("/alerts", as_="bob")
    # Its first message says it fires; "STILL" would remind of a message nobody saw.
    assert [t.split("\n")[0] for _, t in still] == ["❌ CRITICAL: api-cpu"]
    assert "api-cpu" in listed


async def test_a_removed_check_resolves_its_alert_at_the_next_start(tmp_path: Path) -> None:
    async with serve({"/stats": stats(95)}) as server:
        config = BASE_CONFIG + RULES + cpu_check(server.url("/stats"))
        async with running_bot(config, data_dir=tmp_path) as tb:
            fired = await run_check(tb)
        # The next version of the config has no api-cpu (removed, or renamed).
        async with running_bot(BASE_CONFIG + RULES, data_dir=tmp_path) as tb:
            assert await tb.bot.outbox.drain(5.0)
            told = tb.all_posted()
            firing = await tb.bot.alert_board.firing()
    assert [t.split("\n")[0] for _, t in fired] == ["❌ CRITICAL: api-cpu"]
    assert firing == []
    assert [t.split("\n")[0] for t in told] == ["✅ RESOLVED: api-cpu"]
    assert "no longer configured" in told[0]
