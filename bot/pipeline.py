"""The pipeline: message -> parse -> flood check -> identify -> resolve -> authorize
-> run -> reply, with one audit record, one metrics update and one log line each.

Every failure ends here: the person gets one readable line carrying the request
id, the log gets the detail.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog

from bot.audit import AuditRecord, AuditSink, Outcome
from bot.authz import UNKNOWN_USER_RULE, Authorizer
from bot.catalog import Catalog
from bot.command import CommandSpec
from bot.context import Context, Toolbox
from bot.directory import Directory, Principal
from bot.durations import format_duration
from bot.errors import Denied, DependencyError, UnknownCommand, UsageError, UserError
from bot.flood import Admission, FloodGuard
from bot.message import Message
from bot.metrics import Metrics
from bot.parse import parse
from bot.reply import Reply, Status

_OUTCOME_OF_STATUS = {
    Status.OK: Outcome.OK,
    Status.INFO: Outcome.OK,
    Status.WARNING: Outcome.WARNING,
    Status.ERROR: Outcome.ERROR,
    Status.DENIED: Outcome.DENIED,
    Status.USAGE: Outcome.USAGE,
}


@dataclass(slots=True)
class _Invocation:
    """What the audit record will say, filled in as the message moves along."""

    command: str | None = None
    known_command: bool = False
    principal: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    decision: str | None = None
    rule: str | None = None
    outcome: Outcome = Outcome.OK
    error: str | None = None


class Dispatcher:
    def __init__(
        self,
        *,
        tools: Toolbox,
        directory: Directory,
        authorizer: Authorizer,
        catalog: Catalog,
        flood: FloodGuard,
        audit: AuditSink,
        metrics: Metrics,
    ) -> None:
        self._tools = tools
        self._directory = directory
        self._authorizer = authorizer
        self._catalog = catalog
        self._flood = flood
        self._audit = audit
        self._metrics = metrics
        self._bot_names = frozenset({tools.config.bot.name})
        self._timeout = tools.config.bot.command_timeout.total_seconds()
        # A concrete logger: the lazy proxy would re-bind on every call of the hot path,
        # so logging must be configured before the bot is built.
        self._log = structlog.get_logger("opsbot.pipeline").bind()

    async def handle(self, message: Message) -> Reply | None:
        """Answer one message; ``None`` when it was not for this bot (or is throttled)."""
        started = time.perf_counter()
        request_id = secrets.token_hex(6)
        inv = _Invocation()
        # Tokens and one reset are much cheaper than nested bound_contextvars blocks.
        tokens = structlog.contextvars.bind_contextvars(
            request_id=request_id, platform=message.platform, user=message.user_id
        )
        try:
            try:
                reply = await self._process(message, request_id, inv)
            except UserError as exc:
                reply = self._user_error(exc, inv)
            except TimeoutError:
                inv.outcome, inv.error = Outcome.TIMEOUT, "timed out"
                reply = Reply(
                    title=f"/{inv.command} did not finish within "
                    f"{format_duration(self._tools.config.bot.command_timeout)}",
                    status=Status.ERROR,
                )
            except Exception as exc:
                inv.outcome, inv.error = Outcome.ERROR, f"{type(exc).__name__}: {exc}"
                self._log.exception("command.crashed", command=inv.command)
                reply = Reply(title=_internal_title(inv.command, exc), status=Status.ERROR)
            if inv.command is None:
                return None
            if reply is not None:
                reply = reply.with_request_id(request_id)
                if inv.outcome is Outcome.OK:
                    inv.outcome = _OUTCOME_OF_STATUS[reply.status]
            await self._finish(message, request_id, inv, time.perf_counter() - started)
            return reply
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _process(self, message: Message, request_id: str, inv: _Invocation) -> Reply | None:
        parsed = parse(message.text, bot_names=self._bot_names, addressed=message.addressed)
        if parsed is None:
            return None
        inv.command = parsed.name
        admission = await self._flood.admit(message.qualified_user)
        if admission is not Admission.ADMIT:
            inv.outcome = Outcome.THROTTLED
            if admission is Admission.THROTTLE_SILENTLY:
                return None
            refill = self._flood.refill_seconds
            every = f"{refill:.1f} s" if refill < 60 else format_duration(timedelta(seconds=refill))
            return Reply(
                title="You are sending commands faster than a person can; ignoring them "
                f"for now (one more allowed every {every})",
                status=Status.WARNING,
            )
        principal = self._directory.principal_for(message.qualified_user)
        if principal is None:
            raise Denied(
                f"I don't know you ({message.qualified_user}); ask an admin to add this id "
                "under 'identities' in the opsbot config",
                UNKNOWN_USER_RULE,
            )
        inv.principal = principal.name
        channel = self._directory.channel_name(message.qualified_channel)
        spec = self._catalog.get(parsed.name)
        if spec is None:
            raise UnknownCommand(
                parsed.name, self._catalog.suggest(parsed.name, principal, channel)
            )
        inv.known_command = True
        self._authorize(principal, channel, spec, None, inv)
        if parsed.options.get("help") is True and "help" not in spec.args_model.model_fields:
            return Reply(title=f"/{spec.name}: {spec.summary}", text=f"Usage: {spec.usage}")
        if parsed.problem is not None:
            raise UsageError(parsed.problem, spec.usage)
        args = spec.bind(parsed)
        if parsed.positionals or parsed.options:
            inv.args = args.model_dump(mode="json", exclude_defaults=True)
            self._authorize(principal, channel, spec, inv.args, inv)
        ctx = Context(request_id, message, principal, channel, self._tools)
        # handle() resets these with its own tokens; only the same names are reset here.
        tokens = structlog.contextvars.bind_contextvars(command=spec.name, principal=principal.name)
        try:
            async with asyncio.timeout(self._timeout):
                return await spec.run(ctx, args)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    def _authorize(
        self,
        principal: Principal,
        channel: str | None,
        spec: CommandSpec[Any],
        args: dict[str, Any] | None,
        inv: _Invocation,
    ) -> None:
        decision = self._authorizer.decide(principal, channel, spec.name, args)
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

    async def _finish(
        self, message: Message, request_id: str, inv: _Invocation, seconds: float
    ) -> None:
        label = inv.command if inv.known_command and inv.command else "unknown"
        outcome = str(inv.outcome)
        self._metrics.commands.labels(label, outcome).inc()
        self._metrics.latency.labels(label).observe(seconds)
        if inv.outcome is Outcome.DENIED:
            self._metrics.denials.labels(label, inv.rule or "").inc()
        elif inv.error is not None and inv.outcome in (Outcome.ERROR, Outcome.TIMEOUT):
            # A reply that reports a down service is an answer; only crashes count here.
            self._metrics.errors.labels(label).inc()
        record = AuditRecord(
            kind="command",
            request_id=request_id,
            at=message.received_at,
            outcome=outcome,
            platform=message.platform,
            workspace=message.workspace,
            channel=message.channel_id,
            thread=message.thread_id,
            user_id=message.user_id,
            principal=inv.principal,
            command=inv.command,
            raw_text=message.text,
            args=inv.args,
            decision=inv.decision,
            rule=inv.rule,
            duration_ms=seconds * 1000,
            error=inv.error,
        )
        try:
            await self._audit.record(record)
        except Exception:
            # Losing the reply because the audit store hiccuped helps nobody at 3 a.m.;
            # the durable sink spools, and this line makes the gap visible.
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
