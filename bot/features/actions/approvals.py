"""Approval requests for high-risk actions, kept in the database so they survive a restart.

A request is single-use and bound to one action with exact argument values. Deciding is
one conditional UPDATE (pending, not expired, not by the requester), so two approvers
racing each other, or one approving twice, can never run the action twice.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from msgspec import Struct

from bot.kernel.lazy import lazy_import
from bot.kernel.message import Location
from bot.storage.database import StateDatabase

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import RowMapping

    from bot.storage import state_schema as tables
else:
    sa = lazy_import("sqlalchemy")
    tables = lazy_import("bot.storage.state_schema")

# No 0/o, 1/l/i: the id is read off a phone and typed at 3 a.m.
_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_ID_LENGTH = 6


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class Approval(Struct, frozen=True):
    id: str
    request_id: str
    action: str
    args: dict[str, str]
    argv: tuple[str, ...]
    requester: str
    requester_id: str  # their platform user id, in the destination's platform
    destination: Location
    created_at: datetime
    expires_at: datetime
    state: ApprovalState
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None

    def state_at(self, now: datetime) -> ApprovalState:
        if self.state is ApprovalState.PENDING and now >= self.expires_at:
            return ApprovalState.EXPIRED
        return self.state


class ApprovalStore:
    def __init__(self, database: StateDatabase) -> None:
        self._db = database

    async def create(
        self,
        *,
        request_id: str,
        action: str,
        args: Mapping[str, str],
        argv: Sequence[str],
        requester: str,
        requester_id: str,
        destination: Location,
        now: datetime,
        expires_at: datetime,
    ) -> Approval:
        for _ in range(5):
            approval = Approval(
                id="".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH)),
                request_id=request_id,
                action=action,
                args=dict(args),
                argv=tuple(argv),
                requester=requester,
                requester_id=requester_id,
                destination=destination,
                created_at=now,
                expires_at=expires_at,
                state=ApprovalState.PENDING,
                decided_by=None,
                decided_at=None,
                reason=None,
            )
            try:
                async with self._db.transaction() as conn:
                    await conn.execute(tables.approvals.insert().values(**_row(approval)))
            except Exception as exc:
                if isinstance(exc.__cause__, sa.exc.IntegrityError):
                    continue  # the id was taken: draw another
                raise
            return approval
        raise RuntimeError("could not draw a free approval id in 5 tries")

    async def get(self, approval_id: str) -> Approval | None:
        async with self._db.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(tables.approvals).where(tables.approvals.c.id == approval_id)
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _approval(row)

    async def decide(
        self,
        approval_id: str,
        *,
        by: str,
        approve: bool,
        now: datetime,
        reason: str | None = None,
    ) -> bool:
        """Approve a pending, unexpired request someone else made, or deny one. False when
        it was not (any more) pending: the caller reads it again to say why."""
        state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
        conditions = [
            tables.approvals.c.id == approval_id,
            tables.approvals.c.state == ApprovalState.PENDING.value,
            tables.approvals.c.expires_at > now,
        ]
        if approve:  # a requester may withdraw (deny) their own request, never approve it
            conditions.append(tables.approvals.c.requester != by)
        async with self._db.transaction() as conn:
            result = await conn.execute(
                tables.approvals.update()
                .where(*conditions)
                .values(state=state.value, decided_by=by, decided_at=now, reason=reason)
            )
        return bool(result.rowcount == 1)

    async def expire(self, approval_id: str, *, now: datetime) -> bool:
        """Mark a pending request whose time is up as expired; True if this call did."""
        async with self._db.transaction() as conn:
            result = await conn.execute(
                tables.approvals.update()
                .where(
                    tables.approvals.c.id == approval_id,
                    tables.approvals.c.state == ApprovalState.PENDING.value,
                    tables.approvals.c.expires_at <= now,
                )
                .values(state=ApprovalState.EXPIRED.value, decided_at=now)
            )
        return bool(result.rowcount == 1)

    async def pending(self, now: datetime, limit: int = 20) -> list[Approval]:
        async with self._db.transaction() as conn:
            rows = (
                (
                    await conn.execute(
                        sa.select(tables.approvals)
                        .where(
                            tables.approvals.c.state == ApprovalState.PENDING.value,
                            tables.approvals.c.expires_at > now,
                        )
                        .order_by(tables.approvals.c.created_at)
                        .limit(limit)
                    )
                )
                .mappings()
                .all()
            )
        return [_approval(row) for row in rows]


def _row(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "request_id": approval.request_id,
        "action": approval.action,
        "args": orjson.dumps(approval.args, option=orjson.OPT_SORT_KEYS).decode(),
        "argv": orjson.dumps(list(approval.argv)).decode(),
        "requester": approval.requester,
        "requester_id": approval.requester_id,
        "platform": approval.destination.platform,
        "workspace": approval.destination.workspace,
        "channel": approval.destination.channel_id,
        "thread": approval.destination.thread_id,
        "created_at": approval.created_at,
        "expires_at": approval.expires_at,
        "state": approval.state.value,
        "decided_by": approval.decided_by,
        "decided_at": approval.decided_at,
        "reason": approval.reason,
    }


def _approval(row: RowMapping) -> Approval:
    return Approval(
        id=row["id"],
        request_id=row["request_id"],
        action=row["action"],
        args=orjson.loads(row["args"]),
        argv=tuple(orjson.loads(row["argv"])),
        requester=row["requester"],
        requester_id=row["requester_id"],
        destination=Location(row["platform"], row["channel"], row["thread"], row["workspace"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        state=ApprovalState(row["state"]),
        decided_by=row["decided_by"],
        decided_at=row["decided_at"],
        reason=row["reason"],
    )
