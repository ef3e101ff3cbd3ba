"""Running a runbook: its plan shown, one approval for all of it when a step is high-risk,
then its steps in order in a tracked task, progress posted to the requester's thread.

The first step that fails (an action that does not finish OK, a wait that times out, a
verification that does not hold) stops the run: the steps after it are recorded as
skipped, the ``on_failure`` steps run, and the result names the step that failed and
why. Every step leaves a "started" and a final entry (ok, failed, skipped) in the audit
trail under the runbook's request id; an action step's job entries carry that id as the
prefix of theirs (``<request id>:<job id>``), so ``/audit request=<id>`` shows it all.

Who may run or approve a runbook, and whether it needs approval, is decided before this
runs, by the pipeline's authorizer (``request.decision``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from msgspec import Struct

from bot.audit.trail import ALLOWED, STARTED, AuditTrail
from bot.delivery.channels import channel_destinations
from bot.delivery.config import ChannelGroup
from bot.delivery.outbox import Outbox
from bot.features.actions.approvals import Approval, ApprovalState
from bot.features.actions.arguments import prepare
from bot.features.actions.config import ActionConfig
from bot.features.actions.jobs import JobState, Requester
from bot.features.actions.service import ActionService
from bot.features.alerts.checks import Checks
from bot.features.probes.config import Service
from bot.features.runbooks.config import APPROVAL_MARKER, RunbookConfig, Step
from bot.features.runbooks.plan import Plan, PlannedStep, fill, step_values
from bot.kernel.clock import Clock
from bot.kernel.command import Request, Risk
from bot.kernel.durations import format_duration
from bot.kernel.errors import UsageError, UserError
from bot.kernel.failures import report_failure
from bot.kernel.reply import Button, Field, Reply, Status
from bot.kernel.severity import Severity

if TYPE_CHECKING:
    from bot.cluster.http_clients import HttpClients
    from bot.cluster.redis_clients import RedisClients

log = structlog.get_logger("opsbot.runbooks")


class RunbookRun(Struct, eq=False):
    plan: Plan
    requester: Requester  # who asked, where; its request_id is the runbook's
    task: asyncio.Task[bool] | None = None

    @property
    def request_id(self) -> str:
        return self.requester.request_id


class RunbookService:
    def __init__(
        self,
        runbooks: Sequence[RunbookConfig],
        *,
        actions: ActionService,
        checks: Checks,
        services: Sequence[Service],
        channels: Mapping[str, ChannelGroup],
        http: HttpClients,
        redis: RedisClients,
        outbox: Outbox,
        audit: AuditTrail,
        clock: Clock,
        base_dir: Path,
    ) -> None:
        self.runbooks = tuple(runbooks)
        self._by_name = {runbook.name: runbook for runbook in runbooks}
        self._actions = actions
        self._checks = checks
        self._services = {service.name: service for service in services}
        self._channels = channels
        self._http = http
        self._redis = redis
        self._outbox = outbox
        self._audit = audit
        self._clock = clock
        self._base_dir = base_dir
        self._running: set[RunbookRun] = set()

    def runbook(self, name: str) -> RunbookConfig | None:
        return self._by_name.get(name)

    def high_risk(self, runbook: RunbookConfig) -> bool:
        """Whether a step (or an on_failure step) runs a high-risk action: then the whole
        runbook needs one approval, as that action alone would."""
        return any(
            action is not None and action.risk is Risk.HIGH
            for step in (*runbook.steps, *runbook.on_failure)
            if step.action is not None
            for action in (self._actions.action(step.action),)
        )

    @staticmethod
    def approval_of(approval: Approval) -> str | None:
        """The runbook an approval request is for; None for an action's."""
        if approval.action.startswith(APPROVAL_MARKER):
            return approval.action.removeprefix(APPROVAL_MARKER)
        return None

    async def owns(self, approval_id: str) -> bool:
        """Whether approval request ``approval_id`` is a runbook's (/approve and /deny
        then decide it here, not in the action service)."""
        approval = await self._actions.approvals.get(approval_id.strip().lower())
        return approval is not None and self.approval_of(approval) is not None

    # ------------------------------------------------------------------ requesting

    async def request(
        self,
        request: Request,
        name: str,
        positionals: Sequence[str],
        named: Mapping[str, str],
        *,
        dry_run: bool = False,
    ) -> Reply:
        """/runbook rollback v1.2 [--dry-run]: plan, then run, or ask for approval."""
        runbook = self._by_name.get(name)
        if runbook is None:  # the authorizer resolved it; the config cannot change since
            raise UsageError(f"no runbook '{name}' is configured")
        plan = await self.plan(runbook, positionals, named)
        needs_approval = request.decision.needs_approval
        if dry_run:
            return _dry_run(plan, needs_approval, self.high_risk(runbook))
        if needs_approval:
            return await self._ask_for_approval(request, plan)
        run = self._start(plan, _requester(request, request.decision.rule))
        return Reply(
            title=f"Runbook {plan.describe()} started ({_steps(len(plan.steps))}, request "
            f"{run.request_id})",
            status=Status.INFO,
            text="Progress and the result follow here.",
            code="\n".join(plan.lines()),
        )

    async def plan(
        self, runbook: RunbookConfig, positionals: Sequence[str], named: Mapping[str, str]
    ) -> Plan:
        """Check the runbook's arguments with the actions' argument checks, then fill in
        every step; an action step is prepared (its own checks) now, before anything runs."""
        values = (
            await prepare(_arguments_of(runbook), positionals, named, base_dir=self._base_dir)
        ).values
        steps = [
            await self._planned(str(i), step, values) for i, step in enumerate(runbook.steps, 1)
        ]
        on_failure = [
            await self._planned(f"on failure {i}", step, values)
            for i, step in enumerate(runbook.on_failure, 1)
        ]
        return Plan(runbook, values, tuple(steps), tuple(on_failure))

    async def _planned(self, number: str, step: Step, values: Mapping[str, str]) -> PlannedStep:
        filled = step_values(step, values)
        if step.action is None:
            return PlannedStep(number, step, filled)
        action = self._actions.action(step.action)
        if action is None:  # references.py refuses such a config at start-up
            raise UserError(f"action '{step.action}' of this runbook is not configured")
        prepared = await prepare(action, (), filled, base_dir=self._base_dir)
        return PlannedStep(number, step, filled, prepared)

    async def _ask_for_approval(self, request: Request, plan: Plan) -> Reply:
        runbook = plan.runbook
        now = self._clock.now()
        approval = await self._actions.approvals.create(
            request_id=request.request_id,
            action=APPROVAL_MARKER + runbook.name,
            args=plan.values,
            argv=plan.lines(),
            requester=request.principal.name,
            requester_id=request.message.user_id,
            destination=request.message.location,
            now=now,
            expires_at=now + runbook.approval_ttl,
        )
        await self._record_approval(request, approval, "requested")
        return Reply(
            title=f"Approval needed: runbook {plan.describe()} (request {approval.id})",
            status=Status.INFO,
            text=(
                f"It runs a high-risk action. Another person with role "
                f"{_one_of(runbook.approver_roles)} approves the whole runbook with "
                f"/approve {approval.id} or refuses with /deny {approval.id} [reason]."
            ),
            fields=(
                Field("requested by", request.principal.name),
                Field("expires in", format_duration(runbook.approval_ttl)),
                # The id every step will be audited under: /audit request=<id> traces it.
                Field("request", request.request_id),
            ),
            code="\n".join(plan.lines()),
            buttons=(
                Button("Approve", f"/approve {approval.id}", "primary"),
                Button("Deny", f"/deny {approval.id}", "danger"),
            ),
        )

    async def decide(
        self, request: Request, approval_id: str, *, approve: bool, reason: str | None
    ) -> Reply:
        """/approve <id> or /deny <id> of a runbook's approval request, once the authorizer
        allowed this person. Approved, the whole runbook runs, once."""
        store = self._actions.approvals
        approval = await store.get(approval_id.strip().lower())
        name = None if approval is None else self.approval_of(approval)
        if approval is None or name is None:
            raise UsageError(f"no runbook approval request '{approval_id}'")
        runbook = self._by_name.get(name)
        if runbook is None:
            raise UserError(
                f"runbook '{name}' is no longer configured; request {approval.id} cannot run"
            )
        await self._explain_if_not_pending(request, approval)
        plan: Plan | None = None
        if approve:
            # Bound to the exact plan the approver was shown: the same values must still
            # pass today's rules and make the same steps.
            plan = await self.plan(runbook, (), approval.args)
            if plan.lines() != approval.argv:
                raise UserError(
                    f"runbook '{name}' or one of its actions changed since request "
                    f"{approval.id} was made; it cannot run: request it again"
                )
        decided = await store.decide(
            approval.id,
            by=request.principal.name,
            approve=approve,
            now=self._clock.now(),
            reason=reason,
        )
        if not decided:
            fresh = await store.get(approval.id)
            await self._explain_if_not_pending(request, fresh or approval)
            raise UserError(f"request {approval.id} could not be decided; try /approve again")
        await self._record_approval(
            request, approval, "approved" if approve else "denied", reason=reason
        )
        who = request.principal.name
        if not approve:
            reply = Reply(
                title=f"Request {approval.id} (runbook {name}) denied by {who}",
                status=Status.INFO,
                text=f"Reason: {reason}" if reason else "",
                outcome=f"❌ denied by {who}" + (f": {reason}" if reason else ""),
            )
            if request.message.location != approval.destination:
                await self._outbox.post(approval.destination, reply)
            return reply
        assert plan is not None
        # The run carries the request id of the /runbook that asked for it: one id traces
        # the request, the approval, every step and every job.
        run = self._start(
            plan,
            Requester(
                principal=approval.requester,
                platform=approval.destination.platform,
                user_id=approval.requester_id,
                destination=approval.destination,
                request_id=approval.request_id,
                approved_by=who,
                rule=f"approval:{approval.id}",
            ),
        )
        outcome = f"✅ approved by {who}"
        return Reply(
            title=f"{outcome}: runbook {plan.describe()} is running (request {run.request_id})",
            status=Status.OK,
            text=f"Progress and the result go to {approval.requester}, where they asked.",
            outcome=outcome,
        )

    async def _explain_if_not_pending(self, request: Request, approval: Approval) -> None:
        now = self._clock.now()
        state = approval.state_at(now)
        if state is ApprovalState.PENDING:
            return
        if state is ApprovalState.EXPIRED:
            if await self._actions.approvals.expire(approval.id, now=now):
                await self._record_approval(request, approval, "expired")
            raise UserError(
                f"request {approval.id} expired at {approval.expires_at:%H:%M} UTC; ask "
                f"{approval.requester} to request it again"
            )
        raise UserError(
            f"request {approval.id} was already {state.value} by {approval.decided_by}; "
            "an approval is used once"
        )

    async def _record_approval(
        self, request: Request, approval: Approval, status: str, reason: str | None = None
    ) -> None:
        await self._audit.record_event(
            request,
            stage="approval",
            kind="approval",
            request_id=approval.request_id,
            command=approval.action,
            args=approval.args,
            approvers=(request.principal.name,) if status == "approved" else (),
            status=status,
            error=reason,
            detail=f"approval {approval.id} of a runbook requested by {approval.requester}, "
            f"expires {approval.expires_at.isoformat()}",
        )

    # ------------------------------------------------------------------ running

    def _start(self, plan: Plan, requester: Requester) -> RunbookRun:
        run = RunbookRun(plan, requester)
        self._running.add(run)
        run.task = asyncio.create_task(self._run(run), name=f"runbook-{run.request_id}")
        return run

    async def wait_idle(self) -> None:
        """Until no runbook runs (console one-shot mode, shutdown)."""
        while tasks := {r.task for r in self._running if r.task and not r.task.done()}:
            await asyncio.wait(tasks)

    async def drain(self, grace: float) -> None:
        """On shutdown: give running runbooks ``grace`` seconds, then cancel them (their
        jobs are the job board's to stop)."""
        tasks = {r.task for r in self._running if r.task is not None}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _run(self, run: RunbookRun) -> bool:
        try:
            return await self._steps(run)
        finally:
            # Inside the task, not in a done callback: whoever awaits the task (wait_idle)
            # sees it gone the moment it is done.
            self._running.discard(run)

    async def _steps(self, run: RunbookRun) -> bool:
        plan = run.plan
        total = len(plan.steps)
        started = self._clock.monotonic()
        detail = f"runbook {plan.runbook.name}: {_steps(total)}"
        await self._record(run, None, STARTED, detail=detail)
        failed: tuple[PlannedStep, str] | None = None
        try:
            for planned in plan.steps:
                if failed is not None:
                    await self._record(run, planned, "skipped", detail="an earlier step failed")
                    continue
                why = await self._step(run, planned, f"{planned.number}/{total}")
                if why is not None:
                    failed = (planned, why)
            if failed is not None:
                for planned in plan.on_failure:
                    await self._step(run, planned, planned.number, failure=failed)
        except asyncio.CancelledError:
            await self._record(run, None, "cancelled", detail="stopped by shutdown")
            raise
        took = format_duration(timedelta(seconds=max(self._clock.monotonic() - started, 1.0)))
        if failed is None:
            await self._record(run, None, "ok", detail=f"{_steps(total)} ok in {took}")
            await self._post(
                run,
                Reply(
                    title=f"runbook {plan.describe()} finished: {_steps(total)} ok in {took} "
                    f"(request {run.request_id})",
                    status=Status.OK,
                ),
            )
            return True
        step, why = failed
        await self._record(run, None, "failed", error=why, detail=f"failed at step {step.number}")
        after = f"; ran {len(plan.on_failure)} on_failure step(s)" if plan.on_failure else ""
        await self._post(
            run,
            Reply(
                title=f"runbook {plan.describe()} failed at step {step.number}/{total} "
                f"({step.describe()}): {why} (request {run.request_id})",
                status=Status.ERROR,
                text=f"The steps after it were skipped{after}.",
            ),
        )
        return False

    async def _step(
        self,
        run: RunbookRun,
        planned: PlannedStep,
        label: str,
        *,
        failure: tuple[PlannedStep, str] | None = None,
    ) -> str | None:
        """Run one step; None when it succeeded, else why it did not."""
        await self._record(run, planned, STARTED, durable=planned.prepared is not None)
        try:
            why = await self._perform(run, planned, failure)
        except asyncio.CancelledError:
            await self._record(run, planned, "cancelled", detail="stopped by shutdown")
            raise
        except UserError as exc:  # a job refused: a lock held, shutting down
            why = str(exc)
        except Exception as exc:
            failure_id = report_failure("runbook.step", exc, request_id=run.request_id)
            why = f"the step failed inside opsbot (see the log, request {failure_id})"
        ok = why is None
        await self._record(run, planned, "ok" if ok else "failed", error=why)
        await self._post(
            run,
            Reply(
                title=f"step {label}: {planned.describe()}" + ("" if ok else f": {why}"),
                status=Status.OK if ok else Status.ERROR,
            ),
            key=f"runbook:{run.request_id}:{planned.number}",
        )
        return why

    async def _perform(
        self, run: RunbookRun, planned: PlannedStep, failure: tuple[PlannedStep, str] | None
    ) -> str | None:
        step = planned.step
        if planned.prepared is not None:
            jobs = self._actions.jobs
            job = await jobs.start(planned.prepared, run.requester)
            assert job.task is not None
            await asyncio.wait({job.task})
            if job.state is JobState.OK:
                return None
            return jobs.result_reply(job).title
        if step.wait is not None:
            return await self._wait(run, step)
        if step.verify is not None:
            return await self._verify(run, planned)
        assert step.post is not None
        builtins = {
            "runbook": run.plan.runbook.name,
            "request_id": run.request_id,
            "failure": (
                f"step {failure[0].number} ({failure[0].describe()}): {failure[1]}"
                if failure
                else ""
            ),
        }
        text = fill(planned.values["text"], builtins)
        for destination in channel_destinations(self._channels, step.post.channels):
            await self._outbox.post(destination, Reply(title=text, status=Status.WARNING))
        return None

    async def _wait(self, run: RunbookRun, step: Step) -> str | None:
        from bot.features.probes import probe_service

        wait = step.wait
        assert wait is not None
        service = self._services[wait.health]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait.within.total_seconds()
        while True:
            result = await probe_service(
                service, self._http, self._redis, request_id=run.request_id
            )
            if result.state.value == wait.state:
                return None
            left = deadline - loop.time()
            if left <= 0:
                return (
                    f"{wait.health} was still {result.state.value} ({result.detail}) after "
                    f"{format_duration(wait.within)}"
                )
            await asyncio.sleep(min(wait.every.total_seconds(), left))

    async def _verify(self, run: RunbookRun, planned: PlannedStep) -> str | None:
        verify = planned.step.verify
        assert verify is not None
        if verify.check is not None:
            reading = await self._checks.run(verify.check)
            if reading is None:
                return f"check {verify.check} could not be read (on_error = ignore)"
            if reading.level is Severity.OK:
                return None
            return f"check {verify.check} is {reading.level.name}: {reading.detail}"
        from bot.features.probes import fetch_version

        assert verify.version is not None
        service = self._services[verify.version]
        if service.version_url is None:  # references.py refuses such a config
            return f"service {service.name} has no version_url"
        result = await fetch_version(
            self._http.client(),
            service.name,
            str(service.version_url),
            service.timeout.total_seconds(),
            request_id=run.request_id,
        )
        expected = planned.values["equals"]
        if result.version == expected:
            return None
        found = result.version or "no version"
        why = "" if result.detail == "ok" else f" ({result.detail})"
        return f"{service.name} reports {found}{why}, not {expected}"

    # ------------------------------------------------------------------ telling

    async def _post(self, run: RunbookRun, reply: Reply, *, key: str | None = None) -> None:
        await self._outbox.post(run.requester.destination, reply, key=key)

    async def _record(
        self,
        run: RunbookRun,
        planned: PlannedStep | None,
        status: str,
        *,
        error: str | None = None,
        detail: str = "",
        durable: bool = False,
    ) -> None:
        """One entry of the runbook (``planned`` None) or of one of its steps."""
        requester = run.requester
        plan = run.plan
        if planned is not None:
            detail = detail or f"step {planned.number} ({planned.step.kind})"
        entry = self._audit.entry(
            request_id=_audit_request_id(run, planned),
            at=self._clock.now(),
            stage="started" if status == STARTED else "finished",
            kind="runbook",
            location=requester.destination,
            user_id=requester.user_id,
            principal=requester.principal,
            command=plan.runbook.name,
            raw_text=(
                f"runbook {plan.describe()}"
                if planned is None
                else f"{planned.number}. {planned.describe()}"
            ),
            args=plan.values,
            decision=ALLOWED,
            rule=requester.rule,
            approvers=(requester.approved_by,) if requester.approved_by else (),
            status=status,
            error=error,
            detail=detail,
        )
        try:
            if durable:
                # Before an action step's job starts, as the job's own entry is.
                await self._audit.record_durably(entry)
            else:
                await self._audit.record(entry)
        except Exception as exc:
            report_failure("runbook.audit", exc, request_id=run.request_id)
            if durable:
                raise


def _audit_request_id(run: RunbookRun, planned: PlannedStep | None) -> str:
    """The run's and each step's own id under the request's, as a job's is (``/audit
    request=<id>`` shows them all): each started entry is closed by its own finished one,
    after a crash too, not by the /runbook command's or an earlier step's."""
    if planned is None:
        return f"{run.request_id}:runbook"
    return f"{run.request_id}:step-{planned.number.replace(' ', '-')}"


def _steps(n: int) -> str:
    return "1 step" if n == 1 else f"{n} steps"


def _arguments_of(runbook: RunbookConfig) -> ActionConfig:
    """The runbook's arguments as an action that is never run: the actions' argument
    checks (printable, length, pattern, choices, values_from) apply unchanged."""
    return ActionConfig(
        name=runbook.name,
        argv=[sys.executable],
        args=runbook.args,
        roles=runbook.roles,
        risk=Risk.READ,
    )


def _dry_run(plan: Plan, needs_approval: bool, high_risk: bool) -> Reply:
    runbook = plan.runbook
    if needs_approval:
        who = _one_of(runbook.approver_roles)
        approval = f"once, for the whole runbook, by another person with role {who}"
    elif high_risk:
        approval = "none while the policy mode is off (a step is high risk)"
    else:
        approval = "none (no high-risk step)"
    return Reply(
        title=f"Dry run: runbook {plan.describe()} would run these steps; nothing was run",
        status=Status.INFO,
        fields=(Field("approval", approval),),
        code="\n".join(plan.lines()),
    )


def _requester(request: Request, rule: str) -> Requester:
    return Requester(
        principal=request.principal.name,
        platform=request.message.platform,
        user_id=request.message.user_id,
        destination=request.message.location,
        request_id=request.request_id,
        rule=rule,
    )


def _one_of(roles: Sequence[str]) -> str:
    names = sorted(roles)
    if not names:
        return "(none configured)"
    return f"'{names[0]}'" if len(names) == 1 else "one of " + ", ".join(f"'{r}'" for r in names)
