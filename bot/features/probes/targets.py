"""The configured services, as /health, /version and heartbeats pick them."""

from __future__ import annotations

from collections.abc import Sequence

from bot.features.probes.config import Service
from bot.kernel.errors import UsageError


class ServiceTargets:
    def __init__(self, services: Sequence[Service]) -> None:
        self.all = tuple(services)
        self._by_name = {service.name: service for service in services}

    def get(self, name: str) -> Service | None:
        return self._by_name.get(name)

    def select(self, name: str | None, usage: str) -> list[Service]:
        """Every service, or the one named; an unknown name is a usage error naming them."""
        if name is None:
            return list(self.all)
        service = self._by_name.get(name)
        if service is None:
            known = ", ".join(s.name for s in self.all) or "none configured"
            raise UsageError(f"unknown service '{name}' (services: {known})", usage)
        return [service]
