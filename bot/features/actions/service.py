"""Running allow-listed actions from chat: role check, argument validation, the two-person
rule for high-risk actions, then a job. /rollback, /run, /approve and /deny are thin
commands over these functions, so every way in follows the same rules.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from bot.app.config.models import PolicyMode
from bot.delivery.outbox import Destination
from bot.features.actions.approvals import Approval, ApprovalState
from bot.features.actions.arguments import PreparedAction, prepare
from bot.features.actions.config import ActionConfig
from bot.features.actions.jobs import Requester
from bot.kernel.command import Risk
from bot.kernel.durations import format_duration
from bot.kernel.errors import Denied, UsageError, UserError
from bot.kernel.reply import Button, Field, Reply, Status
from bot.pipeline.context import Context


def find_action(ctx: Context, name: str) -> ActionConfig:
    action = ctx.tools.config.action(name)
    if action is None:
        mine = sorted(a.name for a in ctx.tools.config.actions if _may_run(ctx, a))
        known = ", ".join(mine) if mine else "none you may run"
        raise UsageError(f"no action '{name}' is configured (actions: {known})")
    if not _may_run(ctx, action):
        raise Denied(
            f"action '{name}' needs role {_one_of(action.roles)} "
            f"(you have: {', '.join(sorted(ctx.principal.roles)) or 'none'})",
            f"actions.{name}.roles",
        )
    return action


async def request_action(
    ctx: Context,
    action: ActionConfig,
    positionals: Sequence[str],
    named: Mapping[str, str],
    *,
    dry_run: bool = False,
) -> Reply:
    """/rollback v1.2, /run restart-web api: validate, then run, or ask for approval."""
    prepared = await prepare(action, positionals, named, base_dir=ctx.tools.base_dir)
    needs_approval = action.risk is Risk.HIGH and await _strict(ctx)
    if dry_run:
        return _dry_run(ctx, prepared, needs_approval)
    if needs_approval:
        return await _ask_for_approval(ctx, prepared)
    jobs = ctx.tools.jobs
    job = await jobs.start(prepared, _requester(ctx, f"actions.{action.name}.roles"))
    return await jobs.answer(job)


async def decide(ctx: Context, approval_id: str, *, approve: bool, reason: str | None) -> Reply:
    """/approve <id> and /deny <id> [reason]."""
    store = ctx.tools.approvals
    approval_id = approval_id.strip().lower()
    approval = await store.get(approval_id)
    if approval is None:
        raise UsageError(f"no approval request '{approval_id}'; /approvals lists those waiting")
    action = ctx.tools.config.action(approval.action)
    verb = "approve" if approve else "deny"
    if approval.requester == ctx.principal.name and approve:
        raise Denied(
            "you requested this; another person with an approver role must approve it",
            "approval:requester-may-not-approve",
        )
    if action is None:
        raise UserError(
            f"action '{approval.action}' is no longer configured; request {approval.id} cannot run"
        )
    # The requester may withdraw (deny) their own request; anyone else needs the role.
    if approval.requester != ctx.principal.name and ctx.principal.roles.isdisjoint(
        action.approver_roles
    ):
        raise Denied(
            f"to {verb} /{action.name} you need role {_one_of(action.approver_roles)} "
            f"(you have: {', '.join(sorted(ctx.principal.roles)) or 'none'})",
            f"actions.{action.name}.approver_roles",
        )
    now = ctx.tools.clock.now()
    await _explain_if_not_pending(ctx, approval)
    prepared: PreparedAction | None = None
    if approve:
        # Bound to the exact request: the same values must still pass today's rules and
        # make the same argv the requester was shown.
        prepared = await prepare(action, (), approval.args, base_dir=ctx.tools.base_dir)
        if prepared.argv != approval.argv:
            raise UserError(
                f"the definition of action '{action.name}' changed since request "
                f"{approval.id} was made; it cannot run: request it again"
            )
    decided = await ctx.tools.approvals.decide(
        approval.id, by=ctx.principal.name, approve=approve, now=now, reason=reason
    )
    if not decided:
        fresh = await store.get(approval.id)
        await _explain_if_not_pending(ctx, fresh or approval)
        raise UserError(f"request {approval.id} could not be decided; try /approve again")
    await _record(ctx, approval, "approved" if approve else "denied", reason=reason)
    if not approve:
        title = f"Request {approval.id} ({_describe(approval)}) denied by {ctx.principal.name}"
        # INFO, not a warning: the deny worked (a pressed Deny button then closes).
        reply = Reply(title=title, status=Status.INFO, text=f"Reason: {reason}" if reason else "")
        await _tell_requester(ctx, approval, reply)
        return reply
    assert prepared is not None
    requester = Requester(
        principal=approval.requester,
        platform=approval.destination.platform,
        user_id=approval.requester_id,
        destination=approval.destination,
        request_id=ctx.request_id,
        approved_by=ctx.principal.name,
        rule=f"approval:{approval.id}",
    )
    job = await ctx.tools.jobs.start(prepared, requester)
    await _tell_requester(
        ctx,
        approval,
        Reply(
            title=f"Request {approval.id} ({_describe(approval)}) approved by "
            f"{ctx.principal.name}; running as job {job.id}",
            status=Status.INFO,
        ),
    )
    return await ctx.tools.jobs.answer(job)


async def _explain_if_not_pending(ctx: Context, approval: Approval) -> None:
    now = ctx.tools.clock.now()
    state = approval.state_at(now)
    if state is ApprovalState.PENDING:
        return
    if state is ApprovalState.EXPIRED:
        if await ctx.tools.approvals.expire(approval.id, now=now):
            await _record(ctx, approval, "expired")
        raise UserError(
            f"request {approval.id} ({_describe(approval)}) expired at "
            f"{approval.expires_at:%H:%M} UTC; ask {approval.requester} to request it again"
        )
    raise UserError(
        f"request {approval.id} ({_describe(approval)}) was already {state.value} by "
        f"{approval.decided_by}; an approval is used once"
    )


async def _ask_for_approval(ctx: Context, prepared: PreparedAction) -> Reply:
    action = prepared.action
    now = ctx.tools.clock.now()
    approval = await ctx.tools.approvals.create(
        request_id=ctx.request_id,
        action=action.name,
        args=prepared.values,
        argv=prepared.argv,
        requester=ctx.principal.name,
        requester_id=ctx.message.user_id,
        destination=Destination.of(ctx.message),
        now=now,
        expires_at=now + action.approval_ttl,
    )
    await _record(ctx, approval, "requested")
    return Reply(
        title=f"Approval needed: {prepared.describe()} (request {approval.id})",
        status=Status.INFO,
        text=(
            f"Another person with role {_one_of(action.approver_roles)} approves with "
            f"/approve {approval.id} or refuses with /deny {approval.id} [reason]."
        ),
        fields=(
            Field("requested by", ctx.principal.name),
            Field("expires in", format_duration(action.approval_ttl)),
            Field("argv", " ".join(shlex.quote(a) for a in prepared.argv)),
        ),
        buttons=(
            Button("Approve", f"/approve {approval.id}", "primary"),
            Button("Deny", f"/deny {approval.id}", "danger"),
        ),
    )


def _dry_run(ctx: Context, prepared: PreparedAction, needs_approval: bool) -> Reply:
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


async def _strict(ctx: Context) -> bool:
    return (await ctx.tools.policy.current()).mode is PolicyMode.STRICT


def _requester(ctx: Context, rule: str) -> Requester:
    return Requester(
        principal=ctx.principal.name,
        platform=ctx.message.platform,
        user_id=ctx.message.user_id,
        destination=Destination.of(ctx.message),
        request_id=ctx.request_id,
        rule=rule,
    )


async def _tell_requester(ctx: Context, approval: Approval, reply: Reply) -> None:
    """The requester waits in the conversation where they asked; tell them there too
    (unless this is that conversation: a button pressed under the request)."""
    here = Destination.of(ctx.message)
    there = approval.destination
    if (there.platform, there.workspace, there.channel_id) != (
        here.platform,
        here.workspace,
        here.channel_id,
    ):
        await ctx.tools.outbox.post(there, reply)


async def _record(ctx: Context, approval: Approval, status: str, reason: str | None = None) -> None:
    approved_by = (ctx.principal.name,) if status == "approved" else ()
    await ctx.record_event(
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


def _describe(approval: Approval) -> str:
    values = " ".join(f"{k}={v}" for k, v in approval.args.items())
    return f"{approval.action} {values}".strip()


def _may_run(ctx: Context, action: ActionConfig) -> bool:
    return not ctx.principal.roles.isdisjoint(action.roles)


def _one_of(roles: Sequence[str]) -> str:
    names = sorted(roles)
    return f"'{names[0]}'" if len(names) == 1 else "one of " + ", ".join(f"'{r}'" for r in names)
