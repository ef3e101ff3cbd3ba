"""/status: the bot itself: version, uptime, adapters, policy mode; with replicas, Redis and
the leader."""

from __future__ import annotations

from msgspec import Struct

from bot.cluster.leader import Leadership
from bot.delivery.adapters import AdapterBoard
from bot.features.policy.config import PolicyMode
from bot.features.policy.switch import PolicySwitch
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec, NoArgs, Request
from bot.kernel.durations import format_duration
from bot.kernel.info import BotInfo
from bot.kernel.reply import Field, Reply, Status
from bot.kernel.version import __version__


class StatusDeps(Struct, frozen=True):
    """When the bot started and from which config, its adapters, its policy mode, the
    clock for its uptime, and the leader lease (Redis reachability, who leads)."""

    info: BotInfo
    adapters: AdapterBoard
    policy: PolicySwitch
    clock: Clock
    leadership: Leadership


async def run(request: Request, _: NoArgs, deps: StatusDeps) -> Reply:
    policy = await deps.policy.current()
    mode = str(policy.mode)
    if policy.mode is PolicyMode.OFF and policy.until is not None:
        mode += f" (until {policy.until:%H:%M} UTC)"
    adapters = ", ".join(
        f"{name}: {state}" for name, state in sorted((await deps.adapters.refresh()).items())
    )
    # The name people address the bot by, which each platform gave it when connecting.
    names = ", ".join(f"{name} {who}" for name, who in sorted(deps.adapters.identities.items()))
    return Reply(
        title=f"opsbot {__version__} up {format_duration(deps.clock.now() - deps.info.started_at)}",
        status=Status.OK,
        fields=(
            Field("version", __version__),
            Field("started", f"{deps.info.started_at:%Y-%m-%d %H:%M:%S} UTC"),
            Field("adapters", adapters or "none"),
            *((Field("answers to", names),) if names else ()),
            Field("policy", mode),
            *_cluster(deps.leadership),
            Field("config", deps.info.config_source),
        ),
    )


def _cluster(leadership: Leadership) -> tuple[Field, ...]:
    """With replicas on a Redis: whether it answers, and which replica leads (runs the
    checks and heartbeats); "unknown" while Redis is down, when none can lead."""
    view = leadership.view()
    if view.redis == "not used":
        return ()
    leader = f"{view.leader} (this replica)" if view.leading else view.leader
    return (Field("redis", view.redis), Field("leader", leader))


SPEC = CommandSpec(
    name="status",
    summary="Show the bot's version, uptime, adapters and policy mode",
    usage="/status",
    args_model=NoArgs,
    run=run,
    needs=StatusDeps,
)
