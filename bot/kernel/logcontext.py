"""The current request's log fields, one context variable every layer's log lines read.

The pipeline sets :data:`REQUEST_CONTEXT` (``request_id``, ``platform``, ``user``, then
``command`` and ``principal``) once per message; the logging set-up (``bot.app.logs``)
merges it into every event. One variable holding a dict costs a fraction of binding five
of structlog's, which showed per command (bench/audit.py).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from structlog.typing import EventDict, WrappedLogger

# The current request's log fields; the dict belongs to that request (set, then filled in).
REQUEST_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar(
    "opsbot_request_context", default=None
)


def merge_request_context(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    fields = REQUEST_CONTEXT.get()
    if fields:
        return {**fields, **event}
    return event
