"""/deny <id> [reason]: refuse a high-risk action request (or withdraw your own)."""

from __future__ import annotations

from bot.command import Args, CommandSpec, Risk
from bot.context import Context
from bot.operations import decide
from bot.reply import Reply


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
