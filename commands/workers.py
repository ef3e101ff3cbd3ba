"""/workers [name]: the consumers of each queue's groups, which of them are stalled, and
whether enough are live."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.kernel.command import CommandSpec, Request
from bot.kernel.reply import Reply, Table
from commands.queue import NOT_CONFIGURED, QueueArgs, QueueDeps, age, count, summary

if TYPE_CHECKING:
    from bot.features.queues.config import QueueConfig
    from bot.features.queues.inspect import Consumer, GroupState, QueueState
    from bot.kernel.severity import Severity

USAGE = "/workers [name]"
# A group of hundreds of consumers would bury the others; stalled ones are listed first.
MAX_ROWS_PER_GROUP = 20


def _workers_level(report: QueueState) -> Severity:
    return max(group.workers.severity for group in report.groups)


def _group_line(queue: QueueConfig, report: QueueState, group: GroupState) -> str | None:
    """A line for a group with too few live consumers; None when it has enough."""
    if not group.workers.severity:
        return None
    word = group.workers.severity.word
    if group.name is None:
        return f"{report.queue}: {word} no consumer group reads stream '{report.stream}'"
    live, total = int(group.workers.value or 0), len(group.consumers)
    stalled = total - live
    seconds = queue.stalled_after.total_seconds()
    # age() rounds to whole seconds, which would print a sub-second setting as "0s".
    after = f"{seconds:g}s" if seconds < 60 else age(seconds)
    note = f", {stalled} stalled (idle > {after})" if stalled else ""
    return (
        f"{report.queue}/{group.name}: {word} {live} live of {total}{note}; "
        f"want at least {queue.thresholds.workers.warn}"
    )


def _ordered(consumers: tuple[Consumer, ...]) -> list[Consumer]:
    return sorted(consumers, key=lambda c: (not c.stalled, -c.idle_s if c.stalled else 0, c.name))


async def run(request: Request, args: QueueArgs, deps: QueueDeps) -> Reply:
    from bot.features.queues.inspect import QueueFailure, inspect_queues

    queues = deps.queues.select(args.name, USAGE)
    if not queues:
        return NOT_CONFIGURED
    configs = {q.name: q for q in queues}
    reports = await inspect_queues(deps.redis, queues)
    levels = [
        (r.severity, True) if isinstance(r, QueueFailure) else (_workers_level(r), False)
        for r in reports
    ]
    status, title = summary(levels)
    lines: list[str] = []
    rows: list[tuple[str, ...]] = []
    # Worst first, and stable: equally bad queues keep their config order.
    for _, report in sorted(zip(levels, reports, strict=True), key=lambda pair: -pair[0][0]):
        if isinstance(report, QueueFailure):
            lines.append(f"{report.queue}: {report.reason}")
            continue
        for group in sorted(report.groups, key=lambda g: -g.workers.severity):
            if (line := _group_line(configs[report.queue], report, group)) is not None:
                lines.append(line)
            ordered = _ordered(group.consumers)
            rows.extend(
                (
                    report.queue,
                    group.name or "(none)",
                    c.name,
                    "STALLED" if c.stalled else "live",
                    age(c.idle_s),
                    count(c.pending),
                )
                for c in ordered[:MAX_ROWS_PER_GROUP]
            )
            if hidden := ordered[MAX_ROWS_PER_GROUP:]:
                stalled = sum(1 for c in hidden if c.stalled)
                lines.append(
                    f"{report.queue}/{group.name}: {len(hidden)} more consumers not shown"
                    + (f" ({stalled} stalled)" if stalled else "")
                )
    columns = ("queue", "group", "consumer", "state", "idle", "pending")
    return Reply(
        title=f"Workers of {title}",
        status=status,
        text="\n".join(lines),
        table=Table(columns, tuple(rows)) if rows else None,
    )


SPEC = CommandSpec(
    name="workers",
    summary="Consumers of each Redis stream queue (or one): idle time, pending, stalled",
    usage=USAGE,
    args_model=QueueArgs,
    run=run,
    needs=QueueDeps,
    positional=("name",),
)
