"""Actions run as jobs: tracked tasks with an id, progress, a result in the same thread.

A job that finishes within ``jobs.ack_after`` is answered directly; a longer one is
acknowledged with its id at once (chat platforms want an answer within 3 s) and its
progress and result follow in the conversation it came from. Every job leaves a "started"
entry, committed before its process starts, and a "finished" one in the audit trail.

On shutdown no new job starts; running ones get ``jobs.shutdown_grace`` to finish, then
are cancelled (process group terminated, then killed) and recorded as cancelled. After a
crash, the next start stops the process groups of the jobs left running
(:meth:`JobBoard.stop_orphans`) and records each as "stopped".
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import secrets
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from msgspec import Struct

from bot.audit import AuditEntry
from bot.audit.redact import Redactor
from bot.audit.trail import ALLOWED, STARTED, AuditTrail
from bot.cluster.redis_clients import StateRedisUnavailable
from bot.delivery.outbox import Outbox
from bot.features.actions.config import JobsSection
from bot.features.actions.job_locks import (
    Conflict,
    HeldSlots,
    Holder,
    RedisJobLocks,
    RemoteJob,
)
from bot.kernel.clock import Clock
from bot.kernel.durations import format_duration
from bot.kernel.errors import UserError
from bot.kernel.message import Location
from bot.kernel.reply import Field, Reply, Status

if TYPE_CHECKING:
    # Imported where used: a bot without actions never loads the runner.
    from bot.features.actions.orphans import Orphan
    from bot.features.actions.prepared import PreparedAction
    from bot.features.actions.process import ActionProcess, RunResult, RunStatus

log = structlog.get_logger("opsbot.jobs")

_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_TAIL_CHARS = 3000  # of output shown in a chat message: a phone screen, not a log viewer


class JobState(enum.StrEnum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class Requester(Struct, frozen=True):
    """Who asked for the job and where: the audit entries and the follow-ups use it."""

    principal: str
    platform: str
    user_id: str
    destination: Location
    request_id: str  # of the chat command that started the job (/rollback or /approve)
    approved_by: str | None = None
    rule: str = ""


class Job(Struct, eq=False):
    id: str
    prepared: PreparedAction
    requester: Requester
    started_at: datetime
    process: ActionProcess
    task: asyncio.Task[RunResult] | None = None
    result: RunResult | None = None
    finished_at: datetime | None = None
    stopped_by: str | None = None  # who cancelled it ("shutdown" on SIGTERM)
    follow_up: bool = False  # answered with an ack: progress and result are posted
    slots: HeldSlots | None = None  # its slots in Redis, shared with the other replicas
    marker: str = ""  # OPSBOT_JOB of its processes

    @property
    def action(self) -> str:
        return self.prepared.action.name

    @property
    def description(self) -> str:
        return self.prepared.describe()

    @property
    def audit_id(self) -> str:
        # Its own request id (start-up closes an unfinished one as interrupted), showing
        # the command it came from.
        return _audit_id(self.requester, self.id)

    @property
    def state(self) -> JobState:
        # RunStatus values are the finished JobState values.
        return JobState.RUNNING if self.result is None else JobState(self.result.status.value)


class JobBoard:
    def __init__(
        self,
        config: JobsSection,
        *,
        audit: AuditTrail,
        outbox: Outbox,
        clock: Clock,
        shared_slots: RedisJobLocks | None = None,
        replica: str = "",
    ) -> None:
        """``shared_slots``: with several replicas (Redis), the slots they all share
        (bot.features.actions.job_locks); None when this process is alone."""
        self._config = config
        self._shared_slots = shared_slots
        self._replica = replica
        self._audit = audit
        self._redactor: Redactor = audit.redactor
        self._outbox = outbox
        self._clock = clock
        self._running: dict[str, Job] = {}
        self._finished: deque[Job] = deque(maxlen=config.keep_finished)
        self._accepting = True
        # Set while stop_orphans() runs: a job starting meanwhile waits for it.
        self._stopping_orphans: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ starting

    async def start(
        self, prepared: PreparedAction, requester: Requester, *, follow_up: bool = False
    ) -> Job:
        """Start ``prepared`` as a job; UserError when it may not start now. ``follow_up``:
        its progress and result are posted to the requester whatever :meth:`answer` does
        (the person answered is not the requester: an approver elsewhere)."""
        from bot.features.actions.process import ActionProcess, job_marker

        if self._stopping_orphans is not None:
            await asyncio.shield(self._stopping_orphans)
        self._admit(prepared)
        job_id = self._new_id()
        # The replica and request id of its "started" entry: how its processes are found
        # again if this process dies before them (stop_orphans).
        marker = job_marker(self._audit.replica, _audit_id(requester, job_id))
        job = Job(
            id=job_id,
            prepared=prepared,
            requester=requester,
            started_at=self._clock.now(),
            process=ActionProcess(prepared, self._redactor, job=marker),
            follow_up=follow_up,
            marker=marker,
        )
        # Claimed before the first await: a second /rollback arriving meanwhile sees it.
        self._running[job.id] = job
        try:
            await self._take_shared_slots(job)
            await self._audit.record_durably(self._entry(job, "started", STARTED))
        except BaseException:
            del self._running[job.id]
            await self._release_shared_slots(job)
            raise
        job.task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
        return job

    async def answer(self, job: Job) -> Reply:
        """The reply to the command that started ``job``: its result if it is done within
        ``ack_after``, otherwise an acknowledgement with its id (the result follows)."""
        assert job.task is not None
        try:
            done, _ = await asyncio.wait({job.task}, timeout=self._config.ack_after.total_seconds())
        except asyncio.CancelledError:
            # Nobody will see this answer (shutdown): the result is posted when it comes.
            job.follow_up = True
            raise
        if done:
            return self.result_reply(job)
        job.follow_up = True
        return Reply(
            title=f"{job.description} is running as job {job.id}",
            status=Status.INFO,
            text=f"Progress and the result follow here. /cancel {job.id} stops it.",
            fields=self._fields(job),
        )

    def _admit(self, prepared: PreparedAction) -> None:
        action = prepared.action
        if not self._accepting:
            raise UserError("opsbot is shutting down and starts no new jobs; try again shortly")
        same = [j for j in self._running.values() if j.action == action.name]
        if len(same) >= action.max_concurrent:
            raise UserError(
                f"/{action.name} is already running {_times(len(same))} (max_concurrent = "
                f"{action.max_concurrent}): {self._who(same[0])}; wait, or /cancel {same[0].id}"
            )
        if action.lock_group is not None:
            for other in self._running.values():
                if other.prepared.action.lock_group == action.lock_group:
                    raise UserError(
                        f"{prepared.describe()} must wait: {self._who(other)} holds lock "
                        f"group '{action.lock_group}'; wait, or /cancel {other.id}"
                    )

    async def _take_shared_slots(self, job: Job) -> None:
        if self._shared_slots is None:
            return
        holder = Holder(
            job_id=job.id,
            action=job.action,
            description=job.description,
            principal=job.requester.principal,
            replica=self._replica,
            since=job.started_at,
            host=self._shared_slots.host,
            marker=job.marker,
        )
        try:
            taken = await self._shared_slots.acquire(
                job.prepared.action,
                holder,
                functools.partial(self.cancel, job),
                lambda: job.process.spawned_at,
            )
        except StateRedisUnavailable as exc:
            log.warning("jobs.slots_unavailable", job=job.id, error=str(exc.original))
            raise UserError(
                f"{job.description} was not started: opsbot cannot reach its Redis to check "
                "that no other replica is running it; try again shortly"
            ) from exc
        if isinstance(taken, Conflict):
            raise UserError(self._refusal(job.prepared, taken))
        job.slots = taken

    async def _release_shared_slots(self, job: Job) -> None:
        slots, job.slots = job.slots, None
        if slots is not None:
            await slots.release()

    def _refusal(self, prepared: PreparedAction, conflict: Conflict) -> str:
        action = prepared.action
        who = "; ".join(map(self._who_elsewhere, conflict.holders)) or "a job on another replica"
        if conflict.kind == "group":
            return (
                f"{prepared.describe()} must wait: {who} holds lock group "
                f"'{action.lock_group}'; wait for it to finish"
            )
        running = len(conflict.holders) or action.max_concurrent
        return (
            f"/{action.name} is already running {_times(running)} (max_concurrent = "
            f"{action.max_concurrent}): {who}; wait for it to finish"
        )

    def _who_elsewhere(self, holder: Holder) -> str:
        running_for = format_duration(max(self._clock.now() - holder.since, timedelta(0)))
        return (
            f"job {holder.job_id} ({holder.description}, by {holder.principal}, on replica "
            f"{holder.replica}, running for {running_for})"
        )

    def _who(self, job: Job) -> str:
        running_for = format_duration(self._clock.now() - job.started_at)
        return (
            f"job {job.id} ({job.description}, by {job.requester.principal}, "
            f"running for {running_for})"
        )

    def _new_id(self) -> str:
        while True:
            job_id = "j" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(4))
            if job_id not in self._running and all(j.id != job_id for j in self._finished):
                return job_id

    # ------------------------------------------------------------------ running

    async def _run(self, job: Job) -> RunResult:
        from bot.features.actions.process import RunStatus

        progress = asyncio.create_task(self._progress(job), name=f"job-{job.id}-progress")
        try:
            result = await job.process.run()
        except asyncio.CancelledError:
            # Our own task cancelled (the loop is going away): run() has killed the
            # process group; the trail must still say how the job ended.
            job.stopped_by = job.stopped_by or "shutdown"
            await self._settle(job, self._failure(job, RunStatus.CANCELLED, ""))
            raise
        except Exception as exc:
            # The executable vanished after it was checked, or the runner broke: the job
            # failed, and says so, rather than passing for cancelled.
            log.exception("jobs.run_failed", job=job.id)
            result = self._failure(job, RunStatus.FAILED, f"could not run: {exc}")
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        await self._settle(job, result)
        if job.follow_up:
            await self._outbox.post(job.requester.destination, self.result_reply(job))
        return result

    def _failure(self, job: Job, status: RunStatus, text: str) -> RunResult:
        from bot.features.actions.process import RunResult

        return RunResult(
            status=status,
            exit_code=None,
            duration_s=(self._clock.now() - job.started_at).total_seconds(),
            output_tail=text,
            output_bytes=0,
            output_digest="",
            truncated=False,
        )

    async def _settle(self, job: Job, result: RunResult) -> None:
        job.result = result
        job.finished_at = self._clock.now()
        # Before it leaves the running list: this process never offers a slot that the
        # other replicas still see as taken.
        await self._release_shared_slots(job)
        self._running.pop(job.id, None)
        self._finished.appendleft(job)
        try:
            await self._audit.record(self._entry(job, "finished", job.state.value))
        except Exception:
            log.exception("jobs.audit_failed", job=job.id)
        log.info(
            "job.done",
            job=job.id,
            action=job.action,
            state=job.state.value,
            exit_code=result.exit_code,
            duration_s=round(result.duration_s, 3),
        )

    async def _progress(self, job: Job) -> None:
        every = self._config.progress_every.total_seconds()
        last: list[str] = []
        while True:
            await asyncio.sleep(every)
            if not job.follow_up:
                continue
            lines = job.process.tail(self._config.progress_lines)
            if lines == last:
                continue
            last = lines
            running_for = format_duration(self._clock.now() - job.started_at)
            await self._outbox.post(
                job.requester.destination,
                Reply(
                    title=f"⏳ job {job.id}: {job.description}, running for {running_for}",
                    status=Status.INFO,
                    code=_clip("\n".join(lines)) or None,
                ),
                key=f"job-progress:{job.id}",
            )

    # ------------------------------------------------------------------ reading

    def running(self) -> list[Job]:
        return sorted(self._running.values(), key=lambda j: j.started_at)

    def finished(self) -> list[Job]:
        return list(self._finished)

    def get(self, job_id: str) -> Job | None:
        job = self._running.get(job_id)
        if job is not None:
            return job
        return next((j for j in self._finished if j.id == job_id), None)

    def result_reply(self, job: Job) -> Reply:
        result = job.result
        assert result is not None
        took = (
            format_duration(timedelta(seconds=result.duration_s))
            if result.duration_s >= 1
            else (f"{result.duration_s * 1000:.0f} ms")
        )
        status, title = {
            JobState.OK: (Status.OK, f"{job.description} finished in {took}"),
            JobState.FAILED: (
                Status.ERROR,
                f"{job.description} failed with exit code {result.exit_code} after {took}",
            ),
            JobState.TIMEOUT: (
                Status.ERROR,
                f"{job.description} timed out after {took}; its processes were killed",
            ),
            JobState.CANCELLED: (
                Status.WARNING,
                f"{job.description} was cancelled by {job.stopped_by or 'opsbot'} after {took}",
            ),
        }[job.state]
        shown = _clip(result.output_tail)
        note = ""
        if result.truncated or len(shown) < len(result.output_tail.rstrip("\n")):
            note = f"Output: {result.output_bytes:,} bytes; the last part is shown."
        return Reply(
            title=f"{title} (job {job.id})",
            status=status,
            text=note,
            code=shown or None,
        )

    def _fields(self, job: Job) -> tuple[Field, ...]:
        fields = [Field("requested by", job.requester.principal)]
        if job.requester.approved_by:
            fields.append(Field("approved by", job.requester.approved_by))
        fields.append(Field("timeout", format_duration(job.prepared.action.timeout)))
        return tuple(fields)

    # ------------------------------------------------------------------ stopping

    def cancel(self, job: Job, by: str) -> None:
        if job.result is None:
            job.stopped_by = by
            job.process.cancel()

    @property
    def shared(self) -> bool:
        """True when other replicas run jobs too (Redis): /jobs and /cancel reach them."""
        return self._shared_slots is not None

    async def running_elsewhere(self) -> list[RemoteJob]:
        """The jobs other replicas run now; StateRedisUnavailable when Redis cannot say."""
        if self._shared_slots is None:
            return []
        return await self._shared_slots.running_elsewhere()

    async def find_elsewhere(self, job_id: str) -> RemoteJob | None:
        return next((j for j in await self.running_elsewhere() if j.holder.job_id == job_id), None)

    async def cancel_elsewhere(self, job: RemoteJob, by: str, *, within: float) -> bool:
        """Ask ``job``'s replica to cancel it; True if it ended within ``within`` seconds.
        Its replica posts the result and writes the audit entries, as for a local job."""
        assert self._shared_slots is not None
        await self._shared_slots.request_cancel(job, by)
        return await self._shared_slots.wait_ended(job, within)

    async def wait(self, job: Job, within: float) -> bool:
        """Wait up to ``within`` seconds for ``job`` to end; True if it did."""
        if job.task is None:
            return True
        done, _ = await asyncio.wait({job.task}, timeout=within)
        return bool(done)

    async def wait_idle(self) -> None:
        """Until no job runs (console one-shot mode waits for its job's result)."""
        while self._running:
            tasks = [j.task for j in self._running.values() if j.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            else:  # a job still starting (its audit entry, its slots): no busy loop
                await asyncio.sleep(0.01)

    def stop_accepting(self) -> None:
        """From now on no job starts (shutdown has begun); running ones go on."""
        self._accepting = False

    async def drain(self, grace: float | None = None) -> None:
        """Stop accepting jobs; give running ones ``grace`` seconds, then cancel them."""
        self.stop_accepting()
        grace = self._config.shutdown_grace.total_seconds() if grace is None else grace
        tasks = {j.task for j in self._running.values() if j.task is not None}
        if not tasks:
            return
        log.info("jobs.draining", running=len(tasks), grace_s=grace)
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if not pending:
            return
        for job in list(self._running.values()):
            log.warning("jobs.cancelled_by_shutdown", job=job.id, action=job.action)
            self.cancel(job, "shutdown")
        # run() returns once the process group is gone: SIGTERM, then SIGKILL after grace.
        longest = max(j.prepared.action.kill_grace.total_seconds() for j in self._running.values())
        _, still = await asyncio.wait(pending, timeout=longest + 5)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)

    async def stop_orphans(self, grace: float) -> list[Orphan]:
        """Stop the process groups of the jobs an earlier run of this replica left running
        (it was killed before them): SIGTERM, SIGKILL after ``grace`` seconds; each is
        recorded in the audit trail. Call at start-up, before the first job: a process of
        a job started since is left alone, but a job starting meanwhile waits."""
        from bot.features.actions.orphans import stop_orphans

        keep = {job.audit_id for job in self._running.values()}
        self._stopping_orphans = asyncio.get_running_loop().create_future()
        try:
            orphans = await asyncio.to_thread(
                stop_orphans, self._audit.replica, grace=grace, keep=keep
            )
        finally:
            self._stopping_orphans.set_result(None)
            self._stopping_orphans = None
        for orphan in orphans:
            try:
                await self._audit.record_durably(self._orphan_entry(orphan))
            except Exception:
                log.exception("jobs.audit_failed", request_id=orphan.request_id)
        if self._shared_slots is not None:
            # Their slots (and those of jobs that ended while nobody watched) are free now.
            try:
                await self._shared_slots.release_left_behind()
            except StateRedisUnavailable as exc:
                log.warning(
                    "jobs.slots_not_released",
                    error=str(exc.original),
                    hint="they free themselves once their jobs' time limits have passed",
                )
        return orphans

    # ------------------------------------------------------------------ audit

    def _orphan_entry(self, orphan: Orphan) -> AuditEntry:
        group = (
            f"process group {orphan.pgid} ({_processes(len(orphan.pids))}) of an interrupted job"
        )
        if orphan.stopped:
            how = " (SIGKILL after SIGTERM)" if orphan.killed else ""
            status, detail = "stopped", f"{group} stopped after restart{how}"
        else:
            status, detail = "error", f"{group} could not be stopped after restart"
        return self._audit.entry(
            request_id=orphan.request_id,
            at=self._clock.now(),
            stage="event",
            kind="job",
            status=status,
            detail=detail,
        )

    def _entry(self, job: Job, stage: str, status: str) -> AuditEntry:
        requester = job.requester
        result = job.result
        digest = excerpt = None
        if result is not None and stage == "finished":
            digest = result.output_digest or None
            excerpt = _excerpt(result.output_tail, self._audit.excerpt_chars)
        detail = f"job {job.id}"
        if job.stopped_by:
            detail += f", cancelled by {job.stopped_by}"
        return self._audit.entry(
            request_id=job.audit_id,
            at=self._clock.now(),
            stage=stage,
            kind="job",
            location=requester.destination,
            user_id=requester.user_id,
            principal=requester.principal,
            command=job.action,
            raw_text=" ".join(job.prepared.argv),
            args=dict(job.prepared.values),
            decision=ALLOWED,
            rule=requester.rule,
            approvers=(requester.approved_by,) if requester.approved_by else (),
            status=status,
            exit_code=None if result is None else result.exit_code,
            duration_ms=None if result is None else round(result.duration_s * 1000, 3),
            output_digest=digest,
            output_excerpt=excerpt,
            detail=detail,
        )


def _audit_id(requester: Requester, job_id: str) -> str:
    return f"{requester.request_id}:{job_id}"


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _clip(text: str) -> str:
    """The end of ``text``, at most _TAIL_CHARS, cut at a line start."""
    if len(text) <= _TAIL_CHARS:
        return text.rstrip("\n")
    cut = text[-_TAIL_CHARS:]
    newline = cut.find("\n")
    return (cut[newline + 1 :] if 0 <= newline < 200 else cut).rstrip("\n")


def _excerpt(output: str, chars: int) -> str | None:
    if not output or chars <= 0:
        return None
    if len(output) <= chars:
        return output
    return "…" + output[-(chars - 1) :]
