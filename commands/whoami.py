"""/whoami: the principal, roles and ids as the bot resolved them."""

from __future__ import annotations

from bot.kernel.command import Access, CommandSpec, NoArgs, NoDeps, Request
from bot.kernel.reply import Field, Reply


async def run(request: Request, _: NoArgs, __: NoDeps) -> Reply:
    message = request.message
    # Platform ids only where the answer reaches the asker alone (a direct message, an
    # ephemeral reply): in a Telegram group everyone would read them.
    shown = message.private_replies
    fields = [
        Field("principal", request.principal.name),
        Field("roles", ", ".join(sorted(request.principal.roles)) or "none"),
    ]
    if shown:
        fields.append(Field("platform id", message.qualified_user))
    unnamed = f"{message.qualified_channel} " if shown else ""
    fields.append(Field("channel", request.channel or f"{unnamed}(not a configured channel)"))
    return Reply(title=f"You are {request.principal.name}", fields=tuple(fields))


SPEC = CommandSpec(
    name="whoami",
    summary="Show who the bot thinks you are",
    usage="/whoami",
    args_model=NoArgs,
    run=run,
    needs=NoDeps,
    default_access=Access.ANY_PRINCIPAL,
)
