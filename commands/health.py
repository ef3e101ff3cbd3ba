"""/health [service]: probe every configured service at once and report each."""

from __future__ import annotations

from bot.app.config.models import Service
from bot.kernel.command import Args, CommandSpec
from bot.kernel.errors import UsageError
from bot.kernel.reply import Reply, Status, Table
from bot.pipeline.context import Context

USAGE = "/health [service]"
# Upper case marks what needs attention; emoji would break column alignment.
_MARK = {"up": "up", "degraded": "DEGRADED", "down": "DOWN"}


class HealthArgs(Args):
    service: str | None = None


def select_services(ctx: Context, name: str | None, usage: str) -> list[Service]:
    services = ctx.tools.config.services
    if name is None:
        return list(services)
    service = ctx.tools.config.service(name)
    if service is None:
        known = ", ".join(s.name for s in services) or "none configured"
        raise UsageError(f"unknown service '{name}' (services: {known})", usage)
    return [service]


async def run(ctx: Context, args: HealthArgs) -> Reply:
    # Imported here: httpx is the slowest import and only probes need it.
    from bot.features.probes import ProbeTarget, ResponseShape, probe_all

    services = select_services(ctx, args.service, USAGE)
    if not services:
        return Reply(title="No services configured", text="Add [[services]] entries to the config.")
    targets = [
        ProbeTarget(s.name, s.health_url, s.timeout.total_seconds(), ResponseShape(s.shape.value))
        for s in services
    ]
    results = await probe_all(ctx.tools.http.client(), targets, request_id=ctx.request_id)
    counts = {state: sum(1 for r in results if r.state == state) for state in _MARK}
    status = Status.ERROR if counts["down"] else Status.WARNING if counts["degraded"] else Status.OK
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    rows = tuple(
        (
            r.service,
            _MARK[str(r.state)],
            str(r.http_status) if r.http_status is not None else "-",
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
    positional=("service",),
)
