"""``opsbot outbox [--dead]``: the outbound queue (or its dead letters) from a shell.

Returns the process exit code; errors go up as :class:`~bot.kernel.errors.OpsbotError`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bot.app.config.models import Config
from bot.app.storage import database_url
from bot.audit import check_schema
from bot.delivery.store import OutboxRow, OutboxStore, RowState
from bot.kernel.durations import format_duration
from bot.storage.database import StateDatabase


async def outbox_list(config: Config, *, dead: bool) -> int:
    url = database_url(config)
    await check_schema(url)
    database = StateDatabase(url)
    await database.start()
    try:
        rows = await OutboxStore(database).rows(RowState.DEAD if dead else RowState.QUEUED)
    finally:
        await database.close()
    what = "dead letters" if dead else "queued messages"
    if not rows:
        print(f"no {what}")
        return 0
    print(f"{len(rows)} {what}:")
    now = datetime.now(UTC)
    for row in rows:
        print(format_row(row, now))
    return 0


def format_row(row: OutboxRow, now: datetime) -> str:
    destination = f"{row.platform}:{row.workspace + '/' if row.workspace else ''}{row.channel}"
    if row.thread:
        destination += f"#{row.thread}"
    age = format_duration(max(now - row.created_at, now - now))
    line = f"{row.id:>6}  {destination}  age {age}  attempts {row.attempts}"
    if row.state is RowState.QUEUED:
        owner = row.owner or "none"
        if row.owner is not None and (row.lease_until is None or row.lease_until < now):
            owner += " (lease ended)"
        line += f"  owner {owner}"
    line += f"  {row.reply.title!r}"
    if row.last_error:
        line += f"  last error: {row.last_error}"
    return line
