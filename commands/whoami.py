"""/whoami: the principal, roles and ids as the bot resolved them."""

from __future__ import annotations

from bot.kernel.command import Access, CommandSpec, NoArgs
from bot.kernel.reply import Field, Reply
from bot.pipeline.context import Context


async def run(ctx: Context, _: NoArgs) -> Reply:
    message = ctx.message
    return Reply(
        title=f"You are {ctx.principal.name}",
        fields=(
            Field("principal", ctx.principal.name),
            Field("roles", ", ".join(sorted(ctx.principal.roles)) or "none"),
            Field("platform id", message.qualified_user),
            Field(
                "channel", ctx.channel or f"{message.qualified_channel} (not a configured channel)"
            ),
        ),
    )


SPEC = CommandSpec(
    name="whoami",
    summary="Show who the bot thinks you are",
    usage="/whoami",
    args_model=NoArgs,
    run=run,
    default_access=Access.ANY_PRINCIPAL,
)
