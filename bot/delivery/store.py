"""The outbound queue's rows: messages the bot posts on its own, kept in the database
until they are delivered (the row is deleted) or given up on (state ``dead``).

Each queued row is owned by the replica delivering it (``owner``, a replica id) until
``lease_until``; the owner renews the lease while it runs. :meth:`OutboxStore.claim` is
how a replica takes rows over: one conditional ``UPDATE ... RETURNING`` per batch, so of
two replicas racing for a row exactly one gets it back (PostgreSQL re-checks the condition
on a row another transaction just changed; SQLite writers queue up on ``BEGIN IMMEDIATE``).

:class:`bot.delivery.outbox.Outbox` is the only writer while the bot runs; ``opsbot outbox``
reads the table from a shell.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from msgspec import Struct

from bot.kernel.lazy import lazy_import
from bot.kernel.reply import Button, Field, Reply, Status, Table
from bot.storage.database import StateDatabase
from bot.storage.sqlite_probe import probe

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import RowMapping

    from bot.storage import state_schema as tables
else:
    sa = lazy_import("sqlalchemy")
    tables = lazy_import("bot.storage.state_schema")


class RowState(enum.StrEnum):
    QUEUED = "queued"
    DEAD = "dead"


class OutboxRow(Struct, frozen=True):
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
    owner: str | None = None  # the replica delivering it; None: queued before owners existed
    lease_until: datetime | None = None  # the owner's claim holds until then


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
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> int:
        """Queue one message (deleting the rows it ``replaces``), owned by ``owner`` until
        ``lease_until``; its row id."""
        async with self._db.transaction() as conn:
            if replaces:
                await conn.execute(
                    sa.delete(tables.outbox).where(tables.outbox.c.id.in_(list(replaces)))
                )
            result = await conn.execute(
                sa.insert(tables.outbox)
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
                    owner=owner,
                    lease_until=lease_until,
                )
                .returning(tables.outbox.c.id)
            )
            return int(result.scalar_one())

    async def delete(self, ids: Collection[int]) -> None:
        if not ids:
            return
        async with self._db.transaction() as conn:
            for chunk in _chunks(ids):
                await conn.execute(sa.delete(tables.outbox).where(tables.outbox.c.id.in_(chunk)))

    # ------------------------------------------------------------------ ownership

    async def renew(self, ids: Collection[int], *, owner: str, until: datetime) -> set[int]:
        """Extend ``owner``'s lease on those of ``ids`` it still owns (queued); those ids.
        An id missing from the answer was taken over by another replica, or is gone."""
        if not ids:
            return set()
        kept: set[int] = set()
        async with self._db.transaction() as conn:
            for chunk in _chunks(ids):
                result = await conn.execute(
                    sa.update(tables.outbox)
                    .where(_queued_by(owner), tables.outbox.c.id.in_(chunk))
                    .values(lease_until=until)
                    .returning(tables.outbox.c.id)
                )
                kept.update(int(i) for i in result.scalars())
        return kept

    async def claimable(
        self, *, owner: str, now: datetime, own: bool, after: int = 0, limit: int = 500
    ) -> list[int]:
        """Ids of queued rows ``owner`` may claim, in order, from ``after`` on: no owner,
        or a lease that ran out; with ``own``, also rows ``owner`` holds already (a restart
        under the same replica id)."""
        # Asked every few seconds; mostly nothing is queued (bot.storage.sqlite_probe).
        if await self._nothing_queued(after=after):
            return []
        async with self._db.transaction() as conn:
            result = await conn.execute(
                sa.select(tables.outbox.c.id)
                .where(
                    tables.outbox.c.state == RowState.QUEUED.value,
                    tables.outbox.c.id > after,
                    _claimable(owner if own else None, now),
                )
                .order_by(tables.outbox.c.id)
                .limit(limit)
            )
            return [int(i) for i in result.scalars()]

    async def claim(
        self, ids: Collection[int], *, owner: str, now: datetime, until: datetime
    ) -> list[OutboxRow]:
        """Make ``owner`` the owner of those of ``ids`` that are still claimable (queued;
        no owner, ``owner`` itself, or a lease that ran out before ``now``), leased until
        ``until``: the rows it won, oldest first. The check and the change are one
        statement, so two replicas claiming the same row never both get it."""
        if not ids:
            return []
        won: list[OutboxRow] = []
        async with self._db.transaction() as conn:
            for chunk in _chunks(ids):
                result = await conn.execute(
                    sa.update(tables.outbox)
                    .where(
                        tables.outbox.c.id.in_(chunk),
                        tables.outbox.c.state == RowState.QUEUED.value,
                        _claimable(owner, now),
                    )
                    .values(owner=owner, lease_until=until)
                    .returning(*tables.outbox.c)
                )
                won.extend(_row(r) for r in result.mappings())
        return sorted(won, key=lambda row: row.id)

    async def release(self, *, owner: str, now: datetime, keep: Collection[int] = ()) -> int:
        """End ``owner``'s lease on its queued rows, but those in ``keep``, at ``now`` (a
        graceful stop): any replica may claim them at once. The owner stays, so a restart
        under its id takes them back too. How many rows were released."""
        if await self._nothing_queued():
            return 0
        condition = _queued_by(owner)
        if keep:
            condition = sa.and_(condition, tables.outbox.c.id.not_in(sorted(keep)))
        async with self._db.transaction() as conn:
            result = await conn.execute(
                sa.update(tables.outbox)
                .where(condition)
                .values(lease_until=now)
                .returning(tables.outbox.c.id)
            )
            return len(result.all())

    async def failed(
        self, ids: Sequence[int], *, attempts: int, next_at: datetime, error: str, dead: bool
    ) -> None:
        if not ids:
            return
        state = RowState.DEAD if dead else RowState.QUEUED
        async with self._db.transaction() as conn:
            await conn.execute(
                sa.update(tables.outbox)
                .where(tables.outbox.c.id.in_(list(ids)))
                .values(attempts=attempts, next_at=next_at, last_error=error[:2000], state=state)
            )

    async def rows(self, state: RowState) -> list[OutboxRow]:
        """Every row in ``state``, oldest first."""
        async with self._db.transaction() as conn:
            result = await conn.execute(
                sa.select(tables.outbox)
                .where(tables.outbox.c.state == state.value)
                .order_by(tables.outbox.c.id)
            )
            return [_row(r) for r in result.mappings()]

    async def count(self, state: RowState) -> int:
        found = await probe(
            self._db.url, "SELECT count(*) FROM outbox WHERE state = ?", (state.value,)
        )
        if found is not None:
            return int(found[0][0])
        async with self._db.transaction() as conn:
            result = await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.outbox)
                .where(tables.outbox.c.state == state.value)
            )
            return int(result.scalar_one())

    async def _nothing_queued(self, *, after: int = 0) -> bool:
        found = await probe(
            self._db.url,
            "SELECT 1 FROM outbox WHERE state = ? AND id > ? LIMIT 1",
            (RowState.QUEUED.value, after),
        )
        return found == []


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
        owner=r["owner"],
        lease_until=r["lease_until"],
    )


def _queued_by(owner: str) -> sa.ColumnElement[bool]:
    return sa.and_(tables.outbox.c.state == RowState.QUEUED.value, tables.outbox.c.owner == owner)


def _claimable(owner: str | None, now: datetime) -> sa.ColumnElement[bool]:
    """No owner (queued before owners existed), a lease that ran out, or ``owner``'s own."""
    free = sa.or_(
        tables.outbox.c.owner.is_(None),
        tables.outbox.c.lease_until.is_(None),
        tables.outbox.c.lease_until < now,
    )
    return free if owner is None else sa.or_(free, tables.outbox.c.owner == owner)


_CHUNK = 500  # ids per statement: far below SQLite's and asyncpg's bound-parameter limits


def _chunks(ids: Collection[int]) -> Iterator[list[int]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]
