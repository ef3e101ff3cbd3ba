"""Probes: platform-neutral health and version probes behind `/health`, `/version`,
heartbeats and checks, and the `[[services]]` they ask (`config`, `targets`): HTTP
endpoints, and TCP ports, Redis and PostgreSQL servers, Prometheus queries and metrics
(`readers`)."""

from typing import TYPE_CHECKING

from bot.kernel.lazy import lazy_exports

if TYPE_CHECKING:
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

# The probes (httpx and its TLS stack) load when a probe first runs: the config's
# [[services]] and [[checks]] import bot.features.probes.config, and a bot that probes
# nothing (a console `/whoami`) never needs them.
_LAZY = {
    "HealthResult": "bot.features.probes.health",
    "HealthState": "bot.features.probes.health",
    "ProbeTarget": "bot.features.probes.health",
    "ResponseShape": "bot.features.probes.health",
    "probe_all": "bot.features.probes.health",
    "probe_health": "bot.features.probes.health",
    "HttpRequest": "bot.features.probes.request",
    "probe_service": "bot.features.probes.services",
    "probe_services": "bot.features.probes.services",
    "service_target": "bot.features.probes.services",
    "VersionResult": "bot.features.probes.version",
    "fetch_all_versions": "bot.features.probes.version",
    "fetch_version": "bot.features.probes.version",
}


__getattr__ = lazy_exports(__name__, _LAZY)


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
