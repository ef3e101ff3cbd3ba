"""Keyed audit rows: ``audit_log.key_id`` names the key a row's hash is an HMAC with.

Rows already written keep NULL (plain SHA-256) and keep verifying; the first row written
with a key is an ``audit_key`` event (bot.audit.chain).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("key_id", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("key_id")
