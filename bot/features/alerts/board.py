"""The alerts firing now and what was last posted about each, shared by inbound alerts
(``bot.features.alerts.intake``) and checks (``bot.features.alerts.checks``).

:class:`AlertBoard` keeps them in the state database (every replica's ``/alerts`` and
``/ack`` see one list; a restart or a new leader remembers what was announced). This
process's memory mirrors the last list it read or wrote: when the database is down the
board answers from memory and the alert path keeps posting, the log says so.

:class:`AlertDedup` says whether an alert's status is news: the same fingerprint with the
same status posted within the dedup window is not posted again. In memory for one
replica; in Redis (``[state] redis_url``) when several replicas may receive the same
delivery (Alertmanager configured with each replica's URL, a load balancer's retry).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import structlog

from bot.cluster.redis_clients import STATE_TIMEOUT_S
from bot.features.alerts.store import ActiveAlert, AlertStore
from bot.kernel.errors import DependencyError

if TYPE_CHECKING:
    from bot.cluster.redis_clients import RedisClients

log = structlog.get_logger("opsbot.alerts")

__all__ = ["ActiveAlert", "AlertBoard", "AlertDedup", "MemoryAlertDedup", "RedisAlertDedup"]


class AlertBoard:
    def __init__(self, store: AlertStore) -> None:
        self._store = store
        self._mirror: dict[str, ActiveAlert] = {}

    @property
    def known(self) -> int:
        """How many alerts fire, as this process last read or wrote them."""
        return len(self._mirror)

    async def firing(self) -> list[ActiveAlert]:
        try:
            alerts = await self._store.all()
        except DependencyError as exc:
            self._unreachable("firing", exc)
            return sorted(self._mirror.values(), key=lambda a: (a.since, a.name))
        self._mirror = {a.fingerprint: a for a in alerts}
        return alerts

    async def find(self, alert_id: str) -> ActiveAlert | None:
        alert_id = alert_id.strip().lower()
        return next((a for a in await self.firing() if a.id == alert_id), None)

    async def get(self, fingerprint: str) -> ActiveAlert | None:
        try:
            alert = await self._store.get(fingerprint)
        except DependencyError as exc:
            self._unreachable("get", exc)
            return self._mirror.get(fingerprint)
        if alert is None:
            self._mirror.pop(fingerprint, None)
        else:
            self._mirror[fingerprint] = alert
        return alert

    async def in_group(self, group_key: str) -> list[ActiveAlert]:
        return [a for a in await self.firing() if a.group_key == group_key]

    async def fire(self, alert: ActiveAlert) -> ActiveAlert:
        """Record ``alert`` as firing; one already firing keeps its ``since`` and ack."""
        try:
            alert = await self._store.upsert(alert)
        except DependencyError as exc:
            self._unreachable("fire", exc)
            known = self._mirror.get(alert.fingerprint)
            if known is not None:
                alert.since, alert.acked_by, alert.acked_at = (
                    known.since,
                    known.acked_by,
                    known.acked_at,
                )
                alert.last_posted_at, alert.post_key = known.last_posted_at, known.post_key
        self._mirror[alert.fingerprint] = alert
        return alert

    async def fire_many(self, batch: list[ActiveAlert]) -> list[ActiveAlert]:
        """:meth:`fire` for a whole group at once."""
        try:
            rows = await self._store.upsert_many(batch)
        except DependencyError as exc:
            self._unreachable("fire", exc)
            return [await self.fire(alert) for alert in batch]  # from memory, as fire() does
        for row in rows:
            self._mirror[row.fingerprint] = row
        return rows

    async def resolve_many(self, fingerprints: list[str]) -> dict[str, ActiveAlert]:
        """:meth:`resolve` for a whole group at once."""
        known = {f: a for f in fingerprints if (a := self._mirror.pop(f, None)) is not None}
        try:
            return await self._store.remove_many(fingerprints)
        except DependencyError as exc:
            self._unreachable("resolve", exc)
            return known

    async def trim(self, keep: int) -> int:
        """Keep at most ``keep`` alerts, dropping the oldest; how many were dropped."""
        try:
            dropped = await self._store.trim(keep)
        except DependencyError as exc:
            self._unreachable("trim", exc)
            return 0
        for fingerprint in dropped:
            self._mirror.pop(fingerprint, None)
        return len(dropped)

    async def resolve(self, fingerprint: str) -> ActiveAlert | None:
        """Forget a firing alert; returns what was known of it."""
        known = self._mirror.pop(fingerprint, None)
        try:
            return await self._store.remove(fingerprint)
        except DependencyError as exc:
            self._unreachable("resolve", exc)
            return known

    async def ack(self, alert_id: str, *, by: str, at: datetime) -> ActiveAlert | None:
        try:
            alert = await self._store.ack(alert_id, by=by, at=at)
        except DependencyError as exc:
            self._unreachable("ack", exc)
            alert = next((a for a in self._mirror.values() if a.id == alert_id), None)
            if alert is not None and alert.acked_by is None:
                alert.acked_by, alert.acked_at = by, at
        if alert is not None:
            self._mirror[alert.fingerprint] = alert
        return alert

    async def posted(
        self, fingerprints: list[str], at: datetime, *, key: str | None = None
    ) -> None:
        for fingerprint in fingerprints:
            known = self._mirror.get(fingerprint)
            if known is not None:
                known.last_posted_at = at
                known.post_key = key or known.post_key
        try:
            await self._store.posted(fingerprints, at, key)
        except DependencyError as exc:
            self._unreachable("posted", exc)

    def _unreachable(self, operation: str, exc: DependencyError) -> None:
        log.warning(
            "alerts.state_unreachable",
            operation=operation,
            error=str(exc),
            hint="answering from this process's memory until the database is back",
        )


class AlertDedup(Protocol):
    async def fresh(self, fingerprint: str, status: str, now: datetime) -> bool:
        """True (and remembered) unless ``status`` is what was last posted for
        ``fingerprint``, within the window."""
        ...


class MemoryAlertDedup:
    def __init__(self, window: timedelta, capacity: int = 100_000) -> None:
        self.window = window
        self._capacity = capacity
        self._last: OrderedDict[str, tuple[str, datetime]] = OrderedDict()

    async def fresh(self, fingerprint: str, status: str, now: datetime) -> bool:
        last = self._last.get(fingerprint)
        if last is not None and last[0] == status and now - last[1] < self.window:
            return False
        self._last[fingerprint] = (status, now)
        self._last.move_to_end(fingerprint)
        while len(self._last) > self._capacity:
            self._last.popitem(last=False)
        return True


# The status last posted, for the window: news unless it is the same status.
_FRESH = """
local last = redis.call('GET', KEYS[1])
if last == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisAlertDedup:
    """One claim per (fingerprint, status) across replicas; this process's memory when
    Redis cannot answer (two replicas may then both post one alert; the log says so)."""

    def __init__(self, clients: RedisClients, url: str, window: timedelta) -> None:
        self._clients = clients
        self._url = url
        self._window_ms = max(1, int(window.total_seconds() * 1000))
        self._memory = MemoryAlertDedup(window)

    async def fresh(self, fingerprint: str, status: str, now: datetime) -> bool:
        from redis.exceptions import RedisError

        client = self._clients.client(self._url, timeout=STATE_TIMEOUT_S)
        try:
            fresh = await client.eval(
                _FRESH, 1, f"opsbot:alert:{fingerprint}", status, str(self._window_ms)
            )
        except (RedisError, OSError) as exc:
            log.warning(
                "alerts.dedup_unreachable",
                error=str(exc),
                hint="deduplicating in this process's memory until Redis is back",
            )
            return await self._memory.fresh(fingerprint, status, now)
        await self._memory.fresh(fingerprint, status, now)
        return bool(fresh)
