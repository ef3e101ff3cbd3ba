"""/help [command]: what the asker may run here, with usage."""

from __future__ import annotations

from msgspec import Struct

from bot.kernel.command import Access, Args, CommandSpec, Request
from bot.kernel.errors import UsageError
from bot.kernel.reply import Field, Reply, Table
from bot.pipeline.catalog import Catalog

USAGE = "/help [command]"


class HelpArgs(Args):
    command: str | None = None


class HelpDeps(Struct, frozen=True):
    """The catalog, which knows what this person may run here."""

    catalog: Catalog


async def run(request: Request, args: HelpArgs, deps: HelpDeps) -> Reply:
    visible = deps.catalog.visible_to(request.principal, request.channel)
    if args.command is None:
        rows = tuple((spec.usage, spec.summary) for spec in visible)
        return Reply(
            title="Commands you may run here",
            table=Table(("command", "what it does"), rows),
            text="Add --help to any command for its usage.",
        )
    name = args.command.lstrip("/").lower()
    spec = next((s for s in visible if s.name == name), None)
    if spec is None:
        # Same answer whether it exists or is merely forbidden: help never advertises.
        raise UsageError(f"no command /{name} that you may run here", USAGE)
    return Reply(
        title=f"/{spec.name}: {spec.summary}",
        text=f"Usage: {spec.usage}",
        fields=(Field("risk", str(spec.risk)),),
    )


SPEC = CommandSpec(
    name="help",
    summary="List the commands you may run here",
    usage=USAGE,
    args_model=HelpArgs,
    run=run,
    needs=HelpDeps,
    positional=("command",),
    default_access=Access.ANY_PRINCIPAL,
)
