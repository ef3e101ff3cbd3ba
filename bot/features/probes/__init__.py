"""Platform-neutral HTTP probes behind the `/health` and `/version` chat commands."""

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
