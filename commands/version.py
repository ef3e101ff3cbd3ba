"""/version [service]: the version each service reports."""

from __future__ import annotations

from bot.kernel.command import Args, CommandSpec
from bot.kernel.reply import Reply, Status, Table
from bot.pipeline.context import Context
from commands.health import select_services

USAGE = "/version [service]"


class VersionArgs(Args):
    service: str | None = None


async def run(ctx: Context, args: VersionArgs) -> Reply:
    from bot.features.probes import fetch_all_versions

    services = select_services(ctx, args.service, USAGE)
    with_url = [s for s in services if s.version_url]
    results = await fetch_all_versions(
        ctx.tools.http.client(),
        [(s.name, s.version_url or "", s.timeout.total_seconds()) for s in with_url],
        request_id=ctx.request_id,
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
    return Reply(
        title=f"Versions of {len(rows)} service(s)",
        status=Status.WARNING if unreadable else Status.OK,
        table=Table(("service", "version", "details"), tuple(rows)),
    )


SPEC = CommandSpec(
    name="version",
    summary="Show the version each service reports (or one)",
    usage=USAGE,
    args_model=VersionArgs,
    run=run,
    positional=("service",),
)
