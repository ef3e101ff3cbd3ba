"""/deny <id> [reason]: refuse a high-risk action request (or withdraw your own)."""

from __future__ import annotations

from bot.features.actions.service import decide
from bot.kernel.command import Args, CommandSpec, Risk
from bot.kernel.reply import Reply
from bot.pipeline.context import Context


class DenyArgs(Args):
    id: str
    reason: str = ""


async def run(ctx: Context, args: DenyArgs) -> Reply:
    return await decide(ctx, args.id, approve=False, reason=args.reason or None)


SPEC = CommandSpec(
    name="deny",
    summary="Refuse a high-risk action request",
    usage="/deny <id> [reason]",
    args_model=DenyArgs,
    run=run,
    positional=("id",),
    rest="reason",
    risk=Risk.WRITE,
)
