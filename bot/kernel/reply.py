"""What the core hands an adapter back: a platform-neutral reply each adapter renders."""

from __future__ import annotations

import enum

import msgspec
from msgspec import Struct


class Status(enum.StrEnum):
    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    DENIED = "denied"
    USAGE = "usage"


class Field(Struct, frozen=True):
    name: str
    value: str


class Table(Struct, frozen=True):
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


class Button(Struct, frozen=True):
    """A button an adapter renders natively (Slack, Telegram, Discord). Pressing it sends
    ``command`` on behalf of the presser, through the whole pipeline (policy, approval
    rules, audit), exactly as if they had typed it; the console shows the text instead."""

    label: str
    command: str  # e.g. "/approve k7m2qx"
    style: str = "default"  # "primary", "danger" or "default"


class Reply(Struct, frozen=True):
    """A reply: a title line with a status, then optional text, fields, table, code block.

    ``request_id`` is filled in by the pipeline so every answer can be traced to
    its log lines and audit record.
    """

    title: str = ""
    status: Status = Status.INFO
    text: str = ""
    fields: tuple[Field, ...] = ()
    table: Table | None = None
    code: str | None = None
    buttons: tuple[Button, ...] = ()
    request_id: str = ""
    # When a button's press got this reply: the one line its message shows from then on,
    # in place of the buttons ("✅ approved by bob"), the same on every platform.
    outcome: str = ""
    # Only the person who asked should see it (an "already acknowledged" after a press),
    # where the platform can show a reply to one person; denials and usage errors are.
    private: bool = False

    def with_request_id(self, request_id: str) -> Reply:
        return msgspec.structs.replace(self, request_id=request_id)

    @property
    def is_failure(self) -> bool:
        return self.status in _FAILURES

    @property
    def is_private(self) -> bool:
        """For the asker alone, where the platform allows it: a refusal (denied, usage)
        or a reply marked private. Other failures (a job that failed) are for everyone."""
        return self.private or self.status in _PRIVATE


_FAILURES = frozenset({Status.WARNING, Status.ERROR, Status.DENIED, Status.USAGE})
_PRIVATE = frozenset({Status.DENIED, Status.USAGE})
