"""Platform events seen before: a retried delivery must never run an action twice.

The first delivery of ``(platform, event_id)`` claims it; later ones are told so. Claims
live in the database by default, in Redis when ``state.redis_url`` is set (several
replicas answering one platform), for ``state.dedup_window``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from bot.cluster.redis_clients import STATE_TIMEOUT_S, RedisClients, StateRedisUnavailable
from bot.kernel.errors import DependencyError
from bot.kernel.lazy import lazy_import
from bot.storage.claim_sql import claim_sql, sqlite_datetime
from bot.storage.database import StateDatabase

if TYPE_CHECKING:
    import sqlalchemy as sa

    from bot.storage import state_schema as tables
else:
    sa = lazy_import("sqlalchemy")
    tables = lazy_import("bot.storage.state_schema")

if TYPE_CHECKING:
    from bot.audit.writer_process import SqliteWriterProcess

log = structlog.get_logger("opsbot.dedup")

_PRUNE_EVERY = 500  # claims between two deletions of claims older than the window


class EventDedup(Protocol):
    async def first_delivery(self, platform: str, event_id: str, now: datetime) -> bool:
        """True for the first delivery of this event; raises DependencyError when the
        store cannot say (the caller must then not run anything that changes state)."""
        ...


class ClaimStore(Protocol):
    async def claim(
        self, claims: dict[tuple[str, str], datetime], prune_before: datetime | None
    ) -> set[tuple[str, str]]:
        """Insert the claims that are new in one transaction (and delete claims older
        than ``prune_before``); returns the (platform, event_id) pairs this call won."""
        ...


class DatabaseClaims:
    """Claims through the state database's engine (PostgreSQL; SQLite without a writer
    process)."""

    def __init__(self, database: StateDatabase) -> None:
        self._db = database

    async def claim(
        self, claims: dict[tuple[str, str], datetime], prune_before: datetime | None
    ) -> set[tuple[str, str]]:
        async with self._db.transaction() as conn:
            dollar = conn.dialect.paramstyle == "numeric_dollar"
            params: list[object] = []
            for (platform, event_id), at in claims.items():
                # asyncpg takes the aware datetime; SQLite the text UTCDateTime writes.
                params += (platform, event_id, at if dollar else sqlite_datetime(at))
            # Straight to the driver: compiling a multi-row INSERT of a new length for
            # every batch cost more than the claim itself (bench/audit.py, /touch).
            result = await conn.exec_driver_sql(
                claim_sql(len(claims), dollar=dollar), tuple(params)
            )
            returned: list[Any] = list(result)
            if prune_before is not None:
                await conn.execute(
                    sa.delete(tables.delivered_events).where(
                        tables.delivered_events.c.at < prune_before
                    )
                )
        return {(str(r[0]), str(r[1])) for r in returned}


class WriterProcessClaims:
    """Claims through the SQLite audit writer process, the one writer of the SQLite
    file. Claims written from the bot's own connection waited for the writer's
    transactions (SQLite's busy handler sleeps in steps of milliseconds) and took
    several thread hops each: 10 ms a batch, most of /touch's wait (bench/audit.py)."""

    def __init__(self, writer: SqliteWriterProcess) -> None:
        self._writer = writer

    async def claim(
        self, claims: dict[tuple[str, str], datetime], prune_before: datetime | None
    ) -> set[tuple[str, str]]:
        rows = [
            (platform, event_id, sqlite_datetime(at)) for (platform, event_id), at in claims.items()
        ]
        won = await self._writer.claim_events(
            rows, None if prune_before is None else sqlite_datetime(prune_before)
        )
        return {(str(platform), str(event_id)) for platform, event_id in won}


class DatabaseDedup:
    """Claims in the ``delivered_events`` table, written as a group: the claims that
    arrive while one transaction runs go together in the next (one multi-row
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING``), so a burst of mutating commands
    costs a transaction per batch, not one each (SQLite takes one writer at a time)."""

    def __init__(self, store: ClaimStore, window: timedelta, batch: int = 300) -> None:
        self._store = store
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
        before = self._claims // _PRUNE_EVERY
        self._claims += len(claims)
        prune_before = None
        if self._claims // _PRUNE_EVERY != before:
            prune_before = max(claims.values()) - self._window
        return await self._store.claim(claims, prune_before)


class RedisDedup:
    def __init__(self, clients: RedisClients, url: str, window: timedelta) -> None:
        self._clients = clients
        self._url = url
        self._window = window

    async def first_delivery(self, platform: str, event_id: str, now: datetime) -> bool:
        from redis.exceptions import RedisError

        client = self._clients.client(self._url, timeout=STATE_TIMEOUT_S)
        try:
            claimed = await client.set(
                f"opsbot:event:{platform}:{event_id}",
                now.isoformat(),
                nx=True,
                ex=int(self._window.total_seconds()),
            )
        except (RedisError, OSError) as exc:
            raise StateRedisUnavailable(exc) from exc
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
