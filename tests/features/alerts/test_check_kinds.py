"""Check kinds beyond HTTP JSON, and the HTTP request options, end to end through the bot
(``/checks now`` in the console, alerts out to console channels): each kind fires and
resolves against a real thing: a TCP listener opened and closed, the real Redis and
PostgreSQL (reached through a local forwarder the test cuts, or with a figure the test
moves), a local server shaped like Prometheus's ``/api/v1/query`` and a ``/metrics`` page.
Secrets from the environment never show in replies, posts, logs or the audit."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web

from bot.app.config import parse_config
from bot.app.logs import configure_logging
from bot.kernel.errors import ConfigError
from commands import COMMANDS
from tests.botharness import BASE_CONFIG, running_bot
from tests.features.alerts.test_checks import RULES, run_check
from tests.infra import postgres_url, redis_url
from tests.processes import ROOT, clean_env

TOKEN = "tok-3f9a1c77e2b54d08"
API_KEY = "key-8c21d4e9aa7f"
ENV = {"OPSBOT_PROM_TOKEN": TOKEN, "OPSBOT_API_KEY": API_KEY}
BASIC = '{ kind = "basic", user = "opsbot", password = { env = "OPSBOT_PROM_TOKEN" } }'


def check(name: str, kind: str, **keys: object) -> str:
    lines = ["[[checks]]", f'name = "{name}"', f'kind = "{kind}"', 'interval = "1h"']
    lines += [f"{key} = {_toml(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, str) and not value.startswith("{ "):  # "{ …": an inline table
        return json.dumps(value)
    return str(value)


def first_lines(posts: list[tuple[str, str]]) -> list[str]:
    return [text.split("\n")[0] for _, text in posts]


# ------------------------------------------------------------------ local things


@contextlib.asynccontextmanager
async def listener(port: int = 0) -> AsyncIterator[int]:
    """A TCP listener on 127.0.0.1 that accepts and closes; yields its port."""

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Forwarder:
    """A local port that forwards to a real server while ``up``; cut, it refuses."""

    target: tuple[str, int]
    port: int = 0
    _server: asyncio.Server | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        tasks = [
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer)),
        ]
        self._pipes.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._pipes.difference_update(tasks)
            writer.close()
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def forwarding(url: str) -> AsyncIterator[Forwarder]:
    parts = urlsplit(url)
    forwarder = Forwarder((parts.hostname or "127.0.0.1", parts.port or 0))
    await forwarder.start()
    try:
        yield forwarder
    finally:
        if forwarder._server is not None:
            await forwarder.cut()


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return parts._replace(netloc=netloc).geturl()


@dataclass
class Exporter:
    """Prometheus's query API and a /metrics page in one local server; the values are
    what the test sets. Both want the bearer token; /metrics also an API key header."""

    value: str = "1"
    samples: int = 1
    queue_depth: float = 3
    base_url: str = ""
    seen: list[dict[str, str]] = field(default_factory=list)

    async def query(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"status": "error", "error": "unauthorized"}, status=401)
        assert request.query["query"] == 'sum(rate(http_errors_total{job="api"}[5m]))'
        result = [
            {"metric": {"instance": f"i{n}"}, "value": [1.7e9, self.value]}
            for n in range(self.samples)
        ]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": result}}
        )

    async def metrics(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        if request.headers.get("X-Api-Key") != API_KEY:
            return web.Response(status=403, text="forbidden")
        page = (
            "# HELP jobs_queued Jobs waiting.\n# TYPE jobs_queued gauge\n"
            f'jobs_queued{{queue="mail"}} {self.queue_depth}\n'
            'jobs_queued{queue="sms"} 7\n'
            "# TYPE http_requests counter\n"
            'http_requests_total{code="200"} 1027\n'
        )
        return web.Response(text=page, content_type="text/plain")


@contextlib.asynccontextmanager
async def exporter() -> AsyncIterator[Exporter]:
    state = Exporter()
    app = web.Application()
    app.router.add_get("/prom/api/v1/query", state.query)
    app.router.add_get("/metrics", state.metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield state
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------ tcp


async def test_tcp_check_fires_when_the_port_refuses_and_resolves_when_it_listens() -> None:
    async with listener() as port:
        config = BASE_CONFIG + RULES + check("db-port", "tcp", host="127.0.0.1", port=port)
        async with running_bot(config) as tb:
            listening = await run_check(tb, "db-port")
            state = await tb.exec("/checks", as_="bob")
    # The listener is closed: refused; open again on the same port: resolved.
    async with running_bot(config) as tb:
        refused = await run_check(tb, "db-port")
        async with listener(port):
            back = await run_check(tb, "db-port")
    assert listening == []
    assert "db-port" in state and "connect (ms)" in state
    assert first_lines(refused) == ["❌ CRITICAL: db-port"]
    assert f"127.0.0.1:{port}: connection refused" in refused[0][1]
    assert first_lines(back) == ["✅ RESOLVED: db-port"]
    assert "connect (ms)" in back[0][1]


async def test_tcp_check_judges_the_connect_time_when_given_levels() -> None:
    async with listener() as port:
        config = (
            BASE_CONFIG
            + RULES
            + check("slow-port", "tcp", host="127.0.0.1", port=port, warn=-2, critical=-1)
        )
        async with running_bot(config) as tb:
            slow = await run_check(tb, "slow-port")
    # Any connect takes more than -1 ms: the levels are judged, critical.
    assert first_lines(slow) == ["❌ CRITICAL: slow-port"]
    assert "connect (ms)" in slow[0][1] and "critical above -1" in slow[0][1]


# ------------------------------------------------------------------ redis


@pytest.mark.redis
async def test_redis_check_fires_when_ping_fails_and_resolves_and_reads_info_fields() -> None:
    async with forwarding(redis_url()) as forwarder:
        config = (
            BASE_CONFIG
            + RULES
            + check("cache", "redis", redis_url=via(redis_url(), forwarder.port))
            + check(
                "cache-clients",
                "redis",
                redis_url=redis_url(),
                field="connected_clients",
                warn=0,
                critical=1_000_000,
            )
            + check("cache-nofield", "redis", redis_url=redis_url(), field="no_such_field")
        )
        async with running_bot(config) as tb:
            up = await run_check(tb, "cache")
            port = forwarder.port
            await forwarder.cut()
            down = await run_check(tb, "cache")
            forwarder.port = port
            await forwarder.start()
            back = await run_check(tb, "cache")
            clients = await run_check(tb, "cache-clients")
            missing = await run_check(tb, "cache-nofield")
    assert up == []
    assert first_lines(down) == ["❌ CRITICAL: cache"]
    assert f"Redis at 127.0.0.1:{port}:" in down[0][1]
    assert first_lines(back) == ["✅ RESOLVED: cache"]
    assert "Redis PING (ms)" in back[0][1]
    assert first_lines(clients) == ["⚠️ WARNING: cache-clients"]
    assert "Redis INFO connected_clients " in clients[0][1]
    assert "(warn above 0, critical above 1e+06)" in clients[0][1]
    assert "INFO has no field 'no_such_field'" in missing[0][1]


# ------------------------------------------------------------------ postgres


@pytest.mark.postgres
async def test_postgres_check_reads_one_number_read_only_and_within_its_timeout() -> None:
    table = f"opsbot_check_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_url())
    await admin.execute(f"CREATE TABLE {table} (id int)")
    try:
        count = f"SELECT count(*) FROM {table}"
        config = (
            BASE_CONFIG
            + RULES
            + check(
                "failed-jobs",
                "postgres",
                database_url='{ env = "OPSBOT_REPORTS_DB" }',
                query=count,
                warn=1,
                critical=2,
            )
            + check("db-up", "postgres", database_url=postgres_url())
            + check(
                "db-write",
                "postgres",
                database_url=postgres_url(),
                query=f"INSERT INTO {table} VALUES (1) RETURNING 1",
                warn=1,
                critical=2,
            )
            + check(
                "db-slow",
                "postgres",
                database_url=postgres_url(),
                query="SELECT 1 FROM pg_sleep(30)",
                timeout="1s",
                warn=1,
                critical=2,
            )
        )
        env = {"OPSBOT_REPORTS_DB": postgres_url()}
        async with running_bot(config, env=env) as tb:
            calm = await run_check(tb, "failed-jobs")
            await admin.execute(f"INSERT INTO {table} SELECT generate_series(1, 3)")
            fired = await run_check(tb, "failed-jobs")
            await admin.execute(f"DELETE FROM {table}")
            resolved = await run_check(tb, "failed-jobs")
            reachable = await run_check(tb, "db-up")
            written = await run_check(tb, "db-write")
            started = asyncio.get_running_loop().time()
            slow = await run_check(tb, "db-slow")
            took = asyncio.get_running_loop().time() - started
        rows = await admin.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await admin.execute(f"DROP TABLE {table}")
        await admin.close()
    assert calm == []
    assert first_lines(fired) == ["❌ CRITICAL: failed-jobs"]
    assert "query value 3 (warn above 1, critical above 2)" in fired[0][1]
    assert first_lines(resolved) == ["✅ RESOLVED: failed-jobs"]
    assert reachable == []
    assert first_lines(written) == ["❌ CRITICAL: db-write"]
    assert "read-only transaction" in written[0][1]
    assert rows == 0  # the INSERT never happened
    assert first_lines(slow) == ["❌ CRITICAL: db-slow"]
    assert "timed out after 1 s" in slow[0][1] or "ran past 1 s" in slow[0][1]
    assert took < 5


# ------------------------------------------------------------------ prometheus, metrics


PROMQL = 'sum(rate(http_errors_total{job="api"}[5m]))'


async def test_prometheus_check_fires_resolves_and_wants_exactly_one_sample() -> None:
    async with exporter() as prom:
        auth = '{ kind = "bearer", token = { env = "OPSBOT_PROM_TOKEN" } }'
        config = (
            BASE_CONFIG
            + RULES
            + check(
                "api-errors",
                "prometheus",
                url=f"{prom.base_url}/prom",
                query=PROMQL,
                warn=1,
                critical=5,
                auth=auth,
            )
            + check(
                "api-errors-noauth",
                "prometheus",
                url=f"{prom.base_url}/prom",
                query=PROMQL,
                warn=1,
                critical=5,
            )
        )
        async with running_bot(config, env=ENV) as tb:
            calm = await run_check(tb, "api-errors")
            prom.value = "7.5"
            fired = await run_check(tb, "api-errors")
            prom.samples = 3
            several = await run_check(tb, "api-errors")
            prom.samples, prom.value = 1, "0.2"
            resolved = await run_check(tb, "api-errors")
            refused = await run_check(tb, "api-errors-noauth")
    assert calm == []
    assert first_lines(fired) == ["❌ CRITICAL: api-errors"]
    assert f"{PROMQL} 7.5 (warn above 1, critical above 5)" in fired[0][1]
    # Three samples: an error, still critical (on_error), and said so in /checks.
    assert several == []
    assert first_lines(resolved) == ["✅ RESOLVED: api-errors"]
    assert first_lines(refused) == ["❌ CRITICAL: api-errors-noauth"]
    assert "Prometheus refused the query (HTTP 401): unauthorized" in refused[0][1]


async def test_prometheus_check_says_how_many_samples_came_back() -> None:
    async with exporter() as prom:
        prom.samples = 3
        auth = '{ kind = "bearer", token = { env = "OPSBOT_PROM_TOKEN" } }'
        config = (
            BASE_CONFIG
            + RULES
            + check(
                "api-errors",
                "prometheus",
                url=f"{prom.base_url}/prom",
                query=PROMQL,
                warn=1,
                critical=5,
                auth=auth,
            )
        )
        async with running_bot(config, env=ENV) as tb:
            posts = await run_check(tb, "api-errors")
    assert first_lines(posts) == ["❌ CRITICAL: api-errors"]
    assert "the query gives 3 samples" in posts[0][1]
    assert 'instance="i0"' in posts[0][1]


async def test_metrics_check_picks_one_sample_by_name_and_labels() -> None:
    async with exporter() as page:
        headers = '{ X-Api-Key = { env = "OPSBOT_API_KEY" } }'
        url = f"{page.base_url}/metrics"
        config = (
            BASE_CONFIG
            + RULES
            + check(
                "mail-queue",
                "metrics",
                url=url,
                metric="jobs_queued",
                metric_labels='{ queue = "mail" }',
                warn=10,
                critical=100,
                headers=headers,
            )
            + check(
                "any-queue",
                "metrics",
                url=url,
                metric="jobs_queued",
                warn=1,
                critical=2,
                headers=headers,
            )
            + check(
                "counter",
                "metrics",
                url=url,
                metric="http_requests_total",
                warn=1e9,
                critical=2e9,
                headers=headers,
            )
            + check("no-key", "metrics", url=url, metric="jobs_queued", warn=1, critical=2)
        )
        async with running_bot(config, env=ENV) as tb:
            calm = await run_check(tb, "mail-queue")
            page.queue_depth = 42
            fired = await run_check(tb, "mail-queue")
            page.queue_depth = 2
            resolved = await run_check(tb, "mail-queue")
            several = await run_check(tb, "any-queue")
            counter = await run_check(tb, "counter")
            forbidden = await run_check(tb, "no-key")
    assert calm == []
    assert first_lines(fired) == ["⚠️ WARNING: mail-queue"]
    assert 'jobs_queued{queue="mail"} 42 (warn above 10, critical above 100)' in fired[0][1]
    assert first_lines(resolved) == ["✅ RESOLVED: mail-queue"]
    assert "2 samples of 'jobs_queued' match; add labels to pick one" in several[0][1]
    assert counter == []  # a counter's sample name (…_total) is found
    assert "the endpoint answered HTTP 403" in forbidden[0][1]


# ------------------------------------------------------------------ request options, secrets


async def test_http_json_sends_method_headers_body_and_auth_and_never_shows_the_secrets() -> None:
    seen: list[tuple[str, dict[str, str], str]] = []

    async def stats(request: web.Request) -> web.Response:
        seen.append((request.method, dict(request.headers), await request.text()))
        if request.headers.get("X-Api-Key") != API_KEY:
            return web.json_response(
                {"error": f"bad key {request.headers.get('X-Api-Key')}"}, status=401
            )
        return web.json_response({"cpu": 95}, status=202)

    app = web.Application()
    app.router.add_route("*", "/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/stats"
    buffer = io.StringIO()
    configure_logging("debug", "json", buffer)
    try:
        config = (
            BASE_CONFIG
            + RULES
            + check(
                "api-cpu",
                "http_json",
                url=url,
                field="cpu",
                warn=70,
                critical=90,
                method="POST",
                body='{"probe": true}',
                headers='{ X-Api-Key = { env = "OPSBOT_API_KEY" }, Accept = "application/json" }',
                auth=BASIC,
                expect_status=[202],
            )
        )
        async with running_bot(config, env=ENV) as tb:
            fired = await run_check(tb, "api-cpu")
            listing = await tb.exec("/checks", as_="bob")
            echo = await tb.exec(f"/echo {API_KEY} {TOKEN}", as_="bob")
            audited = await tb.audit()
    finally:
        await runner.cleanup()
    method, headers, body = seen[0]
    assert (method, body) == ("POST", '{"probe": true}')
    assert headers["X-Api-Key"] == API_KEY
    assert headers["Accept"] == "application/json"
    assert headers["Authorization"].startswith("Basic ")
    assert first_lines(fired) == ["❌ CRITICAL: api-cpu"]
    shown = [text for _, text in fired] + [listing, echo, buffer.getvalue()]
    shown += [repr(entry) for entry in audited]
    for text in shown:
        assert API_KEY not in text and TOKEN not in text, text


def test_a_missing_environment_variable_is_a_config_error_naming_key_and_variable() -> None:
    config = (
        BASE_CONFIG
        + check(
            "api-errors",
            "prometheus",
            url="http://127.0.0.1:9/",
            query="up",
            warn=1,
            critical=2,
            auth='{ kind = "bearer", token = { env = "OPSBOT_NOT_SET" } }',
        )
        + check(
            "c",
            "http_json",
            url="http://127.0.0.1:9/",
            field="x",
            warn=1,
            critical=2,
            headers='{ Authorization = "Bearer abc123" }',
        )
        + check("d", "tcp", host="127.0.0.1", port=9, headers='{ A = "b" }')
        + check("e", "redis", redis_url='{ env = "HOME" }')
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(config, "test", {"OPSBOT_UNRELATED": "x"}, [c.name for c in COMMANDS])
    problems = "\n".join(raised.value.problems)
    assert "checks[0].auth.bearer.token: environment variable OPSBOT_NOT_SET is not set" in problems
    assert "headers.Authorization: a credential" in problems
    assert "abc123" not in problems
    assert "'headers' does not apply to kind 'tcp'" in problems
    assert "checks[3].redis_url: environment variable 'HOME' must start with OPSBOT_" in problems


# ------------------------------------------------------------------ the real CLI

CLI_CONFIG = """
[console]
principal = "alice"
channel = "ops"
[roles.oncall]
[identities.alice]
roles = ["oncall"]
ids = ["console:alice"]
[channels.ops]
ids = ["console:ops"]
[policy]
admin_roles = ["oncall"]
[policy.commands.checks]
roles = ["oncall"]
"""


async def test_the_opsbot_command_reads_a_checks_secret_from_its_environment(
    tmp_path: Path,
) -> None:
    """Through ``python -m bot``: the variable comes from the real environment, the check
    runs with it, and neither the answer nor check-config shows it; unset, start-up
    stops naming the key and the variable."""
    async with exporter() as page:
        config = tmp_path / "opsbot.toml"
        config.write_text(
            CLI_CONFIG
            + check(
                "mail-queue",
                "metrics",
                url=f"{page.base_url}/metrics",
                metric="jobs_queued",
                metric_labels='{ queue = "mail" }',
                warn=1,
                critical=100,
                headers='{ X-Api-Key = { env = "OPSBOT_API_KEY" } }',
                channels=["ops"],
            )
        )
        env = clean_env(OPSBOT_DATA_DIR=str(tmp_path), OPSBOT_API_KEY=API_KEY)
        console = "console", "--no-http", "--config", str(config), "-c", "/checks now mail-queue"
        ran = await _opsbot(*console, env=env)
        checked = await _opsbot("check-config", str(config), env=env)
        unset = await _opsbot("check-config", str(config), env=clean_env())
    assert 'jobs_queued{queue="mail"} 3 (warn above 1, critical above 100)' in ran[1], ran
    assert page.seen and all(seen.get("X-Api-Key") == API_KEY for seen in page.seen)
    assert checked[0] == 0, checked
    for _, out, errors in (ran, checked, unset):
        assert API_KEY not in out + errors
    assert unset[0] == 78
    assert "checks[0].headers.X-Api-Key: environment variable OPSBOT_API_KEY is not set" in unset[2]


async def _opsbot(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, errors = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), errors.decode()


async def test_a_metrics_page_past_its_limit_is_refused_not_read_whole() -> None:
    from bot.features.probes.readers import MAX_METRICS_BYTES
    from tests.httpfakes import Route, serve

    line = b'big_metric{n="0000000000"} 1\n'
    page = line * (MAX_METRICS_BYTES // len(line) + 10)
    async with serve({"/metrics": Route(body=page)}) as server:
        config = (
            BASE_CONFIG
            + RULES
            + check("big", "metrics", url=server.url("/metrics"), metric="x", warn=1, critical=2)
        )
        async with running_bot(config) as tb:
            posts = await run_check(tb, "big")
    assert first_lines(posts) == ["❌ CRITICAL: big"]
    assert "the page is larger than 4 MiB" in posts[0][1]


async def test_opsbot_run_fires_and_resolves_a_tcp_and_a_metrics_check(tmp_path: Path) -> None:
    """A real ``opsbot run``: its scheduler runs the checks (every 10 s, the least), each
    fires on its first run and resolves on the next; its log never holds the secret."""
    async with listener() as free_port:
        pass  # a port that was free: nothing listens on it now
    async with exporter() as page:
        page.queue_depth = 500
        config = tmp_path / "opsbot.toml"
        text = (
            f'[bot]\ndata_dir = "{tmp_path}"\nlog_format = "json"\n[http]\nenabled = false\n'
            + CLI_CONFIG
            + check("port", "tcp", host="127.0.0.1", port=free_port, channels=["ops"])
            + check(
                "mail-queue",
                "metrics",
                url=f"{page.base_url}/metrics",
                metric="jobs_queued",
                metric_labels='{ queue = "mail" }',
                warn=10,
                critical=100,
                headers='{ X-Api-Key = { env = "OPSBOT_API_KEY" } }',
                channels=["ops"],
            )
        )
        config.write_text(text.replace('interval = "1h"', 'interval = "10s"'))
        log_path = tmp_path / "run.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "run",
                "--config",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
                env=clean_env(OPSBOT_API_KEY=API_KEY),
            )
            try:
                fired = await _logged(log_path, "check.fired", 2, within=20)
                page.queue_depth = 1
                async with listener(free_port):
                    resolved = await _logged(log_path, "check.resolved", 2, within=15)
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 15)
    text = log_path.read_text()
    assert sorted(e["check"] for e in fired) == ["mail-queue", "port"], text[-3000:]
    assert sorted(e["check"] for e in resolved) == ["mail-queue", "port"], text[-3000:]
    assert API_KEY not in text


async def _logged(path: Path, event: str, count: int, *, within: float) -> list[dict[str, Any]]:
    """The first ``count`` log events named ``event``, waited for up to ``within`` s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = _events(path, event)
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found[:count]
        await asyncio.sleep(0.2)


def _events(path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


def test_a_check_url_that_is_not_http_is_a_config_error_naming_the_key() -> None:
    config = BASE_CONFIG + check(
        "api", "prometheus", url="ftp://prom", query="up", warn=1, critical=2
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(config, "test", {}, [c.name for c in COMMANDS])
    assert "checks[0].url: 'ftp://prom' is not an http:// or https:// URL" in raised.value.problems
