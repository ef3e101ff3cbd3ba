"""The policy mode: ``strict`` normally, ``off`` for a maintenance window that always ends.

In ``off`` high-risk actions may skip second-person approval; roles still apply
and unknown users are still denied. Every switch, and every expiry, is audited.

The mode lives in shared state (:mod:`bot.features.policy.store`): Redis with several
replicas (``state.redis_url``), else the state database, so a console beside ``opsbot run``
on the same data directory agrees with it. Every process reads it when it is needed: a
switch typed to one holds on all. A process that cannot reach the store applies strict, and
a switch that cannot reach it is refused.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import structlog

from bot.audit import AuditEntry
from bot.audit.trail import AuditTrail
from bot.cluster.redis_clients import StateRedisUnavailable
from bot.features.policy.config import PolicyMode, PolicySection
from bot.features.policy.store import PolicyState, SharedPolicyStore, encode
from bot.kernel.clock import Clock
from bot.kernel.durations import format_duration
from bot.kernel.errors import DependencyError, UsageError, UserError
from bot.kernel.metrics import Metrics

log = structlog.get_logger(__name__)

# The trail said "off" first; when no replica could apply it, the trail says that too.
_NOT_APPLIED = "not applied: Redis unreachable; the mode stays strict"


class PolicySwitch:
    def __init__(
        self,
        section: PolicySection,
        clock: Clock,
        audit: AuditTrail,
        metrics: Metrics,
        shared: SharedPolicyStore | None = None,
    ) -> None:
        self._section = section
        self._clock = clock
        self._audit = audit
        self._metrics = metrics
        self._shared = shared
        self._stored: str | None = None  # the shared state as last read or written
        self._state = PolicyState(PolicyMode.STRICT)
        self._timer: asyncio.TimerHandle | None = None
        self._expiry_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._shared is not None:
            try:
                await self._refresh()
            except DependencyError as exc:
                log.warning("policy.shared_unreachable", error=str(exc))
                return
            if self._stored is not None:
                # A replica (re)starting must not reopen a window that was closed, or
                # restart one that runs.
                return
        if self._section.mode is PolicyMode.OFF and self._section.off_ttl is not None:
            await self._switch_off(self._section.off_ttl, "config", "configured at start-up", "")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._expiry_tasks):
            task.cancel()
        await asyncio.gather(*self._expiry_tasks, return_exceptions=True)

    async def current(self) -> PolicyState:
        if self._shared is not None:
            try:
                await self._refresh()
            except DependencyError as exc:
                log.warning("policy.shared_unreachable", error=str(exc))
                return PolicyState(
                    PolicyMode.STRICT,
                    None,
                    "opsbot",
                    f"{_store_name(exc)} unreachable: strict until it is back",
                )
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
        try:
            await self._switch_off(ttl, principal, reason, request_id)
        except DependencyError as exc:
            raise UserError(
                f"policy stays strict: opsbot cannot reach its {_store_name(exc)}, so not "
                "every process can be switched off"
            ) from exc
        return self._state

    async def restore(self, principal: str, reason: str, request_id: str) -> PolicyState:
        try:
            await self._set(
                PolicyState(PolicyMode.STRICT, None, principal, reason), request_id, "strict"
            )
        except DependencyError as exc:
            ends = self._state.until
            raise UserError(
                "could not switch every replica back to strict: opsbot cannot reach its "
                f"{_store_name(exc)}. Replicas that cannot reach it apply strict anyway"
                + (f"; the off window ends by itself at {ends:%H:%M} UTC" if ends else "")
            ) from exc
        return self._state

    async def _switch_off(self, ttl: timedelta, by: str, reason: str, request_id: str) -> None:
        until = self._clock.now() + ttl
        await self._set(PolicyState(PolicyMode.OFF, until, by, reason), request_id, "off")

    async def _set(self, state: PolicyState, request_id: str, outcome: str) -> None:
        state = PolicyState(
            state.mode, state.until, state.changed_by, state.reason, self._clock.now()
        )
        entry = self._entry(state, request_id, outcome)
        loosening = state.mode is PolicyMode.OFF
        if loosening:
            if self._shared is not None:
                await self._shared.load()  # unreachable: refused before the trail says "off"
            # Rules are relaxed only once the trail says so: if the entry cannot be made
            # durable, this raises and the mode stays strict.
            await self._audit.record_durably(entry)
        if self._shared is not None:
            try:
                await self._shared.save(state)
            except DependencyError:
                if loosening:
                    await self._record_quietly(
                        self._entry(state, request_id, "off_failed", _NOT_APPLIED)
                    )
                raise
            self._stored = encode(state)
        self._apply(state)
        if not loosening:
            # Back to strict happens whatever the audit database says; then it is recorded.
            await self._audit.record_durably(entry)
        until = state.until.isoformat() if state.until else ""
        log.info("policy.switched", mode=str(state.mode), until=until, by=state.changed_by)

    def _entry(
        self, state: PolicyState, request_id: str, outcome: str, detail: str | None = None
    ) -> AuditEntry:
        if detail is None:
            until = f" until {state.until.isoformat()}" if state.until else ""
            detail = f"mode {state.mode}{until}; {state.reason}".rstrip("; ")
        return self._audit.entry(
            kind="policy",
            stage="event",
            request_id=request_id or f"timer-{secrets.token_hex(6)}",
            at=self._clock.now(),
            status=outcome,
            principal=state.changed_by,
            detail=detail,
        )

    async def _record_quietly(self, entry: AuditEntry) -> None:
        try:
            await self._audit.record_durably(entry)
        except Exception:
            log.exception("policy.audit_failed")

    async def _refresh(self) -> None:
        """Take the shared state (shared mode only); StateRedisUnavailable when Redis is down."""
        assert self._shared is not None
        loaded = await self._shared.load()
        state, stored = loaded if loaded is not None else (PolicyState(PolicyMode.STRICT), None)
        if stored != self._stored:
            self._stored = stored
            self._apply(state)

    def _apply(self, state: PolicyState) -> None:
        self._state = state
        self._metrics.policy_off.set(1 if state.mode is PolicyMode.OFF else 0)
        self._schedule_expiry()

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
        if state.mode is not PolicyMode.OFF or not state.until or self._clock.now() < state.until:
            return
        expired = PolicyState(
            PolicyMode.STRICT, None, "timer", "off window expired", self._clock.now()
        )
        if self._shared is None:
            await self._set(expired, "", "expired")
            return
        # Every replica that saw the window fires its timer; the one whose swap succeeds
        # records the expiry.
        try:
            won = self._stored is not None and await self._shared.expire(self._stored, expired)
            if not won:
                await self._refresh()
                return
        except DependencyError as exc:
            log.warning("policy.shared_unreachable", error=str(exc))
            # Past its end, so strict here; once Redis is back the next read takes the
            # stale window again and swaps it.
            self._stored = None
            self._apply(expired)
            return
        self._stored = encode(expired)
        self._apply(expired)
        await self._audit.record_durably(self._entry(expired, "", "expired"))
        log.info("policy.switched", mode=str(expired.mode), until="", by=expired.changed_by)


def _store_name(exc: DependencyError) -> str:
    return "Redis" if isinstance(exc, StateRedisUnavailable) else "state database"
