"""Plain-text rendering of a Reply (console, logs, and platforms without rich text),
and splitting long output into messages without ever cutting it silently."""

from __future__ import annotations

from bot.kernel.reply import Reply, Status, Table

STATUS_MARK = {
    Status.OK: "✅",
    Status.INFO: "ℹ️",
    Status.WARNING: "⚠️",
    Status.ERROR: "❌",
    Status.DENIED: "⛔",
    Status.USAGE: "❓",
}


def outcome_line(reply: Reply) -> str:
    """The line a message shows in place of its buttons once one was pressed: the
    command's own ("✅ approved by bob"), else its title with its mark. The same words
    on every platform; no platform id, only the names the config gives people."""
    if reply.outcome:
        return reply.outcome
    return f"{STATUS_MARK[reply.status]} {reply.title or reply.text.partition(chr(10))[0]}"


def render_text(reply: Reply) -> str:
    lines: list[str] = []
    title = reply.title or reply.text.partition("\n")[0]
    footer = f"  · request {reply.request_id}" if reply.is_failure and reply.request_id else ""
    lines.append(f"{STATUS_MARK[reply.status]} {title}{footer}")
    body = reply.text if reply.title else reply.text.partition("\n")[2]
    if body:
        lines.append(body)
    if reply.fields:
        width = max(len(f.name) for f in reply.fields)
        lines.extend(f"  {f.name.ljust(width)}  {f.value}" for f in reply.fields)
    if reply.table is not None:
        lines.append(format_table(reply.table))
    if reply.code:
        lines.append(reply.code)
    return "\n".join(lines)


def format_table(table: Table) -> str:
    """Monospace columns; cells with newlines are flattened so rows stay rows."""
    rows = [tuple(cell.replace("\n", " ") for cell in row) for row in table.rows]
    widths = [len(c) for c in table.columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip()

    return "\n".join([line(table.columns), *(line(row) for row in rows)])


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters, at line breaks when
    possible; each chunk after the first is marked as a continuation."""
    if limit < 20:
        raise ValueError("limit too small to split sensibly")
    if len(text) <= limit:
        return [text]
    chunks: list[str] = []
    current = ""
    budget = limit - 12  # room for the "(cont. N/M)" marks added below
    for line in text.split("\n"):
        while len(line) > budget:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:budget])
            line = line[budget:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > budget:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current:
        chunks.append(current)
    total = len(chunks)
    return [
        chunk if i == 0 else f"(cont. {i + 1}/{total})\n{chunk}" for i, chunk in enumerate(chunks)
    ]
