"""Alert state shared by replicas (inbound alerts and checks), silences, and outbox rows
owned by the replica delivering them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("fingerprint", sa.Text, primary_key=True),
        sa.Column("id", sa.String(16), nullable=False),  # what /ack takes
        sa.Column("source", sa.String(16), nullable=False),  # inbound | check
        sa.Column("group_key", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),  # JSON object
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_posted_at", sa.DateTime(timezone=True), nullable=True),
        # The outbox key of the message that announced it: its resolution edits that one.
        sa.Column("post_key", sa.Text, nullable=True),
        sa.Column("acked_by", sa.Text, nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_alerts_id", "alerts", ["id"])
    op.create_table(
        "silences",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("matchers", sa.Text, nullable=False),  # JSON [[name, op, value], ...]
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_by", sa.Text, nullable=True),  # /unsilence
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_silences_ends_at", "silences", ["ends_at"])
    with op.batch_alter_table("outbox") as batch:
        # The replica delivering the row, and until when its claim holds: a row whose
        # claim ran out (its replica died) is taken over by another.
        batch.add_column(sa.Column("owner", sa.Text, nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_outbox_lease", "outbox", ["state", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_outbox_lease", "outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("owner")
    op.drop_table("silences")
    op.drop_table("alerts")
