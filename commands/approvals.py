"""/approvals: requests waiting for a second person, oldest first."""

from __future__ import annotations

from bot.kernel.command import CommandSpec, NoArgs
from bot.kernel.durations import format_duration
from bot.kernel.reply import Reply, Status, Table
from bot.pipeline.context import Context


async def run(ctx: Context, _: NoArgs) -> Reply:
    now = ctx.tools.clock.now()
    waiting = await ctx.tools.approvals.pending(now)
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
)
