"""Structured logging: one JSON (or console) line per event, request context bound.

The pipeline sets :data:`REQUEST_CONTEXT` (``request_id``, ``platform``, ``user``, then
``command`` and ``principal``) once per message, so every line a command causes carries
them. One context variable holding a dict costs a fraction of binding five of
structlog's, which showed per command (bench/audit.py); other code binds structlog's
contextvars as usual, and both are merged.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from bot.kernel.logcontext import merge_request_context
from bot.kernel.text import storable

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


class SecretMasker:
    """Replaces known secret values anywhere in an event with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        if not self._secrets:
            return event
        return {key: self._mask(value) for key, value in event.items()}

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, "***")
        return value


def render_json(_: WrappedLogger, __: str, event: EventDict) -> str:
    """One JSON line, ASCII only (a stream may not take UTF-8). orjson writes it at a third
    of json's cost, which showed on every command (structlog advises it for speed); a line
    it cannot write (a lone surrogate, an int past 64 bits) or that is not ASCII is written
    by json instead, escaped, in the same compact form."""
    try:
        line = orjson.dumps(event, default=repr).decode()
    except TypeError:
        line = ""
    if line and line.isascii():
        return line
    return json.dumps(event, default=repr, separators=(",", ":"))


def _writable(_: WrappedLogger, __: str, line: Any) -> Any:
    """The rendered line with lone surrogates and NUL escaped: any str may reach a log
    field (a command name typed in chat), and a stream refuses to write a surrogate."""
    return storable(line) if isinstance(line, str) else line


def configure_logging(
    level: str, fmt: str, stream: TextIO | None = None, secrets: Iterable[str] = ()
) -> None:
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = render_json if as_json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            merge_request_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            SecretMasker(secrets),
            renderer,
            _writable,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries (discord.py, slack-sdk, python-telegram-bot, uvicorn, APScheduler) log
    # through the standard library: their lines go out in the same format, JSON included,
    # with the logger's name, masked the same way; at warning or above unless debugging.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            merge_request_context,
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            SecretMasker(secrets),
            renderer,
            _writable,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(_LEVELS[level], logging.WARNING))
