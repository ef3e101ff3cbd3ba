"""/checks [now <name>]: each scheduled check's state and last reading, or run one at once
(the alert it raises or resolves is posted as on schedule)."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

from bot.cluster.scheduler import Scheduler
from bot.features.alerts.checks import Checks, job_name
from bot.kernel.clock import Clock
from bot.kernel.command import Args, CommandSpec, Request
from bot.kernel.durations import format_duration
from bot.kernel.errors import UsageError
from bot.kernel.reply import Reply, Status, Table
from bot.kernel.severity import Severity

USAGE = "/checks [now <name>]"

NOT_CONFIGURED = Reply(
    title="No checks configured",
    text="Add [[checks]] entries (name, kind, levels, interval) to the config.",
)
_STATUS = {Severity.OK: Status.OK, Severity.WARN: Status.WARNING, Severity.CRITICAL: Status.ERROR}


class ChecksArgs(Args):
    action: Literal["now"] | None = None
    name: str | None = None


class ChecksDeps(Struct, frozen=True):
    """The checks and their state, the scheduler that runs one now, the clock."""

    checks: Checks
    scheduler: Scheduler
    clock: Clock


async def run(_: Request, args: ChecksArgs, deps: ChecksDeps) -> Reply:
    checks = deps.checks
    if not checks.names:
        return NOT_CONFIGURED
    if args.action == "now":
        if args.name is None or args.name not in checks.names:
            raise UsageError(f"name a check: {', '.join(checks.names)}", USAGE)
        await deps.scheduler.run_now(job_name(args.name))
    now = deps.clock.now()
    views = await checks.views()
    if args.name is not None:
        views = [v for v in views if v.name == args.name]
    rows = []
    for view in views:
        state = view.level.label
        if view.level is Severity.OK and view.failing_runs:
            state = f"pending ({view.failing_runs}/{view.needed_runs})"
        rows.append(
            (
                view.name,
                state,
                view.detail or "-",
                f"{format_duration(now - view.last_run)} ago" if view.last_run else "not yet",
                f"in {format_duration(max(view.next_run - now, now - now))}"
                if view.next_run
                else "-",
            )
        )
    worst = max((v.level for v in views), default=Severity.OK)
    firing = sum(1 for v in views if v.level is not Severity.OK)
    title = f"{len(views)} check(s), {firing} firing" if args.action is None else "Check ran"
    return Reply(
        title=title,
        status=_STATUS[worst],
        table=Table(("check", "state", "last reading", "last run", "next run"), tuple(rows)),
    )


SPEC = CommandSpec(
    name="checks",
    summary="Show the scheduled checks, or run one now",
    usage=USAGE,
    args_model=ChecksArgs,
    run=run,
    needs=ChecksDeps,
    positional=("action", "name"),
)
