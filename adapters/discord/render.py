"""A Reply as Discord messages: embeds and buttons, within Discord's limits.

One embed per reply in the common case: the title carries the status mark, the colour the
status, the description the text, then the table and the code in code blocks, then the
fields. Discord's limits (title 256, description 4096, 25 fields of 256/1024, 10 embeds
and 6000 characters per message) are respected by splitting over more embeds, then more
messages; nothing is cut silently (see ``bot.kernel.render.split_message``).

Buttons carry their command in the custom id (``opsbot:/approve k7m2qx``). The adapter
handles every press by that prefix, so a press still works after a restart without
re-registering views; the View here is only the layout of the buttons.
"""

from __future__ import annotations

from collections.abc import Sequence

import discord
from msgspec import Struct

from bot.kernel.render import STATUS_MARK, format_table, outcome_line, split_message
from bot.kernel.reply import Button, Reply, Status

TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELDS_PER_EMBED = 25
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048
EMBEDS_PER_MESSAGE = 10
MESSAGE_TOTAL_LIMIT = 6000
CUSTOM_ID_LIMIT = 100
BUTTON_LABEL_LIMIT = 80
BUTTONS_PER_MESSAGE = 25
CUSTOM_ID_PREFIX = "opsbot:"

COLOURS = {
    Status.OK: discord.Colour(0x2ECC71),
    Status.INFO: discord.Colour(0x5865F2),
    Status.WARNING: discord.Colour(0xF1C40F),
    Status.ERROR: discord.Colour(0xE74C3C),
    Status.DENIED: discord.Colour(0x992D22),
    Status.USAGE: discord.Colour(0x95A5A6),
}
_BUTTON_STYLES = {
    "primary": discord.ButtonStyle.primary,
    "danger": discord.ButtonStyle.danger,
}
_FENCE = "```"
_FOOTER_RESERVE = 64  # "request 5d0c2f0e41a7" and a margin, kept free in every message


class Outgoing(Struct, frozen=True):
    """One Discord message: its embeds and, on the last message of a reply, its buttons."""

    embeds: list[discord.Embed]
    view: discord.ui.View | None = None


def render(reply: Reply) -> list[Outgoing]:
    """The messages that show ``reply``, in order (one in the common case)."""
    colour = COLOURS[reply.status]
    packer = _Packer(colour)
    headline = reply.title or reply.text.partition("\n")[0]
    title = f"{STATUS_MARK[reply.status]} {_escape(headline)}"
    packer.start(_clip(title, TITLE_LIMIT))
    for piece in _descriptions(reply, title if len(title) > TITLE_LIMIT else ""):
        packer.add_description(piece)
    for name, value in _fields(reply):
        packer.add_field(name, value)
    messages = packer.finish()
    if reply.is_failure and reply.request_id:
        messages[-1][-1].set_footer(text=f"request {reply.request_id}")
    outgoing = [Outgoing(embeds) for embeds in messages]
    view = button_view(reply.buttons)
    if view is not None:
        outgoing[-1] = Outgoing(outgoing[-1].embeds, view)
    return outgoing


def button_view(buttons: Sequence[Button]) -> discord.ui.View | None:
    """The buttons' layout; ``None`` without buttons. A button whose command does not fit
    a custom id is left out (its command is in the reply's text, which says what to type)."""
    usable = [b for b in buttons if len(custom_id(b.command)) <= CUSTOM_ID_LIMIT]
    if not usable:
        return None
    view = discord.ui.View(timeout=None)
    for button in usable[:BUTTONS_PER_MESSAGE]:
        view.add_item(
            discord.ui.Button(
                label=_clip(button.label, BUTTON_LABEL_LIMIT),
                style=_BUTTON_STYLES.get(button.style, discord.ButtonStyle.secondary),
                custom_id=custom_id(button.command),
            )
        )
    # A stopped view is sent as components but not kept in discord.py's view store:
    # presses are handled by custom id prefix, which also works after a restart.
    view.stop()
    return view


def custom_id(command: str) -> str:
    return f"{CUSTOM_ID_PREFIX}{command}"


def command_of(custom: str) -> str | None:
    """The command a pressed button carries; ``None`` if the button is not ours."""
    if not custom.startswith(CUSTOM_ID_PREFIX):
        return None
    return custom[len(CUSTOM_ID_PREFIX) :] or None


def with_outcome(embeds: Sequence[discord.Embed], reply: Reply) -> list[discord.Embed]:
    """A pressed message's embeds plus the outcome line ("✅ approved by bob"), within
    the message limits (the reply itself follows as its own message)."""
    kept = [discord.Embed.from_dict(e.to_dict()) for e in embeds][: EMBEDS_PER_MESSAGE - 1]
    line = _escape(outcome_line(reply))
    room = min(DESCRIPTION_LIMIT, MESSAGE_TOTAL_LIMIT - sum(len(e) for e in kept))
    while room < 40 and kept:  # no room left: the oldest details give way to the outcome
        kept.pop()
        room = min(DESCRIPTION_LIMIT, MESSAGE_TOTAL_LIMIT - sum(len(e) for e in kept))
    kept.append(discord.Embed(description=_clip(line, room), colour=COLOURS[reply.status]))
    return kept


def _descriptions(reply: Reply, long_title: str) -> list[str]:
    """Text, then table, then code; each piece at most DESCRIPTION_LIMIT long, joined
    into as few descriptions as fit. A title too long for the embed's title is repeated
    whole at the top."""
    pieces: list[str] = []
    body = reply.text if reply.title else reply.text.partition("\n")[2]
    body = _escape(body)
    if long_title:
        body = f"{long_title}\n{body}" if body else long_title
    if body:
        pieces.extend(split_message(body, DESCRIPTION_LIMIT))
    if reply.table is not None:
        pieces.extend(_code_blocks(format_table(reply.table)))
    if reply.code:
        pieces.extend(_code_blocks(reply.code))
    joined: list[str] = []
    for piece in pieces:
        if joined and len(joined[-1]) + 1 + len(piece) <= DESCRIPTION_LIMIT:
            joined[-1] = f"{joined[-1]}\n{piece}"
        else:
            joined.append(piece)
    return joined


def _code_blocks(text: str) -> list[str]:
    # A fence inside the text would end the block early; a zero-width space defuses it.
    safe = text.replace(_FENCE, "`\u200b`\u200b`")
    budget = DESCRIPTION_LIMIT - 2 * len(_FENCE) - 2
    return [f"{_FENCE}\n{chunk}\n{_FENCE}" for chunk in split_message(safe, budget)]


def _fields(reply: Reply) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for field in reply.fields:
        name = _clip(_escape(field.name) or "\u200b", FIELD_NAME_LIMIT)
        value = _escape(field.value) or "-"
        chunks = split_message(value, FIELD_VALUE_LIMIT)
        fields.append((name, chunks[0]))
        cont = _clip(f"{name} (cont.)", FIELD_NAME_LIMIT)
        fields.extend((cont, chunk) for chunk in chunks[1:])
    return fields


class _Packer:
    """Fills embeds, and embeds into messages, never over a limit."""

    def __init__(self, colour: discord.Colour) -> None:
        self._colour = colour
        self._messages: list[list[discord.Embed]] = [[]]
        self._total = 0  # characters in the current message's embeds

    def start(self, title: str) -> None:
        self._new_embed(len(title)).title = title
        self._total += len(title)

    def add_description(self, text: str) -> None:
        embed = self._messages[-1][-1]
        if embed.description or embed.fields or not self._fits(len(text)):
            embed = self._new_embed(len(text))
        embed.description = text
        self._total += len(text)

    def add_field(self, name: str, value: str) -> None:
        cost = len(name) + len(value)
        embed = self._messages[-1][-1]
        if len(embed.fields) >= FIELDS_PER_EMBED or not self._fits(cost):
            embed = self._new_embed(cost)
        embed.add_field(name=name, value=value, inline=len(value) <= 40 and "\n" not in value)
        self._total += cost

    def finish(self) -> list[list[discord.Embed]]:
        return self._messages

    def _fits(self, cost: int) -> bool:
        return self._total + cost <= MESSAGE_TOTAL_LIMIT - _FOOTER_RESERVE

    def _new_embed(self, cost: int) -> discord.Embed:
        current = self._messages[-1]
        if current and (len(current) >= EMBEDS_PER_MESSAGE or not self._fits(cost)):
            self._messages.append([])
            self._total = 0
        embed = discord.Embed(colour=self._colour)
        self._messages[-1].append(embed)
        return embed


def _escape(text: str) -> str:
    return discord.utils.escape_markdown(text)


def _clip(text: str, limit: int) -> str:
    """Only where the whole text is shown elsewhere too (a long title is repeated in the
    description; labels and the outcome line repeat what the reply says)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
