"""What a command handler receives: who asked, where, and the bot's shared tools."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.app.config.models import Config
from bot.audit import AuditEntry
from bot.audit.trail import AuditTrail
from bot.cluster.redis_clients import RedisClients
from bot.features.policy.switch import PolicySwitch
from bot.kernel.clock import Clock
from bot.kernel.message import Message
from bot.pipeline.identify import Principal

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from bot.cluster.scheduler import Scheduler
    from bot.delivery.outbox import Outbox
    from bot.features.actions.approvals import ApprovalStore
    from bot.features.actions.jobs import JobBoard
    from bot.features.alerts.board import AlertBoard
    from bot.features.alerts.checks import Checks
    from bot.features.alerts.silences import Silences
    from bot.features.heartbeats.service import Heartbeats
    from bot.pipeline.catalog import Catalog


class HttpClients:
    """One shared httpx client, made on first use (httpx is slow to import)."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            # Probes follow redirects themselves, hop by hop, within their own timeout.
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                headers={"User-Agent": "opsbot"},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


@dataclass(slots=True)
class AdapterBoard:
    """Each adapter's state as /status and /ready report it."""

    states: dict[str, str] = field(default_factory=dict)
    _probes: dict[str, Callable[[], Awaitable[str]]] = field(default_factory=dict)

    def set(self, adapter: str, state: str) -> None:
        self.states[adapter] = state

    def watch(self, adapter: str, probe: Callable[[], Awaitable[str]]) -> None:
        """Ask ``probe`` for the adapter's state whenever the states are read."""
        self._probes[adapter] = probe

    def unwatch(self, adapter: str) -> None:
        self._probes.pop(adapter, None)

    async def refresh(self) -> dict[str, str]:
        for adapter, probe in list(self._probes.items()):
            try:
                self.states[adapter] = await probe()
            except Exception as exc:
                self.states[adapter] = f"error: {type(exc).__name__}: {exc}"
        return dict(self.states)


@dataclass(slots=True)
class Toolbox:
    config: Config
    clock: Clock
    policy: PolicySwitch
    catalog: Catalog
    http: HttpClients
    redis: RedisClients
    adapters: AdapterBoard
    audit: AuditTrail
    started_at: datetime
    config_source: str
    jobs: JobBoard
    approvals: ApprovalStore
    outbox: Outbox
    # Relative action paths are resolved against this: the config file's directory.
    base_dir: Path
    # Timed background work (heartbeats), and the heartbeats themselves.
    scheduler: Scheduler
    heartbeats: Heartbeats
    # Alerts firing now, inbound and from checks (/alerts, /ack).
    alerts: AlertBoard
    # Scheduled checks and where each stands (/checks).
    checks: Checks
    # Silences muting alerts (/silence, /silences, /unsilence).
    silences: Silences


@dataclass(frozen=True, slots=True)
class Context:
    request_id: str
    message: Message
    principal: Principal
    channel: str | None  # the configured channel name, None outside configured channels
    tools: Toolbox

    async def record_event(
        self,
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
        """Commit an audit entry for a state change this person made here (an approval,
        an ack, a pause) before it takes effect; returns the time it was recorded at."""
        audit = self.tools.audit
        now = self.tools.clock.now()
        message = self.message
        await audit.record_durably(
            AuditEntry(
                request_id=request_id or self.request_id,
                at=now,
                stage=stage,
                kind=kind,
                platform=message.platform,
                workspace=message.workspace,
                channel=message.channel_id,
                thread=message.thread_id,
                user_id=message.user_id,
                principal=self.principal.name,
                command=command,
                args=args,
                approvers=approvers,
                status=status,
                error=None if error is None else audit.redactor.text(error),
                detail=detail,
                replica=audit.replica,
            )
        )
        return now
