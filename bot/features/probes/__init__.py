"""Probes: platform-neutral health and version probes behind `/health`, `/version`,
heartbeats and checks, and the `[[services]]` they ask (`config`, `targets`): HTTP
endpoints, and TCP ports, Redis and PostgreSQL servers, Prometheus queries and metrics
(`readers`)."""

from bot.features.probes.health import (
    HealthResult,
    HealthState,
    ProbeTarget,
    ResponseShape,
    probe_all,
    probe_health,
)
from bot.features.probes.request import HttpRequest
from bot.features.probes.services import probe_service, probe_services, service_target
from bot.features.probes.version import VersionResult, fetch_all_versions, fetch_version

__all__ = [
    "HealthResult",
    "HealthState",
    "HttpRequest",
    "ProbeTarget",
    "ResponseShape",
    "VersionResult",
    "fetch_all_versions",
    "fetch_version",
    "probe_all",
    "probe_health",
    "probe_service",
    "probe_services",
    "service_target",
]
