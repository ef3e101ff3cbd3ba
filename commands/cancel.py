"""/cancel <job>: stop a running job (terminate its processes, then kill them), on this
replica or, with several replicas, on the one running it."""

from __future__ import annotations

from msgspec import Struct

from bot.cluster.redis_clients import StateRedisUnavailable
from bot.features.actions.job_locks import RemoteJob
from bot.features.actions.jobs import JobBoard
from bot.features.actions.service import ActionService
from bot.kernel.command import ActionRef, ActionVerb, Args, CommandSpec, Request, Risk
from bot.kernel.errors import Denied, UsageError, UserError
from bot.kernel.reply import Reply, Status
from bot.pipeline.authorize import Authorizer

# Beyond the action's kill grace: the other replica notices the request within half a
# second, and its answer reaches Redis a moment later.
_ELSEWHERE_SLACK_S = 3.0


class CancelArgs(Args):
    job: str


class CancelDeps(Struct, frozen=True):
    """The job board; for a job on another replica, the configured actions and the
    authorizer that decides whether this person may stop it."""

    jobs: JobBoard
    actions: ActionService
    authorizer: Authorizer


async def run(request: Request, args: CancelArgs, deps: CancelDeps) -> Reply:
    board = deps.jobs
    job = board.get(args.job.strip().lower())
    if job is None:
        return await _cancel_elsewhere(request, deps, args.job)
    # The authorizer checked this job's action roles (acts_on) before the command ran.
    action = job.prepared.action
    if job.result is not None:
        return Reply(
            title=f"Job {job.id} ({job.description}) already ended: {job.state.value}",
            status=Status.INFO,
        )
    board.cancel(job, request.principal.name)
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


def _acts_on(args: CancelArgs) -> ActionRef:
    return ActionRef(ActionVerb.CANCEL, args.job)


async def _cancel_elsewhere(request: Request, deps: CancelDeps, typed: str) -> Reply:
    board = deps.jobs
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
    action = deps.actions.action(remote.holder.action)
    if action is None:
        raise UserError(
            f"job {job_id} on replica {remote.holder.replica} runs '{remote.holder.action}', "
            "an action this replica's config does not have; cancel it there"
        )
    # The authorizer only sees this replica's jobs; this one's action is known only now.
    decision = deps.authorizer.action_decision(request.principal, action, verb="cancel", of=job_id)
    if not decision.allowed:
        raise Denied(decision.reason, decision.rule)
    try:
        ended = await board.cancel_elsewhere(
            remote,
            request.principal.name,
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
    needs=CancelDeps,
    positional=("job",),
    risk=Risk.WRITE,
    acts_on=_acts_on,
)
