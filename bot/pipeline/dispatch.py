"""The pipeline: message -> parse -> flood check -> identify -> resolve -> authorize
-> run -> reply, with its audit entries, one metrics update and one log line each.

Audit entries per message addressed to the bot: one "decided" entry when it is turned
away (denied, unknown, malformed, throttled); one "finished" entry, carrying the decision
and the outcome together, when a read-only command ran; "started" (carrying the
decision) and "finished" when a command that changes something ran. That one runs only
after its "started" entry is committed; every reply waits for its last entry's commit
(at most ``audit.reply_wait`` for read-only commands). Logs written before this model
also hold "decided" (allowed) and "started" entries for every command that ran; queries
skip those (status ``allowed``, ``started``), so old and new entries read the same.

Every failure ends here: the person gets one readable line carrying the request
id, the log gets the detail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog
from msgspec import Struct, field

from bot.audit import AuditEntry
from bot.audit.redact import Redactor
from bot.audit.trail import STARTED, AuditTrail, Outcome
from bot.cluster.dedup import EventDedup
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec, Decision, Request, Risk
from bot.kernel.deadlines import Deadlines
from bot.kernel.durations import format_duration
from bot.kernel.errors import Denied, DependencyError, UnknownCommand, UsageError, UserError
from bot.kernel.failures import new_request_id, report_failure
from bot.kernel.logcontext import REQUEST_CONTEXT
from bot.kernel.message import Message
from bot.kernel.metrics import Metrics
from bot.kernel.render import render_text
from bot.kernel.reply import Reply, Status
from bot.kernel.text import storable
from bot.pipeline.authorize import UNKNOWN_USER_RULE, Authorizer
from bot.pipeline.catalog import Catalog
from bot.pipeline.flood import Admission, FloodGuard
from bot.pipeline.identify import Directory
from bot.pipeline.parse import parse
from bot.pipeline.quiet import Quieted, QuietLedger

FLOOD_RULE = "flood:throttled"

_OUTCOME_OF_STATUS = {
    Status.OK: Outcome.OK,
    Status.INFO: Outcome.OK,
    Status.WARNING: Outcome.WARNING,
    Status.ERROR: Outcome.ERROR,
    Status.DENIED: Outcome.DENIED,
    Status.USAGE: Outcome.USAGE,
}


class _Invocation(Struct):
    """What the audit record will say, filled in as the message moves along."""

    command: str | None = None
    known_command: bool = False
    principal: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    decision: str | None = None
    rule: str | None = None
    outcome: Outcome = Outcome.OK
    error: str | None = None
    raw_text: str = ""  # redacted
    ran: bool = False  # it was allowed and ran: its last entry is "finished"
    quiet: bool = False  # one of a flood: counted (bot.pipeline.quiet), not recorded alone
    unrecorded: bool = False  # refused because nothing can be recorded (fail closed)
    closed: list[Quieted] = field(default_factory=list)  # flood windows to record now


class Dispatcher:
    def __init__(
        self,
        *,
        bot_name: str,
        command_timeout: timedelta,
        clock: Clock,
        dependencies: Mapping[str, object],
        directory: Directory,
        authorizer: Authorizer,
        catalog: Catalog,
        flood: FloodGuard,
        audit: AuditTrail,
        metrics: Metrics,
        dedup: EventDedup,
    ) -> None:
        self._dependencies = dependencies
        self._command_timeout = command_timeout
        self._directory = directory
        self._authorizer = authorizer
        self._catalog = catalog
        self._flood = flood
        self._audit = audit
        self._redactor: Redactor = audit.redactor
        self._replica = audit.replica
        self._clock = clock
        self._metrics = metrics
        self._dedup = dedup
        self._bot_names = frozenset({bot_name})
        self._timeout = command_timeout.total_seconds()
        self._deadlines = Deadlines()
        self._running = 0  # messages being handled now: 1 is one person typing
        # A flood window lasts as long as the flood guard takes to refill a whole burst.
        self._quiet = QuietLedger(window_s=flood.window_seconds)
        # A concrete logger: the lazy proxy would re-bind on every call of the hot path,
        # so logging must be configured before the bot is built.
        self._log = structlog.get_logger("opsbot.pipeline").bind()

    async def handle(self, message: Message) -> Reply | None:
        """Answer one message; ``None`` when it was not for this bot (or is throttled)."""
        started = time.perf_counter()
        request_id = new_request_id()
        inv = _Invocation()
        log_context = {
            "request_id": request_id,
            "platform": message.platform,
            "user": message.user_id,
        }
        token = REQUEST_CONTEXT.set(log_context)
        self._running += 1
        if self._quiet:
            inv.closed.extend(self._quiet.expired(time.monotonic()))
        try:
            try:
                reply = await self._process(message, request_id, inv, log_context)
            except UserError as exc:
                reply = self._user_error(exc, inv)
            except TimeoutError:
                inv.outcome, inv.error = Outcome.TIMEOUT, "timed out"
                reply = Reply(
                    title=f"/{inv.command} did not finish within "
                    f"{format_duration(self._command_timeout)}",
                    status=Status.ERROR,
                )
            except Exception as exc:
                inv.outcome, inv.error = Outcome.ERROR, f"{type(exc).__name__}: {exc}"
                report_failure("command", exc, command=inv.command)
                reply = Reply(title=_internal_title(inv.command, exc), status=Status.ERROR)
            except asyncio.CancelledError:
                # Shutting down mid-command: say so in the trail, then let the cancel go on.
                if inv.ran:
                    inv.outcome, inv.error = Outcome.INTERRUPTED, "cancelled by shutdown"
                    await self._finish(message, request_id, inv, None, started, wait=False)
                raise
            if inv.closed:
                await self._record_quieted(inv.closed)
            if inv.command is None:
                return None
            if reply is not None:
                reply = self._redactor.reply(reply, request_id)
                if inv.outcome is Outcome.OK:
                    inv.outcome = _OUTCOME_OF_STATUS[reply.status]
            await self._finish(message, request_id, inv, reply, started, wait=True)
            return reply
        finally:
            self._running -= 1
            REQUEST_CONTEXT.reset(token)

    async def _process(
        self, message: Message, request_id: str, inv: _Invocation, log_context: dict[str, Any]
    ) -> Reply | None:
        parsed = message.invocation or parse(
            message.text, bot_names=self._bot_names, addressed=message.addressed
        )
        if parsed is None:
            return None
        # Typed text may name no command at all ("/\ud800"): escaped, the name can be
        # logged and recorded; the lookup below uses it as typed, and finds nothing.
        inv.command = storable(parsed.name)
        inv.raw_text = self._redactor.text(message.text)
        admission = await self._flood.admit(message.qualified_user)
        if admission is not Admission.ADMIT:
            inv.outcome = Outcome.THROTTLED
            self._count_or_open(Outcome.THROTTLED, message, inv)
            if admission is Admission.THROTTLE_SILENTLY:
                return None
            refill = self._flood.refill_seconds
            every = f"{refill:.1f} s" if refill < 60 else format_duration(timedelta(seconds=refill))
            return Reply(
                title="You are sending commands faster than a person can; ignoring them "
                f"for now (one more allowed every {every})",
                status=Status.WARNING,
            )
        unwritable = self._audit.unwritable()
        if unwritable is not None:
            # Fail closed: what runs must be on record, and nothing can be recorded now.
            inv.unrecorded = True
            inv.outcome, inv.error = Outcome.ERROR, "the audit log cannot be written"
            self._log.error(
                "audit.command_refused",
                command=inv.command,
                user=message.qualified_user,
                reason=unwritable,
            )
            return Reply(
                title=f"The audit log cannot be written, so no command runs: {unwritable}",
                status=Status.ERROR,
            )
        principal = self._directory.principal_for(message.qualified_user)
        if principal is None:
            self._count_or_open(Outcome.DENIED, message, inv)
            raise Denied(_unknown_sender(message), UNKNOWN_USER_RULE)
        inv.principal = principal.name
        channel = self._directory.channel_name(
            message.qualified_channel, message.qualified_parent_channel
        )
        spec = self._catalog.get(parsed.name)
        if spec is None:
            raise UnknownCommand(
                parsed.name, self._catalog.suggest(parsed.name, principal, channel)
            )
        inv.known_command = True
        self._record_decision(self._authorizer.decide(principal, channel, spec.name), inv)
        if parsed.options.get("help") is True and "help" not in spec.args_model.model_fields:
            return Reply(title=f"/{spec.name}: {spec.summary}", text=f"Usage: {spec.usage}")
        if parsed.problem is not None:
            raise UsageError(parsed.problem, spec.usage)
        args = spec.bind(parsed)
        dumped: dict[str, Any] | None = None
        if parsed.positionals or parsed.options:
            dumped = inv.args = args.model_dump(mode="json", exclude_defaults=True)
        # The one decision: the command's rules again with its arguments, and the rules
        # of the action it acts on. The audit's "decided" entry records this answer.
        decision = await self._authorizer.decide_request(principal, channel, spec, args, dumped)
        self._record_decision(decision, inv)
        if dumped is not None:
            inv.args = self._redactor.value(dumped)
        if spec.risk is not Risk.READ and not await self._dedup.first_delivery(
            message.platform, message.event_id, self._clock.now()
        ):
            # A platform redelivered an event it thinks we missed: the first delivery is
            # being answered; running it again could roll back twice.
            inv.outcome = Outcome.DUPLICATE
            return None
        await self._record_start(message, request_id, inv, spec)
        request = Request(request_id, message, principal, channel, decision)
        log_context["command"] = spec.name
        log_context["principal"] = principal.name
        async with self._deadlines.limit(self._timeout):
            return await spec.run(request, args, self._dependencies[spec.name])

    async def _alone(self) -> bool:
        """Whether this is the one message being handled: its audit entry is then committed
        at once, without the writer process's round trip. Messages that arrived meanwhile
        are let in first (one turn of the loop): if there are any, the entries go together
        through the writer process, which is what keeps up with many."""
        if self._running != 1:
            return False
        await asyncio.sleep(0)
        return self._running == 1

    def _count_or_open(self, outcome: Outcome, message: Message, inv: _Invocation) -> None:
        inv.quiet, closed = self._quiet.count_or_open(
            str(outcome),
            message.qualified_user,
            message.location,
            message.user_id,
            message.received_at,
            time.monotonic(),
        )
        inv.closed.extend(closed)

    async def _record_quieted(self, windows: list[Quieted]) -> None:
        """One entry per closed flood window: how many messages it counted, from whom."""
        entries = []
        for window in windows:
            first, last = window.first_at, window.last_at
            assert first is not None  # a window with a count has seen a message
            assert last is not None
            what = "throttled" if window.kind == Outcome.THROTTLED else "from an unknown sender"
            entries.append(
                self._audit.entry(
                    request_id=new_request_id(),
                    at=last,
                    stage="decided",
                    kind="command",
                    location=window.location,
                    user_id=window.user_id,
                    decision="denied",
                    rule=FLOOD_RULE if window.kind == Outcome.THROTTLED else UNKNOWN_USER_RULE,
                    status=window.kind,
                    detail=f"{window.count} more message(s) {what}, "
                    f"{first:%Y-%m-%d %H:%M:%S} to {last:%H:%M:%S} UTC, counted, not recorded "
                    "one by one",
                )
            )
        try:
            await self._audit.record(*entries)
        except Exception:
            self._log.exception("audit.record_failed", command=None)

    async def close(self) -> None:
        """Record the flood windows still open (at shutdown)."""
        closed = self._quiet.close_all()
        if closed:
            await self._record_quieted(closed)

    def _record_decision(self, decision: Decision, inv: _Invocation) -> None:
        inv.rule = decision.rule
        inv.decision = "allowed" if decision.allowed else "denied"
        if not decision.allowed:
            raise Denied(decision.reason, decision.rule)

    def _user_error(self, exc: UserError, inv: _Invocation) -> Reply:
        inv.error = str(exc)
        if isinstance(exc, Denied):
            inv.outcome, inv.decision, inv.rule = Outcome.DENIED, "denied", exc.rule
            return Reply(title=f"Denied: {exc}", status=Status.DENIED)
        if isinstance(exc, UnknownCommand):
            inv.outcome = Outcome.UNKNOWN_COMMAND
            return Reply(title=str(exc), status=Status.USAGE)
        if isinstance(exc, UsageError):
            inv.outcome = Outcome.USAGE
            return Reply(title=str(exc), status=Status.USAGE)
        inv.outcome = Outcome.ERROR
        return Reply(title=str(exc), status=Status.ERROR)

    async def _record_start(
        self, message: Message, request_id: str, inv: _Invocation, spec: CommandSpec[Any, Any]
    ) -> None:
        if spec.risk is Risk.READ:
            inv.ran = True  # one entry, when it finishes: a look changes nothing first
            return
        started = self._entry("started", message, request_id, inv, self._clock.now(), STARTED)
        # Nothing changes before the trail says it is about to: if "started" cannot be
        # committed (or spooled), the command does not run, and the person is told why.
        await self._audit.record_durably(started, alone=await self._alone())
        inv.ran = True

    def _entry(
        self,
        stage: str,
        message: Message,
        request_id: str,
        inv: _Invocation,
        at: datetime,
        status: str,
        *,
        duration_ms: float | None = None,
        output: tuple[str, str] | None = None,
    ) -> AuditEntry:
        return self._audit.entry(
            request_id=request_id,
            at=at,
            stage=stage,
            kind="command",
            location=message.location,
            user_id=message.user_id,
            principal=inv.principal,
            command=inv.command,
            raw_text=inv.raw_text,
            args=inv.args,
            decision=inv.decision,
            rule=inv.rule,
            status=status,
            duration_ms=duration_ms,
            output_digest=None if output is None else output[0],
            output_excerpt=None if output is None else output[1],
            error=inv.error,
        )

    async def _finish(
        self,
        message: Message,
        request_id: str,
        inv: _Invocation,
        reply: Reply | None,
        started: float,
        *,
        wait: bool,
    ) -> None:
        seconds = time.perf_counter() - started
        label = inv.command if inv.known_command and inv.command else "unknown"
        outcome = str(inv.outcome)
        self._metrics.count(label, outcome, seconds)
        if inv.outcome is Outcome.DENIED:
            self._metrics.denials.labels(label, inv.rule or "").inc()
        elif inv.error is not None and inv.outcome in (Outcome.ERROR, Outcome.TIMEOUT):
            # A reply that reports a down service is an answer; only crashes count here.
            self._metrics.errors.labels(label).inc()
        if inv.quiet:
            return  # one of a flood: its window's entry counts it
        if inv.unrecorded:
            return  # refused: nothing ran, and the error log has the line
        entry = self._entry(
            "finished" if inv.ran else "decided",
            message,
            request_id,
            inv,
            self._clock.now() if inv.ran else message.received_at,
            outcome,
            duration_ms=round(seconds * 1000, 3),
            output=None if reply is None else self._audit.output(render_text(reply)),
        )
        try:
            if wait:
                await self._audit.record_before_reply(entry, alone=await self._alone())
            else:
                await self._audit.record(entry)
        except DependencyError as exc:
            # The store holds the entry and keeps trying (or spools it); the reply goes out.
            self._log.warning("audit.record_waiting", command=inv.command, error=str(exc))
        except Exception:
            # Losing the reply because the audit store failed helps nobody at 3 a.m.;
            # the store spools when the database is down, and this line shows the gap.
            self._log.exception("audit.record_failed", command=inv.command)
        self._log.info(
            "command.done",
            command=inv.command,
            principal=inv.principal,
            outcome=outcome,
            rule=inv.rule,
            duration_ms=round(seconds * 1000, 2),
        )


def _internal_title(command: str | None, exc: Exception) -> str:
    if isinstance(exc, DependencyError):
        return f"/{command} could not reach {exc.dependency}; the details are in the log"
    return f"/{command} failed inside the bot; the details are in the log"


def _unknown_sender(message: Message) -> str:
    if message.private_replies:
        return (
            f"I don't know you ({message.qualified_user}); ask an admin to add this id "
            "under 'identities' in the opsbot config"
        )
    # Everyone here reads the answer: no platform id in it.
    return (
        "I don't know you; send me a direct message to see the id an admin adds under "
        "'identities' in the opsbot config"
    )
