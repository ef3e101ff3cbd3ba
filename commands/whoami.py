"""/whoami: the principal, roles and ids as the bot resolved them."""

from __future__ import annotations

from bot.kernel.command import Access, CommandSpec, NoArgs, NoDeps, Request
from bot.kernel.reply import Field, Reply


async def run(request: Request, _: NoArgs, __: NoDeps) -> Reply:
    message = request.message
    return Reply(
        title=f"You are {request.principal.name}",
        fields=(
            Field("principal", request.principal.name),
            Field("roles", ", ".join(sorted(request.principal.roles)) or "none"),
            Field("platform id", message.qualified_user),
            Field(
                "channel",
                request.channel or f"{message.qualified_channel} (not a configured channel)",
            ),
        ),
    )


SPEC = CommandSpec(
    name="whoami",
    summary="Show who the bot thinks you are",
    usage="/whoami",
    args_model=NoArgs,
    run=run,
    needs=NoDeps,
    default_access=Access.ANY_PRINCIPAL,
)
