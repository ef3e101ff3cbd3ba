"""/rollback <tag> [--dry-run]: the reference action, run through the allow-listed runner.

The action itself (script, argument schema, approvers) is the ``rollback`` entry under
``[[actions]]``; this command only names it.
"""

from __future__ import annotations

from msgspec import Struct

from bot.features.actions.service import ActionService
from bot.kernel.command import ActionRef, ActionVerb, Args, CommandSpec, Request, Risk
from bot.kernel.reply import Reply

ACTION = "rollback"


class RollbackArgs(Args):
    tag: str
    dry_run: bool = False


class RollbackDeps(Struct, frozen=True):
    """The action service, which runs the rollback action or asks for approval."""

    actions: ActionService


async def run(request: Request, args: RollbackArgs, deps: RollbackDeps) -> Reply:
    return await deps.actions.request_action(request, ACTION, (args.tag,), {}, dry_run=args.dry_run)


def _acts_on(args: RollbackArgs) -> ActionRef:
    return ActionRef(ActionVerb.RUN, ACTION)


SPEC = CommandSpec(
    name="rollback",
    summary="Roll back to a release tag (needs a second person's approval)",
    usage="/rollback <tag> [--dry-run]",
    args_model=RollbackArgs,
    run=run,
    needs=RollbackDeps,
    positional=("tag",),
    risk=Risk.HIGH,
    acts_on=_acts_on,
)
