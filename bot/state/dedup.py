"""Platform events seen before: a retried delivery must never run an action twice.

The first delivery of ``(platform, event_id)`` claims it; later ones are told so. Claims
live in the database by default, in Redis when ``state.redis_url`` is set (several
replicas answering one platform), for ``state.dedup_window``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
import structlog

from bot.errors import DependencyError
from bot.redis_clients import RedisClients
from bot.state.database import StateDatabase
from bot.state.schema import delivered_events

log = structlog.get_logger("opsbot.dedup")

_PRUNE_EVERY = 500  # claims between two deletions of claims older than the window


class EventDedup(Protocol):
    async def first_delivery(self, platform: str, event_id: str, now: datetime) -> bool:
        """True for the first delivery of this event; raises DependencyError when the
        store cannot say (the caller must then not run anything that changes state)."""
        ...


class DatabaseDedup:
    """Claims in the ``delivered_events`` table, written as a group: the claims that
    arrive while one transaction runs go together in the next (one multi-row
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING``), so a burst of mutating commands
    costs a transaction per batch, not one each (SQLite takes one writer at a time)."""

    def __init__(self, database: StateDatabase, window: timedelta, batch: int = 300) -> None:
        self._db = database
        self._window = window
        self._batch = batch
        self._claims = 0
        self._pending: list[tuple[str, str, datetime, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def first_delivery(self, platform: str, event_id: str, now: datetime) -> bool:
        claim: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((platform, event_id, now, claim))
        if self._writer is None:
            # A fresh context: the writer serves many requests, not the one that woke it.
            self._writer = asyncio.create_task(
                self._write(), name="dedup-claims", context=contextvars.Context()
            )
        return await claim

    async def _write(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._batch], self._pending[self._batch :]
                try:
                    won = await self._claim(batch)
                except Exception as exc:
                    failure = (
                        exc
                        if isinstance(exc, DependencyError)
                        else DependencyError("state database", f"claim failed ({exc})", exc)
                    )
                    for *_, claim in batch:
                        if not claim.done():
                            claim.set_exception(failure)
                    continue
                seen: set[tuple[str, str]] = set()
                for platform, event_id, _, claim in batch:
                    key = (platform, event_id)
                    first = key in won and key not in seen  # a repeat within the batch
                    seen.add(key)
                    if not claim.done():
                        claim.set_result(first)
        finally:
            self._writer = None

    async def _claim(
        self, batch: list[tuple[str, str, datetime, asyncio.Future[bool]]]
    ) -> set[tuple[str, str]]:
        claims = {(platform, event_id): now for platform, event_id, now, _ in batch}
        newest = max(claims.values())
        async with self._db.transaction() as conn:
            dollar = conn.dialect.paramstyle == "numeric_dollar"
            params: list[object] = []
            for (platform, event_id), at in claims.items():
                # SQLite keeps SQLAlchemy's DATETIME text form (naive UTC), as UTCDateTime
                # writes it; asyncpg takes the aware datetime.
                stored = at if dollar else _sqlite_datetime(at)
                params += (platform, event_id, stored)
            # Straight to the driver: compiling a multi-row INSERT of a new length for
            # every batch cost more than the claim itself (bench/audit.py, /touch).
            result = await conn.exec_driver_sql(_claim_sql(len(claims), dollar), tuple(params))
            returned: list[Any] = list(result)
            won = {(str(r[0]), str(r[1])) for r in returned}
            before = self._claims // _PRUNE_EVERY
            self._claims += len(claims)
            if self._claims // _PRUNE_EVERY != before:
                await conn.execute(
                    sa.delete(delivered_events).where(delivered_events.c.at < newest - self._window)
                )
        return won


def _sqlite_datetime(at: datetime) -> str:
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


@functools.lru_cache(maxsize=64)
def _claim_sql(rows: int, dollar: bool) -> str:
    if dollar:
        values = ", ".join(f"(${3 * i + 1}, ${3 * i + 2}, ${3 * i + 3})" for i in range(rows))
    else:
        values = ", ".join("(?, ?, ?)" for _ in range(rows))
    # Our own table and placeholders; the values are bound.
    return (
        f"INSERT INTO delivered_events (platform, event_id, at) VALUES {values} "  # noqa: S608
        "ON CONFLICT DO NOTHING RETURNING platform, event_id"
    )


class RedisDedup:
    def __init__(self, clients: RedisClients, url: str, window: timedelta) -> None:
        self._clients = clients
        self._url = url
        self._window = window

    async def first_delivery(self, platform: str, event_id: str, now: datetime) -> bool:
        from redis.exceptions import RedisError

        client = self._clients.client(self._url, timeout=2.0)
        try:
            claimed = await client.set(
                f"opsbot:event:{platform}:{event_id}",
                now.isoformat(),
                nx=True,
                ex=int(self._window.total_seconds()),
            )
        except (RedisError, OSError) as exc:
            raise DependencyError("state Redis", f"unreachable ({exc})", exc) from exc
        return bool(claimed)


class RememberingDedup:
    """This process's memory of recent events in front of the shared store.

    A retry usually reaches the process that got the first delivery, so memory answers it
    without a round trip. When the shared store is down the memory is the fallback: the
    bot keeps serving (a database outage is when rollbacks are needed) and only a retry
    that lands on another replica during the outage could slip through, which the log
    says.
    """

    def __init__(self, store: EventDedup, window: timedelta, capacity: int = 50_000) -> None:
        self._store = store
        self._window = window
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, str], datetime] = OrderedDict()

    async def first_delivery(self, platform: str, event_id: str, now: datetime) -> bool:
        key = (platform, event_id)
        seen_at = self._seen.get(key)
        if seen_at is not None and now - seen_at < self._window:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        try:
            return await self._store.first_delivery(platform, event_id, now)
        except DependencyError as exc:
            log.warning(
                "dedup.store_unreachable",
                error=str(exc),
                hint="using this process's memory of events until the store is back",
            )
            return True
