"""Probes: platform-neutral HTTP health and version probes behind `/health`, `/version`,
heartbeats and health checks, and the `[[services]]` they ask (`config`, `targets`)."""

from bot.features.probes.health import (
    HealthResult,
    HealthState,
    ProbeTarget,
    ResponseShape,
    probe_all,
    probe_health,
)
from bot.features.probes.version import VersionResult, fetch_all_versions, fetch_version

__all__ = [
    "HealthResult",
    "HealthState",
    "ProbeTarget",
    "ResponseShape",
    "VersionResult",
    "fetch_all_versions",
    "fetch_version",
    "probe_all",
    "probe_health",
]
