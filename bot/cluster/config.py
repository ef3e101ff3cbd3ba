"""Config of what replicas share: the state Redis, event dedup, the leader and outbox
leases."""

from __future__ import annotations

from datetime import timedelta

from pydantic import model_validator

from bot.kernel.settings import Duration, RedisUrl, Strict

# A post must fit well inside a fifth of the outbox lease.
OUTBOX_LEASE_MIN = timedelta(seconds=3)
OUTBOX_LEASE_MAX = timedelta(hours=1)


class StateSection(Strict):
    # None: event dedup and approvals live in the audit database. With Redis (several
    # replicas), event dedup uses it.
    redis_url: RedisUrl | None = None
    # A platform may redeliver an event for this long; its id is remembered that long.
    dedup_window: Duration = timedelta(hours=24)
    # With Redis, one replica leads leader-only work (heartbeats) under a lease this long,
    # renewed this often. A leader that cannot renew stands down at 4/5 of the lease, before
    # Redis lets the lease go, so another replica takes over within about one lease.
    # A running job's slots (max_concurrent, lock groups), which every replica shares, are
    # held and renewed the same way: a dead replica's slots free themselves after a lease.
    leader_lease: Duration = timedelta(seconds=15)
    leader_renew_every: Duration = timedelta(seconds=5)
    # How long a replica's hold on a queued outbox message lasts unrenewed (renewed every
    # third of it): a replica that dies with messages queued leaves them this long before
    # another replica posts them. Shorter hands over sooner, but a replica stalled (or
    # cut off from the database) for 4/5 of it stops posting until it is sure again.
    outbox_lease: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _renewed_in_time(self) -> StateSection:
        if not OUTBOX_LEASE_MIN <= self.outbox_lease <= OUTBOX_LEASE_MAX:
            raise ValueError(
                f"outbox_lease must be between {OUTBOX_LEASE_MIN.total_seconds():g}s and "
                f"{OUTBOX_LEASE_MAX.total_seconds():g}s"
            )
        if self.leader_renew_every * 2 > self.leader_lease:
            raise ValueError(
                "leader_renew_every must be at most half of leader_lease, so one late "
                "renewal does not cost the lease"
            )
        return self
