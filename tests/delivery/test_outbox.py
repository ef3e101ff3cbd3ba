"""The outbound queue through the running bot: what a test poster, registered for a
platform as an adapter would, receives and when."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from pathlib import Path

from adapters.slack.adapter import LIMITS as SLACK_LIMITS
from bot.delivery.outbox import RetryPolicy
from bot.delivery.store import reply_from_json, reply_to_json
from bot.kernel.adapter import RetryAfter
from bot.kernel.errors import DependencyError
from bot.kernel.message import Location
from bot.kernel.reply import Button, Field, Reply, Status, Table
from tests.botharness import BASE_CONFIG, TestBot, running_bot
from tests.processes import clean_env, run_opsbot

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, no_poster_poll=0.1)


class Poster:
    """A platform's posting side: records (monotonic time, destination, reply, key);
    ``failures`` exceptions are raised, in turn, before deliveries succeed."""

    def __init__(self, failures: list[Exception] | None = None, *, always_fail: bool = False):
        self.got: list[tuple[float, Location, Reply, str | None]] = []
        self.calls = 0
        self.failures = list(failures or [])
        self.always_fail = always_fail
        self.arrived = asyncio.Event()

    async def __call__(self, destination: Location, reply: Reply, key: str | None) -> None:
        self.calls += 1
        if self.always_fail:
            raise ConnectionError("platform down")
        if self.failures:
            raise self.failures.pop(0)
        self.got.append((time.monotonic(), destination, reply, key))
        self.arrived.set()

    @property
    def titles(self) -> list[str]:
        return [reply.title for _, _, reply, _ in self.got]

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()


def _fast(tb: TestBot) -> None:
    tb.bot.outbox.retry = FAST


async def _queued(tb: TestBot, dest: Location, *titles: str, **kw: object) -> None:
    for title in titles:
        assert await tb.bot.outbox.post(dest, Reply(title=title), **kw)  # type: ignore[arg-type]


async def test_messages_for_one_destination_arrive_in_order() -> None:
    async with running_bot() as tb:
        poster = Poster()
        tb.bot.outbox.register("fake", poster)
        a, b = Location("fake", "C1"), Location("fake", "C2", thread_id="t1")
        for n in range(5):
            await _queued(tb, a, f"a{n}")
            await _queued(tb, b, f"b{n}")
        await poster.wait_for(10)
        assert [t for t in poster.titles if t.startswith("a")] == [f"a{n}" for n in range(5)]
        assert [t for t in poster.titles if t.startswith("b")] == [f"b{n}" for n in range(5)]
        assert {d for _, d, _, _ in poster.got} == {a, b}


async def test_slack_channel_gets_at_most_one_message_a_second() -> None:
    async with running_bot() as tb:
        poster = Poster()
        tb.bot.outbox.register("slack", poster, SLACK_LIMITS)  # the Slack adapter's own limits
        channel = Location("slack", "C0OPS0001", workspace="T1")
        other = Location("slack", "C0OTHER01", workspace="T1")
        await _queued(tb, channel, "one", "two", "three")
        await _queued(tb, other, "elsewhere")
        await poster.wait_for(4)
        times = [at for at, dest, _, _ in poster.got if dest == channel]
        assert [t for t in poster.titles if t != "elsewhere"] == ["one", "two", "three"]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert all(gap >= 0.95 for gap in gaps), gaps
        # Another channel has its own limit: not held up behind the first one's.
        elsewhere = next(at for at, dest, _, _ in poster.got if dest == other)
        assert elsewhere < times[1]


async def test_a_failing_post_is_retried_until_it_succeeds() -> None:
    async with running_bot() as tb:
        _fast(tb)
        poster = Poster([ConnectionError("reset"), TimeoutError("slow")])
        tb.bot.outbox.register("fake", poster)
        await _queued(tb, Location("fake", "C1"), "deploy finished", "next")
        await poster.wait_for(2)
        assert poster.titles == ["deploy finished", "next"]
        assert poster.calls == 4
        assert tb.bot.metrics.outbox_dead_letters._value.get() == 0


async def test_retry_after_pauses_the_destination_that_long() -> None:
    async with running_bot() as tb:
        _fast(tb)
        # As an adapter passes a platform's "retry after" on: wrapped, with the cause kept.
        try:
            raise DependencyError("Telegram Bot API", "flood control") from RetryAfter(1.2)
        except DependencyError as exc:
            wrapped = exc
        poster = Poster([wrapped])
        tb.bot.outbox.register("fake", poster)
        started = time.monotonic()
        await _queued(tb, Location("fake", "C1"), "rate limited")
        await poster.wait_for(1)
        assert poster.titles == ["rate limited"]
        assert poster.got[0][0] - started >= 1.15


async def test_a_message_that_never_goes_through_becomes_a_dead_letter(tmp_path: Path) -> None:
    async with running_bot(data_dir=tmp_path) as tb:
        _fast(tb)
        poster = Poster(always_fail=True)
        tb.bot.outbox.register("fake", poster)
        await _queued(tb, Location("fake", "C9"), "rollback done")
        assert await tb.bot.outbox.drain(10)
        assert poster.calls == FAST.attempts
        assert tb.bot.outbox.queued == 0
        metrics = tb.bot.metrics.render().decode()
        assert "opsbot_outbox_dead_letters 1.0" in metrics
        assert "opsbot_outbox_queued 0.0" in metrics
    config = tmp_path / "opsbot.toml"
    config.write_text(BASE_CONFIG)
    env = clean_env(OPSBOT_DATA_DIR=str(tmp_path))
    dead = await asyncio.to_thread(run_opsbot, "outbox", "--dead", "--config", str(config), env=env)
    assert dead.returncode == 0, dead.stderr
    assert "1 dead letters" in dead.stdout
    line = dead.stdout.splitlines()[1]
    assert "fake:C9" in line and "'rollback done'" in line and "attempts 3" in line
    assert "ConnectionError: platform down" in line
    queued = await asyncio.to_thread(run_opsbot, "outbox", "--config", str(config), env=env)
    assert queued.returncode == 0, queued.stderr
    assert "no queued messages" in queued.stdout


async def test_progress_updates_under_one_key_collapse_to_the_newest() -> None:
    async with running_bot() as tb:
        poster = Poster()
        dest = Location("fake", "C1")
        # No poster yet (the adapter is starting): everything waits, nothing is lost.
        await _queued(tb, dest, "progress 10%", key="job-progress:j1")
        await _queued(tb, dest, "progress 50%", key="job-progress:j1")
        await _queued(tb, dest, "other job 5%", key="job-progress:j2")
        await _queued(tb, dest, "progress 90%", key="job-progress:j1")
        await _queued(tb, dest, "job j1 finished")
        assert tb.bot.outbox.queued == 3
        tb.bot.outbox.register("fake", poster)
        await poster.wait_for(3)
        await asyncio.sleep(0.1)
        assert poster.titles == ["other job 5%", "progress 90%", "job j1 finished"]
        assert [key for _, _, _, key in poster.got] == ["job-progress:j2", "job-progress:j1", None]


async def test_an_alert_storm_goes_out_as_one_message() -> None:
    async with running_bot() as tb:
        poster = Poster()
        dest = Location("fake", "C1")
        await _queued(tb, dest, "before")
        for n in range(4):
            reply = Reply(
                title=f"disk full on db{n}", status=Status.ERROR if n == 2 else Status.WARNING
            )
            assert await tb.bot.outbox.post(dest, reply, coalesce=True)
        await _queued(tb, dest, "after")
        tb.bot.outbox.register("fake", poster)
        await poster.wait_for(3)
        await asyncio.sleep(0.1)
        assert poster.titles == ["before", "4 alerts", "after"]
        merged = poster.got[1][2]
        assert merged.status is Status.ERROR
        assert merged.text.splitlines() == [f"• disk full on db{n}" for n in range(4)]


async def test_queued_messages_survive_a_restart(tmp_path: Path) -> None:
    dest = Location("fake", "C1", thread_id="1700000000.0001", workspace="T1")
    rich = Reply(
        title="deploy v9 finished",
        status=Status.OK,
        text="all good",
        fields=(Field("env", "prod"),),
        table=Table(("host", "state"), (("web1", "up"),)),
        code="exit 0",
        buttons=(Button("Roll back", "/rollback v9", "danger"),),
        request_id="r-1",
    )
    async with running_bot(data_dir=tmp_path) as tb:
        # The platform's adapter never came up: the bot stops with these still queued.
        assert await tb.bot.outbox.post(dest, Reply(title="first"))
        assert await tb.bot.outbox.post(dest, rich, key="job:1")
        started = time.monotonic()
    assert time.monotonic() - started < 3  # stop does not wait on a platform without a poster
    async with running_bot(data_dir=tmp_path) as tb:
        assert tb.bot.outbox.queued == 2
        assert "opsbot_outbox_queued 2.0" in tb.bot.metrics.render().decode()
        poster = Poster()
        tb.bot.outbox.register("fake", poster)
        await poster.wait_for(2)
        assert poster.titles == ["first", "deploy v9 finished"]
        assert poster.got[1][1] == dest
        assert poster.got[1][2] == rich
        assert poster.got[1][3] == "job:1"
    async with running_bot(data_dir=tmp_path) as tb:
        assert tb.bot.outbox.queued == 0  # delivered rows are gone


async def test_a_post_whose_caller_is_cancelled_is_still_delivered(tmp_path: Path) -> None:
    """A job's progress update cancelled as the job ends, while its write waits for the
    database: the message still goes out, and the next post is not held up."""
    dest = Location("fake", "C1")
    async with running_bot(data_dir=tmp_path) as tb:
        poster = Poster()
        tb.bot.outbox.register("fake", poster)
        other_writer = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        try:
            other_writer.execute("BEGIN IMMEDIATE")
            caller = asyncio.create_task(tb.bot.outbox.post(dest, Reply(title="⏳ job j1")))
            await asyncio.sleep(0.3)  # its transaction waits for the lock
            caller.cancel()
            await asyncio.gather(caller, return_exceptions=True)
            other_writer.execute("ROLLBACK")
        finally:
            other_writer.close()
        await poster.wait_for(1, within=5)
        async with asyncio.timeout(5):
            assert await tb.bot.outbox.post(dest, Reply(title="job j1 finished"))
        await poster.wait_for(2, within=5)
        assert poster.titles == ["⏳ job j1", "job j1 finished"]


async def test_a_message_delivered_as_stop_runs_out_of_time_is_not_sent_again(
    tmp_path: Path,
) -> None:
    """SIGTERM with a slow database: the platform took the message, its row's delete is
    still waiting for the lock when the outbox's grace runs out. The next start must not
    send it a second time."""
    dest = Location("fake", "C1")
    delivered: list[str] = []
    taken = asyncio.Event()
    async with running_bot(data_dir=tmp_path) as tb:
        other_writer = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        loop = asyncio.get_running_loop()

        async def platform(destination: Location, reply: Reply, key: str | None) -> None:
            delivered.append(reply.title)
            other_writer.execute("BEGIN IMMEDIATE")  # the row's delete waits for this
            loop.call_later(1.0, other_writer.execute, "ROLLBACK")
            taken.set()

        try:
            tb.bot.outbox.register("fake", platform)
            assert await tb.bot.outbox.post(dest, Reply(title="deploy v9 finished"))
            async with asyncio.timeout(5):
                await taken.wait()
            await tb.bot.outbox.stop(grace=0.2)
        finally:
            await asyncio.sleep(1.0)  # the other writer's ROLLBACK has run
            other_writer.close()
    async with running_bot(data_dir=tmp_path) as tb:
        assert tb.bot.outbox.queued == 0
    assert delivered == ["deploy v9 finished"]


async def test_console_job_results_still_arrive_through_the_queue() -> None:
    async with running_bot() as tb:
        dest = Location("console", "ops")
        assert await tb.bot.outbox.post(dest, Reply(title="approval granted"))
        assert "approval granted" in await tb.posted("approval granted")


def test_reply_json_round_trip_keeps_every_field() -> None:
    reply = Reply(
        title="t",
        status=Status.DENIED,
        text="x\ny",
        fields=(Field("a", "1"), Field("b", "2")),
        table=Table(("c1",), (("v",), ("w",))),
        code=None,
        buttons=(Button("Approve", "/approve abc", "primary"),),
        request_id="rid",
    )
    assert reply_from_json(reply_to_json(reply)) == reply
    assert reply_from_json(reply_to_json(Reply())) == Reply()
