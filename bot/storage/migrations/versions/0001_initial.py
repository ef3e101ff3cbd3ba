"""The audit log, its chain head and the retention anchor.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out in full rather than from ``schema.metadata``: a migration must keep creating
the same tables after the models move on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("at", _TS, nullable=False),
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
        sa.Column("args", sa.Text, nullable=False),
        sa.Column("decision", sa.String(8), nullable=True),
        sa.Column("rule", sa.Text, nullable=True),
        sa.Column("approvers", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("duration_ms", sa.Double, nullable=True),
        sa.Column("output_digest", sa.Text, nullable=True),
        sa.Column("output_excerpt", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_log_principal_at", "audit_log", ["principal", "at"])
    op.create_index("ix_audit_log_command_at", "audit_log", ["command", "at"])
    op.create_index("ix_audit_log_status_at", "audit_log", ["status", "at"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_request_id", "audit_log", ["request_id"])

    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_chain_head_single_row"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": "0" * 64}])

    op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("applied_at", _TS, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_anchor_single_row"),
    )


def downgrade() -> None:
    op.drop_table("audit_anchor")
    op.drop_table("audit_chain_head")
    op.drop_index("ix_audit_log_request_id", "audit_log")
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_index("ix_audit_log_status_at", "audit_log")
    op.drop_index("ix_audit_log_command_at", "audit_log")
    op.drop_index("ix_audit_log_principal_at", "audit_log")
    op.drop_table("audit_log")
