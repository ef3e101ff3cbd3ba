"""/audit [user=…] [command=…] [status=…] [since=24h] [limit=20]: who ran what, newest first.
/audit request=<id>: every entry of one request, oldest first (its approval, runbook steps
and jobs too)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from msgspec import Struct
from pydantic import Field as ArgField
from pydantic import field_validator

from bot.audit import StoredEntry
from bot.audit.trail import ALLOWED, STARTED, STATUSES, AuditTrail
from bot.kernel.clock import Clock
from bot.kernel.command import Args, CommandSpec, Request
from bot.kernel.durations import parse_duration
from bot.kernel.errors import DependencyError
from bot.kernel.reply import Reply, Status, Table

USAGE = (
    "/audit [user=<name or platform:id>] [command=<name>] [status=<status>] [since=24h] "
    "[limit=20] | /audit request=<id>"
)
# Entries one request shows at most: a long runbook's steps and jobs fit.
REQUEST_LIMIT = 200
MAX_SINCE = timedelta(days=400)


class AuditArgs(Args):
    user: Annotated[str, ArgField(min_length=1, max_length=200)] | None = None
    command: Annotated[str, ArgField(min_length=1, max_length=64)] | None = None
    status: Annotated[str, ArgField(min_length=1, max_length=32)] | None = None
    since: str = "24h"
    limit: Annotated[int, ArgField(ge=1, le=100)] = 20
    request: Annotated[str, ArgField(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None

    @field_validator("since")
    @classmethod
    def _duration(cls, value: str) -> str:
        window = parse_duration(value)  # ValueError names the accepted forms
        if not timedelta(0) < window <= MAX_SINCE:
            raise ValueError(f"must be between 1s and {MAX_SINCE.days}d")
        return value

    @field_validator("status")
    @classmethod
    def _known_status(cls, value: str | None) -> str | None:
        if value is not None and value not in STATUSES:
            raise ValueError(f"must be one of {', '.join(sorted(STATUSES))}")
        return value

    @field_validator("command")
    @classmethod
    def _bare_name(cls, value: str) -> str:
        return value.removeprefix("/")


class AuditDeps(Struct, frozen=True):
    """The audit trail it queries, and the clock the window ends at."""

    audit: AuditTrail
    clock: Clock


async def run(request: Request, args: AuditArgs, deps: AuditDeps) -> Reply:
    if args.request is not None:
        return await _one_request(args.request, deps)
    window = parse_duration(args.since)
    principal, platform, user_id = _who(args.user)
    try:
        rows = await deps.audit.store.query(
            user=principal,
            platform=platform,
            user_id=user_id,
            command=args.command,
            status=args.status,
            since=deps.clock.now() - window,
            limit=args.limit,
            # Without a status filter, one line per invocation: its last word.
            exclude_status=() if args.status else (ALLOWED, STARTED),
        )
    except Exception as exc:
        raise DependencyError("the audit database", str(exc), exc) from exc
    filters = " ".join(
        f"{name}={value}"
        for name, value in (("user", args.user), ("command", args.command), ("status", args.status))
        if value
    )
    scope = f"{filters + ' ' if filters else ''}in the last {args.since}"
    if not rows:
        return Reply(title=f"No audit entries {scope}", status=Status.INFO)
    more = " (newest first; raise limit= for more)" if len(rows) == args.limit else ""
    return Reply(
        title=f"{len(rows)} audit entr{'y' if len(rows) == 1 else 'ies'} {scope}{more}",
        status=Status.INFO,
        table=Table(
            columns=("when (UTC)", "who", "command", "status", "rule", "ms"),
            rows=tuple(_row(row) for row in rows),
        ),
    )


async def _one_request(request_id: str, deps: AuditDeps) -> Reply:
    """Every entry of the request, and of its jobs (``<id>:<job id>``), in chain order."""
    try:
        rows = await deps.audit.store.of_request(request_id, REQUEST_LIMIT)
    except Exception as exc:
        raise DependencyError("the audit database", str(exc), exc) from exc
    if not rows:
        return Reply(title=f"No audit entries of request {request_id}", status=Status.INFO)
    more = f" (the first {REQUEST_LIMIT})" if len(rows) == REQUEST_LIMIT else ""
    return Reply(
        title=f"{len(rows)} audit entr{'y' if len(rows) == 1 else 'ies'} of request "
        f"{request_id}{more}, oldest first",
        status=Status.INFO,
        table=Table(
            columns=("when (UTC)", "request", "who", "kind", "what", "stage", "status", "error"),
            rows=tuple(_request_row(row, request_id) for row in rows),
        ),
    )


def _request_row(row: StoredEntry, request_id: str) -> tuple[str, ...]:
    e = row.entry
    who = e.principal or f"{e.platform}:{e.user_id}"
    text = e.raw_text or e.detail
    text = text if len(text) <= 48 else text[:47] + "…"
    # The job's part of its id (":j4k2x"): which job, where a runbook ran several.
    part = e.request_id.removeprefix(request_id) or "-"
    error = (e.error or "")[:60]
    return (f"{e.at:%m-%d %H:%M:%S}", part, who, e.kind, text, e.stage, e.status, error)


def _who(user: str | None) -> tuple[str | None, str | None, str | None]:
    """``alice`` is a principal; ``slack:U123`` a platform id (people not in the config)."""
    if user is None:
        return None, None, None
    platform, sep, user_id = user.partition(":")
    if sep and platform and user_id:
        return None, platform, user_id
    return user, None, None


def _row(row: StoredEntry) -> tuple[str, ...]:
    e = row.entry
    who = e.principal or f"{e.platform}:{e.user_id}"
    text = e.raw_text if len(e.raw_text) <= 48 else e.raw_text[:47] + "…"
    status = e.status if e.stage != "event" else f"{e.kind}: {e.status}"
    ms = "" if e.duration_ms is None else f"{e.duration_ms:.{0 if e.duration_ms >= 10 else 1}f}"
    return (f"{e.at:%m-%d %H:%M:%S}", who, text or e.detail[:48], status, e.rule or "", ms)


SPEC = CommandSpec(
    name="audit",
    summary="Show who ran what, newest first (filters: user, command, status, since, limit), "
    "or every entry of one request (request=<id>)",
    usage=USAGE,
    args_model=AuditArgs,
    run=run,
    needs=AuditDeps,
)
