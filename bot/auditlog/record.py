"""What one audit row says: :class:`AuditEntry` as written, :class:`StoredEntry` as stored.

An entry is normalised when it is built, so that it hashes the same before it is
written and after it is read back from SQLite or PostgreSQL: ``at`` becomes an aware
UTC datetime, ``args`` becomes the plain-JSON value it will be read back as (tuples
become lists), ``approvers`` a tuple of strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

STAGES = frozenset({"decided", "started", "finished", "approval", "event"})
DECISIONS = frozenset({"allowed", "denied"})


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, no NaN: the one byte form a value is hashed in."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit event, before it has a place in the chain."""

    request_id: str
    at: datetime  # aware; stored and hashed in UTC with microseconds
    stage: str  # one of STAGES
    kind: str  # "command", or the name of a state change such as "policy" or "retention"
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
    approvers: tuple[str, ...] = ()
    status: str = ""
    exit_code: int | None = None
    duration_ms: float | None = None
    output_digest: str | None = None
    output_excerpt: str | None = None
    error: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError(f"AuditEntry.at must be timezone-aware, got {self.at!r}")
        if self.stage not in STAGES:
            raise ValueError(
                f"AuditEntry.stage must be one of {sorted(STAGES)}, got {self.stage!r}"
            )
        if self.decision is not None and self.decision not in DECISIONS:
            raise ValueError(
                f"AuditEntry.decision must be None, 'allowed' or 'denied', got {self.decision!r}"
            )
        # Frozen: normalise through object.__setattr__, once, at construction.
        object.__setattr__(self, "at", self.at.astimezone(UTC))
        object.__setattr__(self, "args", json.loads(canonical_json(dict(self.args))))
        object.__setattr__(self, "approvers", tuple(str(a) for a in self.approvers))
        if self.duration_ms is not None:
            object.__setattr__(self, "duration_ms", float(self.duration_ms))

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types only; the inverse of :meth:`from_json_dict`."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["at"] = format_at(self.at)
        out["approvers"] = list(self.approvers)
        return out

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        values = dict(data)
        values["at"] = datetime.fromisoformat(values["at"])
        values["approvers"] = tuple(values.get("approvers", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry with its place in the chain."""

    seq: int
    prev_hash: str
    hash: str
    entry: AuditEntry


def format_at(at: datetime) -> str:
    """ISO-8601 in UTC, always with microseconds: ``2025-01-31T12:00:00.000000+00:00``."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")
