"""Tables of bot state (SQLAlchemy Core); migrations 0003 and 0004 create them."""

from __future__ import annotations

import sqlalchemy as sa

from bot.auditlog.schema import UTCDateTime

metadata = sa.MetaData()

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("args", sa.Text, nullable=False),
    sa.Column("argv", sa.Text, nullable=False),
    sa.Column("requester", sa.Text, nullable=False),
    sa.Column("requester_id", sa.Text, nullable=False),
    sa.Column("platform", sa.Text, nullable=False),
    sa.Column("workspace", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("thread", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("decided_by", sa.Text, nullable=True),
    sa.Column("decided_at", UTCDateTime, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
)

delivered_events = sa.Table(
    "delivered_events",
    metadata,
    sa.Column("platform", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("platform", sa.Text, nullable=False),
    sa.Column("workspace", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("thread", sa.Text, nullable=True),
    sa.Column("key", sa.Text, nullable=True),
    sa.Column("coalesce", sa.Boolean, nullable=False),
    sa.Column("reply", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("next_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
)
