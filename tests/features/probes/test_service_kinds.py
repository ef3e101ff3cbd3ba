"""``[[services]]`` beyond an HTTP GET: kinds tcp, redis and postgres in /health (up or
down, with the time it took), and HTTP services asked with a method, headers from the
environment, a body, auth and an expected status."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from bot.kernel.reply import Status
from tests.botharness import BASE_CONFIG, running_bot
from tests.features.alerts.test_check_kinds import listener
from tests.httpfakes import Route, refused_url, serve
from tests.infra import postgres_url, redis_url

RULE = '[policy.commands.health]\nroles = ["oncall"]\nchannels = ["ops"]\n'
KEY = "svc-key-5e0c9b1d"


def service(name: str, **keys: object) -> str:
    lines = ["[[services]]", f'name = "{name}"']
    lines += [
        f"{k} = {v if isinstance(v, int) or str(v).startswith(('{ ', '[')) else json.dumps(v)}"
        for k, v in keys.items()
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.redis
@pytest.mark.postgres
async def test_health_lists_tcp_redis_and_postgres_services_up_and_down() -> None:
    async with listener() as port:
        config = (
            BASE_CONFIG
            + RULE
            + service("ledger-port", kind="tcp", host="127.0.0.1", port=port, timeout="2s")
            + service("closed-port", kind="tcp", host="127.0.0.1", port=1, timeout="2s")
            + service("cache", kind="redis", redis_url=redis_url())
            + service("cache-gone", kind="redis", redis_url="redis://127.0.0.1:1/0")
            + service("reports-db", kind="postgres", database_url='{ env = "OPSBOT_DB" }')
        )
        async with running_bot(config, env={"OPSBOT_DB": postgres_url()}) as tb:
            reply = await tb.send("/health", as_="bob")
            one = await tb.send("/health reports-db", as_="bob")
    assert reply is not None and reply.table is not None
    assert reply.status is Status.ERROR
    assert reply.title == "Health: 3 up, 2 down"
    rows = {row[0]: row for row in reply.table.rows}
    assert rows["ledger-port"][1:3] == ("up", "tcp")
    assert rows["ledger-port"][3].endswith(" ms")
    assert rows["closed-port"][1:3] == ("DOWN", "tcp")
    assert rows["closed-port"][4] == "127.0.0.1:1: connection refused"
    assert rows["cache"][1:3] == ("up", "redis")
    assert rows["cache-gone"][1] == "DOWN"
    assert rows["cache-gone"][4] == "Redis at 127.0.0.1:1: connection refused"
    assert rows["reports-db"][1:3] == ("up", "postgres")
    assert one is not None and one.title == "Health: 1 up"


async def test_an_http_service_is_asked_with_its_method_headers_body_and_expected_status() -> None:
    seen: list[tuple[str, str | None, str | None, str]] = []

    async def health(request: web.Request) -> web.Response:
        seen.append(
            (
                request.method,
                request.headers.get("X-Api-Key"),
                request.headers.get("Authorization"),
                await request.text(),
            )
        )
        if request.headers.get("X-Api-Key") != KEY:
            return web.Response(status=401, text=f"unknown key {request.headers.get('X-Api-Key')}")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/health"
    options = {
        "method": "POST",
        "body": "ping",
        "headers": '{ X-Api-Key = { env = "OPSBOT_SVC_KEY" } }',
        "expect_status": "[204]",
    }
    try:
        config = (
            BASE_CONFIG
            + RULE
            + service("api", health_url=url, **options)
            + service("api-default", health_url=url)
            + service("api-wrong", health_url=url, headers='{ X-Api-Key = "nope" }')
        )
        async with running_bot(config, env={"OPSBOT_SVC_KEY": KEY}) as tb:
            reply = await tb.send("/health", as_="bob")
            audited = await tb.audit()
    finally:
        await runner.cleanup()
    assert reply is not None and reply.table is not None
    rows = {row[0]: row for row in reply.table.rows}
    assert rows["api"][1:3] == ("up", "204")
    assert rows["api-default"][1:3] == ("DOWN", "401")  # no key, GET, any 2xx
    assert rows["api-wrong"][1:3] == ("DOWN", "401")
    assert ("POST", KEY, None, "ping") in seen
    assert ("GET", None, None, "") in seen
    assert all(KEY not in repr(entry) for entry in audited)


def test_service_kinds_are_checked_at_start_up() -> None:
    from bot.app.config import parse_config
    from bot.kernel.errors import ConfigError
    from commands import COMMANDS

    config = (
        BASE_CONFIG
        + service("a", kind="tcp", host="127.0.0.1")
        + service("b", kind="redis", redis_url="redis://x/0", method="POST")
        + service("c", kind="postgres", database_url="mysql://x/db")
        + service("d", health_url=refused_url(), body="x")
        + service("e", kind="http")
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(config, "test", {}, [c.name for c in COMMANDS])
    problems = raised.value.problems
    assert "services[0]: kind 'tcp' needs 'port'" in problems
    assert "services[1]: 'method' does not apply to kind 'redis'" in problems
    assert any(
        p.startswith("services[2].database_url: must start with postgresql://") for p in problems
    )
    assert "services[3]: a body needs POST, PUT or PATCH, not GET" in problems
    assert "services[4]: kind 'http' needs 'health_url'" in problems


async def test_configured_headers_never_follow_a_redirect_to_another_host() -> None:
    async with serve({"/h": Route.of_json({"status": "ok"})}) as other:
        # The same server under another name is another origin.
        elsewhere = other.url("/h").replace("127.0.0.1", "localhost")
        async with serve({"/health": Route.redirect(elsewhere)}) as server:
            config = (
                BASE_CONFIG
                + RULE
                + service(
                    "api",
                    health_url=server.url("/health"),
                    headers='{ X-Api-Key = { env = "OPSBOT_K" } }',
                )
                + service("plain", health_url=server.url("/health"))
            )
            async with running_bot(config, env={"OPSBOT_K": KEY}) as tb:
                reply = await tb.send("/health", as_="bob")
    assert reply is not None and reply.table is not None
    rows = {row[0]: row for row in reply.table.rows}
    assert rows["api"][1] == "DOWN"
    assert "redirected to another host" in rows["api"][4]
    assert rows["plain"][1:3] == ("up", "200")  # nothing to leak: followed
    assert all(r.headers.get("X-Api-Key") is None for r in other.requests)
