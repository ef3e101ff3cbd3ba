"""Several replicas' outboxes on one database (SQLite and PostgreSQL): each queued message
is delivered once, by the replica owning its row; a dead replica's rows are taken over, a
live one's are not, a stopping one hands its rows over at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.app.cli_outbox import format_row
from bot.audit import upgrade
from bot.delivery.outbox import Outbox, RetryPolicy
from bot.delivery.store import OutboxRow, OutboxStore, RowState
from bot.kernel.adapter import Poster
from bot.kernel.message import Location
from bot.kernel.reply import Reply
from bot.storage.database import StateDatabase
from bot.storage.state_schema import outbox as outbox_table
from tests.auditlog_helpers import pg_database

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, no_poster_poll=0.1)
DESTINATIONS = [Location("fake", f"C{n}") for n in range(3)]
QUIET = 1.5  # seconds to watch for a delivery that must not happen


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty bot database that every replica in the test shares."""
    if request.param == "sqlite":
        sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'opsbot.db'}"
        await upgrade(sqlite_url)
        yield sqlite_url
    else:
        async with pg_database() as pg_url:
            await upgrade(pg_url)
            yield pg_url


class Deliveries:
    """What the platform received, from every replica: (replica, destination, title)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Location, str]] = []
        self._arrived = asyncio.Event()

    def poster(self, owner: str) -> Poster:
        async def post(destination: Location, reply: Reply, key: str | None) -> None:
            await asyncio.sleep(0.005)  # a post takes a moment: others run meanwhile
            self.got.append((owner, destination, reply.title))
            self._arrived.set()

        return post

    @property
    def titles(self) -> Counter[str]:
        return Counter(title for _, _, title in self.got)

    def by(self, owner: str) -> list[str]:
        return [title for who, _, title in self.got if who == owner]

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while len(self.got) < count:
                self._arrived.clear()
                await self._arrived.wait()


class SteppedClock:
    """Real time, except that the monotonic clock can jump ahead: the process froze."""

    def __init__(self) -> None:
        self.frozen_for = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic() + self.frozen_for


@contextlib.asynccontextmanager
async def replica(
    url: str,
    owner: str,
    deliveries: Deliveries | None = None,
    *,
    lease: float = 0.6,
    clock: SteppedClock | None = None,
    start: bool = True,
) -> AsyncIterator[Outbox]:
    """One replica's outbox on its own connection pool; ``deliveries``: it has the
    platform's adapter (a poster), else its messages for the platform wait."""
    database = StateDatabase(url)
    await database.start()
    outbox = Outbox(OutboxStore(database), owner=owner, lease=lease, clock=clock, retry=FAST)
    if deliveries is not None:
        outbox.register("fake", deliveries.poster(owner))
    try:
        if start:
            await outbox.start()
        yield outbox
    finally:
        await outbox.stop(grace=0.5)
        outbox.closed()
        await database.close()


@contextlib.asynccontextmanager
async def store_on(url: str) -> AsyncIterator[OutboxStore]:
    database = StateDatabase(url)
    await database.start()
    try:
        yield OutboxStore(database)
    finally:
        await database.close()


async def queue_rows(
    url: str, titles: list[str], *, owner: str | None, lease_until: datetime | None
) -> None:
    """Rows as another replica (or an opsbot from before owners) left them."""
    async with store_on(url) as store:
        for n, title in enumerate(titles):
            await store.add(
                platform="fake",
                workspace="",
                channel=DESTINATIONS[n % len(DESTINATIONS)].channel_id,
                thread=None,
                key=None,
                coalesce=False,
                reply=Reply(title=title),
                now=datetime.now(UTC),
                owner=owner,
                lease_until=lease_until,
            )


async def queued_rows(url: str) -> list[OutboxRow]:
    async with store_on(url) as store:
        return await store.rows(RowState.QUEUED)


async def take_over(url: str, owner: str) -> None:
    """Every queued row now belongs to ``owner``, for an hour (as its claim would do)."""
    database = StateDatabase(url)
    await database.start()
    try:
        async with database.transaction() as conn:
            await conn.execute(
                sa.update(outbox_table).values(
                    owner=owner, lease_until=datetime.now(UTC) + timedelta(hours=1)
                )
            )
    finally:
        await database.close()


def in_order(deliveries: Deliveries, titles: list[str]) -> None:
    """Each destination received its share of ``titles`` in the order they were queued."""
    for n, destination in enumerate(DESTINATIONS):
        expected = titles[n :: len(DESTINATIONS)]
        got = [title for _, dest, title in deliveries.got if dest == destination]
        assert got == expected, (destination, got)


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def test_a_dead_replicas_rows_go_out_once_across_the_live_replicas(url: str) -> None:
    deliveries = Deliveries()
    async with replica(url, "one", deliveries), replica(url, "two", deliveries):
        # A third replica died with these queued; its lease runs out in a second.
        dead = [f"dead {n}" for n in range(30)]
        soon = datetime.now(UTC) + timedelta(seconds=1)
        await queue_rows(url, dead, owner="three", lease_until=soon)
        await asyncio.sleep(0.5)
        assert deliveries.got == []
        await deliveries.wait_for(len(dead))
        await asyncio.sleep(QUIET)
        assert deliveries.titles == Counter(dead), "every message once"
        in_order(deliveries, dead)
        assert await queued_rows(url) == []


async def test_two_replicas_starting_together_deliver_each_queued_row_once(url: str) -> None:
    deliveries = Deliveries()
    everything: list[str] = []
    for round_ in range(3):
        # Queued before rows had owners (or by a replica that died, its lease run out).
        legacy = [f"r{round_} legacy {n}" for n in range(12)]
        expired = [f"r{round_} expired {n}" for n in range(12)]
        await queue_rows(url, legacy, owner=None, lease_until=None)
        await queue_rows(url, expired, owner="gone", lease_until=ago(60))
        everything += legacy + expired
        async with (
            replica(url, "one", deliveries, start=False) as one,
            replica(url, "two", deliveries, start=False) as two,
        ):
            await asyncio.gather(one.start(), two.start())
            await deliveries.wait_for(len(everything))
            await asyncio.sleep(0.5)
        assert deliveries.titles == Counter(everything), f"round {round_}: every message once"
    assert await queued_rows(url) == []


async def test_of_two_replicas_claiming_the_same_rows_exactly_one_gets_each(url: str) -> None:
    await queue_rows(url, [f"free {n}" for n in range(8)], owner=None, lease_until=None)
    await queue_rows(url, [f"lapsed {n}" for n in range(8)], owner="gone", lease_until=ago(1))
    await queue_rows(url, ["live"], owner="three", lease_until=datetime.now(UTC) + timedelta(1))
    now = datetime.now(UTC)
    until = now + timedelta(minutes=1)
    async with store_on(url) as one, store_on(url) as two:
        # Both saw the same candidates before either claimed them: the race at its worst.
        seen_by_one = await one.claimable(owner="one", now=now, own=False)
        seen_by_two = await two.claimable(owner="two", now=now, own=False)
        assert seen_by_one == seen_by_two and len(seen_by_one) == 16  # not "three"'s
        won_by_one, won_by_two = await asyncio.gather(
            one.claim(seen_by_one, owner="one", now=now, until=until),
            two.claim(seen_by_two, owner="two", now=now, until=until),
        )
        ids_one = {row.id for row in won_by_one}
        ids_two = {row.id for row in won_by_two}
        assert not ids_one & ids_two
        assert ids_one | ids_two == set(seen_by_one)
        # Rows under a live lease stay with their owner, whoever asks: "one" gets its own.
        everything = [row.id for row in await one.rows(RowState.QUEUED)]
        again = await one.claim(everything, owner="one", now=now, until=until)
        assert {row.id for row in again} == ids_one
    owners = {row.reply.title: row.owner for row in await queued_rows(url)}
    assert owners["live"] == "three"
    assert {owners[row.reply.title] for row in won_by_one} <= {"one"}
    assert {owners[row.reply.title] for row in won_by_two} <= {"two"}


async def test_a_replica_restarting_under_its_id_takes_its_rows_back_at_once(url: str) -> None:
    deliveries = Deliveries()
    mine = [f"mine {n}" for n in range(6)]
    # "one" crashed a moment ago: its lease on these still runs for an hour.
    await queue_rows(url, mine, owner="one", lease_until=datetime.now(UTC) + timedelta(hours=1))
    async with replica(url, "two", deliveries):
        await asyncio.sleep(0.5)  # claims come and go: not "two"'s to take
        started = time.monotonic()
        async with replica(url, "one", deliveries, lease=60.0) as one:
            assert one.queued == len(mine)  # claimed by start() itself
            await deliveries.wait_for(len(mine))
            assert time.monotonic() - started < 5.0
            await asyncio.sleep(0.5)
    assert sorted(deliveries.by("one")) == sorted(mine)
    in_order(deliveries, mine)
    assert deliveries.by("two") == []
    assert await queued_rows(url) == []


async def test_a_live_replicas_rows_are_not_taken_while_it_renews_them(url: str) -> None:
    deliveries = Deliveries()
    titles = [f"held {n}" for n in range(4)]
    # "one" has no adapter for the platform: its messages wait, leased for 1 s at a time.
    async with replica(url, "one", lease=1.0) as one, replica(url, "two", deliveries):
        for n, title in enumerate(titles):
            assert await one.post(DESTINATIONS[n % len(DESTINATIONS)], Reply(title=title))
        await asyncio.sleep(3.0)  # three leases long: only renewals kept the rows
        assert deliveries.got == []
        rows = await queued_rows(url)
        assert [row.owner for row in rows] == ["one"] * len(titles)
        assert all(row.lease_until is not None and row.lease_until > ago(0) for row in rows)
        assert one.queued == len(titles)


async def test_a_graceful_stop_hands_the_rows_over_at_once(url: str) -> None:
    deliveries = Deliveries()
    titles = [f"handed over {n}" for n in range(6)]
    async with replica(url, "two", deliveries):
        async with replica(url, "one", lease=30.0) as one:
            for n, title in enumerate(titles):
                assert await one.post(DESTINATIONS[n % len(DESTINATIONS)], Reply(title=title))
            await asyncio.sleep(0.5)
            assert deliveries.got == []
            stopping = time.monotonic()
        # Released at stop: "two" claims them at its next round, not after "one"'s 30 s.
        await deliveries.wait_for(len(titles), within=5.0)
        assert time.monotonic() - stopping < 5.0
        await asyncio.sleep(0.5)
    assert sorted(deliveries.by("two")) == sorted(titles)
    in_order(deliveries, titles)
    assert await queued_rows(url) == []


async def test_a_replica_that_froze_past_its_lease_does_not_deliver_what_was_taken(
    url: str,
) -> None:
    deliveries = Deliveries()
    titles = [f"taken {n}" for n in range(3)]
    clock = SteppedClock()
    async with replica(url, "one", lease=0.6, clock=clock) as one:
        for n, title in enumerate(titles):
            assert await one.post(DESTINATIONS[n % len(DESTINATIONS)], Reply(title=title))
        # "one" froze for longer than its lease, and "two" took the rows over meanwhile.
        await take_over(url, "two")
        # It wakes up with its adapter ready: the worker runs before any renewal would.
        clock.frozen_for = 5.0
        one.register("fake", deliveries.poster("one"))
        async with replica(url, "two", deliveries):  # "two" (restarted) delivers them
            await deliveries.wait_for(len(titles))
            await asyncio.sleep(QUIET)
        assert one.queued == 0  # dropped, not delivered
    assert deliveries.by("one") == []
    assert sorted(deliveries.by("two")) == sorted(titles)
    assert await queued_rows(url) == []


async def test_rows_posted_after_stop_are_left_for_any_replica(url: str) -> None:
    deliveries = Deliveries()
    async with replica(url, "two", deliveries):
        database = StateDatabase(url)
        await database.start()
        try:
            one = Outbox(OutboxStore(database), owner="one", lease=30.0)
            await one.start()
            await one.stop(grace=0.1)
            # Stopped, its database still open: a job's last result during shutdown.
            assert await one.post(DESTINATIONS[0], Reply(title="late result"))
            await deliveries.wait_for(1, within=5.0)
        finally:
            one.closed()
            await database.close()
    assert deliveries.by("two") == ["late result"]


async def test_opsbot_outbox_shows_who_holds_each_row(url: str) -> None:
    await queue_rows(url, ["held"], owner="one", lease_until=datetime.now(UTC) + timedelta(1))
    await queue_rows(url, ["orphaned"], owner="gone", lease_until=ago(1))
    await queue_rows(url, ["legacy"], owner=None, lease_until=None)
    now = datetime.now(UTC)
    lines = {row.reply.title: format_row(row, now) for row in await queued_rows(url)}
    assert "owner one  'held'" in lines["held"]
    assert "owner gone (lease ended)  'orphaned'" in lines["orphaned"]
    assert "owner none  'legacy'" in lines["legacy"]
