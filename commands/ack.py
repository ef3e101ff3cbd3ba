"""/ack <id>: acknowledge a firing alert, inbound or from a check (audited, kind "alert"):
it is not posted again while it keeps firing."""

from __future__ import annotations

from dataclasses import dataclass

from bot.audit.trail import AuditTrail
from bot.features.alerts.board import AlertBoard
from bot.kernel.command import Args, CommandSpec, Request, Risk
from bot.kernel.errors import UsageError
from bot.kernel.reply import Reply, Status

USAGE = "/ack <id>"


class AckArgs(Args):
    id: str


@dataclass(frozen=True, slots=True)
class AckDeps:
    """The alert board, and the audit trail the acknowledgement is recorded in."""

    alerts: AlertBoard
    audit: AuditTrail


async def run(request: Request, args: AckArgs, deps: AckDeps) -> Reply:
    alert = await deps.alerts.find(args.id)
    if alert is None:
        raise UsageError(f"no firing alert '{args.id}'; /alerts lists them", USAGE)
    if alert.acked_by is not None:
        return Reply(
            title=f"Alert {alert.id} ({alert.name}) was already acknowledged by {alert.acked_by}",
            status=Status.INFO,
        )
    now = await deps.audit.record_event(
        request,
        kind="alert",
        command="ack",
        args={"alert": alert.id, "name": alert.name, "fingerprint": alert.fingerprint},
        status="acked",
        detail=f"alert {alert.id} ({alert.name}, {alert.severity or 'no severity'}) "
        f"firing since {alert.since.isoformat()} acknowledged",
    )
    acked = await deps.alerts.ack(alert.id, by=request.principal.name, at=now)
    if acked is None:
        return Reply(title=f"Alert {alert.id} ({alert.name}) resolved meanwhile", status=Status.OK)
    if acked.acked_by != request.principal.name:  # someone else was quicker
        return Reply(
            title=f"Alert {alert.id} ({alert.name}) was already acknowledged by {acked.acked_by}",
            status=Status.INFO,
        )
    return Reply(
        title=f"Alert {alert.id} ({alert.name}) acknowledged by {acked.acked_by}",
        status=Status.OK,
        text="It is not posted again while it fires.",
    )


SPEC = CommandSpec(
    name="ack",
    summary="Acknowledge a firing alert",
    usage=USAGE,
    args_model=AckArgs,
    run=run,
    needs=AckDeps,
    positional=("id",),
    risk=Risk.WRITE,
)
