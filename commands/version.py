"""/version [service]: the version each service reports."""

from __future__ import annotations

from msgspec import Struct

from bot.cluster.http_clients import HttpClients
from bot.features.probes.targets import ServiceTargets
from bot.kernel.command import Args, CommandSpec, Request
from bot.kernel.reply import Reply, Status, Table

USAGE = "/version [service]"


class VersionArgs(Args):
    service: str | None = None


class VersionDeps(Struct, frozen=True):
    """The configured services and the HTTP client that asks them."""

    targets: ServiceTargets
    http: HttpClients


async def run(request: Request, args: VersionArgs, deps: VersionDeps) -> Reply:
    from bot.features.probes import fetch_all_versions

    services = deps.targets.select(args.service, USAGE)
    with_url = [s for s in services if s.version_url]
    results = await fetch_all_versions(
        deps.http.client(),
        [(s.name, s.version_url or "", s.timeout.total_seconds()) for s in with_url],
        request_id=request.request_id,
    )
    by_name = {r.service: r for r in results}
    rows: list[tuple[str, str, str]] = []
    for service in services:
        result = by_name.get(service.name)
        if result is None:
            rows.append((service.name, "-", "no version_url configured"))
        else:
            rows.append((service.name, result.version or "unknown", result.detail))
    if not rows:
        return Reply(title="No services configured", text="Add [[services]] entries to the config.")
    unreadable = sum(1 for r in results if r.version is None)
    if not with_url:
        return Reply(
            title="No service has a version_url",
            text="Set version_url on the [[services]] entries whose version /version should ask.",
            table=Table(("service", "version", "details"), tuple(rows)),
        )
    without = len(rows) - len(with_url)
    return Reply(
        title=f"Versions of {len(with_url)} service(s)"
        + (f"; {without} without a version_url" if without else ""),
        status=Status.WARNING if unreadable else Status.OK,
        table=Table(("service", "version", "details"), tuple(rows)),
    )


SPEC = CommandSpec(
    name="version",
    summary="Show the version each service reports (or one)",
    usage=USAGE,
    args_model=VersionArgs,
    run=run,
    needs=VersionDeps,
    positional=("service",),
)
