"""Reading one thing that is not a plain HTTP health endpoint: a TCP port, a Redis server
(PING, an ``INFO`` field), a PostgreSQL database (a query returning one number), a
Prometheus instant query and a metric of a Prometheus text endpoint.

Each read is bounded: in time (``timeout_s`` over the whole exchange), in what is read
(HTTP bodies are cut at a limit and refused past it, a query's rows are fetched two at
most) and in CPU on the event loop (the text format is parsed in a thread). A failure is
:class:`ProbeFailed` with one line for the channel that names no URL and no secret.
Shared by ``/health`` (services of kind tcp, redis, postgres) and checks.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from msgspec import Struct
from pydantic import SecretStr

from bot.features.probes.request import HttpRequest
from bot.kernel.errors import exception_causes

if TYPE_CHECKING:
    import httpx
    import redis.asyncio as aioredis

__all__ = [
    "MAX_METRICS_BYTES",
    "ProbeFailed",
    "Timed",
    "metrics_sample",
    "postgres_value",
    "prometheus_value",
    "redis_reading",
    "tcp_connect",
]

# /metrics pages of big exporters run to a few MiB; past this the answer is refused.
MAX_METRICS_BYTES = 4 * 1024 * 1024
MAX_QUERY_BYTES = 256 * 1024  # a Prometheus API answer for one sample is tiny


class ProbeFailed(Exception):
    """The thing could not be read; the message is one secret-free line."""


class Timed(Struct, frozen=True):
    """What was read and how long the exchange took."""

    latency_ms: float
    value: float | None = None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _timed_out(timeout_s: float) -> ProbeFailed:
    return ProbeFailed(f"timed out after {timeout_s:g} s")


def _connection_problem(exc: BaseException) -> str:
    causes = list(exception_causes(exc))
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "DNS lookup failed"
    if any(isinstance(c, ConnectionResetError) for c in causes):
        return "connection reset by peer"
    if any(isinstance(c, FileNotFoundError) for c in causes):
        return "no such socket"
    return "connection failed"


# ------------------------------------------------------------------ tcp


async def tcp_connect(host: str, port: int, timeout_s: float) -> Timed:
    """Open a TCP connection and close it again; the time the connect took."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError as exc:
        raise _timed_out(timeout_s) from exc
    except OSError as exc:
        raise ProbeFailed(f"{host}:{port}: {_connection_problem(exc)}") from exc
    latency = _ms(started)
    writer.close()
    try:
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        pass  # connected is all that was asked
    return Timed(latency, latency)


# ------------------------------------------------------------------ redis


def address_of(url: SecretStr) -> str:
    """``host:port`` of a Redis or PostgreSQL URL: never its user or password."""
    parts = urlsplit(url.get_secret_value())
    if parts.scheme == "unix":
        return parts.path or "a unix socket"
    try:
        return f"{parts.hostname or 'localhost'}:{parts.port or ''}".rstrip(":")
    except ValueError:
        return "an invalid address"


async def redis_reading(
    client: aioredis.Redis, url: SecretStr, field: str | None, timeout_s: float
) -> Timed:
    """PING, then the number at ``field`` of ``INFO`` (``used_memory``, ``db0.keys``)."""
    import redis.exceptions as redis_errors

    where = f"Redis at {address_of(url)}"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await client.ping()
            latency = _ms(started)
            # The default sections (server, clients, memory, stats, keyspace, …): not
            # "everything", whose per-command statistics can run long.
            info = await client.info() if field is not None else {}
    except (TimeoutError, redis_errors.TimeoutError) as exc:
        raise ProbeFailed(f"{where}: timed out after {timeout_s:g} s") from exc
    except redis_errors.AuthenticationError as exc:
        raise ProbeFailed(f"{where}: login refused") from exc
    except (redis_errors.ConnectionError, OSError) as exc:
        raise ProbeFailed(f"{where}: {_connection_problem(exc)}") from exc
    except redis_errors.ResponseError as exc:
        # Server error texts name commands, never the credentials.
        raise ProbeFailed(f"{where} answered: {_one_line(str(exc))}") from exc
    except (redis_errors.RedisError, ValueError) as exc:
        raise ProbeFailed(f"{where}: failed ({type(exc).__name__})") from exc
    if field is None:
        return Timed(latency, latency)
    return Timed(latency, _number(_walk(info, field, "INFO"), f"INFO field '{field}'"))


def _walk(document: Mapping[str, Any], path: str, what: str) -> object:
    node: object = document
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ProbeFailed(f"{what} has no field '{path}'")
        node = node[part]
    return node


# ------------------------------------------------------------------ postgres

MAX_QUERY_CHARS = 4000


def asyncpg_dsn(url: SecretStr) -> str:
    """The URL as asyncpg takes it (the SQLAlchemy form names the driver)."""
    plain = url.get_secret_value()
    scheme, rest = plain.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else plain


async def postgres_value(url: SecretStr, query: str, timeout_s: float) -> Timed:
    """Connect, run ``query`` in a read-only transaction under a statement timeout, and
    return its one number (one row, one column)."""
    import asyncpg  # type: ignore[import-untyped]

    where = f"PostgreSQL at {address_of(url)}"
    started = time.perf_counter()
    connection: asyncpg.Connection | None = None
    try:
        async with asyncio.timeout(timeout_s):
            connection = await asyncpg.connect(
                asyncpg_dsn(url),
                timeout=timeout_s,
                server_settings={"application_name": "opsbot-check"},
            )
            async with connection.transaction(readonly=True):
                # The server stops the query too, not only this side.
                timeout_ms = max(1, int(timeout_s * 1000))
                await connection.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                cursor = await connection.cursor(query)
                rows = await cursor.fetch(2)
        latency = _ms(started)
    except TimeoutError as exc:
        raise ProbeFailed(f"{where}: timed out after {timeout_s:g} s") from exc
    except asyncpg.QueryCanceledError as exc:
        raise ProbeFailed(f"{where}: the query ran past {timeout_s:g} s") from exc
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise ProbeFailed(f"{where}: login refused") from exc
    except asyncpg.InvalidPasswordError as exc:
        raise ProbeFailed(f"{where}: login refused") from exc
    except asyncpg.PostgresError as exc:
        # The server's own message (a missing table, a syntax error): no credentials in it.
        raise ProbeFailed(f"{where}: {_one_line(str(exc))}") from exc
    except (OSError, asyncpg.InterfaceError) as exc:
        raise ProbeFailed(f"{where}: {_connection_problem(exc)}") from exc
    except Exception as exc:
        # A malformed URL and the like: the type only, the text could hold the URL.
        raise ProbeFailed(f"{where}: failed ({type(exc).__name__})") from exc
    finally:
        if connection is not None:
            connection.terminate()  # a close handshake could wait on a stuck server
    if len(rows) != 1 or len(rows[0]) != 1:
        shape = f"{len(rows)}{'+' if len(rows) > 1 else ''} row(s)"
        columns = f", {len(rows[0])} column(s)" if rows else ""
        raise ProbeFailed(f"the query must return one row of one number (got {shape}{columns})")
    return Timed(latency, _number(rows[0][0], "the query's value"))


# ------------------------------------------------------------------ prometheus


async def prometheus_value(
    client: httpx.AsyncClient,
    base_url: str,
    query: str,
    request: HttpRequest,
    *,
    request_id: str,
    timeout_s: float,
) -> Timed:
    """An instant query (``/api/v1/query``) that must give exactly one sample."""
    import httpx

    from bot.features.probes.health import describe_failure, fetch, parse_json

    url = httpx.URL(base_url.rstrip("/") + "/api/v1/query", params={"query": query})
    started = time.perf_counter()
    try:
        fetched = await fetch(
            client,
            str(url),
            request_id=request_id,
            timeout_s=timeout_s,
            read_body=True,
            request=request,
            max_bytes=MAX_QUERY_BYTES,
        )
    except Exception as exc:
        raise ProbeFailed(describe_failure(exc, timeout_s)) from exc
    latency = _ms(started)
    if fetched.body_truncated:
        raise ProbeFailed(f"the answer is larger than {MAX_QUERY_BYTES // 1024} KiB")
    ok, document = parse_json(fetched.body)
    if not ok or not isinstance(document, Mapping):
        raise ProbeFailed(f"HTTP {fetched.status}: not a Prometheus API answer (no JSON)")
    if document.get("status") != "success":
        error = _one_line(str(document.get("error") or "no error given"))
        raise ProbeFailed(f"Prometheus refused the query (HTTP {fetched.status}): {error}")
    if not request.expects(fetched.status):
        raise ProbeFailed(f"Prometheus answered HTTP {fetched.status}")
    return Timed(latency, _one_sample(document.get("data")))


def _one_sample(data: object) -> float:
    if not isinstance(data, Mapping):
        raise ProbeFailed("the answer has no data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return _sample_value(result[1])
    if kind != "vector" or not isinstance(result, list):
        raise ProbeFailed(f"the query gives a {_one_line(str(kind), 20)}, not one number")
    if len(result) != 1:
        shown = ", ".join(_labels_text(s.get("metric")) for s in result[:3] if isinstance(s, dict))
        more = f" ({shown}{', …' if len(result) > 3 else ''})" if shown else ""
        raise ProbeFailed(
            f"the query gives {len(result)} samples{more}; it must give exactly one "
            "(narrow it with labels, or aggregate: sum(…), max(…))"
        )
    sample = result[0]
    if not isinstance(sample, Mapping) or not isinstance(sample.get("value"), list):
        raise ProbeFailed("the sample has no value")
    return _sample_value(sample["value"][-1])


def _sample_value(raw: object) -> float:
    try:
        value = float(str(raw))
    except ValueError:
        shown = _one_line(str(raw), 20)
        raise ProbeFailed(f"the sample's value is not a number ({shown})") from None
    if math.isnan(value):
        raise ProbeFailed("the sample's value is NaN")
    return value


def _labels_text(labels: object) -> str:
    if not isinstance(labels, Mapping):
        return "{}"
    pairs = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return _one_line("{" + pairs + "}", 80)


# ------------------------------------------------------------------ metrics (text format


async def metrics_sample(
    client: httpx.AsyncClient,
    url: str,
    metric: str,
    labels: Mapping[str, str],
    request: HttpRequest,
    *,
    request_id: str,
    timeout_s: float,
) -> Timed:
    """The one sample of ``metric`` whose labels include ``labels``, from a Prometheus
    text endpoint (``/metrics``)."""
    from bot.features.probes.health import describe_failure, fetch

    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            fetched = await fetch(
                client,
                url,
                request_id=request_id,
                timeout_s=timeout_s,
                read_body=True,
                request=request,
                max_bytes=MAX_METRICS_BYTES,
            )
            latency = _ms(started)
            if not request.expects(fetched.status):
                raise ProbeFailed(f"the endpoint answered HTTP {fetched.status}")
            if fetched.body_truncated:
                raise ProbeFailed(f"the page is larger than {MAX_METRICS_BYTES // 2**20} MiB")
            # A few MiB of text take a while to parse: not on the event loop.
            value = await asyncio.to_thread(_pick_sample, fetched.body, metric, dict(labels))
    except ProbeFailed:
        raise
    except Exception as exc:
        raise ProbeFailed(describe_failure(exc, timeout_s)) from exc
    return Timed(latency, value)


def _pick_sample(body: bytes, metric: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    named: list[dict[str, str]] = []
    matched: list[float] = []
    try:
        for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
            for sample in family.samples:
                if sample.name != metric:
                    continue
                named.append(sample.labels)
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    matched.append(sample.value)
    except ValueError as exc:
        raise ProbeFailed(f"not Prometheus text format ({_one_line(str(exc), 60)})") from None
    wanted = _labels_text(labels) if labels else ""
    if not named:
        raise ProbeFailed(f"no metric '{metric}' on the page")
    if not matched:
        raise ProbeFailed(f"{len(named)} sample(s) of '{metric}', none with labels {wanted}")
    if len(matched) > 1:
        examples = ", ".join(_labels_text(n) for n in named[:3])
        raise ProbeFailed(
            f"{len(matched)} samples of '{metric}{wanted}' match; add labels to pick one "
            f"({examples}{', …' if len(named) > 3 else ''})"
        )
    if math.isnan(matched[0]):
        raise ProbeFailed(f"'{metric}{wanted}' is NaN")
    return matched[0]


# ------------------------------------------------------------------ helpers


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        shown = "NULL" if value is None else type(value).__name__
        raise ProbeFailed(f"{what} is not a number ({shown})")
    return float(value)


def _one_line(text: str, limit: int = 120) -> str:
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
