"""Silences remember where they were made, so the channel is told when one ends.

``notify_*`` is the conversation the silence was created in (NULL for silences made
before this revision: nobody is told of those); ``told_at`` is set once its end was
announced, by exactly one replica (a conditional UPDATE).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COLUMNS = ("notify_platform", "notify_workspace", "notify_channel", "notify_thread")


def upgrade() -> None:
    with op.batch_alter_table("silences") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.Text, nullable=True))
        batch.add_column(sa.Column("told_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("silences") as batch:
        for name in (*_COLUMNS, "told_at"):
            batch.drop_column(name)
