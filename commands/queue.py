"""/queue [name]: length, pending, lag, oldest pending entry, dead letters and workers of
each configured Redis stream, each judged against its thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from msgspec import Struct

from bot.cluster.redis_clients import RedisClients
from bot.features.queues.watched import WatchedQueues
from bot.kernel.command import Args, CommandSpec, Request
from bot.kernel.durations import format_duration
from bot.kernel.reply import Reply, Status, Table

if TYPE_CHECKING:
    from bot.features.queues.inspect import Figure, GroupState, QueueReport, QueueState
    from bot.kernel.severity import Severity

USAGE = "/queue [name]"

NOT_CONFIGURED = Reply(
    title="No queues configured",
    text="Add [[queues]] entries (name, redis_url, stream) to the config.",
)

# Column headers double as the figure names in the state column, so "CRIT len" points
# at the column to look at.
LABELS = {
    "length": "len",
    "pending": "pending",
    "lag": "lag",
    "oldest_pending_idle": "oldest",
    "dead_letter": "dead",
    "workers": "workers",
}


class QueueArgs(Args):
    name: str | None = None


class QueueDeps(Struct, frozen=True):
    """The configured queues and the Redis connections that read them."""

    queues: WatchedQueues
    redis: RedisClients


def summary(levels: Sequence[tuple[Severity, bool]]) -> tuple[Status, str]:
    """Overall status and "3 queues: 1 error, 1 warn, 1 ok" from (severity, failed) pairs."""
    from bot.kernel.severity import Severity

    counts = {
        "error": sum(1 for _, failed in levels if failed),
        "critical": sum(1 for s, failed in levels if s is Severity.CRITICAL and not failed),
        "warn": sum(1 for s, _ in levels if s is Severity.WARN),
        "ok": sum(1 for s, _ in levels if s is Severity.OK),
    }
    worst = max((s for s, _ in levels), default=Severity.OK)
    status = {Severity.OK: Status.OK, Severity.WARN: Status.WARNING}.get(worst, Status.ERROR)
    noun = "queue" if len(levels) == 1 else "queues"
    parts = ", ".join(f"{n} {word}" for word, n in counts.items() if n)
    return status, f"{len(levels)} {noun}: {parts}"


def worst_first(reports: Sequence[QueueReport]) -> list[QueueReport]:
    # Stable: equally bad queues keep their config order.
    return sorted(reports, key=lambda r: -r.severity)


def count(value: float | None) -> str:
    if value is None:
        return "n/a"
    number = int(value)
    if number < 100_000:
        return str(number)
    return f"{number // 1000}k" if number < 10_000_000 else f"{number / 1_000_000:.0f}M"


def age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(timedelta(seconds=seconds))


def state(figures: Sequence[Figure]) -> str:
    """ "ok", or what is off, worst first: "CRIT len; WARN oldest"."""
    off = sorted((f for f in figures if f.severity), key=lambda f: -f.severity)
    return "; ".join(f"{f.severity.word} {LABELS[f.name]}" for f in off) or "ok"


def _row(queue: QueueState, group: GroupState) -> tuple[str, ...]:
    total, live = len(group.consumers), int(group.workers.value or 0)
    return (
        queue.queue,
        group.name if group.name is not None else "(none)",
        state([*queue.stream_figures, *group.figures]),
        count(queue.length.value),
        count(group.pending.value),
        count(group.lag.value),
        age(group.oldest_pending_idle.value),
        "-" if queue.dead_letter is None else count(queue.dead_letter.value),
        str(live) if live == total else f"{live} of {total}",
    )


async def run(_: Request, args: QueueArgs, deps: QueueDeps) -> Reply:
    # Imported here: redis is only needed once someone asks about a queue.
    from bot.features.queues.inspect import QueueFailure, inspect_queues

    queues = deps.queues.select(args.name, USAGE)
    if not queues:
        return NOT_CONFIGURED
    reports = worst_first(await inspect_queues(deps.redis, queues))
    status, title = summary([(r.severity, isinstance(r, QueueFailure)) for r in reports])
    failures = [f"{r.queue}: {r.reason}" for r in reports if isinstance(r, QueueFailure)]
    notes = [
        f"{r.queue}: {note}"
        for r in reports
        if not isinstance(r, QueueFailure)
        for group in r.groups
        for note in group.notes
    ]
    rows = tuple(
        _row(r, group)
        for r in reports
        if not isinstance(r, QueueFailure)
        for group in sorted(r.groups, key=lambda g: -g.severity)
    )
    columns = ("queue", "group", "state", *(LABELS[k] for k in LABELS))
    return Reply(
        title=title,
        status=status,
        text="\n".join([*failures, *notes]),
        table=Table(columns, rows) if rows else None,
    )


SPEC = CommandSpec(
    name="queue",
    summary="Length, backlog, lag and dead letters of each Redis stream queue (or one)",
    usage=USAGE,
    args_model=QueueArgs,
    run=run,
    needs=QueueDeps,
    positional=("name",),
)
