"""/health [service]: probe every configured service at once and report each."""

from __future__ import annotations

from msgspec import Struct

from bot.cluster.http_clients import HttpClients
from bot.cluster.redis_clients import RedisClients
from bot.features.probes.targets import ServiceTargets
from bot.kernel.command import Args, CommandSpec, Request
from bot.kernel.reply import Reply, Status, Table

USAGE = "/health [service]"
# Upper case marks what needs attention; emoji would break column alignment.
_MARK = {"up": "up", "degraded": "DEGRADED", "down": "DOWN"}


class HealthArgs(Args):
    service: str | None = None


class HealthDeps(Struct, frozen=True):
    """The configured services and the clients that probe them (HTTP; Redis for services
    of kind redis)."""

    targets: ServiceTargets
    http: HttpClients
    redis: RedisClients


async def run(request: Request, args: HealthArgs, deps: HealthDeps) -> Reply:
    # Imported here: httpx is the slowest import and only probes need it.
    from bot.features.probes import probe_services

    services = deps.targets.select(args.service, USAGE)
    if not services:
        return Reply(title="No services configured", text="Add [[services]] entries to the config.")
    results = await probe_services(services, deps.http, deps.redis, request_id=request.request_id)
    counts = {state: sum(1 for r in results if r.state == state) for state in _MARK}
    status = Status.ERROR if counts["down"] else Status.WARNING if counts["degraded"] else Status.OK
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    # A service that is not HTTP shows its kind where the status code would be.
    kinds = {s.name: "-" if s.kind == "http" else s.kind.value for s in services}
    rows = tuple(
        (
            r.service,
            _MARK[str(r.state)],
            str(r.http_status) if r.http_status is not None else kinds[r.service],
            f"{r.latency_ms:.0f} ms",
            "; ".join(filter(None, (r.detail if r.detail != "ok" else "", *r.failing_components)))
            or "ok",
        )
        for r in results
    )
    return Reply(
        title=f"Health: {summary}",
        status=status,
        table=Table(("service", "state", "http", "latency", "details"), rows),
    )


SPEC = CommandSpec(
    name="health",
    summary="Check the health of every configured service (or one)",
    usage=USAGE,
    args_model=HealthArgs,
    run=run,
    needs=HealthDeps,
    positional=("service",),
)
