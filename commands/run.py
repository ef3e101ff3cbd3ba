"""/run <action> [args] [name=value] [--dry-run]: any other configured action, under the
same rules as /rollback (roles, argument schema, approval for high risk)."""

from __future__ import annotations

from msgspec import Struct
from pydantic import Field

from bot.features.actions.arguments import usage
from bot.features.actions.service import ActionService
from bot.kernel.command import ActionRef, ActionVerb, Args, CommandSpec, Principal, Request, Risk
from bot.kernel.errors import UsageError
from bot.kernel.reply import Reply, Status, Table
from bot.pipeline.authorize import Authorizer

USAGE = "/run [<action> [args] [name=value] [--dry-run]]"


class RunArgs(Args):
    action: str | None = None
    words: tuple[str, ...] = ()
    named: dict[str, str | bool] = Field(default_factory=dict)
    dry_run: bool = False


class RunDeps(Struct, frozen=True):
    """The action service, which runs actions, and the authorizer, which lists those
    the person may run."""

    actions: ActionService
    authorizer: Authorizer


async def run(request: Request, args: RunArgs, deps: RunDeps) -> Reply:
    if args.action is None:
        return _list_actions(deps.authorizer, request.principal)
    named: dict[str, str] = {}
    for key, value in args.named.items():
        if not isinstance(value, str):
            raise UsageError(f"give the argument as {key}=value, not --{key}", USAGE)
        named[key] = value
    return await deps.actions.request_action(
        request, args.action, args.words, named, dry_run=args.dry_run
    )


def _acts_on(args: RunArgs) -> ActionRef | None:
    return None if args.action is None else ActionRef(ActionVerb.RUN, args.action)


def _list_actions(authorizer: Authorizer, principal: Principal) -> Reply:
    mine = authorizer.runnable(principal)
    if not mine:
        return Reply(title="There are no actions you may run", status=Status.INFO)
    rows = tuple(
        (
            f"/run {usage(a)}",
            a.risk.value + (" (needs approval)" if a.risk.value == "high" else ""),
            a.description,
        )
        for a in mine
    )
    return Reply(
        title=f"{len(rows)} action(s) you may run; add --dry-run to see what one would do",
        status=Status.INFO,
        table=Table(("usage", "risk", "what it does"), rows),
    )


SPEC = CommandSpec(
    name="run",
    summary="Run a configured action",
    usage=USAGE,
    args_model=RunArgs,
    run=run,
    needs=RunDeps,
    positional=("action",),
    rest_words="words",
    extra_options="named",
    risk=Risk.WRITE,
    acts_on=_acts_on,
)
