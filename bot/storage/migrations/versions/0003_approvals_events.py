"""Approval requests (two-person rule) and delivered platform events (dedup).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("args", sa.Text, nullable=False),  # canonical JSON of the validated values
        sa.Column("argv", sa.Text, nullable=False),  # canonical JSON: what was shown
        sa.Column("requester", sa.Text, nullable=False),
        sa.Column("requester_id", sa.Text, nullable=False),  # their platform user id
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("workspace", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("thread", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.Text, nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_approvals_state_expires", "approvals", ["state", "expires_at"])
    op.create_table(
        "delivered_events",
        sa.Column("platform", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_delivered_events_at", "delivered_events", ["at"])


def downgrade() -> None:
    op.drop_table("delivered_events")
    op.drop_table("approvals")
