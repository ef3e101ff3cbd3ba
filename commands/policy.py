"""/policy [off <duration> [reason] | strict [reason]]: show or switch the policy mode."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Literal

from msgspec import Struct

from bot.features.policy.config import PolicyMode
from bot.features.policy.store import PolicyState
from bot.features.policy.switch import PolicySwitch
from bot.kernel.clock import Clock
from bot.kernel.command import Args, CommandSpec, Request, Risk
from bot.kernel.durations import format_duration, parse_duration
from bot.kernel.errors import UsageError
from bot.kernel.reply import Field, Reply, Status

USAGE = "/policy [off <duration> [reason] | strict [reason]]"


class PolicyArgs(Args):
    mode: Literal["off", "strict"] | None = None
    duration: str | None = None
    reason: str = ""


class PolicyDeps(Struct, frozen=True):
    """The policy switch, and the clock for how long the mode stays off."""

    policy: PolicySwitch
    clock: Clock


async def run(request: Request, args: PolicyArgs, deps: PolicyDeps) -> Reply:
    switch = deps.policy
    who = request.principal.name
    if args.mode is None:
        return _describe(await switch.current(), deps.clock, "Policy mode", Status.INFO)
    if args.mode == "strict":
        reason = " ".join(part for part in (args.duration, args.reason) if part)
        state = await switch.restore(who, reason, request.request_id)
        return _describe(state, deps.clock, "Policy mode is now", Status.OK)
    if args.duration is None:
        raise UsageError("policy off needs a duration, e.g. /policy off 30m", USAGE)
    try:
        ttl = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(str(exc), USAGE) from exc
    if ttl.total_seconds() <= 0:
        raise UsageError("the duration must be longer than zero", USAGE)
    state = await switch.turn_off(ttl, who, args.reason, request.request_id)
    return _describe(state, deps.clock, "Policy mode is now", Status.OK)


def _describe(state: PolicyState, clock: Clock, prefix: str, status: Status) -> Reply:
    fields = [Field("changed by", state.changed_by)]
    if state.reason:
        fields.append(Field("reason", state.reason))
    if state.mode is PolicyMode.OFF and state.until is not None:
        seconds = (state.until - clock.now()).total_seconds()
        # "29m 59s" right after "off 30m" reads like a bug; whole minutes read right.
        left = format_duration(
            timedelta(minutes=math.ceil(seconds / 60))
            if seconds > 90
            else timedelta(seconds=seconds)
        )
        title = f"{prefix} OFF until {state.until:%H:%M} UTC ({left} left)"
        text = "High-risk actions skip second-person approval; roles still apply."
    else:
        title, text = f"{prefix} STRICT", "Every rule applies, including approvals."
    return Reply(title=title, status=status, text=text, fields=tuple(fields))


SPEC = CommandSpec(
    name="policy",
    summary="Show the policy mode; admins switch it off for a window or back to strict",
    usage=USAGE,
    args_model=PolicyArgs,
    run=run,
    needs=PolicyDeps,
    positional=("mode", "duration"),
    rest="reason",
    risk=Risk.WRITE,
    admin_args=("mode",),
)
