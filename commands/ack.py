"""/ack <id>: acknowledge a firing alert, inbound or from a check (audited, kind "alert"):
it is not posted again while it keeps firing."""

from __future__ import annotations

from bot.kernel.command import Args, CommandSpec, Risk
from bot.kernel.errors import UsageError
from bot.kernel.reply import Reply, Status
from bot.pipeline.context import Context

USAGE = "/ack <id>"


class AckArgs(Args):
    id: str


async def run(ctx: Context, args: AckArgs) -> Reply:
    tools = ctx.tools
    alert = await tools.alerts.find(args.id)
    if alert is None:
        raise UsageError(f"no firing alert '{args.id}'; /alerts lists them", USAGE)
    if alert.acked_by is not None:
        return Reply(
            title=f"Alert {alert.id} ({alert.name}) was already acknowledged by {alert.acked_by}",
            status=Status.INFO,
        )
    now = await ctx.record_event(
        kind="alert",
        command="ack",
        args={"alert": alert.id, "name": alert.name, "fingerprint": alert.fingerprint},
        status="acked",
        detail=f"alert {alert.id} ({alert.name}, {alert.severity or 'no severity'}) "
        f"firing since {alert.since.isoformat()} acknowledged",
    )
    acked = await tools.alerts.ack(alert.id, by=ctx.principal.name, at=now)
    if acked is None:
        return Reply(title=f"Alert {alert.id} ({alert.name}) resolved meanwhile", status=Status.OK)
    if acked.acked_by != ctx.principal.name:  # someone else was quicker
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
    positional=("id",),
    risk=Risk.WRITE,
)
