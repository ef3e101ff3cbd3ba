"""The one sink for failures: every unexpected exception, wherever it happens (a chat
command, a scheduled job, an adapter answering, an HTTP endpoint), ends in
:func:`report_failure`, which logs it once with its traceback under a request id and
returns that id, so the person who sees the failure (a reply, a post, an HTTP answer) can
quote it and the operator can find the detail.

Request ids are 12 hex digits: the time in seconds (its low 16 bits), then 32 random bits.
Unique, not secret: a seeded PRNG is 10x cheaper than os.urandom per message. The time
first keeps the audit log's request_id index growing at one end, as its rows do, instead
of at random places all over it: random ids cost the audit writer about a tenth more per
command at 90,000 rows, and more as the table outgrows the cache (bench/audit.py). Two
ids of the same second clash with odds of 1 in 4 billion per pair; ids of different
seconds differ in the time (within 18 hours) or the random bits.
"""

from __future__ import annotations

import random
import time
from typing import Any

import structlog

from bot.kernel.logcontext import REQUEST_CONTEXT
from bot.kernel.text import storable

_ids = random.Random()  # noqa: S311  (ids, not secrets; seeded from os.urandom at import)
_log = structlog.get_logger("opsbot.failures")


def new_request_id() -> str:
    """A fresh request id (see the module docstring for its shape)."""
    return f"{int(time.time()) & 0xFFFF:04x}{_ids.getrandbits(32):08x}"


def report_failure(where: str, exc: BaseException, **context: Any) -> str:
    """Log ``exc`` (with its traceback) as a failure of ``where`` ("scheduler.job",
    "slack.answer", "http./alerts"), under the current request's id or a new one, and
    return that id for whoever tells a person about it."""
    current = REQUEST_CONTEXT.get()
    request_id = context.pop("request_id", None) or (current or {}).get("request_id")
    if not request_id:
        request_id = new_request_id()
    _log.error(
        "failure",
        where=where,
        request_id=request_id,
        error=storable(f"{type(exc).__name__}: {exc}"),
        exc_info=exc,
        **context,
    )
    return str(request_id)


def failure_line(what: str, request_id: str) -> str:
    """The one line a person is shown for a failure inside the bot."""
    return f"{what} failed inside opsbot; the operator's log has the details (request {request_id})"
