"""/ack <id>: acknowledge a firing alert, inbound or from a check (audited, kind "alert"):
it is not posted again while it keeps firing. ``/ack group:<id>`` acknowledges every
firing alert of the group alert <id> was posted with (the "Ack all" button)."""

from __future__ import annotations

from msgspec import Struct

from bot.audit.trail import AuditTrail
from bot.features.alerts.board import AlertBoard
from bot.features.alerts.store import ActiveAlert
from bot.kernel.command import Args, CommandSpec, Request, Risk
from bot.kernel.errors import UsageError
from bot.kernel.reply import Reply, Status

USAGE = "/ack <id> | /ack group:<id>"
GROUP_PREFIX = "group:"


class AckArgs(Args):
    id: str


class AckDeps(Struct, frozen=True):
    """The alert board, and the audit trail the acknowledgement is recorded in."""

    alerts: AlertBoard
    audit: AuditTrail


async def run(request: Request, args: AckArgs, deps: AckDeps) -> Reply:
    whole_group = args.id.startswith(GROUP_PREFIX)
    alert_id = args.id.removeprefix(GROUP_PREFIX).strip().lower()
    alert = await deps.alerts.find(alert_id)
    if alert is None:
        # A button on a message whose alert resolved meanwhile lands here too.
        raise UsageError(f"no firing alert '{alert_id}'; it resolved, or /alerts lists them")
    if whole_group:
        return await _ack_group(request, alert, deps)
    if alert.acked_by is not None:
        return _already(alert)
    now = await deps.audit.record_event(
        request,
        kind="alert",
        command="ack",
        args={"alert": alert.id, "name": alert.name, "fingerprint": alert.fingerprint},
        status="acked",
        detail=f"alert {alert.id} ({alert.name}, {alert.severity or 'no severity'}) "
        f"firing since {alert.since.isoformat()} acknowledged",
    )
    who = request.principal.name
    acked = await deps.alerts.ack(alert.id, by=who, at=now)
    if acked is None:
        raise UsageError(f"alert {alert.id} ({alert.name}) resolved meanwhile")
    if acked.acked_by != who:  # someone else was quicker
        return _already(acked)
    return Reply(
        title=f"Alert {alert.id} ({alert.name}) acknowledged by {who}",
        status=Status.OK,
        text="It is not posted again while it fires.",
        outcome=f"✅ acknowledged by {who}",
    )


async def _ack_group(request: Request, alert: ActiveAlert, deps: AckDeps) -> Reply:
    firing = await deps.alerts.in_group(alert.group_key)
    open_ = [a for a in firing if a.acked_by is None]
    if not open_:
        by = sorted({a.acked_by for a in firing if a.acked_by})
        return Reply(
            title=f"The alerts of group {alert.id} were already acknowledged by "
            f"{', '.join(by) or 'someone'}",
            status=Status.INFO,
            private=True,
        )
    ids = [a.id for a in open_]
    now = await deps.audit.record_event(
        request,
        kind="alert",
        command="ack",
        args={"group": alert.id, "alerts": ids, "names": sorted({a.name for a in open_})},
        status="acked",
        detail=f"{len(ids)} alert(s) of the group of alert {alert.id} acknowledged: "
        + ", ".join(ids),
    )
    who = request.principal.name
    acked = 0
    for one in open_:
        row = await deps.alerts.ack(one.id, by=who, at=now)
        acked += row is not None and row.acked_by == who
    return Reply(
        title=f"{acked} alert(s) of group {alert.id} acknowledged by {who}",
        status=Status.OK,
        text="They are not posted again while they fire.",
        outcome=f"✅ acknowledged by {who}",
    )


def _already(alert: ActiveAlert) -> Reply:
    # Private: a second press (or a race) changes nothing others need to read.
    return Reply(
        title=f"Alert {alert.id} ({alert.name}) was already acknowledged by {alert.acked_by}",
        status=Status.INFO,
        private=True,
    )


SPEC = CommandSpec(
    name="ack",
    summary="Acknowledge a firing alert (or group:<id>, its whole group)",
    usage=USAGE,
    args_model=AckArgs,
    run=run,
    needs=AckDeps,
    positional=("id",),
    risk=Risk.WRITE,
)
