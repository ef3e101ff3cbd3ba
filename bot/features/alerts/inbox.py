"""The alert inbox: what ``POST /alerts…`` took, written before the 202.

An HTTP answer must come before the work (Alertmanager waits at most its group interval,
then sends again): the intake validates a delivery, commits it here and answers 202; the
processor (:class:`bot.features.alerts.intake.AlertIntake`) takes the rows in id order,
puts the alerts on the board, posts what is new and deletes the row. A crash after the 202
loses nothing: the replica processes its rows again at start (the board and the dedup
make a second pass harmless).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from bot.storage.database import StateDatabase
from bot.storage.state_schema import alert_inbox


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    source: str  # "alertmanager" or "generic"
    received_at: datetime
    alerts: int
    body: str


class AlertInbox:
    def __init__(self, database: StateDatabase, replica: str) -> None:
        self._db = database
        self._replica = replica

    async def put(self, source: str, body: str, alerts: int, at: datetime) -> int:
        """Commit one delivery; its id."""
        async with self._db.transaction() as conn:
            result = await conn.execute(
                alert_inbox.insert()
                .values(
                    replica=self._replica, source=source, received_at=at, alerts=alerts, body=body
                )
                .returning(alert_inbox.c.id)
            )
            return int(result.scalar_one())

    async def take(self, limit: int) -> list[Delivery]:
        """The oldest deliveries this replica took and has not processed, in order."""
        async with self._db.transaction() as conn:
            rows = (
                await conn.execute(
                    sa.select(alert_inbox)
                    .where(alert_inbox.c.replica == self._replica)
                    .order_by(alert_inbox.c.id)
                    .limit(limit)
                )
            ).mappings()
            return [
                Delivery(r["id"], r["source"], r["received_at"], r["alerts"], r["body"])
                for r in rows
            ]

    async def done(self, ids: list[int]) -> None:
        if not ids:
            return
        async with self._db.transaction() as conn:
            await conn.execute(alert_inbox.delete().where(alert_inbox.c.id.in_(ids)))

    async def waiting(self) -> int:
        """Deliveries of this replica not processed yet."""
        async with self._db.transaction() as conn:
            count = await conn.execute(
                sa.select(sa.func.count()).where(alert_inbox.c.replica == self._replica)
            )
            return int(count.scalar_one())
