"""Probing a ``[[services]]`` entry of any kind: an HTTP health endpoint (the default), a
TCP port, a Redis server or a PostgreSQL database, as ``/health``, heartbeats and health
checks show them: up or down, with the time it took."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from bot.features.probes.config import Service, ServiceKind
from bot.features.probes.health import (
    HealthResult,
    HealthState,
    ProbeTarget,
    ResponseShape,
    probe_health,
)
from bot.features.probes.readers import ProbeFailed, postgres_value, redis_reading, tcp_connect

if TYPE_CHECKING:
    from bot.cluster.http_clients import HttpClients
    from bot.cluster.redis_clients import RedisClients

__all__ = ["probe_service", "probe_services", "service_target"]

_log = structlog.get_logger(__name__)


def service_target(service: Service, timeout_s: float | None = None) -> ProbeTarget:
    """The HTTP probe of a service of kind http."""
    assert service.health_url is not None  # required for kind http
    seconds = service.timeout.total_seconds()
    return ProbeTarget(
        service.name,
        service.health_url,
        seconds if timeout_s is None else min(seconds, timeout_s),
        ResponseShape(service.shape.value),
        service.http_request(),
    )


async def probe_service(
    service: Service,
    http: HttpClients,
    redis: RedisClients,
    *,
    request_id: str,
    timeout_s: float | None = None,
) -> HealthResult:
    """Probe one service within its timeout (or ``timeout_s`` when shorter); never raises
    except on cancellation."""
    if service.kind is ServiceKind.HTTP:
        return await probe_health(
            http.client(), service_target(service, timeout_s), request_id=request_id
        )
    seconds = service.timeout.total_seconds()
    seconds = seconds if timeout_s is None else min(seconds, timeout_s)
    started = time.perf_counter()
    try:
        if service.kind is ServiceKind.TCP:
            assert service.host is not None
            assert service.port is not None
            timed = await tcp_connect(service.host, service.port, seconds)
        elif service.kind is ServiceKind.REDIS:
            assert service.redis_url is not None
            client = redis.client(service.redis_url, timeout=seconds)
            timed = await redis_reading(client, service.redis_url, None, seconds)
        else:
            assert service.database_url is not None
            timed = await postgres_value(service.database_url, "SELECT 1", seconds)
    except Exception as exc:
        # Every probe answers: an on-call engineer needs a line, not a traceback.
        failed = isinstance(exc, ProbeFailed)
        detail = str(exc) if failed else f"probe failed ({type(exc).__name__})"
        _log.debug(
            "service_probe_failed", service=service.name, request_id=request_id, detail=detail
        )
        return HealthResult(
            service=service.name,
            state=HealthState.DOWN,
            http_status=None,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            failing_components=(),
            detail=detail,
        )
    return HealthResult(
        service=service.name,
        state=HealthState.UP,
        http_status=None,
        latency_ms=timed.latency_ms,
        failing_components=(),
        detail="ok",
    )


async def probe_services(
    services: Sequence[Service], http: HttpClients, redis: RedisClients, *, request_id: str
) -> list[HealthResult]:
    """Probe all concurrently; results in the order of ``services``."""
    return list(
        await asyncio.gather(
            *(probe_service(s, http, redis, request_id=request_id) for s in services)
        )
    )
