"""bot.features.probes against real local HTTP servers (tests/httpfakes.py)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from bot.features.probes import (
    HealthResult,
    HealthState,
    ProbeTarget,
    ResponseShape,
    VersionResult,
    fetch_all_versions,
    fetch_version,
    probe_all,
    probe_health,
)
from tests.httpfakes import FakeServer, Route, refused_url, serve

RID = "req-7f3a"


async def probe(
    route: Route, shape: ResponseShape = ResponseShape.AUTO, timeout_s: float = 5.0
) -> HealthResult:
    async with serve({"/health": route}) as server, httpx.AsyncClient() as client:
        target = ProbeTarget("svc", server.url("/health"), timeout_s, shape)
        return await probe_health(client, target, request_id=RID)


async def version_of(route: Route, timeout_s: float = 5.0) -> VersionResult:
    async with serve({"/version": route}) as server, httpx.AsyncClient() as client:
        return await fetch_version(client, "svc", server.url("/version"), timeout_s, request_id=RID)


# --- health: plain and JSON shapes -----------------------------------------


async def test_plain_200_is_up() -> None:
    result = await probe(Route(body="OK"))
    assert result.service == "svc"
    assert result.state is HealthState.UP
    assert result.http_status == 200
    assert result.detail == "ok"
    assert result.failing_components == ()
    assert result.latency_ms > 0


async def test_json_status_ok_is_up() -> None:
    result = await probe(Route.of_json({"status": "ok"}))
    assert (result.state, result.http_status, result.detail) == (HealthState.UP, 200, "ok")


async def test_degraded_json_lists_failing_components_sorted() -> None:
    body = {
        "status": "degraded",
        "components": {
            "db": {"status": "healthy"},
            "queue": "unhealthy",
            "cache": {"status": "Degraded"},
        },
    }
    result = await probe(Route.of_json(body))
    assert result.state is HealthState.DEGRADED
    assert result.failing_components == ("cache: degraded", "queue: unhealthy")
    assert "degraded" in result.detail


async def test_unhealthy_json_under_200_is_down() -> None:
    result = await probe(Route.of_json({"status": "unhealthy"}))
    assert result.state is HealthState.DOWN
    assert result.http_status == 200
    assert result.detail == "reported unhealthy"


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("UP", HealthState.UP),
        ("Passing", HealthState.UP),
        ("green", HealthState.UP),
        ("alive", HealthState.UP),  # a liveness endpoint's word
        ("warn", HealthState.DEGRADED),
        ("YELLOW", HealthState.DEGRADED),
        ("fail", HealthState.DOWN),
        ("critical", HealthState.DOWN),
        ("OUT_OF_SERVICE", HealthState.DOWN),
    ],
)
async def test_status_words_case_insensitive(word: str, state: HealthState) -> None:
    assert (await probe(Route.of_json({"status": word}))).state is state


async def test_unknown_status_judged_by_http_and_mentioned() -> None:
    result = await probe(Route.of_json({"status": "meh"}))
    assert result.state is HealthState.UP
    assert result.detail == 'unrecognised status "meh"'


async def test_status_derived_from_components_when_missing() -> None:
    body = {"components": {"db": {"status": "up"}, "disk": {"status": "down"}}}
    result = await probe(Route.of_json(body))
    assert result.state is HealthState.DOWN
    assert result.failing_components == ("disk: down",)


async def test_ietf_checks_style() -> None:
    body = {
        "status": "warn",
        "checks": {
            "db:responseTime": [{"status": "pass"}, {"status": "warn"}],
            "uptime": [{"status": "pass"}],
        },
    }
    result = await probe(Route(body=json.dumps(body), content_type="application/health+json"))
    assert result.state is HealthState.DEGRADED
    assert result.failing_components == ("db:responseTime: warn",)


async def test_json_without_status_judged_by_http() -> None:
    assert (await probe(Route.of_json({"uptime": 12}))).state is HealthState.UP
    assert (await probe(Route.of_json(["ok"]))).state is HealthState.UP


async def test_503_plain_is_down() -> None:
    result = await probe(Route(status=503, body="Service Unavailable"))
    assert (result.state, result.http_status, result.detail) == (
        HealthState.DOWN,
        503,
        "HTTP 503",
    )


async def test_503_with_json_lists_failing_components() -> None:
    body = {"status": "unhealthy", "components": {"db": {"status": "unhealthy"}, "api": "ok"}}
    result = await probe(Route.of_json(body, status=503))
    assert result.state is HealthState.DOWN
    assert result.http_status == 503
    assert result.failing_components == ("db: unhealthy",)
    assert result.detail == "HTTP 503, reported unhealthy"


async def test_503_wins_over_a_body_saying_ok() -> None:
    result = await probe(Route.of_json({"status": "ok"}, status=503))
    assert (result.state, result.detail) == (HealthState.DOWN, "HTTP 503")


async def test_404_is_down() -> None:
    result = await probe(Route(status=404, body="nope"))
    assert (result.state, result.http_status, result.detail) == (
        HealthState.DOWN,
        404,
        "HTTP 404",
    )


async def test_non_json_200_under_json_shape_is_down() -> None:
    result = await probe(
        Route(body="<html>maintenance</html>", content_type="text/html"), ResponseShape.JSON
    )
    assert result.state is HealthState.DOWN
    assert result.http_status == 200
    assert result.detail == "expected a JSON body"


async def test_non_json_200_under_auto_is_up() -> None:
    result = await probe(Route(body="<html>fine</html>", content_type="text/html"))
    assert result.state is HealthState.UP


async def test_http_shape_ignores_body() -> None:
    result = await probe(Route.of_json({"status": "unhealthy"}), ResponseShape.HTTP)
    assert (result.state, result.detail) == (HealthState.UP, "ok")


async def test_declared_json_that_does_not_parse_is_down() -> None:
    result = await probe(Route(body='{"status": "ok"', content_type="application/json"))
    assert (result.state, result.detail) == (HealthState.DOWN, "invalid JSON body")


async def test_deeply_nested_json_does_not_crash() -> None:
    result = await probe(Route(body="[" * 50_000, content_type="application/json"))
    assert (result.state, result.detail) == (HealthState.DOWN, "invalid JSON body")


async def test_oversized_json_body_is_down_not_a_crash() -> None:
    # The verdict could be past the cut, so it must not be called UP.
    huge = '{"pad": "' + "x" * (4 * 1024 * 1024) + '", "status": "unhealthy"}'
    result = await probe(Route(body=huge, content_type="application/json"))
    assert result.state is HealthState.DOWN
    assert result.http_status == 200
    assert result.detail == "body larger than 64 KiB"


async def test_oversized_html_body_is_judged_by_http_status() -> None:
    huge = "<html>" + "x" * (4 * 1024 * 1024) + "</html>"
    result = await probe(Route(body=huge, content_type="text/html"))
    assert (result.state, result.http_status, result.detail) == (HealthState.UP, 200, "ok")


async def test_server_strings_are_cleaned_for_chat() -> None:
    body = {"status": "degraded", "components": {"d\nb": "bad\x1b[31m" + "x" * 200}}
    result = await probe(Route.of_json(body))
    (failing,) = result.failing_components
    assert "\n" not in failing
    assert "\x1b" not in failing
    assert len(failing) < 100


# --- health: network failures, timeouts, redirects ---------------------------


async def test_hanging_server_times_out() -> None:
    result = await probe(Route(hang=True), timeout_s=0.3)
    assert result.state is HealthState.DOWN
    assert result.http_status is None
    assert result.detail == "timed out after 0.3 s"
    assert 250 <= result.latency_ms < 1500


async def test_trickling_body_is_bounded_by_the_total_timeout() -> None:
    # Each byte arrives well within any per-read timeout; only the total bound catches it.
    route = Route.of_json({"status": "ok", "pad": "x" * 100})
    route = Route(body=route.body, content_type="application/json", trickle_s=0.05)
    started = time.perf_counter()
    result = await probe(route, timeout_s=0.5)
    assert time.perf_counter() - started < 1.5
    assert (result.state, result.detail) == (HealthState.DOWN, "timed out after 0.5 s")


async def test_hanging_service_does_not_delay_the_others() -> None:
    routes = {"/hang": Route(hang=True), "/ok": Route(body="OK")}
    async with serve(routes) as server, httpx.AsyncClient() as client:
        targets = [
            ProbeTarget("hanging", server.url("/hang"), 0.5),
            ProbeTarget("healthy", server.url("/ok"), 5.0),
        ]
        started = time.perf_counter()
        hanging, healthy = await probe_all(client, targets, request_id=RID)
        elapsed = time.perf_counter() - started
    assert elapsed < 1.5
    assert (hanging.service, hanging.state) == ("hanging", HealthState.DOWN)
    assert "timed out after 0.5 s" in hanging.detail
    assert (healthy.service, healthy.state) == ("healthy", HealthState.UP)


async def test_connection_refused() -> None:
    async with httpx.AsyncClient() as client:
        target = ProbeTarget("svc", refused_url("/health"), 2.0)
        result = await probe_health(client, target, request_id=RID)
    assert result.state is HealthState.DOWN
    assert result.http_status is None
    assert result.detail == "connection refused"


async def test_tls_error_is_reported() -> None:
    async with serve({"/health": Route(body="OK")}) as server, httpx.AsyncClient() as client:
        url = server.url("/health").replace("http://", "https://")
        result = await probe_health(client, ProbeTarget("svc", url, 2.0), request_id=RID)
    assert result.state is HealthState.DOWN
    assert result.detail.startswith("TLS error")


async def test_invalid_url_is_down_not_raised() -> None:
    async with httpx.AsyncClient() as client:
        target = ProbeTarget("svc", "ftp://127.0.0.1/health", 1.0)
        result = await probe_health(client, target, request_id=RID)
    assert (result.state, result.detail) == (HealthState.DOWN, "invalid or unsupported URL")


async def test_request_id_header_is_sent() -> None:
    async with serve({"/health": Route(body="OK")}) as server, httpx.AsyncClient() as client:
        await probe_health(client, ProbeTarget("svc", server.url("/health"), 2.0), request_id=RID)
    (request,) = server.requests
    assert request.method == "GET"
    assert request.headers["x-request-id"] == RID


async def test_redirect_is_followed_with_request_id() -> None:
    routes = {"/old": Route.redirect("/health"), "/health": Route.of_json({"status": "ok"})}
    async with serve(routes) as server, httpx.AsyncClient() as client:
        target = ProbeTarget("svc", server.url("/old"), 2.0)
        result = await probe_health(client, target, request_id=RID)
    assert (result.state, result.http_status) == (HealthState.UP, 200)
    assert [r.headers["X-Request-ID"] for r in server.requests_to("/health")] == [RID]


async def test_three_redirects_are_followed_four_are_not() -> None:
    routes = {
        "/r4": Route.redirect("/r3"),
        "/r3": Route.redirect("/r2", status=301),
        "/r2": Route.redirect("/r1", status=307),
        "/r1": Route.redirect("/health", status=308),
        "/health": Route(body="OK"),
    }
    async with serve(routes) as server, httpx.AsyncClient() as client:
        three, four = await probe_all(
            client,
            [
                ProbeTarget("three", server.url("/r3"), 2.0),
                ProbeTarget("four", server.url("/r4"), 2.0),
            ],
            request_id=RID,
        )
    assert three.state is HealthState.UP
    assert (four.state, four.detail) == (HealthState.DOWN, "too many redirects (more than 3)")


async def test_probe_all_preserves_order_and_isolates_failures() -> None:
    routes = {
        "/slow": Route(body="OK", delay_s=0.3),
        "/down": Route(status=500),
        "/fast": Route.of_json({"status": "ok"}),
    }
    async with serve(routes) as server, httpx.AsyncClient() as client:
        targets = [
            ProbeTarget("slow", server.url("/slow"), 2.0),
            ProbeTarget("refused", refused_url(), 2.0),
            ProbeTarget("down", server.url("/down"), 2.0),
            ProbeTarget("fast", server.url("/fast"), 2.0),
        ]
        results = await probe_all(client, targets, request_id=RID)
    assert [(r.service, r.state) for r in results] == [
        ("slow", HealthState.UP),
        ("refused", HealthState.DOWN),
        ("down", HealthState.DOWN),
        ("fast", HealthState.UP),
    ]
    assert {r.headers["X-Request-ID"] for r in server.requests} == {RID}


async def test_probe_all_of_nothing() -> None:
    async with httpx.AsyncClient() as client:
        assert await probe_all(client, [], request_id=RID) == []


async def test_cancellation_propagates() -> None:
    async with serve({"/hang": Route(hang=True)}) as server, httpx.AsyncClient() as client:
        target = ProbeTarget("svc", server.url("/hang"), 30.0)
        task = asyncio.create_task(probe_all(client, [target], request_id=RID))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- version -------------------------------------------------------------------


async def test_version_from_json() -> None:
    result = await version_of(Route.of_json({"version": "1.4.2", "name": "api"}))
    assert (result.version, result.http_status, result.detail) == ("1.4.2", 200, "ok")
    assert result.service == "svc"


@pytest.mark.parametrize(
    ("document", "version"),
    [
        ({"build": {"version": "2.0.0", "artifact": "api"}}, "2.0.0"),
        ({"app": {"version": 3}}, "3"),
        ({"git": {"commit": {"id": "abc1234", "time": "2024-01-01"}}}, "abc1234"),
        ({"git": {"commit": "def5678"}}, "def5678"),
        ("9.9.9", "9.9.9"),
    ],
)
async def test_version_from_nested_json(document: object, version: str) -> None:
    assert (await version_of(Route.of_json(document))).version == version


async def test_version_json_without_version_field() -> None:
    result = await version_of(Route.of_json({"name": "api", "version": True}))
    assert (result.version, result.detail) == (None, "no version field in JSON body")


async def test_version_from_text() -> None:
    result = await version_of(Route(body="\n\n   v5.1.0-rc1  \nbuilt by ci\n"))
    assert (result.version, result.detail) == ("v5.1.0-rc1", "ok")


async def test_version_text_is_truncated_to_80_chars() -> None:
    result = await version_of(Route(body="x" * 500))
    assert result.version is not None
    assert len(result.version) == 80


async def test_version_missing_endpoint() -> None:
    async with serve({}) as server, httpx.AsyncClient() as client:
        result = await fetch_version(client, "svc", server.url("/version"), 2.0, request_id=RID)
    assert (result.version, result.http_status, result.detail) == (None, 404, "HTTP 404")


async def test_version_refused() -> None:
    async with httpx.AsyncClient() as client:
        result = await fetch_version(client, "svc", refused_url("/version"), 2.0, request_id=RID)
    assert (result.version, result.http_status, result.detail) == (
        None,
        None,
        "connection refused",
    )


async def test_version_unsupported_content_type() -> None:
    result = await version_of(Route(body="<h1>1.0</h1>", content_type="text/html"))
    assert (result.version, result.detail) == (None, "unsupported content type text/html")


async def test_version_hanging_times_out() -> None:
    result = await version_of(Route(hang=True), timeout_s=0.3)
    assert (result.version, result.detail) == (None, "timed out after 0.3 s")


async def test_fetch_all_versions_order_and_request_id() -> None:
    routes = {
        "/a": Route.of_json({"version": "1.0"}, status=200),
        "/b": Route(body="2.0", delay_s=0.2),
    }
    async with serve(routes) as server, httpx.AsyncClient() as client:
        targets = [
            ("b", server.url("/b"), 2.0),
            ("gone", refused_url(), 2.0),
            ("a", server.url("/a"), 2.0),
        ]
        results = await fetch_all_versions(client, targets, request_id=RID)
    assert [(r.service, r.version) for r in results] == [("b", "2.0"), ("gone", None), ("a", "1.0")]
    assert {r.headers["X-Request-ID"] for r in server.requests} == {RID}


async def test_fake_server_records_hanging_requests() -> None:
    # Guards the helper itself: hanging requests are recorded and released on exit.
    server: FakeServer
    async with serve({"/hang": Route(hang=True)}) as server, httpx.AsyncClient() as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url("/hang"), timeout=0.2)
    assert [r.path for r in server.requests] == ["/hang"]
