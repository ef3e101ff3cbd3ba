"""/deny <id> [reason]: refuse a high-risk action request (or withdraw your own)."""

from __future__ import annotations

from msgspec import Struct

from bot.features.actions.service import ActionService
from bot.features.runbooks.service import RunbookService
from bot.kernel.command import ActionRef, ActionVerb, Args, CommandSpec, Request, Risk
from bot.kernel.reply import Reply


class DenyArgs(Args):
    id: str
    reason: str = ""


class DenyDeps(Struct, frozen=True):
    """The action service, which decides the request and tells the requester."""

    actions: ActionService
    runbooks: RunbookService  # a runbook's request is decided there


async def run(request: Request, args: DenyArgs, deps: DenyDeps) -> Reply:
    if await deps.runbooks.owns(args.id):
        return await deps.runbooks.decide(
            request, args.id, approve=False, reason=args.reason or None
        )
    return await deps.actions.decide(request, args.id, approve=False, reason=args.reason or None)


def _acts_on(args: DenyArgs) -> ActionRef:
    return ActionRef(ActionVerb.DENY, args.id)


SPEC = CommandSpec(
    name="deny",
    summary="Refuse a high-risk action request",
    usage="/deny <id> [reason]",
    args_model=DenyArgs,
    run=run,
    needs=DenyDeps,
    positional=("id",),
    rest="reason",
    risk=Risk.WRITE,
    acts_on=_acts_on,
)
