"""The policy mode: ``strict`` normally, ``off`` for a maintenance window that always ends.

In ``off`` high-risk actions may skip second-person approval; roles still apply
and unknown users are still denied. Every switch, and every expiry, is audited.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from bot.audit import AuditTrail
from bot.auditlog import AuditEntry
from bot.clock import Clock
from bot.config.models import PolicyMode, PolicySection
from bot.durations import format_duration
from bot.errors import UsageError
from bot.metrics import Metrics

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PolicyState:
    mode: PolicyMode
    until: datetime | None = None
    changed_by: str = "config"
    reason: str = ""
    changed_at: datetime | None = None


class PolicySwitch:
    def __init__(
        self, section: PolicySection, clock: Clock, audit: AuditTrail, metrics: Metrics
    ) -> None:
        self._section = section
        self._clock = clock
        self._audit = audit
        self._metrics = metrics
        self._state = PolicyState(PolicyMode.STRICT)
        self._timer: asyncio.TimerHandle | None = None
        self._expiry_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._section.mode is PolicyMode.OFF and self._section.off_ttl is not None:
            await self._switch_off(self._section.off_ttl, "config", "configured at start-up", "")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._expiry_tasks):
            task.cancel()
        await asyncio.gather(*self._expiry_tasks, return_exceptions=True)

    async def current(self) -> PolicyState:
        await self._expire_if_due()
        return self._state

    async def turn_off(
        self, ttl: timedelta, principal: str, reason: str, request_id: str
    ) -> PolicyState:
        if ttl > self._section.max_off_ttl:
            raise UsageError(
                f"policy off is limited to {format_duration(self._section.max_off_ttl)}",
                "/policy off <duration> [reason]",
            )
        await self._switch_off(ttl, principal, reason, request_id)
        return self._state

    async def restore(self, principal: str, reason: str, request_id: str) -> PolicyState:
        await self._set(
            PolicyState(PolicyMode.STRICT, None, principal, reason), request_id, "strict"
        )
        return self._state

    async def _switch_off(self, ttl: timedelta, by: str, reason: str, request_id: str) -> None:
        until = self._clock.now() + ttl
        await self._set(PolicyState(PolicyMode.OFF, until, by, reason), request_id, "off")

    async def _set(self, state: PolicyState, request_id: str, outcome: str) -> None:
        now = self._clock.now()
        until = f" until {state.until.isoformat()}" if state.until else ""
        detail = f"mode {state.mode}{until}; {state.reason}".rstrip("; ")
        entry = AuditEntry(
            kind="policy",
            stage="event",
            request_id=request_id or f"timer-{secrets.token_hex(6)}",
            at=now,
            status=outcome,
            principal=state.changed_by,
            detail=self._audit.redactor.text(detail),
            replica=self._audit.replica,
        )
        loosening = state.mode is PolicyMode.OFF
        if loosening:
            # Rules are relaxed only once the trail says so: if the entry cannot be made
            # durable, this raises and the mode stays strict.
            await self._audit.record_durably(entry)
        self._state = PolicyState(state.mode, state.until, state.changed_by, state.reason, now)
        self._metrics.policy_off.set(1 if loosening else 0)
        self._schedule_expiry()
        if not loosening:
            # Back to strict happens whatever the audit database says; then it is recorded.
            await self._audit.record_durably(entry)
        log.info("policy.switched", mode=str(state.mode), until=until.strip(), by=state.changed_by)

    def _schedule_expiry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        until = self._state.until
        if until is None:
            return
        delay = max(0.0, (until - self._clock.now()).total_seconds())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        # The window ends even when nobody asks: the expiry is written down on time.
        task = asyncio.get_running_loop().create_task(self._expire_if_due())
        self._expiry_tasks.add(task)
        task.add_done_callback(self._expiry_tasks.discard)

    async def _expire_if_due(self) -> None:
        state = self._state
        if state.mode is PolicyMode.OFF and state.until and self._clock.now() >= state.until:
            await self._set(
                PolicyState(PolicyMode.STRICT, None, "timer", "off window expired"), "", "expired"
            )
