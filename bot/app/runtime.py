"""Assembles one bot from its config: the pipeline, its state, the HTTP server.

No I/O happens in the constructor; ``start()`` and ``stop()`` (or ``async with``)
own every connection and background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

from adapters.console.adapter import ConsoleAdapter
from bot.app.config.models import Config
from bot.app.connecting import AdapterKeeper, Backoff
from bot.app.services import Services
from bot.app.storage import alert_inbox_path, database_url, open_trail, prepare_database
from bot.app.witness import AuditWitness
from bot.audit.trail import AuditTrail
from bot.cluster.dedup import (
    ClaimStore,
    DatabaseClaims,
    DatabaseDedup,
    EventDedup,
    RedisDedup,
    RememberingDedup,
    WriterProcessClaims,
)
from bot.cluster.http_clients import HttpClients
from bot.cluster.leader import Leadership, LeaderView, leadership_for
from bot.cluster.pauses import RedisPauses, SqlPauses
from bot.cluster.redis_clients import RedisClients
from bot.cluster.scheduler import Every, Scheduler
from bot.delivery.adapters import AdapterBoard
from bot.delivery.outbox import Outbox
from bot.delivery.store import OutboxStore
from bot.features.actions.approvals import ApprovalStore
from bot.features.actions.job_locks import RedisJobLocks
from bot.features.actions.jobs import JobBoard
from bot.features.actions.service import ActionService
from bot.features.alerts.board import AlertBoard, AlertDedup, MemoryAlertDedup, RedisAlertDedup
from bot.features.alerts.checks import Checks, Measurer
from bot.features.alerts.config import AlertsSection
from bot.features.alerts.inbox import AlertInbox
from bot.features.alerts.intake import AlertIntake, alert_routes
from bot.features.alerts.silence_ends import EVERY as SILENCE_ENDS_EVERY
from bot.features.alerts.silence_ends import JOB_NAME as SILENCE_ENDS_JOB
from bot.features.alerts.silence_ends import SilenceEnds
from bot.features.alerts.silences import Silences, SilenceStore
from bot.features.alerts.store import AlertStore
from bot.features.alerts.streaks import LocalStreaks, RedisStreaks
from bot.features.heartbeats.service import Heartbeats
from bot.features.policy.store import RedisPolicyStore, SqlPolicyStore
from bot.features.policy.switch import PolicySwitch
from bot.features.probes.targets import ServiceTargets
from bot.features.queues.watched import WatchedQueues
from bot.features.runbooks.service import RunbookService
from bot.kernel.adapter import Adapter
from bot.kernel.clock import Clock, SystemClock
from bot.kernel.command import CommandSpec
from bot.kernel.errors import DependencyError, InternalError
from bot.kernel.failures import failure_line, report_failure
from bot.kernel.info import BotInfo
from bot.kernel.message import Message
from bot.kernel.metrics import Metrics
from bot.kernel.reply import Reply, Status
from bot.pipeline.authorize import Authorizer
from bot.pipeline.catalog import Catalog
from bot.pipeline.dispatch import Dispatcher
from bot.pipeline.flood import FloodGuard
from bot.pipeline.identify import Directory
from bot.storage.database import StateDatabase
from bot.storage.shared_values import SharedValues

if TYPE_CHECKING:
    # Loaded when the bot serves HTTP: uvicorn, Starlette and the remote console's httpx
    # are of no use to a console run with --no-http.
    from starlette.routing import BaseRoute

    from bot.app.http_server import HttpServer


class Bot:
    def __init__(
        self,
        config: Config,
        commands: Sequence[CommandSpec[Any, Any]],
        *,
        clock: Clock | None = None,
        config_source: str = "",
        export_metrics: bool = True,
    ) -> None:
        """``export_metrics=False``: a bot that will not serve HTTP (a console with
        --no-http) keeps no metrics and loads no Prometheus client."""
        self.config = config
        self.clock = clock or SystemClock()
        self.info = BotInfo(config.bot.name, config_source, self.clock.now())
        self.audit: AuditTrail = open_trail(config, self.clock)
        self.metrics = Metrics(exported=export_metrics)
        self.directory = Directory(config.identities, config.roles, config.channels)
        self.redis_clients = RedisClients()
        self.state_db = StateDatabase(database_url(config))
        # Without Redis the policy mode and pauses live in the state database: every
        # process on one data directory (a console beside `opsbot run`) sees the same.
        shared_values = SharedValues(self.state_db)
        self.policy = PolicySwitch(
            config.policy,
            self.clock,
            self.audit,
            self.metrics,
            shared=(
                RedisPolicyStore(self.redis_clients, config.state.redis_url.get_secret_value())
                if config.state.redis_url is not None
                else SqlPolicyStore(shared_values)
            ),
        )
        self.adapters = AdapterBoard(connected=self.metrics.adapter_connected)
        self.http_clients = HttpClients()
        self.outbox = Outbox(
            OutboxStore(self.state_db),
            owner=config.bot.replica_id,
            lease=config.state.outbox_lease.total_seconds(),
            clock=self.clock,
            metrics=self.metrics,
        )
        self.approvals = ApprovalStore(self.state_db)
        self.silences = Silences(SilenceStore(self.state_db), clock=self.clock)
        self.dedup: EventDedup = RememberingDedup(
            RedisDedup(
                self.redis_clients,
                config.state.redis_url.get_secret_value(),
                config.state.dedup_window,
            )
            if config.state.redis_url is not None
            else DatabaseDedup(
                _claim_store_for(self.audit, self.state_db), config.state.dedup_window
            ),
            config.state.dedup_window,
        )
        self.jobs = JobBoard(
            config.jobs,
            audit=self.audit,
            outbox=self.outbox,
            clock=self.clock,
            shared_slots=_shared_job_slots(config, self.redis_clients),
            replica=config.bot.replica_id,
        )
        self.actions = ActionService(
            config.actions,
            approvals=self.approvals,
            jobs=self.jobs,
            outbox=self.outbox,
            audit=self.audit,
            clock=self.clock,
            base_dir=_base_dir(config_source),
        )
        # With Redis, one replica (the lease holder) runs the scheduled work.
        self.leadership = leadership_for(config.state, self.redis_clients, config.bot.replica_id)
        self.scheduler = Scheduler(
            self.clock,
            leadership=self.leadership,
            shared_pauses=(
                RedisPauses(self.redis_clients, config.state.redis_url.get_secret_value())
                if config.state.redis_url is not None
                else SqlPauses(shared_values, self.clock)
            ),
        )
        self.witness = AuditWitness(
            config.audit,
            store=self.audit.store,
            outbox=self.outbox,
            channels=config.channels,
            scheduler=self.scheduler,
            clock=self.clock,
        )
        self.heartbeats = Heartbeats(
            config.heartbeat,
            services=config.services,
            queues=config.queues,
            channels=config.channels,
            bot_name=config.bot.name,
            scheduler=self.scheduler,
            outbox=self.outbox,
            metrics=self.metrics,
            http=self.http_clients,
            redis=self.redis_clients,
            adapters=self.adapters,
            clock=self.clock,
            started_at=lambda: self.info.started_at,
        )
        self.alert_board = AlertBoard(AlertStore(self.state_db))
        self.alert_dedup = _alert_dedup(config, self.redis_clients)
        self.alert_intake = AlertIntake(
            config.alerts,
            channels=config.channels,
            board=self.alert_board,
            dedup=self.alert_dedup,
            outbox=self.outbox,
            adapters=self.adapters,
            clock=self.clock,
            silences=self.silences,
            metrics=self.metrics,
            inbox=AlertInbox(alert_inbox_path(config)),
        )
        self.silence_ends = SilenceEnds(self.silences, self.alert_board, self.outbox)
        self.scheduler.add(SILENCE_ENDS_JOB, self.silence_ends.tell, Every(SILENCE_ENDS_EVERY))
        self.checks = Checks(
            config.checks,
            scheduler=self.scheduler,
            board=self.alert_board,
            intake=self.alert_intake,
            measurer=Measurer(
                config.services, config.queues, self.http_clients, self.redis_clients
            ),
            metrics=self.metrics,
            clock=self.clock,
            streaks=(
                RedisStreaks(self.redis_clients, config.state.redis_url.get_secret_value())
                if config.state.redis_url is not None
                else LocalStreaks()
            ),
        )
        self.runbooks = RunbookService(
            config.runbooks,
            actions=self.actions,
            checks=self.checks,
            services=config.services,
            channels=config.channels,
            http=self.http_clients,
            redis=self.redis_clients,
            outbox=self.outbox,
            audit=self.audit,
            clock=self.clock,
            base_dir=_base_dir(config_source),
        )
        self.authorizer = Authorizer(
            config.policy,
            commands,
            actions=self.actions,
            policy_switch=self.policy,
            runbooks=self.runbooks,
        )
        self.catalog = Catalog(commands, self.authorizer)
        self.services = self._services()
        self.dispatcher = Dispatcher(
            bot_name=config.bot.name,
            command_timeout=config.bot.command_timeout,
            clock=self.clock,
            dependencies={
                spec.name: self.services.provide(spec.needs, command=spec.name) for spec in commands
            },
            directory=self.directory,
            authorizer=self.authorizer,
            catalog=self.catalog,
            flood=FloodGuard(config.flood.max_commands, config.flood.per.total_seconds()),
            audit=self.audit,
            metrics=self.metrics,
            dedup=self.dedup,
        )
        self.http_server: HttpServer | None = None
        # `opsbot console --connect`: a console on the bot's HTTP server, when a token is set.
        self.remote_console: ConsoleAdapter | None = None
        if config.console.token is not None:
            self.remote_console = ConsoleAdapter(
                config.console.principal or "operator", config.console.channel, self.clock
            )
        self._keepers: list[AdapterKeeper] = []
        self.reconnect = Backoff()  # how adapters that cannot reach their platform retry
        self._scheduled = False
        self.metrics.audit_spool.set_function(lambda: self.audit.store.spool_depth)
        self.metrics.audit_writable.set_function(lambda: self.audit.store.unwritable is None)
        self.metrics.alerts_firing.set_function(lambda: self.alert_board.known)
        self.metrics.track_cluster(
            is_leader=lambda: float(self.leadership.view().leading),
            redis_up=(
                (lambda: float(self.leadership.view().redis == "ok"))
                if config.state.redis_url is not None
                else None
            ),
        )

    def _services(self) -> Services:
        """What commands may ask for, by type (each command's ``needs`` names its own)."""
        services = Services()
        services.add(Clock, self.clock)
        services.add(BotInfo, self.info)
        services.add(AuditTrail, self.audit)
        services.add(PolicySwitch, self.policy)
        services.add(AdapterBoard, self.adapters)
        services.add(HttpClients, self.http_clients)
        services.add(RedisClients, self.redis_clients)
        services.add(ApprovalStore, self.approvals)
        services.add(JobBoard, self.jobs)
        services.add(ActionService, self.actions)
        services.add(RunbookService, self.runbooks)
        services.add(Scheduler, self.scheduler)
        services.add(Heartbeats, self.heartbeats)
        services.add(AlertBoard, self.alert_board)
        services.add(Silences, self.silences)
        services.add(Checks, self.checks)
        services.add(Authorizer, self.authorizer)
        services.add(Catalog, self.catalog)
        services.add(Leadership, self.leadership)
        services.add(ServiceTargets, ServiceTargets(self.config.services))
        services.add(WatchedQueues, WatchedQueues(self.config.queues))
        return services

    async def start(self, *, serve_http: bool | None = None, defer_scheduled: bool = False) -> None:
        """Open state, the outbox and the HTTP server; then, unless ``defer_scheduled``,
        :meth:`start_scheduled`."""
        self.info.started_at = self.clock.now()
        self.metrics.started.set(time.time())
        await prepare_database(self.config)
        await self.audit.start()
        # A crash left jobs running: stop them before any new job can start.
        await self.actions.stop_orphans()
        self.witness.start()
        await self.state_db.start()
        await self.outbox.start()
        await self.alert_board.firing()  # what fires, for the gauge, from the last run
        await self.policy.start()
        await self.alert_intake.prepare()
        self.alert_intake.start()
        if self.config.http.enabled if serve_http is None else serve_http:
            if not self.metrics.exported:
                raise InternalError("a bot built with export_metrics=False cannot serve HTTP")
            from bot.app.http_server import HttpServer, build_app

            server = HttpServer(
                build_app(
                    self.metrics,
                    self.readiness,
                    [
                        *alert_routes(self.alert_intake, self.config.alerts),
                        *self._console_routes(),
                    ],
                    self.cluster if self.config.state.redis_url is not None else None,
                ),
                self.config.http.host,
                self.config.http.port,
            )
            await server.start()
            self.http_server = server
        if not defer_scheduled:
            await self.start_scheduled()

    def _console_routes(self) -> list[BaseRoute]:
        token = self.config.console.token
        if self.remote_console is None or token is None:
            return []
        from bot.app.remote_console import console_routes

        return console_routes(
            self.remote_console, token.get_secret_value(), lambda: len(self.jobs.running())
        )

    async def start_on_demand(self) -> None:
        """For a console: scheduled work (heartbeats, checks, silence ends) runs only when
        a person asks for it (``/heartbeat now``, ``/checks now``), and this process never
        competes for the leader's lease. A console next to ``opsbot run`` is a client of
        the shared state, never a second bot doing the bot's work."""
        if self._scheduled:
            return
        self._scheduled = True
        await self.scheduler.start(scheduling=False)

    async def start_scheduled(self) -> None:
        """Compete for the lease and start the scheduled work (heartbeats, checks).
        ``opsbot run`` calls it once its adapters are attached: a replica that led before
        its chat connections were up would skip the posts another replica could make."""
        if self._scheduled:
            return
        self._scheduled = True
        await self.leadership.start()
        await self.scheduler.start()
        try:
            await self.checks.forget_removed()
        except Exception as exc:
            # Tried again at the next start; the bot serves meanwhile.
            report_failure("checks.forget_removed", exc)

    async def attach(self, adapters: Sequence[Adapter]) -> None:
        """Start the adapters, together; returns after each one's first try. One that
        cannot reach its platform is tried again in the background until it connects
        (bot/app/connecting.py); one that fails for good is reported (log, /ready,
        /status). The others, and the HTTP server, serve meanwhile."""
        keepers = [
            AdapterKeeper(
                adapter,
                self.handle,
                self.adapters,
                connected=self._connected,
                lost=self._lost,
                backoff=self.reconnect,
            )
            for adapter in adapters
        ]
        self._keepers.extend(keepers)
        await asyncio.gather(*(keeper.start() for keeper in keepers))

    def _connected(self, adapter: Adapter) -> None:
        # Posts queued for the platform meanwhile go out from here on.
        self.outbox.register(adapter.name, adapter.post, adapter.limits)
        self.adapters.named(adapter.name, adapter.identity)

    def _lost(self, adapter: Adapter) -> None:
        self.outbox.unregister(adapter.name)  # posts wait in the queue until it is back

    async def stop(self) -> None:
        # No more connecting: a pending retry is cancelled, a start in progress undone.
        # The adapters that are connected stay up until what they post has gone out.
        for keeper in self._keepers:
            await keeper.stop_trying()
        # Scheduled work first: a heartbeat running now still posts through the adapters.
        await self.scheduler.stop()
        await self.leadership.stop()
        # Runbooks and jobs first: their results are posted through the adapters, and
        # their last audit entries need the trail still open. A runbook waits for its
        # running step's job, so both get the jobs' grace.
        grace = self.config.jobs.shutdown_grace.total_seconds()
        await asyncio.gather(self.runbooks.drain(grace), self.jobs.drain())
        await self.dispatcher.close()  # the counts of floods still being counted
        # Then what they posted: delivered within the grace while the adapters are up;
        # the rest stays queued in the database for the next start.
        await self.alert_intake.stop()  # what is not processed waits in the inbox
        await self.outbox.stop(grace=OUTBOX_GRACE_S)
        for keeper in reversed(self._keepers):
            adapter = keeper.adapter
            self.outbox.unregister(adapter.name)
            try:
                await adapter.stop()
            except Exception:
                _log.exception("adapter.stop_failed", adapter=adapter.name)
        self._keepers.clear()
        if self.http_server is not None:
            await self.http_server.stop()
        await self.policy.close()
        await self.http_clients.close()
        await self.redis_clients.close()
        self.outbox.closed()
        await self.state_db.close()
        with contextlib.suppress(DependencyError):  # held, not written: logged at close
            await self.audit.store.flush()
        await self.witness.close()
        await self.audit.close()

    async def handle(self, message: Message) -> Reply | None:
        """The handler every adapter calls: it answers, or stays silent, and never raises
        (an adapter would only log what escaped, and the person would see nothing)."""
        try:
            return await self.dispatcher.handle(message)
        except Exception as exc:
            request_id = report_failure("pipeline", exc, platform=message.platform)
            return Reply(
                title=failure_line("Answering this", request_id),
                status=Status.ERROR,
                request_id=request_id,
            )

    async def readiness(self) -> dict[str, str]:
        checks = {"audit": self.audit.state()}
        states = await self.adapters.refresh()
        checks.update(
            {
                f"adapter:{name}": _adapter_readiness(state, self.adapters.has_connected(name))
                for name, state in states.items()
            }
        )
        if self.config.state.redis_url is not None:
            checks["redis"] = _redis_readiness(self.leadership.view())
        return checks

    def cluster(self) -> dict[str, str]:
        """This replica, its Redis and the leader, for /ready."""
        view = self.leadership.view()
        return {"replica": self.config.bot.replica_id, "redis": view.redis, "leader": view.leader}

    async def __aenter__(self) -> Bot:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


_log = structlog.get_logger("opsbot.runtime")
OUTBOX_GRACE_S = 5.0  # at stop, how long queued posts may take to go out


def _adapter_readiness(state: str, connected_before: bool) -> str:
    from bot.app.http_server import DEGRADED

    # Not ready until a platform has been reached once: a new replica joins (and a rolling
    # update goes on) only once it can talk to its platforms. After that, losing one is
    # degraded, not unready, for the same reason as Redis: every replica loses the platform
    # together, and a 503 from all of them would take alert intake and the other platforms'
    # webhooks off the load balancer just when alerts matter.
    if state == "connected" or not connected_before:
        return state
    return f"{DEGRADED}: {state}"


def _redis_readiness(view: LeaderView) -> str:
    from bot.app.http_server import DEGRADED

    # Degraded, not unready: every replica shares this Redis, so a 503 would take them all
    # out of the load balancer at once, and with them alert intake and Slack's HTTP events,
    # which keep working without Redis. Commands are answered too; what stops is said here.
    if view.redis == "ok":
        return "ok"
    if view.redis != "unreachable":
        return f"{DEGRADED}: Redis {view.redis}"  # not asked yet: the lease starts last
    return (
        f"{DEGRADED}: Redis unreachable; no replica leads, so checks and heartbeats wait "
        "for it, and alerts are deduplicated per replica"
    )


def _shared_job_slots(config: Config, clients: RedisClients) -> RedisJobLocks | None:
    """With Redis, several replicas take commands: max_concurrent and lock groups must hold
    across them."""
    state = config.state
    if state.redis_url is None:
        return None
    return RedisJobLocks(
        clients,
        state.redis_url.get_secret_value(),
        replica=config.bot.replica_id,
        lease=state.leader_lease,
        renew_every=state.leader_renew_every,
    )


def _claim_store_for(audit: AuditTrail, state_db: StateDatabase) -> ClaimStore:
    """On SQLite, the audit writer process writes the claims too: it is the one writer of
    the file (the state tables live in the audit database)."""
    writer = audit.store.sqlite_writer
    if writer is not None and audit.store.url == state_db.url:
        return WriterProcessClaims(writer)
    return DatabaseClaims(state_db)


def _alert_dedup(config: Config, clients: RedisClients) -> AlertDedup:
    window = (config.alerts or AlertsSection()).dedup_window
    if config.state.redis_url is not None:
        return RedisAlertDedup(clients, config.state.redis_url.get_secret_value(), window)
    return MemoryAlertDedup(window)


def _base_dir(config_source: str) -> Path:
    """The config file's directory; the working directory for the built-in config."""
    path = Path(config_source)
    if config_source and path.is_file():
        return path.resolve().parent
    return Path.cwd()
