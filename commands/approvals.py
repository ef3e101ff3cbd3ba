"""/approvals: requests waiting for a second person, oldest first."""

from __future__ import annotations

from msgspec import Struct

from bot.features.actions.approvals import ApprovalStore
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec, NoArgs, Request
from bot.kernel.durations import format_duration
from bot.kernel.reply import Reply, Status, Table


class ApprovalsDeps(Struct, frozen=True):
    """The approval requests, and the clock that tells which still wait."""

    approvals: ApprovalStore
    clock: Clock


async def run(request: Request, _: NoArgs, deps: ApprovalsDeps) -> Reply:
    now = deps.clock.now()
    waiting = await deps.approvals.pending(now)
    if not waiting:
        return Reply(title="No approval requests are waiting", status=Status.INFO)
    rows = tuple(
        (
            a.id,
            " ".join([a.action, *(f"{k}={v}" for k, v in a.args.items())]),
            a.requester,
            f"{format_duration(now - a.created_at)} ago",
            format_duration(a.expires_at - now),
        )
        for a in waiting
    )
    return Reply(
        title=f"{len(rows)} approval request(s) waiting: /approve <id> or /deny <id> [reason]",
        status=Status.INFO,
        table=Table(("id", "action", "requested by", "asked", "expires in"), rows),
    )


SPEC = CommandSpec(
    name="approvals",
    summary="List approval requests waiting for a second person",
    usage="/approvals",
    args_model=NoArgs,
    run=run,
    needs=ApprovalsDeps,
)
