"""What one audit row says: :class:`AuditEntry` as written, :class:`StoredEntry` as stored.

An entry is normalised when it is built, so that it hashes the same before it is
written and after it is read back from SQLite or PostgreSQL: ``at`` becomes an aware
UTC datetime, ``args`` becomes the plain-JSON value it will be read back as (tuples
become lists), ``approvers`` a tuple of strings.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from itertools import compress
from typing import Any

import orjson
from msgspec import Struct

STAGES = frozenset({"decided", "started", "finished", "approval", "event"})
DECISIONS = frozenset({"allowed", "denied"})


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the one byte form a value is hashed in."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")


# Not frozen: a frozen dataclass's __init__ sets each of these fields through
# object.__setattr__, five times the cost of a plain one, and the pipeline builds three
# entries per command (bench/audit.py). Treat entries as immutable all the same: the
# canonical form is cached, and nothing in opsbot assigns to an entry's fields. A dataclass
# (not a msgspec Struct): the cache is a field outside __init__, equality and repr.
@dataclass(slots=True)
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
    replica: str = ""  # the process that wrote it (bot.replica_id)
    # The canonical JSON of the fields above, made once: hashed, spooled and exported.
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

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
        # Frozen: normalise through object.__setattr__, once, at construction. The common
        # case (UTC time, no args, no approvers) skips the work: this runs per audit row.
        if self.at.tzinfo is not UTC:
            object.__setattr__(self, "at", self.at.astimezone(UTC))
        if self.args:
            object.__setattr__(self, "args", orjson.loads(canonical_json(dict(self.args))))
        elif type(self.args) is not dict:
            object.__setattr__(self, "args", {})
        if self.approvers:
            object.__setattr__(self, "approvers", tuple(str(a) for a in self.approvers))
        if self.duration_ms is not None and type(self.duration_ms) is not float:
            object.__setattr__(self, "duration_ms", float(self.duration_ms))

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types only; the inverse of :meth:`from_json_dict`."""
        out: dict[str, Any] = {name: getattr(self, name) for name in FIELD_NAMES}
        out["at"] = format_at(self.at)
        out["approvers"] = list(self.approvers)
        return out

    def canonical(self) -> str:
        """The hashed form (:func:`canonical_of` its field values), computed once."""
        if self._json is None:
            object.__setattr__(self, "_json", canonical_of(_all_values(self)))
        assert self._json is not None
        return self._json

    def values(self) -> tuple[Any, ...]:
        """The field values in :data:`FIELD_NAMES` order: what the SQLite writer process
        is sent (a tuple pickles far faster than the dataclass)."""
        return _all_values(self)

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        values = dict(data)
        values["at"] = datetime.fromisoformat(values["at"])
        values["approvers"] = tuple(values.get("approvers", ()))
        return cls(**values)


_NUMBERS = frozenset({int, float})
FIELD_NAMES = tuple(f.name for f in fields(AuditEntry) if not f.name.startswith("_"))
_all_values = operator.attrgetter(*FIELD_NAMES)  # one C call for every field
AT_INDEX = FIELD_NAMES.index("at")
# Fields that may hold a number, where 0 is a value, not "empty".
_NUMBER_INDEXES = tuple(
    i for i, f in enumerate(fields(AuditEntry)) if f.type in ("int | None", "float | None")
)
assert [FIELD_NAMES[i] for i in _NUMBER_INDEXES] == ["exit_code", "duration_ms"]


def canonical_of(values: Sequence[Any], at_text: str | None = None) -> str:
    """The hashed form of an entry given as its field values (:data:`FIELD_NAMES` order):
    :func:`canonical_json` of the fields that are not empty. ``at_text``:
    ``format_at(at)``, when the caller has it already.

    Empty fields (None, "", {}, ()) are left out, so a field added in a later version
    does not change the hash of rows written before it existed.
    """
    # Truthiness is the fast test for None/""/{}/(); the numbers 0 and 0.0 are kept.
    kept = dict(compress(zip(FIELD_NAMES, values, strict=True), map(bool, values)))
    for index in _NUMBER_INDEXES:
        value = values[index]
        if value is not None and not value and value.__class__ in _NUMBERS:
            kept[FIELD_NAMES[index]] = value
    kept["at"] = format_at(values[AT_INDEX]) if at_text is None else at_text
    return canonical_json(kept)


class StoredEntry(Struct, frozen=True):
    """An entry with its place in the chain."""

    seq: int
    prev_hash: str
    hash: str
    entry: AuditEntry
    key_id: str | None = None  # the key its hash is an HMAC with; None: plain SHA-256


def format_at(at: datetime) -> str:
    """ISO-8601 in UTC, always with microseconds: ``2025-01-31T12:00:00.000000+00:00``."""
    if at.tzinfo is not UTC:  # entries are normalised to UTC already: skip the conversion
        at = at.astimezone(UTC)
    return at.isoformat(timespec="microseconds")
