"""/run <action> [args] [name=value] [--dry-run]: any other configured action, under the
same rules as /rollback (roles, argument schema, approval for high risk)."""

from __future__ import annotations

from pydantic import Field

from bot.features.actions.service import find_action, request_action
from bot.kernel.command import Args, CommandSpec, Risk
from bot.kernel.errors import UsageError
from bot.kernel.reply import Reply, Status, Table
from bot.pipeline.context import Context

USAGE = "/run [<action> [args] [name=value] [--dry-run]]"


class RunArgs(Args):
    action: str | None = None
    words: tuple[str, ...] = ()
    named: dict[str, str | bool] = Field(default_factory=dict)
    dry_run: bool = False


async def run(ctx: Context, args: RunArgs) -> Reply:
    if args.action is None:
        return _list_actions(ctx)
    named: dict[str, str] = {}
    for key, value in args.named.items():
        if not isinstance(value, str):
            raise UsageError(f"give the argument as {key}=value, not --{key}", USAGE)
        named[key] = value
    action = find_action(ctx, args.action)
    return await request_action(ctx, action, args.words, named, dry_run=args.dry_run)


def _list_actions(ctx: Context) -> Reply:
    from bot.features.actions.arguments import usage

    mine = [a for a in ctx.tools.config.actions if not ctx.principal.roles.isdisjoint(a.roles)]
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
    positional=("action",),
    rest_words="words",
    extra_options="named",
    risk=Risk.WRITE,
)
