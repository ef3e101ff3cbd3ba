"""/silences: the silences in force now, newest first (see docs/alerts.md#silences)."""

from __future__ import annotations

from datetime import timedelta

from msgspec import Struct

from bot.features.alerts.silences import Silences
from bot.kernel.clock import Clock
from bot.kernel.command import CommandSpec, NoArgs, Request
from bot.kernel.durations import format_duration
from bot.kernel.reply import Reply, Status, Table

_REASON_SHOWN = 60  # characters of the reason in the table


class SilencesDeps(Struct, frozen=True):
    """The silences in force and the clock."""

    silences: Silences
    clock: Clock


async def run(request: Request, _: NoArgs, deps: SilencesDeps) -> Reply:
    active = await deps.silences.active()
    if not active:
        return Reply(title="No active silences", status=Status.OK)
    now = deps.clock.now()
    rows = tuple(
        (
            s.id,
            s.matchers_text,
            _ends_in(s.ends_at - now),
            s.created_by,
            _clip(s.reason) or "-",
        )
        for s in active
    )
    return Reply(
        title=f"{len(rows)} active silence(s)",
        status=Status.INFO,
        text="/unsilence <id> ends one early.",
        table=Table(("id", "matchers", "ends in", "by", "reason"), rows),
    )


def _ends_in(left: timedelta) -> str:
    seconds = left.total_seconds()
    if seconds > 90:  # whole minutes: "1h 59m" right after "2h" reads like a bug
        left = timedelta(minutes=round(seconds / 60))
    return format_duration(left)


def _clip(text: str) -> str:
    return text if len(text) <= _REASON_SHOWN else text[: _REASON_SHOWN - 1] + "…"


SPEC = CommandSpec(
    name="silences",
    summary="List the active silences",
    usage="/silences",
    args_model=NoArgs,
    run=run,
    needs=SilencesDeps,
)
