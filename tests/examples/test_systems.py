"""The ready-made configs in examples/systems/, one per system opsbot was made for: each
passes the real ``opsbot check-config``, and the bot runs it against local fake services
of that system's shape (and the real Redis and PostgreSQL). The files are used as they
ship; only what must differ here is substituted in their text: the ports of the fakes,
the Redis URL and stream names (a prefix no other test uses), the scripts' directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.kernel.render import render_text
from tests.actionkit import approval_id
from tests.botharness import TestBot, running_bot
from tests.httpfakes import Route, serve
from tests.infra import postgres_url, redis_url
from tests.processes import clean_env, run_opsbot

SYSTEMS = Path(__file__).resolve().parents[2] / "examples" / "systems"
FILES = ["fleet.toml", "gateway.toml", "service.toml", "runtime.toml", "workers.toml"]


def text_of(name: str, replacements: dict[str, str]) -> str:
    """The shipped file with each (present) string replaced: a replacement that finds
    nothing means the file changed under the test, so it fails."""
    text = (SYSTEMS / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"{name} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def host_port(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


def state_of(reply: str, service: str) -> str:
    """The state column of one service's row in a /health table."""
    match = re.search(rf"^{re.escape(service)}\s+(\S+)", reply, re.MULTILINE)
    assert match, f"{service} not in:\n{reply}"
    return match.group(1)


async def run_check(tb: TestBot, name: str) -> tuple[str, list[tuple[str, str]]]:
    """``/checks now <name>`` through chat: its reply, and what it posted (channel, text)."""
    before = len(tb.console.posted)
    reply = await tb.exec(f"/checks now {name}", as_="bob")
    assert await tb.bot.outbox.drain(5.0)
    return reply, [(d.channel_id, render_text(r)) for d, r in list(tb.console.posted)[before:]]


# ------------------------------------------------------------------ check-config


SERVICE_ENV = {
    "OPSBOT_ORDERS_DATABASE_URL": "postgresql://orders:secret@127.0.0.1:5432/orders",
    "OPSBOT_ORDERS_REDIS_URL": "redis://127.0.0.1:6379/0",
}


@pytest.mark.parametrize("name", FILES)
def test_each_file_passes_check_config(name: str) -> None:
    result = run_opsbot(
        "check-config", str(SYSTEMS / name), env=clean_env(**SERVICE_ENV), timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{name}: ok" in result.stdout


def test_the_service_names_its_secrets_by_environment_variable() -> None:
    result = run_opsbot("check-config", str(SYSTEMS / "service.toml"), timeout=60)
    assert result.returncode == 78
    assert "environment variable OPSBOT_ORDERS_DATABASE_URL is not set" in result.stderr
    assert "environment variable OPSBOT_ORDERS_REDIS_URL is not set" in result.stderr


# ------------------------------------------------------------------ fleet


async def test_fleet_lists_21_services_with_their_states() -> None:
    ports = range(4400, 4421)
    routes = {f"/{p}/health": Route.of_json({"status": "ok"}) for p in ports}
    routes["/4403/health"] = Route(status=503, body="draining")
    routes["/4417/health"] = Route.of_json({"status": "degraded"})
    del routes["/4420/health"]  # answers 404
    async with serve(routes) as server:
        config = text_of(
            "fleet.toml",
            {f"http://127.0.0.1:{p}/health": server.url(f"/{p}/health") for p in ports},
        )
        async with running_bot(config) as tb:
            health = await tb.exec("/health", as_="carol")
            answer = await tb.exec("/heartbeat now", as_="bob")
            beat = await tb.posted("💓")
            _, first = await run_check(tb, "fleet-4400")
            server.routes["/4401/health"] = Route(status=500)
            _, once = await run_check(tb, "fleet-4401")
            _, twice = await run_check(tb, "fleet-4401")
    assert "Health: 18 up, 1 degraded, 2 down" in health
    states = {p: state_of(health, f"fleet-{p}") for p in ports}
    assert states == {
        **{p: "up" for p in ports},
        4403: "DOWN",
        4417: "DEGRADED",
        4420: "DOWN",
    }, health
    assert "Posting heartbeat 'fleet' now" in answer
    assert "health   18 up, 1 degraded (fleet-4417), 2 down (fleet-4403, fleet-4420)" in beat
    assert first == []
    assert once == []  # "for = 2": one bad run does not page
    assert [(c, t.splitlines()[0]) for c, t in twice] == [("incident", "❌ CRITICAL: fleet-4401")]


# ------------------------------------------------------------------ gateway


async def test_gateway_version_rollback_with_approval_policy_window_and_heartbeat() -> None:
    routes = {
        "/health": Route.of_json({"status": "ok"}),
        "/version": Route.of_json({"version": "v1.3.0", "commit": "4f2a9c1"}),
    }
    async with serve(routes) as server:
        config = text_of(
            "gateway.toml",
            {
                "127.0.0.1:8000": host_port(server.base_url),
                'working_dir = "."': f'working_dir = "{SYSTEMS}"',
            },
        )
        async with running_bot(config) as tb:
            version = await tb.exec("/version", as_="carol")
            health = await tb.exec("/health", as_="dave")
            refused = await tb.exec("/rollback latest", as_="dave")
            asked = await tb.exec("/rollback v1.2", as_="bob")
            request = approval_id(asked)
            by_deployer = await tb.exec(f"/approve {request}", as_="dave")
            by_requester = await tb.exec(f"/approve {request}", as_="bob")
            approved = await tb.exec(f"/approve {request}", as_="alice")
            not_admin = await tb.exec("/policy off 30m night", as_="bob")
            too_long = await tb.exec("/policy off 2h night", as_="alice")
            window = await tb.exec("/policy off 30m night", as_="alice")
            direct = await tb.exec("/rollback v1.1", as_="dave")
            answer = await tb.exec("/heartbeat now", as_="bob")
            beat = await tb.posted("💓")
    assert re.search(r"^gateway\s+v1\.3\.0\s+ok", version, re.MULTILINE), version
    assert state_of(health, "gateway") == "up"
    assert "tag 'latest' must match" in refused
    assert "Approval needed: rollback tag=v1.2" in asked
    assert "scripts/gateway-rollback.sh v1.2" in asked
    assert "Denied: /approve needs role oncall" in by_deployer
    assert "you requested this; another person with an approver role" in by_requester
    assert "rollback tag=v1.2 finished" in approved and "gateway is on v1.2" in approved
    assert "needs role admin" in not_admin
    assert "limited to 1h" in too_long  # max_off_ttl
    assert "Policy mode is now OFF" in window
    assert "rollback tag=v1.1 finished" in direct and "gateway is on v1.1" in direct
    assert "Posting heartbeat 'gateway' now" in answer
    assert "health   1 up" in beat


# ------------------------------------------------------------------ service


def service_health(status: str, uptime: float) -> Route:
    return Route.of_json({"status": status, "timestamp": "2026-12-03T09:00:00Z", "uptime": uptime})


@pytest.mark.redis
@pytest.mark.postgres
async def test_service_judged_from_status_with_its_database_and_redis() -> None:
    env = {"OPSBOT_ORDERS_DATABASE_URL": postgres_url(), "OPSBOT_ORDERS_REDIS_URL": redis_url()}
    async with serve({"/health": service_health("ok", 86400)}) as server:
        config = text_of("service.toml", {"127.0.0.1:8100": host_port(server.base_url)})
        async with running_bot(config, env=env) as tb:
            healthy = await tb.exec("/health", as_="carol")
            db_reply, db_posts = await run_check(tb, "orders-db")
            redis_reply, redis_posts = await run_check(tb, "orders-redis")
            health_reply, health_posts = await run_check(tb, "orders-health")
            listing = await tb.exec("/checks", as_="bob")
            server.routes["/health"] = service_health("degraded", 86400)
            degraded = await tb.exec("/health", as_="carol")
            server.routes["/health"] = service_health("down", 86400)
            down = await tb.exec("/health", as_="carol")
            server.routes["/health"] = service_health("ok", 30)
            _, restarted_once = await run_check(tb, "orders-restarts")
            _, restarted = await run_check(tb, "orders-restarts")
    assert "Health: 3 up" in healthy
    assert [state_of(healthy, n) for n in ("orders", "orders-db", "orders-redis")] == ["up"] * 3
    assert db_posts == redis_posts == health_posts == []  # ok: nothing posted
    assert re.search(r"^orders-db\s+ok\s+PostgreSQL SELECT 1 \(ms\)", db_reply, re.MULTILINE)
    assert re.search(r"^orders-redis\s+ok\s+Redis PING \(ms\)", redis_reply, re.MULTILINE)
    assert re.search(r"^orders-health\s+ok\s+orders up", health_reply, re.MULTILINE)
    assert "4 check(s), 0 firing" in listing
    assert state_of(degraded, "orders") == "DEGRADED" and "reported degraded" in degraded
    assert state_of(down, "orders") == "DOWN" and "reported down" in down
    assert restarted_once == []  # "for = 2"
    assert [c for c, _ in restarted] == ["incident"]
    assert restarted[0][1].startswith("❌ CRITICAL: orders-restarts")
    assert "uptime 30 (warn below 300, critical at 60 or below)" in restarted[0][1]


# ------------------------------------------------------------------ runtime


def runtime_health(executor: str) -> Route:
    return Route.of_json(
        {
            "status": "ok" if executor == "ok" else "degraded",
            "version": "2.4.1",
            "components": {
                "scheduler": {"status": "ok"},
                "executor": {"status": executor},
                "registry": {"status": "ok"},
            },
        }
    )


async def test_runtime_components_and_a_high_risk_tool_needing_another_person() -> None:
    async with serve({"/health": runtime_health("ok")}) as server:
        config = text_of(
            "runtime.toml",
            {
                "127.0.0.1:8200": host_port(server.base_url),
                'argv = ["scripts/': f'argv = ["{SYSTEMS}/scripts/',
            },
        )
        async with running_bot(config) as tb:
            healthy = await tb.exec("/health", as_="carol")
            version = await tb.exec("/version", as_="carol")
            server.routes["/health"] = runtime_health("degraded")
            degraded = await tb.exec("/health", as_="carol")
            restart = await tb.exec("/run restart scheduler", as_="dave")
            viewer = await tb.exec("/run restart scheduler", as_="carol")
            status = await tb.exec("/run status", as_="carol")
            not_theirs = await tb.exec("/run reset-store", as_="carol")
            asked = await tb.exec("/run reset-store", as_="bob")
            request = approval_id(asked)
            own = await tb.exec(f"/approve {request}", as_="bob")
            deployer = await tb.exec(f"/approve {request}", as_="dave")
            pending = await tb.exec("/approvals", as_="alice")
            approved = await tb.exec(f"/approve {request}", as_="alice")
    assert state_of(healthy, "runtime") == "up"
    assert re.search(r"^runtime\s+2\.4\.1\s+ok", version, re.MULTILINE), version
    assert state_of(degraded, "runtime") == "DEGRADED"
    assert "executor: degraded" in degraded and "scheduler" not in degraded
    assert "restart component=scheduler finished" in restart and "scheduler is back" in restart
    assert "action 'restart' needs role" in viewer
    assert "status finished" in status  # a read-only tool: anyone with a role may run it
    assert "action 'reset-store' needs role" in not_theirs
    assert "Approval needed: reset-store" in asked and "finished" not in asked
    assert "you requested this; another person with an approver role" in own
    assert "Denied: /approve needs role oncall" in deployer
    assert request in pending
    assert "reset-store finished" in approved and "store rebuilt" in approved


# ------------------------------------------------------------------ workers


def pool_stats(cpu: float) -> Route:
    return Route.of_json(
        {
            "cpu_percent": cpu,
            "memory_percent": 63,
            "disk_percent": 52,
            "error_rate_pct": 0.4,
            "avg_duration_ms": 180,
        }
    )


@pytest.mark.redis
async def test_workers_queue_thresholds_and_checks(rds: tuple[aioredis.Redis, str]) -> None:
    client, prefix = rds
    tasks, dlq = f"{prefix}analysis_tasks", f"{prefix}analysis_dlq"
    await client.xgroup_create(tasks, "workers", id="$", mkstream=True)
    for i in range(150):
        await client.xadd(tasks, {"task": str(i)})
    await client.xreadgroup("workers", "worker-1", {tasks: ">"}, count=2)
    await client.xadd(dlq, {"task": "poisoned"})
    async with serve({"/stats": pool_stats(95)}) as server:
        config = text_of(
            "workers.toml",
            {
                "redis://127.0.0.1:6379/0": redis_url(),
                '"analysis_tasks"': f'"{tasks}"',
                '"analysis_dlq"': f'"{dlq}"',
                "http://127.0.0.1:9100": server.base_url,
            },
        )
        async with running_bot(config) as tb:
            queue = await tb.exec("/queue", as_="carol")
            workers = await tb.exec("/workers", as_="carol")
            _, cpu_once = await run_check(tb, "workers-cpu")
            _, cpu_fired = await run_check(tb, "workers-cpu")
            server.routes["/stats"] = pool_stats(20)
            _, cpu_resolved = await run_check(tb, "workers-cpu")
            for name in ("memory", "disk", "errors", "latency"):
                assert (await run_check(tb, f"workers-{name}"))[1] == []
            readings = await tb.exec("/checks", as_="bob")
            _, backlog = await run_check(tb, "analysis-backlog")
            _, few_workers = await run_check(tb, "analysis-workers")
            await client.xreadgroup("workers", "worker-2", {tasks: ">"}, count=2)
            _, enough_workers = await run_check(tb, "analysis-workers")
            async with client.pipeline(transaction=False) as pipe:
                for i in range(400):
                    pipe.xadd(tasks, {"task": str(i)})
                await pipe.execute()
            longer = await tb.exec("/queue", as_="carol")
    # queue, group, state, len, pending, lag, oldest, dead, workers
    row = (
        r"^analysis\s+workers\s+(?P<state>.+?)\s+(?P<len>\d+)\s+\d+\s+\d+\s+\S+"
        r"\s+(?P<dead>\d+)\s+(?P<workers>\d+)$"
    )
    first = re.search(row, queue, re.MULTILINE)
    assert first, queue
    assert first["len"] == "150" and first["dead"] == "1" and first["workers"] == "1"
    assert {"WARN len", "WARN dead", "WARN workers"} <= set(first["state"].split("; ")), queue
    assert "analysis/workers: WARN 1 live of 1; want at least 2" in workers
    assert cpu_once == []  # "for = 2"
    assert [c for c, _ in cpu_fired] == ["incident"]
    assert cpu_fired[0][1].startswith("❌ CRITICAL: workers-cpu")
    assert "cpu_percent 95 (warn above 70, critical above 90)" in cpu_fired[0][1]
    assert [c for c, _ in cpu_resolved] == ["incident"]  # under the message that announced it
    assert cpu_resolved[0][1].startswith("✅ RESOLVED: workers-cpu")
    assert "now cpu_percent 20" in cpu_resolved[0][1]
    for reading in (
        "memory_percent 63 (warn above 80, critical above 95)",
        "disk_percent 52 (warn above 80, critical above 95)",
        "error_rate_pct 0.4 (warn above 1, critical above 5)",
        "avg_duration_ms 180 (warn above 500, critical above 2000)",
    ):
        assert reading in readings, readings
    assert [(c, t.splitlines()[0]) for c, t in backlog] == [("ops", "⚠️ WARNING: analysis-backlog")]
    assert "length 150 (warn above 100, critical above 500)" in backlog[0][1]
    assert [(c, t.splitlines()[0]) for c, t in few_workers] == [
        ("ops", "⚠️ WARNING: analysis-workers")
    ]
    assert "workers 1 (warn below 2, critical at 0 or below)" in few_workers[0][1]
    assert enough_workers[0][1].startswith("✅ RESOLVED: analysis-workers")
    second = re.search(row, longer, re.MULTILINE)
    assert second and second["len"] == "550" and "CRIT len" in second["state"], longer
