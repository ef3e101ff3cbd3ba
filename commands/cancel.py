"""/cancel <job>: stop a running job (terminate its processes, then kill them)."""

from __future__ import annotations

from bot.command import Args, CommandSpec, Risk
from bot.context import Context
from bot.errors import Denied, UsageError
from bot.reply import Reply, Status


class CancelArgs(Args):
    job: str


async def run(ctx: Context, args: CancelArgs) -> Reply:
    board = ctx.tools.jobs
    job = board.get(args.job.strip().lower())
    if job is None:
        raise UsageError(f"no job '{args.job}' (see /jobs)")
    action = job.prepared.action
    # Whoever may run an action may stop it: at 3 a.m. the requester may be asleep.
    if ctx.principal.roles.isdisjoint(action.roles):
        raise Denied(
            f"cancelling {job.id} needs a role that may run '{action.name}'",
            f"actions.{action.name}.roles",
        )
    if job.result is not None:
        return Reply(
            title=f"Job {job.id} ({job.description}) already ended: {job.state.value}",
            status=Status.INFO,
        )
    board.cancel(job, ctx.principal.name)
    grace = action.kill_grace.total_seconds()
    if await board.wait(job, within=grace + 2):
        return Reply(
            title=f"Job {job.id} ({job.description}) cancelled: {job.state.value}",
            status=Status.OK,
        )
    return Reply(
        title=f"Job {job.id} ({job.description}) was sent SIGTERM and SIGKILL; it has "
        "not ended yet",
        status=Status.WARNING,
    )


SPEC = CommandSpec(
    name="cancel",
    summary="Stop a running job",
    usage="/cancel <job>",
    args_model=CancelArgs,
    run=run,
    positional=("job",),
    risk=Risk.WRITE,
)
