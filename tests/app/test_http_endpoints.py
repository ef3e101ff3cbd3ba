"""The bot's own HTTP endpoints, over a real socket: liveness, readiness, version, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from bot.app.http_server import HttpServer, build_app
from bot.kernel.errors import DependencyError
from bot.kernel.metrics import Metrics
from bot.kernel.version import __version__
from tests.botharness import BASE_CONFIG, running_bot


async def test_health_ready_version_and_metrics() -> None:
    async with running_bot(serve_http=True) as tb:
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        await tb.exec("/whoami", as_="alice")
        await tb.exec("/whoami", as_="bob")
        await tb.exec("/policy", as_="carol")  # denied: wrong role
        await tb.exec("/nosuch", as_="alice")
        async with httpx.AsyncClient(base_url=base) as client:
            health = await client.get("/health")
            ready = await client.get("/ready")
            version = await client.get("/version")
            metrics = await client.get("/metrics")
            tb.bot.adapters.set("slack", "failed: SLACK_BOT_TOKEN is not set")
            not_ready = await client.get("/ready")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "checks": {"audit": "ok", "adapter:console": "connected"},
    }
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["adapter:slack"].startswith("failed")
    assert version.json() == {"name": "opsbot", "version": __version__}
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'opsbot_commands_total{command="whoami",outcome="ok"} 2.0' in text
    assert 'opsbot_commands_total{command="policy",outcome="denied"} 1.0' in text
    assert 'opsbot_commands_total{command="unknown",outcome="unknown-command"} 1.0' in text
    assert 'opsbot_denials_total{command="policy",rule="policy.commands.policy"} 1.0' in text
    assert 'opsbot_command_duration_seconds_count{command="whoami"} 2.0' in text
    assert 'opsbot_command_duration_seconds_bucket{command="whoami",le="0.005"}' in text
    assert "opsbot_policy_off 0.0" in text
    assert f'opsbot_build_info{{version="{__version__}"}} 1.0' in text


async def test_errors_are_counted() -> None:
    config = BASE_CONFIG + (
        '\n[policy.commands.health]\nroles = ["admin"]\n'
        '[[services]]\nname = "a"\nhealth_url = "http://127.0.0.1:9/"\ntimeout = "1s"\n'
    )
    async with running_bot(config) as tb:
        await tb.exec("/health")
        text = tb.bot.metrics.render().decode()
    # a down service is an answer, not a bot error
    assert 'opsbot_commands_total{command="health",outcome="error"} 1.0' in text
    assert 'opsbot_errors_total{command="health"}' not in text


async def test_a_busy_port_is_a_clear_start_up_error() -> None:
    first = HttpServer(build_app(Metrics(), _ready), "127.0.0.1", 0)
    await first.start()
    try:
        second = HttpServer(build_app(Metrics(), _ready), "127.0.0.1", first.bound_port or 0)
        with pytest.raises(DependencyError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            await second.start()
    finally:
        await first.stop()


async def _ready() -> dict[str, str]:
    return {}


async def test_an_endpoint_that_fails_answers_with_the_request_id_its_log_line_carries() -> None:
    async def boom(_: Request) -> Response:
        raise RuntimeError("secret internals")

    app = build_app(Metrics(), _ready, [Route("/boom", boom, methods=["POST"])])
    server = HttpServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        with capture_logs() as logs:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.bound_port}") as c:
                answer = await c.post("/boom")
    finally:
        await server.stop()
    assert answer.status_code == 500
    body = answer.json()
    assert "secret internals" not in answer.text
    assert re.fullmatch(r"[0-9a-f]{12}", body["request_id"])
    failures = [e for e in logs if e["event"] == "failure"]
    assert [(e["where"], e["request_id"]) for e in failures] == [
        ("http POST /boom", body["request_id"])
    ]
    assert "secret internals" in failures[0]["error"]


async def test_answers_do_not_wait_for_the_clients_delayed_ack() -> None:
    """A JSON answer is written as a head and a body; with Nagle on, the body waited for
    the client's delayed ACK: 40 ms per answer, the whole of an alert's 202 latency."""
    async with running_bot(serve_http=True) as tb:
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            await client.get("/version")  # the connection, first-use imports
            took = []
            for _ in range(10):
                started = time.perf_counter()
                assert (await client.get("/version")).status_code == 200
                took.append(time.perf_counter() - started)
    assert sorted(took)[5] < 0.02, [round(t * 1000, 1) for t in took]


async def test_a_body_that_trickles_in_is_answered_408_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bot.app.http_server.BODY_READ_TIMEOUT_S", 0.3)
    config = BASE_CONFIG + '\n[alerts]\ntoken = "t0k3n-for-slow-clients"\n'
    async with running_bot(config, serve_http=True) as tb:
        assert tb.bot.http_server is not None
        port = tb.bot.http_server.bound_port
        with capture_logs() as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer t0k3n-for-slow-clients\r\nContent-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(4096), 5)
            writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"did not arrive in time" in answer
    assert [e["event"] for e in logs if e["log_level"] in ("error", "critical")] == []
    assert any(e["event"] == "http.slow_client" for e in logs)


async def test_clients_that_send_their_head_a_byte_at_a_time_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slowloris: many connections, each sending its request line a byte at a time."""
    monkeypatch.setattr("bot.app.http_server.HEADER_READ_TIMEOUT_S", 0.5)
    async with running_bot(serve_http=True) as tb:
        assert tb.bot.http_server is not None
        port = tb.bot.http_server.bound_port
        with capture_logs() as logs:
            streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
            closed_by_server = 0
            for tick in range(15):  # 1.5 s of a byte every 0.1 s
                for _, writer in streams:
                    with contextlib.suppress(ConnectionError):
                        writer.write(b"GET /health HTTP/1.1\r\n"[tick : tick + 1])
                await asyncio.sleep(0.1)
            for reader, writer in streams:
                try:
                    closed_by_server += await asyncio.wait_for(reader.read(100), 2) == b""
                except ConnectionError:
                    closed_by_server += 1  # reset: closed by the server too
                writer.close()
            # The bot still answers everyone else.
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base) as client:
                assert (await client.get("/health")).status_code == 200
    assert closed_by_server == 50
    assert sum(e["event"] == "http.slow_client" for e in logs) == 50
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
