"""The audit tables (SQLAlchemy Core). Migrations create them; this module only describes them.

* ``audit_log``: one row per entry, ``seq`` is its chain position (primary key, gap-free).
* ``audit_chain_head``: exactly one row (id=1) holding the last ``seq`` and ``hash``. Every
  writer locks it for the length of its transaction, which is what makes concurrent writers
  (two bot replicas) produce one chain.
* ``audit_anchor``: at most one row (id=1): the last row retention removed, where
  verification starts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

HEAD_ID = 1


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on both databases.

    PostgreSQL returns aware datetimes; SQLite stores none of the offset and returns naive
    ones, so values are converted to UTC before they are bound and given UTC when read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: audit times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# INTEGER PRIMARY KEY is SQLite's rowid alias (the fast path); BIGINT everywhere else.
SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # The id of the key the hash is an HMAC with (bot.audit.chain); NULL for a plain
    # SHA-256 row, written before a key was configured.
    sa.Column("key_id", sa.String(16), nullable=True),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("platform", sa.Text, nullable=False),
    sa.Column("workspace", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("thread", sa.Text, nullable=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("principal", sa.Text, nullable=True),
    sa.Column("command", sa.Text, nullable=True),
    sa.Column("raw_text", sa.Text, nullable=False),
    # Canonical JSON text, not JSON/JSONB: the bytes that were hashed come back unchanged
    # (JSONB would reorder keys and normalise numbers).
    sa.Column("args", sa.Text, nullable=False),
    sa.Column("decision", sa.String(8), nullable=True),
    sa.Column("rule", sa.Text, nullable=True),
    sa.Column("approvers", sa.Text, nullable=False),  # canonical JSON list
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("duration_ms", sa.Double, nullable=True),
    sa.Column("output_digest", sa.Text, nullable=True),
    sa.Column("output_excerpt", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("replica", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_audit_log_principal_at", "principal", "at"),
    sa.Index("ix_audit_log_command_at", "command", "at"),
    sa.Index("ix_audit_log_status_at", "status", "at"),
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_request_id", "request_id"),
)

audit_chain_head = sa.Table(
    "audit_chain_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.CheckConstraint("id = 1", name="ck_audit_chain_head_single_row"),
)

audit_anchor = sa.Table(
    "audit_anchor",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("id = 1", name="ck_audit_anchor_single_row"),
)
