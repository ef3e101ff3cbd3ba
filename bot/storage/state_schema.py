"""Tables of bot state (SQLAlchemy Core); migrations 0003, 0004 and 0005 create them."""

from __future__ import annotations

import sqlalchemy as sa

from bot.storage.schema import UTCDateTime

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
    sa.Column("owner", sa.Text, nullable=True),
    sa.Column("lease_until", UTCDateTime, nullable=True),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("fingerprint", sa.Text, primary_key=True),
    sa.Column("id", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("group_key", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("labels", sa.Text, nullable=False),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("last_posted_at", UTCDateTime, nullable=True),
    sa.Column("post_key", sa.Text, nullable=True),
    sa.Column("acked_by", sa.Text, nullable=True),
    sa.Column("acked_at", UTCDateTime, nullable=True),
)

silences = sa.Table(
    "silences",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("matchers", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("ends_at", UTCDateTime, nullable=False),
    sa.Column("ended_by", sa.Text, nullable=True),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    # Where it was made: that conversation is told when it ends (migration 0007).
    sa.Column("notify_platform", sa.Text, nullable=True),
    sa.Column("notify_workspace", sa.Text, nullable=True),
    sa.Column("notify_channel", sa.Text, nullable=True),
    sa.Column("notify_thread", sa.Text, nullable=True),
    sa.Column("told_at", UTCDateTime, nullable=True),
)

# Small shared values for one host without Redis (migration 0008): the policy mode and
# heartbeat pauses, so every process on one data directory (a console beside `opsbot run`)
# agrees. With Redis configured these live there instead.
shared_state = sa.Table(
    "shared_state",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
)
