"""/alerts: the alerts firing now, inbound and from checks (see docs/alerts.md)."""

from __future__ import annotations

from msgspec import Struct

from bot.features.alerts.board import AlertBoard
from bot.features.alerts.silences import Silences
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec, NoArgs, Request
from bot.kernel.durations import format_duration
from bot.kernel.reply import Reply, Status, Table


class AlertsDeps(Struct, frozen=True):
    """The firing alerts, the silences that mute them, and the clock for their age."""

    alerts: AlertBoard
    silences: Silences
    clock: Clock


async def run(request: Request, _: NoArgs, deps: AlertsDeps) -> Reply:
    active = await deps.alerts.firing()
    if not active:
        return Reply(title="No alerts firing", status=Status.OK)
    now = deps.clock.now()
    rows = []
    silenced = 0
    for a in active:
        silence = await deps.silences.muting(a.labels)
        silenced += silence is not None
        rows.append(
            (
                a.id,
                a.name,
                a.severity or "-",
                f"{a.since:%Y-%m-%d %H:%M} UTC "
                f"({format_duration(max(now - a.since, now - now))} ago)",
                a.acked_by or "-",
                f"silenced ({silence.id})"
                if silence
                else ("check" if a.source == "check" else "-"),
            )
        )
    acked = sum(1 for a in active if a.acked_by)
    title = f"{len(active)} alert(s) firing, {acked} acknowledged"
    if silenced:
        title += f", {silenced} silenced"
    return Reply(
        title=title,
        status=Status.WARNING,
        text="/ack <id> acknowledges one.",
        table=Table(("id", "alert", "severity", "since", "acked by", "note"), tuple(rows)),
    )


SPEC = CommandSpec(
    name="alerts",
    summary="List the alerts firing now",
    usage="/alerts",
    args_model=NoArgs,
    run=run,
    needs=AlertsDeps,
)
