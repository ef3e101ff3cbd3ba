"""/unsilence <id>: end a silence before its time (audited, kind "silence")."""

from __future__ import annotations

from bot.features.alerts.silences import Silence
from bot.kernel.command import Args, CommandSpec, Risk
from bot.kernel.errors import UsageError, UserError
from bot.kernel.reply import Field, Reply, Status
from bot.pipeline.context import Context

USAGE = "/unsilence <id>"


class UnsilenceArgs(Args):
    id: str


async def run(ctx: Context, args: UnsilenceArgs) -> Reply:
    silences = ctx.tools.silences
    known = await silences.get(args.id)
    if known is None:
        raise UsageError(f"no silence '{args.id.strip()}'; /silences lists the active ones")
    _refuse_if_over(ctx, known)
    # One conditional UPDATE: of two people ending it at once, exactly one does, and only
    # that one is recorded as having ended it. Ending a silence tightens the watch, so it
    # may take effect before its entry is committed (the command's own "started" entry
    # already is).
    ended = await silences.end(known.id, by=ctx.principal.name)
    if ended is None:
        _refuse_if_over(ctx, await silences.get(known.id) or known)
        raise UserError(f"silence {known.id} could not be ended; try /unsilence again")
    await ctx.record_event(
        kind="silence",
        command="unsilence",
        args={"silence": ended.id, "matchers": ctx.tools.audit.redactor.text(ended.matchers_text)},
        status="ended",
        detail=f"silence {ended.id} by {ended.created_by}, due to end "
        f"{ended.ends_at.isoformat()}, ended early",
    )
    return Reply(
        title=f"Silence {ended.id} ended by {ctx.principal.name}",
        status=Status.OK,
        fields=(Field("matchers", ended.matchers_text),),
        text="Alerts it muted are posted again when they are next sent.",
    )


def _refuse_if_over(ctx: Context, silence: Silence) -> None:
    if silence.ended_at is not None:
        raise UserError(
            f"silence {silence.id} ({silence.matchers_text}) was already ended by "
            f"{silence.ended_by} at {silence.ended_at:%Y-%m-%d %H:%M} UTC"
        )
    if not silence.active_at(ctx.tools.clock.now()):
        raise UserError(
            f"silence {silence.id} ({silence.matchers_text}) already expired at "
            f"{silence.ends_at:%Y-%m-%d %H:%M} UTC"
        )


SPEC = CommandSpec(
    name="unsilence",
    summary="End a silence early",
    usage=USAGE,
    args_model=UnsilenceArgs,
    run=run,
    positional=("id",),
    risk=Risk.WRITE,
)
