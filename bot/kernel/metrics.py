"""Prometheus metrics, on a registry owned by one bot (no process-global state).

A bot that serves no HTTP (``opsbot console --no-http``) has no ``/metrics`` to read them
from: its :class:`Metrics` is built with ``exported=False``, counts nothing and never
imports the Prometheus client (its exposition module loads http.server, email and
urllib.request: ~25 ms of a console's start-up, issue 19)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from bot.kernel.errors import InternalError
from bot.kernel.version import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


# What opsbot calls on its metrics: the Prometheus client's types, or _Unexported.
class CounterLike(Protocol):
    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> CounterLike: ...
    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None: ...


class GaugeLike(Protocol):
    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> GaugeLike: ...
    def set(self, value: float) -> None: ...
    def set_function(self, f: Callable[[], float]) -> None: ...


class HistogramLike(Protocol):
    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> HistogramLike: ...
    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None: ...


class _Unexported:
    """Every metric of a bot whose metrics nobody can read: each call does nothing."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> _Unexported:
        return self

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def set_function(self, f: Callable[[], float]) -> None:
        pass

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        pass


_UNEXPORTED = _Unexported()


class Metrics:
    # Every metric does nothing until _register() puts the Prometheus client's in its place.
    commands: CounterLike = _UNEXPORTED
    latency: HistogramLike = _UNEXPORTED
    denials: CounterLike = _UNEXPORTED
    errors: CounterLike = _UNEXPORTED
    policy_off: GaugeLike = _UNEXPORTED
    build: GaugeLike = _UNEXPORTED
    audit_spool: GaugeLike = _UNEXPORTED
    alert_limits: CounterLike = _UNEXPORTED
    audit_writable: GaugeLike = _UNEXPORTED
    outbox_queued: GaugeLike = _UNEXPORTED
    outbox_dead_letters: GaugeLike = _UNEXPORTED
    started: GaugeLike = _UNEXPORTED
    heartbeat_last_success: GaugeLike = _UNEXPORTED
    alert_events: CounterLike = _UNEXPORTED
    alerts_firing: GaugeLike = _UNEXPORTED
    refused_requests: CounterLike = _UNEXPORTED
    check_state: GaugeLike = _UNEXPORTED
    adapter_connected: GaugeLike = _UNEXPORTED

    def __init__(self, *, exported: bool = True) -> None:
        self._command_children: dict[tuple[str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self.registry: CollectorRegistry | None = None
        if exported:
            self._register()

    @property
    def exported(self) -> bool:
        return self.registry is not None

    def _register(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=False)
        self.commands = Counter(
            "opsbot_commands",
            "Commands handled, by command and outcome",
            ["command", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "opsbot_command_duration_seconds",
            "Time from receiving a command to its reply",
            ["command"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.denials = Counter(
            "opsbot_denials",
            "Commands refused by authorization, by command and matched rule",
            ["command", "rule"],
            registry=self.registry,
        )
        self.errors = Counter(
            "opsbot_errors",
            "Commands that failed inside the bot or a dependency",
            ["command"],
            registry=self.registry,
        )
        self.policy_off = Gauge(
            "opsbot_policy_off", "1 while the policy mode is off", registry=self.registry
        )
        self.build = Gauge(
            "opsbot_build_info", "Build information", ["version"], registry=self.registry
        )
        self.build.labels(__version__).set(1)
        self.audit_spool = Gauge(
            "opsbot_audit_spool_depth",
            "Audit records waiting in the local spool for the database to come back",
            registry=self.registry,
        )
        self.alert_limits = Counter(
            "opsbot_alert_limits_total",
            "Alert intake bounds reached: body (413), payload (413), queue (429), board "
            "(oldest alerts dropped)",
            ["limit"],
            registry=self.registry,
        )
        self.audit_writable = Gauge(
            "opsbot_audit_writable",
            "1 while audit records can be written (database or spool); 0 while they cannot, "
            "and no command runs",
            registry=self.registry,
        )
        self.outbox_queued = Gauge(
            "opsbot_outbox_queued",
            "Messages the bot posts on its own, waiting in the outbound queue",
            registry=self.registry,
        )
        self.outbox_dead_letters = Gauge(
            "opsbot_outbox_dead_letters",
            "Outbound messages given up on after the last retry (`opsbot outbox --dead`)",
            registry=self.registry,
        )
        self.started = Gauge(
            "opsbot_start_time_seconds", "Unix time the bot started", registry=self.registry
        )
        # A dead man's switch: alert when time() minus this grows past a heartbeat's
        # interval (and on absent() for a bot that never got one out).
        self.heartbeat_last_success = Gauge(
            "opsbot_heartbeat_last_success_timestamp_seconds",
            "Unix time each heartbeat was last posted to all its destinations",
            ["heartbeat"],
            registry=self.registry,
        )

        self.alert_events = Counter(
            "opsbot_alert_events_total",
            "Alerts by source (inbound, check), event (received, posted, silenced) and status",
            ["source", "event", "status"],
            registry=self.registry,
        )
        self.alerts_firing = Gauge(
            "opsbot_alerts_firing",
            "Alerts firing now (inbound and checks), as this replica last read them",
            registry=self.registry,
        )
        self.refused_requests = Counter(
            "opsbot_refused_requests",
            "Requests a platform adapter refused before reading them, by platform and reason "
            "(Slack HTTP mode: bad_signature, stale_timestamp, missing_headers, bad_timestamp)",
            ["platform", "reason"],
            registry=self.registry,
        )
        self.check_state = Gauge(
            "opsbot_check_state",
            "Each check's state: 0 ok, 1 warn, 2 critical",
            ["check"],
            registry=self.registry,
        )
        # What to alert on when a platform is lost: /ready stays 200 then (every replica
        # loses it together), so this is the signal.
        self.adapter_connected = Gauge(
            "opsbot_adapter_connected",
            "1 while the chat adapter is connected to its platform; 0 while it starts, "
            "reconnects or has failed",
            ["platform"],
            registry=self.registry,
        )

    def track_cluster(
        self, *, is_leader: Callable[[], float], redis_up: Callable[[], float] | None
    ) -> None:
        """Who leads, and (with replicas on a Redis) whether that Redis answers: read when
        scraped. ``sum(opsbot_is_leader)`` 0 across replicas means checks and heartbeats
        are not running anywhere."""
        if self.registry is None:
            return
        from prometheus_client import Gauge

        Gauge(
            "opsbot_is_leader",
            "1 while this replica leads the scheduled work (checks, heartbeats)",
            registry=self.registry,
        ).set_function(is_leader)
        if redis_up is not None:
            Gauge(
                "opsbot_redis_up",
                "1 while the state Redis answered this replica's last leader-lease call "
                "(every leader_renew_every), 0 while it does not",
                registry=self.registry,
            ).set_function(redis_up)

    def count(self, command: str, outcome: str, seconds: float) -> None:
        """One handled command. Children are cached: labels() takes a lock and builds a
        key on every call, which showed in the per-command profile."""
        key = (command, outcome)
        child = self._command_children.get(key)
        if child is None:
            child = self._command_children[key] = self.commands.labels(command, outcome)
        child.inc()
        latency = self._latency_children.get(command)
        if latency is None:
            latency = self._latency_children[command] = self.latency.labels(command)
        latency.observe(seconds)

    def render(self) -> bytes:
        if self.registry is None:
            raise InternalError("these metrics are not exported (built with exported=False)")
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
