"""/heartbeat [now [name] | pause <duration> [name]]: show the heartbeats and their next
run, post one at once, or pause them (audited)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from msgspec import Struct

from bot.audit.trail import AuditTrail
from bot.cluster.redis_clients import StateRedisUnavailable
from bot.cluster.scheduler import Scheduler
from bot.features.heartbeats.service import Heartbeats
from bot.kernel.clock import Clock
from bot.kernel.command import Args, CommandSpec, Request, Risk
from bot.kernel.durations import format_duration, parse_duration
from bot.kernel.errors import DependencyError, UsageError, UserError
from bot.kernel.reply import Field, Reply, Status, Table

USAGE = "/heartbeat [now [name] | pause <duration> [name]]"
# A pause is a hole in the dead man's switch; a month is already a long one.
MAX_PAUSE = timedelta(days=30)

NOT_CONFIGURED = Reply(
    title="No heartbeats configured",
    text="Add [[heartbeat]] entries (name, channels, interval or cron) to the config.",
)


class HeartbeatArgs(Args):
    action: Literal["now", "pause"] | None = None
    first: str | None = None  # now: the heartbeat; pause: the duration
    second: str | None = None  # pause: the heartbeat


class HeartbeatDeps(Struct, frozen=True):
    """The heartbeats, the scheduler that runs and pauses them, the audit trail, the clock."""

    heartbeats: Heartbeats
    scheduler: Scheduler
    audit: AuditTrail
    clock: Clock


async def run(request: Request, args: HeartbeatArgs, deps: HeartbeatDeps) -> Reply:
    if not deps.heartbeats.names:
        return NOT_CONFIGURED
    if args.action is None:
        return await _listing(deps)
    if args.action == "now":
        if args.second is not None:
            raise UsageError(f"unexpected argument '{args.second}'", USAGE)
        return _now(deps, _select(deps, args.first))
    if args.first is None:
        raise UsageError("pause needs a duration, e.g. /heartbeat pause 2h", USAGE)
    try:
        length = parse_duration(args.first)
    except ValueError as exc:
        raise UsageError(str(exc), USAGE) from exc
    if length.total_seconds() <= 0:
        raise UsageError("the duration must be longer than zero", USAGE)
    if length > MAX_PAUSE:
        raise UsageError(f"a pause lasts at most {format_duration(MAX_PAUSE)}", USAGE)
    return await _pause(request, deps, _select(deps, args.second), length)


async def _listing(deps: HeartbeatDeps) -> Reply:
    now = deps.clock.now()
    beats = deps.heartbeats
    rows = []
    for name in beats.names:
        job = deps.scheduler.job(name)
        paused_until = await deps.scheduler.paused_until_everywhere(name)
        last = beats.last_success(name)
        rows.append(
            (
                name,
                job.schedule.describe(),
                ", ".join(beats.get(name).channels),
                _when(job.next_run, now) if job.next_run else "not scheduled",
                _when(paused_until, now) if paused_until else "-",
                _when(last, now) if last else "-",
            )
        )
    return Reply(
        title=f"Heartbeats: {len(rows)}",
        status=Status.INFO,
        table=Table(
            ("heartbeat", "schedule", "channels", "next run", "paused until", "last posted"),
            tuple(rows),
        ),
    )


def _now(deps: HeartbeatDeps, names: list[str]) -> Reply:
    beats = deps.heartbeats
    for name in names:
        # A tracked task: the posts (and their retries) outlive the chat platform's
        # deadline for an answer.
        deps.scheduler.run_now(name)
    channels = sorted({c for name in names for c in beats.get(name).channels})
    return Reply(
        title=f"Posting {_heartbeats(names)} now",
        status=Status.OK,
        fields=(Field("channels", ", ".join(channels)),),
    )


async def _pause(
    request: Request, deps: HeartbeatDeps, names: list[str], length: timedelta
) -> Reply:
    now = deps.clock.now()
    until = now + length
    # Recorded before it takes effect, like /policy off: a pause loosens the watch.
    await deps.audit.record_event(
        request,
        kind="heartbeat",
        command="heartbeat",
        args={"heartbeats": names, "duration": format_duration(length)},
        status="paused",
        detail=f"{_heartbeats(names)} paused until {until.isoformat()}",
    )
    rows = []
    for name in names:
        try:
            next_run = await deps.scheduler.pause_everywhere(name, until)
        except DependencyError as exc:
            where = "Redis" if isinstance(exc, StateRedisUnavailable) else "state database"
            await deps.audit.record_event(
                request,
                kind="heartbeat",
                command="heartbeat",
                args={"heartbeats": [name]},
                status="pause_failed",
                detail=f"not paused: {where} unreachable",
            )
            raise UserError(
                f"{_heartbeats([name])} not paused: opsbot cannot reach its {where}, so the "
                "process that posts heartbeats cannot be told; try again shortly"
            ) from exc
        rows.append((name, _when(next_run, now) if next_run else "not scheduled"))
    return Reply(
        title=f"Paused {_heartbeats(names)} until {until:%Y-%m-%d %H:%M} UTC "
        f"({format_duration(length)})",
        status=Status.OK,
        table=Table(("heartbeat", "next run"), tuple(rows)),
    )


def _select(deps: HeartbeatDeps, name: str | None) -> list[str]:
    names = deps.heartbeats.names
    if name is None:
        return names
    if name not in names:
        raise UsageError(f"unknown heartbeat '{name}' (heartbeats: {', '.join(names)})", USAGE)
    return [name]


def _heartbeats(names: list[str]) -> str:
    quoted = ", ".join(f"'{n}'" for n in names)
    return f"heartbeat {quoted}" if len(names) == 1 else f"heartbeats {quoted}"


def _when(moment: datetime, now: datetime) -> str:
    seconds = (moment - now).total_seconds()
    # "in 29m 59s" right after a change reads like a bug; whole minutes read right.
    size = timedelta(minutes=round(abs(seconds) / 60)) if abs(seconds) > 90 else None
    size = size or timedelta(seconds=round(abs(seconds)))
    if abs(seconds) < 1:
        relative = "now"
    elif seconds > 0:
        relative = f"in {format_duration(size)}"
    else:
        relative = f"{format_duration(size)} ago"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({relative})"


SPEC = CommandSpec(
    name="heartbeat",
    summary="Show the heartbeats and their next run; post one now, or pause them",
    usage=USAGE,
    args_model=HeartbeatArgs,
    run=run,
    needs=HeartbeatDeps,
    positional=("action", "first", "second"),
    risk=Risk.WRITE,
)
