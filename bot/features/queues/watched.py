"""The configured Redis streams, as /queue, /workers, heartbeats and checks pick them."""

from __future__ import annotations

from collections.abc import Sequence

from bot.features.queues.config import QueueConfig
from bot.kernel.errors import UsageError


class WatchedQueues:
    def __init__(self, queues: Sequence[QueueConfig]) -> None:
        self.all = tuple(queues)
        self._by_name = {queue.name: queue for queue in queues}

    def get(self, name: str) -> QueueConfig | None:
        return self._by_name.get(name)

    def select(self, name: str | None, usage: str) -> list[QueueConfig]:
        """Every queue, or the one named; an unknown name is a usage error naming them."""
        if name is None:
            return list(self.all)
        queue = self._by_name.get(name)
        if queue is None:
            known = ", ".join(q.name for q in self.all) or "none configured"
            raise UsageError(f"unknown queue '{name}' (queues: {known})", usage)
        return [queue]
