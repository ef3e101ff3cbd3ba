"""/rollback <tag> [--dry-run]: the reference action, run through the allow-listed runner.

The action itself (script, argument schema, approvers) is the ``rollback`` entry under
``[[actions]]``; this command only names it.
"""

from __future__ import annotations

from bot.features.actions.service import find_action, request_action
from bot.kernel.command import Args, CommandSpec, Risk
from bot.kernel.reply import Reply
from bot.pipeline.context import Context

ACTION = "rollback"


class RollbackArgs(Args):
    tag: str
    dry_run: bool = False


async def run(ctx: Context, args: RollbackArgs) -> Reply:
    action = find_action(ctx, ACTION)
    return await request_action(ctx, action, (args.tag,), {}, dry_run=args.dry_run)


SPEC = CommandSpec(
    name="rollback",
    summary="Roll back to a release tag (needs a second person's approval)",
    usage="/rollback <tag> [--dry-run]",
    args_model=RollbackArgs,
    run=run,
    positional=("tag",),
    risk=Risk.HIGH,
)
