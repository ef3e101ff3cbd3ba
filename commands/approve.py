"""/approve <id>: the second person's yes to a high-risk action; it then runs."""

from __future__ import annotations

from msgspec import Struct

from bot.features.actions.service import ActionService
from bot.features.runbooks.service import RunbookService
from bot.kernel.command import ActionRef, ActionVerb, Args, CommandSpec, Request, Risk
from bot.kernel.reply import Reply


class ApproveArgs(Args):
    id: str


class ApproveDeps(Struct, frozen=True):
    """The action service, which decides the request and runs the action."""

    actions: ActionService
    runbooks: RunbookService  # a runbook's request is decided there


async def run(request: Request, args: ApproveArgs, deps: ApproveDeps) -> Reply:
    if await deps.runbooks.owns(args.id):
        return await deps.runbooks.decide(request, args.id, approve=True, reason=None)
    return await deps.actions.decide(request, args.id, approve=True, reason=None)


def _acts_on(args: ApproveArgs) -> ActionRef:
    return ActionRef(ActionVerb.APPROVE, args.id)


SPEC = CommandSpec(
    name="approve",
    summary="Approve someone else's high-risk action request",
    usage="/approve <id>",
    args_model=ApproveArgs,
    run=run,
    needs=ApproveDeps,
    positional=("id",),
    risk=Risk.WRITE,
    acts_on=_acts_on,
)
