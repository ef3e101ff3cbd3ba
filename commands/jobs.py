"""/jobs: running jobs, then the most recent finished ones."""

from __future__ import annotations

from datetime import timedelta

from msgspec import Struct

from bot.cluster.redis_clients import StateRedisUnavailable
from bot.features.actions.job_locks import Holder
from bot.features.actions.jobs import Job, JobBoard
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec, NoArgs, Request
from bot.kernel.durations import format_duration
from bot.kernel.reply import Reply, Status, Table

_SHOWN_FINISHED = 10


class JobsDeps(Struct, frozen=True):
    """The job board, and the clock for how long each job ran."""

    jobs: JobBoard
    clock: Clock


async def run(request: Request, _: NoArgs, deps: JobsDeps) -> Reply:
    board = deps.jobs
    running, finished = board.running(), board.finished()[:_SHOWN_FINISHED]
    notes: list[str] = []
    try:
        elsewhere = await board.running_elsewhere()
    except StateRedisUnavailable:
        elsewhere = []
        notes.append("Other replicas' jobs are not shown: opsbot cannot reach its Redis.")
    if board.shared and finished:
        notes.append("Finished jobs are this replica's; /audit has every replica's.")
    if not running and not finished and not elsewhere:
        return Reply(title="No jobs since opsbot started", status=Status.INFO, text=" ".join(notes))
    now = deps.clock.now()
    rows = [_row(job, now - job.started_at) for job in running]
    rows += [_row_elsewhere(remote.holder, now - remote.holder.since) for remote in elsewhere]
    rows += [
        _row(job, (job.finished_at or now) - job.started_at, ago=now - (job.finished_at or now))
        for job in finished
    ]
    return Reply(
        title=f"{len(running) + len(elsewhere)} running, {len(finished)} recent job(s)",
        status=Status.INFO,
        text=" ".join(notes),
        table=Table(("job", "action", "by", "state", "took", "ended"), tuple(rows)),
    )


def _row(job: Job, took: timedelta, ago: timedelta | None = None) -> tuple[str, ...]:
    by = job.requester.principal
    if job.requester.approved_by:
        by += f" (+{job.requester.approved_by})"
    ended = "" if ago is None else f"{format_duration(ago)} ago"
    return (job.id, job.description, by, job.state.value, format_duration(took), ended)


def _row_elsewhere(holder: Holder, took: timedelta) -> tuple[str, ...]:
    state = f"running on {holder.replica}"
    return (holder.job_id, holder.description, holder.principal, state, format_duration(took), "")


SPEC = CommandSpec(
    name="jobs",
    summary="List running and recent jobs",
    usage="/jobs",
    args_model=NoArgs,
    run=run,
    needs=JobsDeps,
)
