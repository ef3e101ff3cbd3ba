"""The audit trail as the rest of the bot sees it: entries stamped with this replica,
written to the durable store, with the durability each stage needs.

The store (``bot.audit``) knows nothing about commands; this module knows nothing
about SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from bot.audit.record import AuditEntry
from bot.audit.redact import Redactor
from bot.audit.store import AuditStore
from bot.kernel.clock import Clock
from bot.kernel.command import Request
from bot.kernel.deadlines import Deadlines
from bot.kernel.errors import DependencyError
from bot.kernel.message import Location
from bot.storage.migrate import upgrade
from bot.storage.sqlite_probe import plain_sqlite_path

log = structlog.get_logger("opsbot.audit")


class Outcome(enum.StrEnum):
    """The ``status`` of a command's last audit entry."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    DENIED = "denied"
    USAGE = "usage"
    UNKNOWN_COMMAND = "unknown-command"
    THROTTLED = "throttled"
    DUPLICATE = "duplicate"  # a platform delivered the same event again; not run twice
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"


# Statuses of entries that are not an invocation's last word.
ALLOWED = "allowed"
STARTED = "started"

# Every status an entry can carry: what `/audit status=` accepts. Events (approvals, acks,
# pauses, policy switches, jobs, silences) add theirs to the commands' outcomes.
APPROVAL_STATUSES = ("requested", "approved", "denied", "expired")
JOB_STATUSES = ("running", "failed", "cancelled", "stopped", "skipped")  # and runbook steps
ALERT_STATUSES = ("acked", "created", "ended")  # and silences
PAUSE_STATUSES = ("paused", "pause_failed")
POLICY_STATUSES = ("off", "strict", "off_failed")
EVENT_STATUSES = (
    *APPROVAL_STATUSES,
    *JOB_STATUSES,
    *ALERT_STATUSES,
    *PAUSE_STATUSES,
    *POLICY_STATUSES,
)
STATUSES = frozenset((*Outcome, ALLOWED, STARTED, *EVENT_STATUSES))


class AuditTrail:
    def __init__(
        self,
        store: AuditStore,
        redactor: Redactor,
        *,
        replica: str,
        excerpt_chars: int,
        reply_wait: timedelta,
        clock: Clock,
        retention: timedelta,
        retention_every: timedelta,
    ) -> None:
        self.store = store
        self.redactor = redactor
        self.replica = replica
        self.excerpt_chars = excerpt_chars
        self._reply_wait = reply_wait.total_seconds()
        self._clock = clock
        self._retention = retention
        self._retention_every = retention_every.total_seconds()
        self._maintenance: asyncio.Task[None] | None = None
        self._first_close_tried = asyncio.Event()
        self._deadlines = Deadlines()

    async def start(self) -> None:
        """Open the store; close what the last run left unfinished, then apply retention
        periodically, in the background."""
        await self.store.start()
        self._maintenance = asyncio.create_task(self._maintain(), name="audit-maintenance")
        # Usually done before the first command; a database that is down is retried behind.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._first_close_tried.wait()), 10)

    def unwritable(self) -> str | None:
        """Why no audit entry can be written now (then no command may run), or None."""
        return self.store.unwritable

    def state(self) -> str:
        """For /ready: "ok"; "degraded: …" while entries wait in the spool; "failing: …"
        while they can be written nowhere (not ready)."""
        reason = self.store.unwritable
        if reason is not None:
            return f"failing: the audit log cannot be written: {reason}"
        spooled = self.store.spool_depth
        if spooled:
            return f"degraded: audit database unreachable, {spooled} record(s) in the spool"
        return "ok"

    async def record(self, *entries: AuditEntry) -> None:
        """Queue ``entries``; they are committed with the next group commit."""
        await self.store.append(*entries)

    async def record_durably(self, *entries: AuditEntry, alone: bool = False) -> None:
        """Return once ``entries`` are committed (or fsynced to the spool): before anything
        they describe happens. ``alone``: no other command is running (a cheaper commit)."""
        await self.store.append_durably(*entries, alone=alone)

    async def record_before_reply(self, entry: AuditEntry, *, alone: bool = False) -> None:
        """Wait for the commit, but at most ``audit.reply_wait``: a slow database must not
        keep an engineer waiting for a read-only answer. The entry stays queued.
        ``alone``: no other command is running (a cheaper commit)."""
        receipt = await self.store.append_with_receipt(entry, alone=alone)
        if receipt.done():
            return
        # Letting go of the receipt costs less than a timeout scope and a shield per
        # command; the store skips receipts that are already settled.
        self._deadlines.expire(
            receipt, self._reply_wait, functools.partial(_stop_waiting, receipt, entry.request_id)
        )
        await receipt

    def entry(
        self,
        *,
        request_id: str,
        at: datetime,
        stage: str,
        kind: str,
        location: Location | None = None,
        user_id: str = "",
        principal: str | None = None,
        command: str | None = None,
        raw_text: str = "",
        args: Mapping[str, Any] | None = None,
        decision: str | None = None,
        rule: str | None = None,
        approvers: tuple[str, ...] = (),
        status: str = "",
        exit_code: int | None = None,
        duration_ms: float | None = None,
        output_digest: str | None = None,
        output_excerpt: str | None = None,
        error: str | None = None,
        detail: str = "",
    ) -> AuditEntry:
        """The one producer of audit entries (commands, events, approvals, jobs, policy):
        stamped with this replica, every text field through one redaction (secrets masked,
        surrogates and NUL escaped) and bounded, so any str is recorded and none raises.
        ``output_digest`` and ``output_excerpt``: what the person was shown (:meth:`output`)."""
        text = self.redactor.text
        if status not in STATUSES:
            # Still recorded: losing the entry would be worse than a filter that misses it.
            log.error("audit.unknown_status", status=status, kind=kind)
        return AuditEntry(
            request_id=request_id,
            at=at,
            stage=stage,
            kind=kind,
            platform=location.platform if location else "",
            workspace=text(location.workspace) if location else "",
            channel=text(location.channel_id) if location else "",
            thread=None
            if location is None or location.thread_id is None
            else text(location.thread_id),
            user_id=text(user_id),
            principal=None if principal is None else text(principal),
            command=None if command is None else _bounded(text(command), MAX_DETAIL),
            raw_text=_bounded(text(raw_text), MAX_RAW_TEXT),
            args=self.redactor.value(args) if args else {},
            decision=decision,
            rule=rule,
            approvers=approvers,
            status=status,
            exit_code=exit_code,
            duration_ms=duration_ms,
            output_digest=output_digest,
            output_excerpt=None if output_excerpt is None else text(output_excerpt),
            error=None if error is None else _bounded(text(error), MAX_DETAIL),
            detail=_bounded(text(detail), MAX_DETAIL),
            replica=self.replica,
        )

    async def record_event(
        self,
        request: Request,
        *,
        kind: str,
        command: str,
        args: Mapping[str, Any],
        status: str,
        detail: str,
        stage: str = "event",
        request_id: str | None = None,
        approvers: tuple[str, ...] = (),
        error: str | None = None,
    ) -> datetime:
        """Commit an entry for a state change the person of ``request`` made (an approval,
        an ack, a pause) before it takes effect; returns the time it was recorded at."""
        now = self._clock.now()
        message = request.message
        await self.record_durably(
            self.entry(
                request_id=request_id or request.request_id,
                at=now,
                stage=stage,
                kind=kind,
                location=message.location,
                user_id=message.user_id,
                principal=request.principal.name,
                command=command,
                args=args,
                approvers=approvers,
                status=status,
                error=error,
                detail=detail,
            )
        )
        return now

    def output(self, rendered: str) -> tuple[str, str]:
        """(sha256 of the whole output, its first ``excerpt_chars`` characters)."""
        digest = hashlib.sha256(rendered.encode("utf-8")).hexdigest()
        excerpt = rendered[: self.excerpt_chars]
        if len(rendered) > self.excerpt_chars:
            excerpt = excerpt[: max(0, self.excerpt_chars - 1)] + "…"
        return digest, excerpt

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.store.close()

    async def _maintain(self) -> None:
        await self._close_interrupted()
        while True:
            try:
                removed = await self.store.apply_retention(self._clock.now() - self._retention)
            except Exception:
                # Retention can wait for the next round; the bot must not stop over it.
                log.exception("audit.retention_failed")
            else:
                if removed:
                    log.info("audit.retention", removed=removed)
            await asyncio.sleep(self._retention_every)

    async def _close_interrupted(self) -> None:
        delay = 1.0
        while True:
            try:
                closed = await self.store.close_interrupted(replica=self.replica)
            except Exception as exc:
                log.warning("audit.close_interrupted_failed", error=str(exc), retry_in_s=delay)
                self._first_close_tried.set()  # start-up goes on; this keeps trying
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            if closed:
                log.warning("audit.closed_interrupted", commands=closed)
            self._first_close_tried.set()
            return


MAX_RAW_TEXT = 4000  # characters of what was typed (longer is not a command: parse.MAX_TEXT)
MAX_DETAIL = 2000  # characters of an error or a detail


def _bounded(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return f"{value[: limit - 30]}… ({len(value)} characters in all)"


def _stop_waiting(receipt: asyncio.Future[None], request_id: str) -> None:
    if not receipt.done():
        receipt.set_result(None)
        log.warning("audit.reply_not_waiting", request_id=request_id)


def is_embedded(url: str) -> bool:
    return url.startswith("sqlite")


async def migrate(url: str) -> None:
    """Bring the database at ``url`` to this opsbot's schema (creating an SQLite file's
    directory first)."""
    if is_embedded(url):
        path = plain_sqlite_path(url)
        if path is None:
            from sqlalchemy.engine import make_url

            path = Path(make_url(url).database or "")
        make_dir(path.parent, "audit database")
    await upgrade(url)


def make_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DependencyError(what, f"cannot create directory {path}: {exc.strerror}") from exc
