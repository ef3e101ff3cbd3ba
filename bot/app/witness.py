"""The audit witness, as configured: the head appended to ``[audit] witness_path`` (every
replica, its own file) and posted to ``[audit] witness_channels`` (the replica that runs
scheduled work). What a witness proves is in bot/audit/witness.py and docs/audit.md."""

from __future__ import annotations

import structlog

from bot.app.config.models import AuditSection
from bot.audit.store import AuditStore
from bot.audit.witness import WitnessPoint, WitnessWriter
from bot.cluster.scheduler import Every, Scheduler
from bot.delivery.channels import channel_destinations
from bot.delivery.config import ChannelGroup
from bot.delivery.outbox import Outbox
from bot.kernel.clock import Clock
from bot.kernel.errors import DependencyError
from bot.kernel.reply import Reply, Status

JOB_NAME = "audit-witness"
_log = structlog.get_logger("opsbot.audit")


class AuditWitness:
    def __init__(
        self,
        config: AuditSection,
        *,
        store: AuditStore,
        outbox: Outbox,
        channels: dict[str, ChannelGroup],
        scheduler: Scheduler,
        clock: Clock,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._clock = clock
        self._destinations = channel_destinations(channels, config.witness_channels)
        self._posted: tuple[int, str] | None = None
        self.writer = (
            WitnessWriter(store, config.witness_path, config.witness_every.total_seconds(), clock)
            if config.witness_path is not None
            else None
        )
        if self._destinations:
            scheduler.add(JOB_NAME, self.post, Every(config.witness_post_every))

    def start(self) -> None:
        if self.writer is None:
            return
        folder = self.writer.path.parent
        if not folder.is_dir():
            raise DependencyError(
                "audit witness", f"audit.witness_path: the directory {folder} does not exist"
            )
        self.writer.start()

    async def close(self) -> None:
        """The last point: call once the last audit entry has been written."""
        if self.writer is not None:
            await self.writer.close()

    async def post(self) -> None:
        seq, digest = await self._store.head()
        if self._posted == (seq, digest):
            return  # nothing new to witness: no message every hour of a quiet night
        point = WitnessPoint(seq, digest, self._clock.now())
        reply = Reply(title="Audit witness", status=Status.INFO, text=point.text())
        for destination in self._destinations:
            if not await self._outbox.post(destination, reply):
                _log.error(
                    "audit.witness_post_failed",
                    platform=destination.platform,
                    channel=destination.channel_id,
                )
        self._posted = (seq, digest)
