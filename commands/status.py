"""/status: the bot itself: version, uptime, adapters, policy mode."""

from __future__ import annotations

from bot.app.config.models import PolicyMode
from bot.kernel.command import CommandSpec, NoArgs
from bot.kernel.durations import format_duration
from bot.kernel.reply import Field, Reply, Status
from bot.kernel.version import __version__
from bot.pipeline.context import Context


async def run(ctx: Context, _: NoArgs) -> Reply:
    tools = ctx.tools
    policy = await tools.policy.current()
    mode = str(policy.mode)
    if policy.mode is PolicyMode.OFF and policy.until is not None:
        mode += f" (until {policy.until:%H:%M} UTC)"
    adapters = ", ".join(
        f"{name}: {state}" for name, state in sorted((await tools.adapters.refresh()).items())
    )
    return Reply(
        title=f"opsbot {__version__} up {format_duration(tools.clock.now() - tools.started_at)}",
        status=Status.OK,
        fields=(
            Field("version", __version__),
            Field("started", f"{tools.started_at:%Y-%m-%d %H:%M:%S} UTC"),
            Field("adapters", adapters or "none"),
            Field("policy", mode),
            Field("config", tools.config_source),
        ),
    )


SPEC = CommandSpec(
    name="status",
    summary="Show the bot's version, uptime, adapters and policy mode",
    usage="/status",
    args_model=NoArgs,
    run=run,
)
