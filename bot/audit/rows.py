"""Entries as the rows of ``audit_log``: chained (seq, previous hash, hash, key id) and
turned into the INSERT's parameters.

Works on an entry's field values (:meth:`AuditEntry.values`), not the entry object, and
imports no SQLAlchemy: the SQLite writer process (``bot.audit.sqlite_writer``) uses it,
and it must start fast and stay small.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from bot.audit.chain import ChainKey, hash_of, key_event
from bot.audit.record import (
    AT_INDEX,
    FIELD_NAMES,
    canonical_json,
    canonical_of,
    format_at,
)

# The audit_log columns, in the order rows are built: the chain's four, then the entry's
# fields in FIELD_NAMES order (tests/audit/test_auditlog_store.py checks it against the schema).
COLUMNS = ("seq", "prev_hash", "hash", "key_id", *FIELD_NAMES)
_CHAIN_COLUMNS = 4
_ARGS = FIELD_NAMES.index("args")
_APPROVERS = FIELD_NAMES.index("approvers")
_REPLICA = FIELD_NAMES.index("replica")


@functools.cache
def insert_sql(paramstyle: str) -> str:
    if paramstyle == "qmark":
        marks = ", ".join("?" for _ in COLUMNS)
    elif paramstyle == "numeric_dollar":
        marks = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
    else:
        raise ValueError(f"unsupported DB-API paramstyle {paramstyle!r}")
    # Column names come from our own schema, values are bound: nothing user-supplied here.
    return f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({marks})"  # noqa: S608


def row(
    seq: int,
    prev_hash: str,
    digest: str,
    values: Sequence[Any],
    *,
    sqlite: bool,
    at_text: str | None = None,
    key_id: str | None = None,
) -> tuple[Any, ...]:
    """One row in :data:`COLUMNS` order, as the driver takes it. ``at_text``:
    ``format_at(at)``, when the caller has it already."""
    out = [seq, prev_hash, digest, key_id, *values]
    # SQLite keeps SQLAlchemy's DATETIME text form (naive UTC, a space, microseconds):
    # format_at's text without the "T" and the offset. asyncpg takes the datetime.
    if sqlite:
        iso = format_at(values[AT_INDEX]) if at_text is None else at_text
        out[_CHAIN_COLUMNS + AT_INDEX] = f"{iso[:10]} {iso[11:26]}"
    args, approvers = values[_ARGS], values[_APPROVERS]
    out[_CHAIN_COLUMNS + _ARGS] = canonical_json(args) if args else "{}"
    out[_CHAIN_COLUMNS + _APPROVERS] = canonical_json(list(approvers)) if approvers else "[]"
    return tuple(out)


def linked_rows(
    seq: int,
    prev: str,
    entries: Sequence[Sequence[Any]],
    *,
    sqlite: bool,
    canonicals: Sequence[str] | None = None,
    key: ChainKey | None = None,
    head_key_id: str | None = None,
) -> tuple[list[tuple[Any, ...]], int, str]:
    """Entries (field values) chained after (``seq``, ``prev``): their rows, and the new
    head. ``canonicals``: their canonical forms, when the caller has them already.

    ``key``: the key to write with; ``head_key_id``: the key of the row at the head. When
    they differ, an ``audit_key`` event row goes first, naming the new key.
    """
    if key is not None and key.key_id != head_key_id and entries:
        first = entries[0]
        event = key_event(key, head_key_id, first[AT_INDEX], first[_REPLICA])
        entries = [event.values(), *entries]
        if canonicals is not None:
            canonicals = [event.canonical(), *canonicals]
    key_id = None if key is None else key.key_id
    rows = []
    for i, values in enumerate(entries):
        seq += 1
        at_text = format_at(values[AT_INDEX])
        canonical = canonicals[i] if canonicals is not None else canonical_of(values, at_text)
        digest = hash_of(prev, seq, canonical, key)
        rows.append(row(seq, prev, digest, values, sqlite=sqlite, at_text=at_text, key_id=key_id))
        prev = digest
    return rows, seq, prev
