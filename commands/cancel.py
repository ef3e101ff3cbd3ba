"""/cancel <job>: stop a running job (terminate its processes, then kill them), on this
replica or, with several replicas, on the one running it."""

from __future__ import annotations

from bot.cluster.redis_clients import StateRedisUnavailable
from bot.features.actions.config import ActionConfig
from bot.features.actions.job_locks import RemoteJob
from bot.kernel.command import Args, CommandSpec, Risk
from bot.kernel.errors import Denied, UsageError, UserError
from bot.kernel.reply import Reply, Status
from bot.pipeline.context import Context

# Beyond the action's kill grace: the other replica notices the request within half a
# second, and its answer reaches Redis a moment later.
_ELSEWHERE_SLACK_S = 3.0


class CancelArgs(Args):
    job: str


async def run(ctx: Context, args: CancelArgs) -> Reply:
    board = ctx.tools.jobs
    job = board.get(args.job.strip().lower())
    if job is None:
        return await _cancel_elsewhere(ctx, args.job)
    action = job.prepared.action
    _may_cancel(ctx, action, job.id)
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


def _may_cancel(ctx: Context, action: ActionConfig, job_id: str) -> None:
    # Whoever may run an action may stop it: at 3 a.m. the requester may be asleep.
    if ctx.principal.roles.isdisjoint(action.roles):
        raise Denied(
            f"cancelling {job_id} needs a role that may run '{action.name}'",
            f"actions.{action.name}.roles",
        )


async def _cancel_elsewhere(ctx: Context, typed: str) -> Reply:
    board = ctx.tools.jobs
    job_id = typed.strip().lower()
    if not board.shared:
        raise UsageError(f"no job '{typed}' (see /jobs)")
    try:
        remote = await board.find_elsewhere(job_id)
    except StateRedisUnavailable as exc:
        raise UserError(
            f"no job '{typed}' on this replica, and the others cannot be asked: opsbot "
            "cannot reach its Redis"
        ) from exc
    if remote is None:
        raise UsageError(f"no job '{typed}' running on any replica (see /jobs)")
    action = ctx.tools.config.action(remote.holder.action)
    if action is None:
        raise UserError(
            f"job {job_id} on replica {remote.holder.replica} runs '{remote.holder.action}', "
            "an action this replica's config does not have; cancel it there"
        )
    _may_cancel(ctx, action, job_id)
    try:
        ended = await board.cancel_elsewhere(
            remote,
            ctx.principal.name,
            within=action.kill_grace.total_seconds() + _ELSEWHERE_SLACK_S,
        )
    except StateRedisUnavailable as exc:
        raise UserError(
            f"job {job_id} runs on replica {remote.holder.replica}, which cannot be asked "
            "to stop it: opsbot cannot reach its Redis"
        ) from exc
    return _elsewhere_reply(remote, ended=ended)


def _elsewhere_reply(remote: RemoteJob, *, ended: bool) -> Reply:
    holder = remote.holder
    where = f"Job {holder.job_id} ({holder.description}) on replica {holder.replica}"
    if ended:
        return Reply(title=f"{where} cancelled", status=Status.OK)
    return Reply(
        title=f"{where} was asked to stop; it has not ended yet",
        status=Status.WARNING,
        text="Its replica posts the result where the job was started.",
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
