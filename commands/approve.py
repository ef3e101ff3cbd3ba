"""/approve <id>: the second person's yes to a high-risk action; it then runs."""

from __future__ import annotations

from bot.features.actions.service import decide
from bot.kernel.command import Args, CommandSpec, Risk
from bot.kernel.reply import Reply
from bot.pipeline.context import Context


class ApproveArgs(Args):
    id: str


async def run(ctx: Context, args: ApproveArgs) -> Reply:
    return await decide(ctx, args.id, approve=True, reason=None)


SPEC = CommandSpec(
    name="approve",
    summary="Approve someone else's high-risk action request",
    usage="/approve <id>",
    args_model=ApproveArgs,
    run=run,
    positional=("id",),
    risk=Risk.WRITE,
)
