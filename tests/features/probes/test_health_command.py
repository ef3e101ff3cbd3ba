"""/health and /version in chat, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import time

from bot.kernel.reply import Status
from tests.botharness import BASE_CONFIG, running_bot
from tests.httpfakes import Route, refused_url, serve


def _config(services: list[tuple[str, str, str | None, str]]) -> str:
    blocks = [
        f'[[services]]\nname = "{name}"\nhealth_url = "{health}"\ntimeout = "{timeout}"\n'
        + (f'version_url = "{version}"\n' if version else "")
        for name, health, version, timeout in services
    ]
    rule = '[policy.commands.health]\nroles = ["oncall"]\nchannels = ["ops", "incident"]\n'
    return BASE_CONFIG + "\n" + rule + "\n".join(blocks)


async def test_health_reports_each_shape_and_one_hang_does_not_delay_the_others() -> None:
    routes = {
        "/ok": Route(status=200, body="fine"),
        "/degraded": Route.of_json(
            {"status": "degraded", "components": {"db": {"status": "up"}, "cache": "degraded"}}
        ),
        "/unavailable": Route(status=503, body="maintenance"),
        "/hang": Route(hang=True),
        "/v": Route.of_json({"version": "2.4.1"}),
    }
    async with serve(routes) as server:
        config = _config(
            [
                ("api", server.url("/ok"), server.url("/v"), "2s"),
                ("search", server.url("/degraded"), None, "2s"),
                ("billing", server.url("/unavailable"), None, "2s"),
                ("ledger", server.url("/hang"), None, "0.5s"),
                ("legacy", refused_url("/health"), refused_url("/v"), "2s"),
            ]
        )
        async with running_bot(config) as tb:
            started = time.perf_counter()
            reply = await tb.send("/health", as_="bob")
            elapsed = time.perf_counter() - started
            out = await tb.exec("/version", as_="bob")
            request_ids = {r.headers.get("X-Request-ID") for r in server.requests_to("/ok")}

    assert reply is not None
    assert reply.status is Status.ERROR
    assert reply.title == "Health: 1 up, 1 degraded, 3 down"
    assert reply.table is not None
    rows = {row[0]: row for row in reply.table.rows}
    assert rows["api"][1:3] == ("up", "200")
    assert rows["search"][1] == "DEGRADED"
    assert "cache: degraded" in rows["search"][4]
    assert rows["billing"][1:3] == ("DOWN", "503")
    assert rows["ledger"][1:3] == ("DOWN", "-")
    assert "timed out after 0.5 s" in rows["ledger"][4]
    assert rows["legacy"][4] == "connection refused"
    # all probes run at once: the 0.5 s hang bounds the whole answer
    assert elapsed < 1.5
    assert reply.request_id in request_ids
    assert "api      2.4.1" in out
    # Two services have a version_url; three do not and are not counted as asked.
    assert out.startswith("⚠️ Versions of 2 service(s); 3 without a version_url"), out
    assert "search   -        no version_url configured" in out
    assert "legacy   unknown  connection refused" in out


async def test_health_of_one_service_and_of_an_unknown_one() -> None:
    async with serve({"/ok": Route.of_json({"status": "ok"})}) as server:
        config = _config(
            [("api", server.url("/ok"), None, "1s"), ("web", refused_url(), None, "1s")]
        )
        async with running_bot(config) as tb:
            one = await tb.send("/health api", as_="bob")
            unknown = await tb.exec("/health nope", as_="bob")
    assert one is not None
    assert one.status is Status.OK
    assert one.title == "Health: 1 up"
    assert "unknown service 'nope' (services: api, web). Usage: /health [service]" in unknown


async def test_health_is_denied_outside_its_channels() -> None:
    async with running_bot(_config([])) as tb:
        out = await tb.exec("/health", as_="bob", channel="random")
    assert "Denied: /health is only allowed in one of #incident, #ops" in out
