"""A Reply as Slack messages: Block Kit blocks plus a plain-text fallback.

Layout: a section with the status mark and the title, the text, the fields (ten per
section), the table and the code block as code blocks, the buttons as one actions block.
Slack's limits are kept by splitting, never by silently cutting: section text is at most
3000 characters and a message at most 50 blocks, so a long reply becomes several
messages (the buttons go with the last one).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from msgspec import Struct

from bot.kernel.render import STATUS_MARK, format_table, outcome_line, render_text
from bot.kernel.reply import Button, Field, Reply

SECTION_LIMIT = 3000  # characters of a section's text
FIELD_LIMIT = 2000  # characters of one section field
FIELDS_PER_SECTION = 10
BLOCKS_PER_MESSAGE = 50
TEXT_LIMIT = 3000  # the plain-text fallback (notifications, screen readers)
BUTTON_LABEL_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
ACTION_PREFIX = "opsbot_button_"

Block = dict[str, Any]


class SlackMessage(Struct, frozen=True):
    """What chat.postMessage, chat.update or a response_url take: ``text`` and ``blocks``."""

    text: str
    blocks: tuple[Block, ...]

    def payload(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": list(self.blocks)}


def render(reply: Reply) -> list[SlackMessage]:
    """One message, or several when the reply is longer than one Slack message holds."""
    blocks = [*_body_blocks(reply)]
    actions = _actions_block(reply.buttons)
    groups = _group(blocks, actions)
    fallback = _truncate(render_text(reply), TEXT_LIMIT)
    if len(groups) == 1:
        return [SlackMessage(fallback, tuple(groups[0]))]
    total = len(groups)
    title = _title_line(reply)
    return [
        SlackMessage(fallback if i == 0 else f"(cont. {i + 1}/{total}) {title}", tuple(group))
        for i, group in enumerate(groups)
    ]


def outcome_blocks(original: Sequence[Mapping[str, Any]], reply: Reply) -> list[Block]:
    """The pressed message after a button did its work: the same content without the
    buttons, and the outcome line ("✅ approved by bob")."""
    kept = [dict(block) for block in original if block.get("type") != "actions"]
    line = fit(escape(outcome_line(reply)), SECTION_LIMIT)
    kept.append({"type": "context", "elements": [_mrkdwn(line)]})
    return kept[-BLOCKS_PER_MESSAGE:]


def escape(text: str) -> str:
    """The three characters Slack's mrkdwn reserves (https://api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- blocks ---------------------------------------------------------------------------


def _body_blocks(reply: Reply) -> Iterator[Block]:
    yield _section(_heading(reply))
    body = reply.text if reply.title else reply.text.partition("\n")[2]
    if body.strip():
        for chunk in chunk_escaped(body, SECTION_LIMIT):
            yield _section(chunk)
    for start in range(0, len(reply.fields), FIELDS_PER_SECTION):
        yield {
            "type": "section",
            "fields": [_field(f) for f in reply.fields[start : start + FIELDS_PER_SECTION]],
        }
    if reply.table is not None:
        yield from _code_blocks(format_table(reply.table))
    if reply.code:
        yield from _code_blocks(reply.code)


def _heading(reply: Reply) -> str:
    title = reply.title or reply.text.partition("\n")[0]
    mark = STATUS_MARK[reply.status]
    footer = f"  · request {reply.request_id}" if reply.is_failure and reply.request_id else ""
    room = SECTION_LIMIT - len(mark) - len(footer) - 3
    # Bold unless the title has its own asterisks (mrkdwn has no escape for them).
    shown = f"*{fit(title, room)}*" if title and "*" not in title else fit(title, room)
    return f"{mark} {shown}{footer}"


def _title_line(reply: Reply) -> str:
    return reply.title or reply.text.partition("\n")[0] or reply.status.value


def _field(field: Field) -> Block:
    name = fit(field.name, 100)
    return _mrkdwn(f"*{name}*\n{fit(field.value, FIELD_LIMIT - len(name) - 3)}")


def _code_blocks(text: str) -> Iterator[Block]:
    # Three backticks inside would end the block early; a zero-width space keeps them apart.
    safe = text.replace("```", "`\u200b``")
    for chunk in chunk_escaped(safe, SECTION_LIMIT - 8):
        yield _section(f"```\n{chunk}\n```")


def _actions_block(buttons: Sequence[Button]) -> Block | None:
    if not buttons:
        return None
    elements: list[Block] = []
    for i, button in enumerate(buttons[:25]):  # Slack: at most 25 elements per actions block
        element: Block = {
            "type": "button",
            "action_id": f"{ACTION_PREFIX}{i}",
            "text": {
                "type": "plain_text",
                "text": _truncate(button.label, BUTTON_LABEL_LIMIT),
                "emoji": True,
            },
            "value": button.command[:BUTTON_VALUE_LIMIT],
        }
        if button.style in ("primary", "danger"):
            element["style"] = button.style
        elements.append(element)
    return {"type": "actions", "elements": elements}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text)}


def _mrkdwn(text: str) -> Block:
    # verbatim: channel names and URLs in command output are not turned into links.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _group(blocks: list[Block], actions: Block | None) -> list[list[Block]]:
    room = BLOCKS_PER_MESSAGE
    groups = [blocks[i : i + room] for i in range(0, len(blocks), room)] or [[]]
    if actions is not None:
        if len(groups[-1]) < room:
            groups[-1].append(actions)
        else:
            groups.append([actions])
    return groups


# -- text -----------------------------------------------------------------------------


def chunk_escaped(text: str, limit: int) -> list[str]:
    """Escape ``text`` and split it into pieces of at most ``limit`` characters, at line
    breaks where possible and never inside an ``&amp;``-style entity."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if current:
            chunks.append("\n".join(current))
        current.clear()
        size = 0

    for line in text.split("\n"):
        pieces = _cut_line(escape(line), limit)
        for piece in pieces:
            extra = len(piece) + (1 if current else 0)
            if size + extra > limit:
                flush()
                extra = len(piece)
            current.append(piece)
            size += extra
    flush()
    return chunks or [""]


def _cut_line(line: str, limit: int) -> list[str]:
    pieces: list[str] = []
    while len(line) > limit:
        cut = limit
        amp = line.rfind("&", max(0, cut - 5), cut)
        if amp != -1 and ";" not in line[amp:cut]:
            cut = amp  # an entity would straddle the cut: cut before it
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return pieces


def fit(text: str, limit: int) -> str:
    """``text`` escaped, shortened with an ellipsis so the escaped form has at most
    ``limit`` characters (never cut inside an entity)."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    keep = limit - 1
    while keep > 0 and len(escape(text[:keep])) > limit - 1:
        keep -= max(1, len(escape(text[:keep])) - (limit - 1))
    return escape(text[: max(keep, 0)]) + "…"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = [
    "ACTION_PREFIX",
    "SlackMessage",
    "chunk_escaped",
    "escape",
    "fit",
    "outcome_blocks",
    "render",
]
