"""/runbook [<name> [args] [name=value] [--dry-run]]: run a configured runbook, step by
step and verified, under the same rules as an action (roles, argument checks, one
approval for the whole runbook when a step is high risk)."""

from __future__ import annotations

from msgspec import Struct
from pydantic import Field

from bot.features.runbooks.service import RunbookService
from bot.kernel.command import ActionRef, ActionVerb, Args, CommandSpec, Principal, Request, Risk
from bot.kernel.errors import UsageError
from bot.kernel.reply import Reply, Status, Table
from bot.pipeline.authorize import Authorizer

USAGE = "/runbook [<name> [args] [name=value] [--dry-run]]"


class RunbookArgs(Args):
    name: str | None = None
    words: tuple[str, ...] = ()
    named: dict[str, str | bool] = Field(default_factory=dict)
    dry_run: bool = False


class RunbookDeps(Struct, frozen=True):
    """The runbook service, which plans and runs runbooks, and the authorizer, which
    lists those the person may run."""

    runbooks: RunbookService
    authorizer: Authorizer


async def run(request: Request, args: RunbookArgs, deps: RunbookDeps) -> Reply:
    if args.name is None:
        return _list_runbooks(deps, request.principal)
    named: dict[str, str] = {}
    for key, value in args.named.items():
        if not isinstance(value, str):
            raise UsageError(f"give the argument as {key}=value, not --{key}", USAGE)
        named[key] = value
    return await deps.runbooks.request(request, args.name, args.words, named, dry_run=args.dry_run)


def _acts_on(args: RunbookArgs) -> ActionRef | None:
    return None if args.name is None else ActionRef(ActionVerb.RUNBOOK, args.name)


def _list_runbooks(deps: RunbookDeps, principal: Principal) -> Reply:
    mine = deps.authorizer.runnable_runbooks(principal)
    if not mine:
        return Reply(title="There are no runbooks you may run", status=Status.INFO)
    rows = tuple(
        (
            " ".join(["/runbook", r.name, *(f"<{a.name}>" for a in r.args)]),
            str(len(r.steps)),
            ("needs approval; " if deps.runbooks.high_risk(r) else "") + r.summary,
        )
        for r in mine
    )
    return Reply(
        title=f"{len(rows)} runbook(s) you may run; add --dry-run to see the plan",
        status=Status.INFO,
        table=Table(("usage", "steps", "what it does"), rows),
    )


SPEC = CommandSpec(
    name="runbook",
    summary="Run a configured runbook: its steps in order, verified",
    usage=USAGE,
    args_model=RunbookArgs,
    run=run,
    needs=RunbookDeps,
    positional=("name",),
    rest_words="words",
    extra_options="named",
    risk=Risk.WRITE,
    acts_on=_acts_on,
)
