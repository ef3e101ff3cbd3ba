"""A Reply as Telegram HTML (parse_mode HTML) and an inline keyboard; no I/O.

Every piece of text is ``html.escape``d, so ``<``, ``&`` and ``_`` in output never break a
message; tables and code go in ``<pre>``. Telegram counts a message's length after the
HTML is parsed, in UTF-16 code units, up to 4096: longer replies are split between blocks
(or between lines of a long block, each piece keeping its formatting), and every message
after the first is marked ``(cont. N/M)``, so nothing is ever cut silently.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.kernel.render import STATUS_MARK, format_table, outcome_line, render_text
from bot.kernel.reply import Button, Reply

TEXT_LIMIT = 4096  # visible characters (UTF-16 units) of one message
ALERT_LIMIT = 200  # answerCallbackQuery text
CALLBACK_DATA_LIMIT = 64  # bytes of an inline button's callback_data

# (raw text, tag or None); a block is a line (or several) rendered together.
Span = tuple[str, str | None]
Block = tuple[Span, ...]

_CONT_ROOM = 24  # "(cont. 12/34)\n" with room to spare
_MIN_PIECE = 200  # a split block starts a new message rather than leave a sliver


def utf16_len(text: str) -> int:
    """Telegram's measure of text length."""
    return len(text.encode("utf-16-le")) // 2


def cut_utf16(text: str, units: int) -> str:
    """The longest prefix of ``text`` that is at most ``units`` UTF-16 units long."""
    return text.encode("utf-16-le")[: units * 2].decode("utf-16-le", errors="ignore")


def render_html(reply: Reply, limit: int = TEXT_LIMIT) -> list[str]:
    """The reply as one or more HTML messages, each within ``limit`` visible characters."""
    return _pack(_blocks(reply), limit)


def keyboard(
    buttons: Sequence[Button], callback_data: Callable[[str], str]
) -> InlineKeyboardMarkup | None:
    """One row of inline buttons; ``callback_data`` turns a button's command into at most
    64 bytes (the command itself when it fits, else a key the adapter remembers)."""
    if not buttons:
        return None
    row = [InlineKeyboardButton(b.label, callback_data=callback_data(b.command)) for b in buttons]
    return InlineKeyboardMarkup([row])


def alert_text(reply: Reply) -> str:
    """Plain text for answerCallbackQuery(show_alert=True): at most 200 characters."""
    text = render_text(reply)
    if utf16_len(text) <= ALERT_LIMIT:
        return text
    return cut_utf16(text, ALERT_LIMIT - 1) + "…"


def outcome(reply: Reply) -> tuple[str, str]:
    """The line appended to a message whose button was pressed, as (HTML, visible text)."""
    line = outcome_line(reply)
    return f"<i>{_esc(line)}</i>", line


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _blocks(reply: Reply) -> list[Block]:
    title = reply.title or reply.text.partition("\n")[0]
    head: list[Span] = [(f"{STATUS_MARK[reply.status]} ", None)]
    if title:
        head.append((title, "b"))
    if reply.is_failure and reply.request_id:
        head.extend([("  · request ", None), (reply.request_id, "code")])
    blocks: list[Block] = [tuple(head)]
    body = reply.text if reply.title else reply.text.partition("\n")[2]
    if body:
        blocks.append(((body, None),))
    blocks.extend(((f"{f.name}:", "b"), (f" {f.value}", None)) for f in reply.fields)
    if reply.table is not None:
        blocks.append(((format_table(reply.table), "pre"),))
    if reply.code:
        blocks.append(((reply.code, "pre"),))
    return blocks


def _render(block: Block) -> str:
    return "".join(f"<{tag}>{_esc(text)}</{tag}>" if tag else _esc(text) for text, tag in block)


def _length(block: Block) -> int:
    return sum(utf16_len(text) for text, _ in block)


def _fit(block: Block, room: int, budget: int) -> list[Block]:
    """``block`` as pieces: the first at most ``room`` units (what is left in the current
    message), the others at most ``budget``; split at line breaks where possible."""
    if _length(block) <= room:
        return [block]
    if len(block) == 1:
        text, tag = block[0]
    else:  # a huge title or field: keep the words, drop the bold
        text, tag = "".join(t for t, _ in block), None
    pieces: list[Block] = []
    current = ""

    def limit() -> int:
        return room if not pieces else budget

    for line in text.split("\n"):
        while utf16_len(line) > limit() - (utf16_len(current) + 1 if current else 0):
            if current:
                pieces.append(((current, tag),))
                current = ""
                continue
            head = cut_utf16(line, limit())
            pieces.append(((head, tag),))
            line = line[len(head) :]
        current = f"{current}\n{line}" if current else line
    if current:
        pieces.append(((current, tag),))
    return pieces


def _pack(blocks: list[Block], limit: int) -> list[str]:
    if sum(_length(b) for b in blocks) + len(blocks) - 1 <= limit:
        return ["\n".join(_render(b) for b in blocks)]
    budget = limit - _CONT_ROOM
    messages: list[list[Block]] = [[]]
    used = 0
    for block in blocks:
        room = budget - used - (1 if messages[-1] else 0)  # the joining newline
        if room < min(_length(block), _MIN_PIECE):
            room = budget  # starts the next message
        for piece in _fit(block, room, budget):
            size = _length(piece) + (1 if messages[-1] else 0)
            if messages[-1] and used + size > budget:
                messages.append([])
                size = _length(piece)
                used = 0
            messages[-1].append(piece)
            used += size
    texts = ["\n".join(_render(b) for b in message) for message in messages]
    total = len(texts)
    return [t if i == 0 else f"<i>(cont. {i + 1}/{total})</i>\n{t}" for i, t in enumerate(texts)]
