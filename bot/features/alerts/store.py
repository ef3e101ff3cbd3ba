"""Alerts firing now, inbound and from checks, kept in the database: every replica's
``/alerts`` and ``/ack`` see the same list, and it survives a restart or a change of
leader (the new leader knows which checks are already announced).

One row per fingerprint. Firing again only refreshes what the sender says about it
(name, severity, summary, labels): ``since`` and the acknowledgement stay.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import orjson
from msgspec import Struct

from bot.kernel.lazy import lazy_import
from bot.storage.database import StateDatabase
from bot.storage.sqlite_probe import probe

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import RowMapping

    from bot.storage import state_schema as tables
else:
    sa = lazy_import("sqlalchemy")
    tables = lazy_import("bot.storage.state_schema")


class ActiveAlert(Struct):
    id: str  # what /ack takes: short, derived from the fingerprint
    fingerprint: str
    source: str  # "inbound" (over HTTP) or "check"
    group_key: str
    name: str
    severity: str
    summary: str
    labels: dict[str, str]
    since: datetime
    last_posted_at: datetime | None = None
    post_key: str | None = None  # the outbox key it was announced under
    acked_by: str | None = None
    acked_at: datetime | None = None


class AlertStore:
    def __init__(self, database: StateDatabase) -> None:
        self._db = database

    async def upsert(self, alert: ActiveAlert) -> ActiveAlert:
        """Insert ``alert`` or refresh the row with its fingerprint; returns the row."""
        return (await self.upsert_many([alert]))[0]

    async def upsert_many(self, batch: list[ActiveAlert]) -> list[ActiveAlert]:
        """:meth:`upsert` for each of ``batch`` in one transaction (a storm's group is one
        statement, not a transaction per alert); the rows, in ``batch``'s order."""
        # Here, not at the top: PostgreSQL's dialect is a fifth of SQLAlchemy's import.
        from sqlalchemy.dialects import postgresql, sqlite

        if not batch:
            return []
        unique = {a.fingerprint: a for a in batch}  # one row per fingerprint: the last word
        values = [
            {
                "fingerprint": a.fingerprint,
                "id": a.id,
                "source": a.source,
                "group_key": a.group_key,
                "name": a.name,
                "severity": a.severity,
                "summary": a.summary,
                "labels": orjson.dumps(a.labels).decode(),
                "since": a.since,
                "last_posted_at": a.last_posted_at,
            }
            for a in unique.values()
        ]
        refreshed = ("group_key", "name", "severity", "summary", "labels")
        async with self._db.transaction() as conn:
            insert = (
                postgresql.insert(tables.alerts)
                if conn.dialect.name == "postgresql"
                else sqlite.insert(tables.alerts)
            )
            statement = insert.on_conflict_do_update(
                index_elements=[tables.alerts.c.fingerprint],
                set_={name: insert.excluded[name] for name in refreshed},
            )
            # Many parameter sets for one statement: it is compiled once (and cached),
            # where one VALUES clause per row made SQLAlchemy compile a thousand binds.
            await conn.execute(statement, values)
            rows = (
                await conn.execute(
                    sa.select(tables.alerts).where(tables.alerts.c.fingerprint.in_(list(unique)))
                )
            ).mappings()
            found = {r["fingerprint"]: _alert(r) for r in rows}
        return [found[a.fingerprint] for a in batch]

    async def remove_many(self, fingerprints: list[str]) -> dict[str, ActiveAlert]:
        """Delete these alerts in one transaction; what was known of each that was there."""
        if not fingerprints:
            return {}
        async with self._db.transaction() as conn:
            rows = (
                await conn.execute(
                    sa.select(tables.alerts).where(tables.alerts.c.fingerprint.in_(fingerprints))
                )
            ).mappings()
            known = {r["fingerprint"]: _alert(r) for r in rows}
            if known:
                await conn.execute(
                    sa.delete(tables.alerts).where(tables.alerts.c.fingerprint.in_(list(known)))
                )
        return known

    async def trim(self, keep: int) -> list[str]:
        """Drop the oldest alerts (by ``since``) past ``keep``; their fingerprints."""
        async with self._db.transaction() as conn:
            count = (
                await conn.execute(sa.select(sa.func.count()).select_from(tables.alerts))
            ).scalar_one()
            if count <= keep:
                return []
            oldest = (
                (
                    await conn.execute(
                        sa.select(tables.alerts.c.fingerprint)
                        .order_by(tables.alerts.c.since, tables.alerts.c.fingerprint)
                        .limit(int(count) - keep)
                    )
                )
                .scalars()
                .all()
            )
            await conn.execute(
                sa.delete(tables.alerts).where(tables.alerts.c.fingerprint.in_(list(oldest)))
            )
        return list(oldest)

    async def remove(self, fingerprint: str) -> ActiveAlert | None:
        async with self._db.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(tables.alerts).where(tables.alerts.c.fingerprint == fingerprint)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            await conn.execute(
                sa.delete(tables.alerts).where(tables.alerts.c.fingerprint == fingerprint)
            )
        return _alert(row)

    async def get(self, fingerprint: str) -> ActiveAlert | None:
        async with self._db.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(tables.alerts).where(tables.alerts.c.fingerprint == fingerprint)
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _alert(row)

    async def all(self) -> list[ActiveAlert]:
        # Read at start-up; mostly nothing fires (bot.storage.sqlite_probe).
        if await probe(self._db.url, "SELECT 1 FROM alerts LIMIT 1") == []:
            return []
        async with self._db.transaction() as conn:
            rows = (
                (
                    await conn.execute(
                        sa.select(tables.alerts).order_by(
                            tables.alerts.c.since, tables.alerts.c.name
                        )
                    )
                )
                .mappings()
                .all()
            )
        return [_alert(r) for r in rows]

    async def ack(self, alert_id: str, *, by: str, at: datetime) -> ActiveAlert | None:
        """Acknowledge the alert with this id unless someone already did (one conditional
        UPDATE: two people acking at once record one of them). Returns the row after."""
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(tables.alerts)
                .where(tables.alerts.c.id == alert_id, tables.alerts.c.acked_by.is_(None))
                .values(acked_by=by, acked_at=at)
            )
            row = (
                (await conn.execute(sa.select(tables.alerts).where(tables.alerts.c.id == alert_id)))
                .mappings()
                .first()
            )
        return None if row is None else _alert(row)

    async def posted(self, fingerprints: list[str], at: datetime, key: str | None) -> None:
        """They were posted at ``at``; under ``key`` when it announced them (a reminder
        keeps the key of the announcement)."""
        if not fingerprints:
            return
        values: dict[str, object] = {"last_posted_at": at}
        if key is not None:
            values["post_key"] = key
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(tables.alerts)
                .where(tables.alerts.c.fingerprint.in_(fingerprints))
                .values(**values)
            )


def _alert(row: RowMapping) -> ActiveAlert:
    return ActiveAlert(
        id=row["id"],
        fingerprint=row["fingerprint"],
        source=row["source"],
        group_key=row["group_key"],
        name=row["name"],
        severity=row["severity"],
        summary=row["summary"],
        labels=dict(orjson.loads(row["labels"])),
        since=row["since"],
        last_posted_at=row["last_posted_at"],
        post_key=row["post_key"],
        acked_by=row["acked_by"],
        acked_at=row["acked_at"],
    )
