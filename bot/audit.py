"""The audit trail: one structured record per decision, apart from the logs.

``AuditSink`` is the interface the pipeline writes to; the durable,
tamper-evident store plugs in behind it. ``MemoryAuditSink`` keeps the most
recent records in process, for the console and tests.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class Outcome(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    DENIED = "denied"
    USAGE = "usage"
    UNKNOWN_COMMAND = "unknown-command"
    THROTTLED = "throttled"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    kind: str  # "command", or the name of a state change such as "policy"
    request_id: str
    at: datetime
    outcome: str
    platform: str = ""
    workspace: str = ""
    channel: str = ""
    thread: str | None = None
    user_id: str = ""
    principal: str | None = None
    command: str | None = None
    raw_text: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    decision: str | None = None  # "allowed" / "denied"; None when no decision was reached
    rule: str | None = None
    duration_ms: float = 0.0
    error: str | None = None
    detail: str = ""


class AuditSink(Protocol):
    async def record(self, record: AuditRecord) -> None: ...

    async def close(self) -> None: ...


class MemoryAuditSink:
    def __init__(self, capacity: int = 10_000) -> None:
        self._records: deque[AuditRecord] = deque(maxlen=capacity)

    async def record(self, record: AuditRecord) -> None:
        self._records.append(record)

    async def close(self) -> None:
        return None

    @property
    def records(self) -> list[AuditRecord]:
        return list(self._records)
