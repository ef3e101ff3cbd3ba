"""/unsilence <id>: end a silence before its time (audited, kind "silence")."""

from __future__ import annotations

from msgspec import Struct

from bot.audit.trail import AuditTrail
from bot.features.alerts.silences import Silence, Silences
from bot.kernel.clock import Clock
from bot.kernel.command import Args, CommandSpec, Request, Risk
from bot.kernel.errors import UsageError, UserError
from bot.kernel.reply import Field, Reply, Status

USAGE = "/unsilence <id>"


class UnsilenceArgs(Args):
    id: str


class UnsilenceDeps(Struct, frozen=True):
    """The silences, the audit trail that records the change, the clock."""

    silences: Silences
    audit: AuditTrail
    clock: Clock


async def run(request: Request, args: UnsilenceArgs, deps: UnsilenceDeps) -> Reply:
    silences = deps.silences
    known = await silences.get(args.id)
    if known is None:
        raise UsageError(f"no silence '{args.id.strip()}'; /silences lists the active ones")
    _refuse_if_over(deps, known)
    # One conditional UPDATE: of two people ending it at once, exactly one does, and only
    # that one is recorded as having ended it. Ending a silence tightens the watch, so it
    # may take effect before its entry is committed (the command's own "started" entry
    # already is).
    ended = await silences.end(known.id, by=request.principal.name)
    if ended is None:
        _refuse_if_over(deps, await silences.get(known.id) or known)
        raise UserError(f"silence {known.id} could not be ended; try /unsilence again")
    await deps.audit.record_event(
        request,
        kind="silence",
        command="unsilence",
        args={"silence": ended.id, "matchers": deps.audit.redactor.text(ended.matchers_text)},
        status="ended",
        detail=f"silence {ended.id} by {ended.created_by}, due to end "
        f"{ended.ends_at.isoformat()}, ended early",
    )
    return Reply(
        title=f"Silence {ended.id} ended by {request.principal.name}",
        status=Status.OK,
        fields=(Field("matchers", ended.matchers_text),),
        text="Alerts it muted are posted again when they are next sent.",
    )


def _refuse_if_over(deps: UnsilenceDeps, silence: Silence) -> None:
    if silence.ended_at is not None:
        raise UserError(
            f"silence {silence.id} ({silence.matchers_text}) was already ended by "
            f"{silence.ended_by} at {silence.ended_at:%Y-%m-%d %H:%M} UTC"
        )
    if not silence.active_at(deps.clock.now()):
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
    needs=UnsilenceDeps,
    positional=("id",),
    risk=Risk.WRITE,
)
