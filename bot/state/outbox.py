"""The outbound queue's rows: messages the bot posts on its own, kept in the database
until they are delivered (the row is deleted) or given up on (state ``dead``).

:class:`bot.outbound.Outbox` is the only writer while the bot runs; ``opsbot outbox``
reads the table from a shell.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from bot.reply import Button, Field, Reply, Status, Table
from bot.state.database import StateDatabase
from bot.state.schema import outbox


class RowState(enum.StrEnum):
    QUEUED = "queued"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    platform: str
    workspace: str
    channel: str
    thread: str | None
    key: str | None
    coalesce: bool
    reply: Reply
    attempts: int
    state: RowState
    created_at: datetime
    next_at: datetime
    last_error: str | None


def reply_to_json(reply: Reply) -> str:
    """``reply`` as JSON, every field included (fields, table, buttons)."""
    data: dict[str, Any] = {
        "title": reply.title,
        "status": reply.status.value,
        "text": reply.text,
        "fields": [[f.name, f.value] for f in reply.fields],
        "table": (
            None
            if reply.table is None
            else {"columns": list(reply.table.columns), "rows": [list(r) for r in reply.table.rows]}
        ),
        "code": reply.code,
        "buttons": [[b.label, b.command, b.style] for b in reply.buttons],
        "request_id": reply.request_id,
    }
    return orjson.dumps(data).decode()


def reply_from_json(text: str) -> Reply:
    data = orjson.loads(text)
    table = data.get("table")
    return Reply(
        title=data.get("title", ""),
        status=Status(data.get("status", Status.INFO.value)),
        text=data.get("text", ""),
        fields=tuple(Field(name, value) for name, value in data.get("fields", ())),
        table=(
            None
            if table is None
            else Table(tuple(table["columns"]), tuple(tuple(row) for row in table["rows"]))
        ),
        code=data.get("code"),
        buttons=tuple(
            Button(label, command, style) for label, command, style in data.get("buttons", ())
        ),
        request_id=data.get("request_id", ""),
    )


class OutboxStore:
    def __init__(self, database: StateDatabase) -> None:
        self._db = database

    async def add(
        self,
        *,
        platform: str,
        workspace: str,
        channel: str,
        thread: str | None,
        key: str | None,
        coalesce: bool,
        reply: Reply,
        now: datetime,
        replaces: Sequence[int] = (),
    ) -> int:
        """Queue one message (deleting the rows it ``replaces``); its row id."""
        async with self._db.transaction() as conn:
            if replaces:
                await conn.execute(sa.delete(outbox).where(outbox.c.id.in_(list(replaces))))
            result = await conn.execute(
                sa.insert(outbox)
                .values(
                    platform=platform,
                    workspace=workspace,
                    channel=channel,
                    thread=thread,
                    key=key,
                    coalesce=coalesce,
                    reply=reply_to_json(reply),
                    attempts=0,
                    state=RowState.QUEUED.value,
                    created_at=now,
                    next_at=now,
                    last_error=None,
                )
                .returning(outbox.c.id)
            )
            return int(result.scalar_one())

    async def delete(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        async with self._db.transaction() as conn:
            await conn.execute(sa.delete(outbox).where(outbox.c.id.in_(list(ids))))

    async def failed(
        self, ids: Sequence[int], *, attempts: int, next_at: datetime, error: str, dead: bool
    ) -> None:
        if not ids:
            return
        state = RowState.DEAD if dead else RowState.QUEUED
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_(list(ids)))
                .values(attempts=attempts, next_at=next_at, last_error=error[:2000], state=state)
            )

    async def rows(self, state: RowState) -> list[OutboxRow]:
        """Every row in ``state``, oldest first."""
        async with self._db.transaction() as conn:
            result = await conn.execute(
                sa.select(outbox).where(outbox.c.state == state.value).order_by(outbox.c.id)
            )
            return [_row(r) for r in result.mappings()]

    async def count(self, state: RowState) -> int:
        async with self._db.transaction() as conn:
            result = await conn.execute(
                sa.select(sa.func.count()).select_from(outbox).where(outbox.c.state == state.value)
            )
            return int(result.scalar_one())


def _row(r: RowMapping) -> OutboxRow:
    return OutboxRow(
        id=int(r["id"]),
        platform=r["platform"],
        workspace=r["workspace"],
        channel=r["channel"],
        thread=r["thread"],
        key=r["key"],
        coalesce=bool(r["coalesce"]),
        reply=reply_from_json(r["reply"]),
        attempts=int(r["attempts"]),
        state=RowState(r["state"]),
        created_at=r["created_at"],
        next_at=r["next_at"],
        last_error=r["last_error"],
    )
