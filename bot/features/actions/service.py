"""Running allow-listed actions from chat: argument validation, then a job, or a request
for a second person's approval. /rollback, /run, /approve and /deny are thin commands over
:class:`ActionService`, so every way in follows the same rules.

Who may run, approve or deny an action, and whether it needs approval, is decided before
this runs, by the pipeline's authorizer (``request.decision``); this module keeps to what
the action and its approval request say.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec.structs import replace

from bot.audit.trail import AuditTrail
from bot.delivery.outbox import Outbox
from bot.features.actions.approvals import Approval, ApprovalState, ApprovalStore
from bot.features.actions.arguments import prepare
from bot.features.actions.config import ActionConfig
from bot.features.actions.jobs import JobBoard, Requester
from bot.features.actions.prepared import PreparedAction
from bot.kernel.clock import Clock
from bot.kernel.command import Request, Risk
from bot.kernel.durations import format_duration
from bot.kernel.errors import UsageError, UserError
from bot.kernel.reply import Button, Field, Reply, Status

if TYPE_CHECKING:
    from bot.features.actions.orphans import Orphan

# How long an orphaned job gets after SIGTERM when no action is configured any more.
_ORPHAN_GRACE = timedelta(seconds=5)


class ActionService:
    def __init__(
        self,
        actions: Sequence[ActionConfig],
        *,
        approvals: ApprovalStore,
        jobs: JobBoard,
        outbox: Outbox,
        audit: AuditTrail,
        clock: Clock,
        base_dir: Path,
    ) -> None:
        """``base_dir``: relative action paths are resolved against it (the config file's
        directory)."""
        self.actions = tuple(actions)
        self._by_name = {action.name: action for action in actions}
        self.approvals = approvals
        self.jobs = jobs
        self._outbox = outbox
        self._audit = audit
        self._clock = clock
        self._base_dir = base_dir

    def action(self, name: str) -> ActionConfig | None:
        return self._by_name.get(name)

    async def stop_orphans(self) -> list[Orphan]:
        """At start-up, before any job starts: stop the jobs the last run of this replica
        left running when it was killed (their audit entries are closed as interrupted),
        SIGTERM, then SIGKILL after the longest ``kill_grace`` of the actions; each group
        stopped is recorded in the audit trail (bot.features.actions.orphans)."""
        grace = max((action.kill_grace for action in self.actions), default=_ORPHAN_GRACE)
        return await self.jobs.stop_orphans(grace.total_seconds())

    async def request_action(
        self,
        request: Request,
        name: str,
        positionals: Sequence[str],
        named: Mapping[str, str],
        *,
        dry_run: bool = False,
    ) -> Reply:
        """/rollback v1.2, /run restart-web api: validate, then run, or ask for approval."""
        action = self._by_name.get(name)
        if action is None:  # the authorizer resolved it; the config cannot change since
            raise UsageError(f"no action '{name}' is configured")
        prepared = await prepare(action, positionals, named, base_dir=self._base_dir)
        needs_approval = request.decision.needs_approval
        if dry_run:
            return _dry_run(prepared, needs_approval)
        if needs_approval:
            return await self._ask_for_approval(request, prepared)
        job = await self.jobs.start(prepared, _requester(request, request.decision.rule))
        return await self.jobs.answer(job)

    async def decide(
        self, request: Request, approval_id: str, *, approve: bool, reason: str | None
    ) -> Reply:
        """/approve <id> and /deny <id> [reason], once the authorizer allowed this person."""
        store = self.approvals
        approval_id = approval_id.strip().lower()
        approval = await store.get(approval_id)
        if approval is None:
            raise UsageError(f"no approval request '{approval_id}'; /approvals lists those waiting")
        action = self._by_name.get(approval.action)
        if action is None:
            raise UserError(
                f"action '{approval.action}' is no longer configured; request {approval.id} "
                "cannot run"
            )
        now = self._clock.now()
        await self._explain_if_not_pending(request, approval)
        prepared: PreparedAction | None = None
        if approve:
            # Bound to the exact request: the same values must still pass today's rules and
            # make the same argv the requester was shown.
            prepared = await prepare(action, (), approval.args, base_dir=self._base_dir)
            if prepared.argv != approval.argv:
                raise UserError(
                    f"the definition of action '{action.name}' changed since request "
                    f"{approval.id} was made; it cannot run: request it again"
                )
        decided = await store.decide(
            approval.id, by=request.principal.name, approve=approve, now=now, reason=reason
        )
        if not decided:
            fresh = await store.get(approval.id)
            await self._explain_if_not_pending(request, fresh or approval)
            raise UserError(f"request {approval.id} could not be decided; try /approve again")
        await self._record(request, approval, "approved" if approve else "denied", reason=reason)
        who = request.principal.name
        if not approve:
            title = f"Request {approval.id} ({_describe(approval)}) denied by {who}"
            # INFO, not a warning: the deny worked (a pressed Deny button then closes).
            reply = Reply(
                title=title,
                status=Status.INFO,
                text=f"Reason: {reason}" if reason else "",
                outcome=f"❌ denied by {who}" + (f": {reason}" if reason else ""),
            )
            if not _same_conversation(request, approval):
                await self._outbox.post(approval.destination, reply)
            return reply
        assert prepared is not None
        requester = Requester(
            principal=approval.requester,
            platform=approval.destination.platform,
            user_id=approval.requester_id,
            destination=approval.destination,
            request_id=request.request_id,
            approved_by=who,
            rule=f"approval:{approval.id}",
        )
        outcome = f"✅ approved by {who}"
        if _same_conversation(request, approval):
            # The requester reads this answer: the result itself, or that it follows here.
            job = await self.jobs.start(prepared, requester)
            return replace(await self.jobs.answer(job), outcome=outcome)
        # The requester waits elsewhere (another channel, another platform): progress and
        # the result go there, whenever the job ends; the approver is told where.
        job = await self.jobs.start(prepared, requester, follow_up=True)
        await self._outbox.post(
            approval.destination,
            Reply(
                title=f"Request {approval.id} ({_describe(approval)}) approved by {who}; "
                f"running as job {job.id}",
                status=Status.INFO,
                text=f"Progress and the result follow here. /cancel {job.id} stops it.",
            ),
        )
        return Reply(
            title=f"{outcome}: request {approval.id} ({_describe(approval)}) is running "
            f"as job {job.id}",
            status=Status.OK,
            text=f"The result goes to {approval.requester}, where they asked "
            f"({_platform_name(approval.destination.platform)}).",
            outcome=outcome,
        )

    async def _explain_if_not_pending(self, request: Request, approval: Approval) -> None:
        now = self._clock.now()
        state = approval.state_at(now)
        if state is ApprovalState.PENDING:
            return
        if state is ApprovalState.EXPIRED:
            if await self.approvals.expire(approval.id, now=now):
                await self._record(request, approval, "expired")
            raise UserError(
                f"request {approval.id} ({_describe(approval)}) expired at "
                f"{approval.expires_at:%H:%M} UTC; ask {approval.requester} to request it again"
            )
        raise UserError(
            f"request {approval.id} ({_describe(approval)}) was already {state.value} by "
            f"{approval.decided_by}; an approval is used once"
        )

    async def _ask_for_approval(self, request: Request, prepared: PreparedAction) -> Reply:
        action = prepared.action
        now = self._clock.now()
        approval = await self.approvals.create(
            request_id=request.request_id,
            action=action.name,
            args=prepared.values,
            argv=prepared.argv,
            requester=request.principal.name,
            requester_id=request.message.user_id,
            destination=request.message.location,
            now=now,
            expires_at=now + action.approval_ttl,
        )
        await self._record(request, approval, "requested")
        return Reply(
            title=f"Approval needed: {prepared.describe()} (request {approval.id})",
            status=Status.INFO,
            text=(
                f"Another person with role {_one_of(action.approver_roles)} approves with "
                f"/approve {approval.id} or refuses with /deny {approval.id} [reason]."
            ),
            fields=(
                Field("requested by", request.principal.name),
                Field("expires in", format_duration(action.approval_ttl)),
                Field("argv", " ".join(shlex.quote(a) for a in prepared.argv)),
            ),
            buttons=(
                Button("Approve", f"/approve {approval.id}", "primary"),
                Button("Deny", f"/deny {approval.id}", "danger"),
            ),
        )

    async def _record(
        self, request: Request, approval: Approval, status: str, reason: str | None = None
    ) -> None:
        approved_by = (request.principal.name,) if status == "approved" else ()
        await self._audit.record_event(
            request,
            stage="approval",
            kind="approval",
            request_id=approval.request_id,
            command=approval.action,
            args=approval.args,
            approvers=approved_by,
            status=status,
            error=reason,
            detail=f"approval {approval.id} requested by {approval.requester}, "
            f"expires {approval.expires_at.isoformat()}",
        )


def _dry_run(prepared: PreparedAction, needs_approval: bool) -> Reply:
    action = prepared.action
    if needs_approval:
        approval = f"another person with role {_one_of(action.approver_roles)}"
    elif action.risk is Risk.HIGH:
        approval = "none while the policy mode is off (high risk)"
    else:
        approval = f"none (risk {action.risk.value})"
    fields = [
        Field("argv", " ".join(shlex.quote(a) for a in prepared.argv)),
        Field("working dir", str(prepared.working_dir)),
        Field("environment", ", ".join(sorted(prepared.env)) or "(empty)"),
        Field("timeout", format_duration(action.timeout)),
        Field("approval", approval),
    ]
    if action.lock_group:
        fields.append(Field("lock group", action.lock_group))
    return Reply(
        title=f"Dry run: {prepared.describe()} would run this; nothing was run",
        status=Status.INFO,
        fields=tuple(fields),
    )


def _same_conversation(request: Request, approval: Approval) -> bool:
    """Whether the approver answers in the channel where the request was made (a button
    pressed under it): the requester then sees the approver's answer. Threads are not
    told apart: each platform makes them differently, and a channel's people see them."""
    here = request.message.location
    there = approval.destination
    return (here.platform, here.workspace, here.channel_id) == (
        there.platform,
        there.workspace,
        there.channel_id,
    )


def _platform_name(platform: str) -> str:
    return {"slack": "Slack", "telegram": "Telegram", "discord": "Discord"}.get(platform, platform)


def _requester(request: Request, rule: str) -> Requester:
    return Requester(
        principal=request.principal.name,
        platform=request.message.platform,
        user_id=request.message.user_id,
        destination=request.message.location,
        request_id=request.request_id,
        rule=rule,
    )


def _describe(approval: Approval) -> str:
    values = " ".join(f"{k}={v}" for k, v in approval.args.items())
    return f"{approval.action} {values}".strip()


def _one_of(roles: Sequence[str]) -> str:
    names = sorted(roles)
    return f"'{names[0]}'" if len(names) == 1 else "one of " + ", ".join(f"'{r}'" for r in names)
