"""Scheduled heartbeats: the config rules, what a heartbeat says and where it goes,
/heartbeat in chat (next run, now, pause), retries, the dead man's switch gauge, and the
scheduler facade underneath.

The bots here run on a manual clock set in 2099, ahead of the real time: APScheduler
wakes up by the real time, so it never fires a 30-minute heartbeat by itself during a
test. Runs are started with ``/heartbeat now``; the times the scheduler decides (first
run, run after a pause) come from the manual clock and are checked exactly.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from bot.app.cli import EXIT_CONFIG, main
from bot.cluster.scheduler import Cron, Every, Scheduler, crontab_trigger, next_fire_time
from bot.delivery.outbox import Outbox
from bot.features.heartbeats.service import sparkline
from bot.kernel.clock import SystemClock
from bot.kernel.message import Location
from bot.kernel.reply import Reply
from bot.kernel.version import __version__
from tests.botharness import BASE_CONFIG, ManualClock, TestBot, running_bot
from tests.httpfakes import Route, refused_url, serve
from tests.infra import STATE_REDIS_DOWN, redis_url, state_redis

FUTURE = datetime(2099, 1, 7, 12, 0, tzinfo=UTC)  # a Wednesday
GAUGE = "opsbot_heartbeat_last_success_timestamp_seconds"

RULES = """
[policy.commands.heartbeat]
roles = ["admin"]
"""


def heartbeat(name: str = "ops", channels: str = '["ops"]', **options: str) -> str:
    """One [[heartbeat]] table; option values are TOML."""
    lines = ["[[heartbeat]]", f'name = "{name}"', f"channels = {channels}"]
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def config(*tables: str) -> str:
    return BASE_CONFIG + RULES + "\n" + "\n".join(tables)


def rows(reply: Reply | None) -> dict[str, tuple[str, ...]]:
    assert reply is not None and reply.table is not None, reply
    return {row[0]: row[1:] for row in reply.table.rows}


def gauge(tb: TestBot, name: str) -> float | None:
    return tb.bot.metrics.registry.get_sample_value(GAUGE, {"heartbeat": name})


class FlakyOutbox:
    """Refuses the first ``failures`` posts (as an outbox that cannot take a message
    does: it returns False), then hands them to the bot's real outbox."""

    def __init__(self, real: Outbox, failures: int) -> None:
        self.real = real
        self.failures = failures
        self.calls = 0

    async def post(self, destination: Location, reply: Reply) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            return False
        return await self.real.post(destination, reply)


# ---------------------------------------------------------------------- config


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "opsbot.toml"
    path.write_text(text)
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"interval": '"4m"'}, "heartbeat[0].interval: must be at least 5m (got 4m)"),
        ({"interval": "240"}, "heartbeat[0].interval: must be at least 5m (got 4m)"),
        ({"cron": '"*/2 * * * *"'}, "heartbeat[0].cron: '*/2 * * * *' runs 2m apart"),
        ({"cron": '"0,1 9 * * *"'}, "heartbeat[0].cron: '0,1 9 * * *' runs 1m apart"),
        ({"cron": '"0 25 * * *"'}, "heartbeat[0].cron: invalid field '25'"),
        ({"cron": '"0 9 * *"'}, "heartbeat[0].cron: a crontab line has 5 fields"),
        ({"cron": '"0 9 * * 8"'}, "heartbeat[0].cron: invalid day of week '8'"),
        ({"cron": '"0 0 31 2 *"'}, "heartbeat[0].cron: '0 0 31 2 *' never fires"),
        (
            {"interval": '"1h"', "cron": '"0 * * * *"'},
            "heartbeat[0]: give interval or cron, not both",
        ),
        ({"intervall": '"1h"'}, "heartbeat[0].intervall: unknown key; did you mean 'interval'?"),
        ({"channels": '["opz"]'}, "heartbeat[0].channels[0]: unknown channel 'opz'"),
        ({"channels": "[]"}, "heartbeat[0].channels: List should have at least 1 item"),
    ],
)
def test_bad_heartbeat_config_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: dict[str, str], expected: str
) -> None:
    options = dict(options)
    channels = options.pop("channels", '["ops"]')
    code, output = check(tmp_path, config(heartbeat(channels=channels, **options)), capsys)
    assert code == EXIT_CONFIG, output
    assert expected in output


def test_good_heartbeat_config_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = config(
        heartbeat("ops"),
        heartbeat("hourly", interval='"5m"', health="true", queues="true", failing="true"),
        heartbeat("weekdays", channels='["ops", "incident"]', cron='"0 9 * * 1-5"'),
    )
    code, output = check(tmp_path, text, capsys)
    assert code == 0, output
    code, output = check(tmp_path, config(heartbeat("ops"), heartbeat("ops")), capsys)
    assert "heartbeat[1].name: duplicate name 'ops'" in output


def test_example_config_has_a_heartbeat(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[3]
    assert main(["check-config", str(root / "examples" / "opsbot.toml")]) == 0
    assert '[[heartbeat]]\nname = "ops"' in (root / "examples" / "opsbot.toml").read_text()


# ---------------------------------------------------------------------- /heartbeat


async def test_listing_shows_each_heartbeat_and_its_next_run() -> None:
    text = config(
        heartbeat("ops"),
        # crontab's 1 is Monday (APScheduler 3's own from_crontab would say Tuesday).
        heartbeat("weekly", channels='["incident"]', cron='"0 9 * * 1"'),
    )
    async with running_bot(text, clock=ManualClock(FUTURE)) as tb:
        listing = rows(await tb.send("/heartbeat"))
        assert listing["ops"] == (
            "every 30m",
            "ops",
            "2099-01-07 12:30 UTC (in 30m)",
            "-",
            "-",
        )
        assert listing["weekly"][:3] == (
            "cron 0 9 * * 1 (UTC)",
            "incident",
            "2099-01-12 09:00 UTC (in 4d 21h)",
        )
        assert tb.bot.scheduler.next_run("weekly") == datetime(2099, 1, 12, 9, 0, tzinfo=UTC)
        # Deny by default: the rule names admin; bob is oncall.
        assert (await tb.exec("/heartbeat", as_="bob")).startswith("⛔")


async def test_no_heartbeats_configured() -> None:
    async with running_bot(config()) as tb:
        assert "No heartbeats configured" in await tb.exec("/heartbeat now")


async def test_now_posts_version_uptime_health_and_failing_to_the_channel() -> None:
    clock = ManualClock(FUTURE)
    async with serve({"/health": Route.of_json({"status": "ok"})}) as server:
        services = f"""
[[services]]
name = "api"
health_url = "{server.url("/health")}"
[[services]]
name = "billing"
health_url = "{refused_url("/healthz")}"
"""
        text = config(heartbeat("ops", health="true", failing="true")) + services
        async with running_bot(text, clock=clock) as tb:
            clock.advance(timedelta(hours=3, minutes=12))
            answer = await tb.exec("/heartbeat now")
            assert "Posting heartbeat 'ops' now" in answer and "channels  ops" in answer

            posted = await tb.posted("💓")
            lines = posted.splitlines()
            assert lines[0] == f"❌ 💓 opsbot {__version__} up 3h 12m"
            assert "  health   1 up, 1 down (billing)" in lines
            assert "  failing  billing down (connection refused)" in lines
            assert server.requests_to("/health")[0].headers["X-Request-ID"].startswith("hb-")

            # Every platform id of #ops, but only the platforms this process serves: the
            # console here; slack, telegram and discord have no adapter running.
            assert [d for d, _ in tb.console.posted] == [Location("console", "ops")]

            await tb.bot.scheduler.join()
            assert gauge(tb, "ops") == clock.now().timestamp()
            listing = rows(await tb.send("/heartbeat"))
            assert listing["ops"][4] == "2099-01-07 15:12 UTC (now)"  # last posted


async def test_unknown_heartbeat_is_a_usage_error() -> None:
    async with running_bot(config(heartbeat("ops")), clock=ManualClock(FUTURE)) as tb:
        answer = await tb.exec("/heartbeat now nope")
        assert answer.startswith("❓") and "unknown heartbeat 'nope' (heartbeats: ops)" in answer
        answer = await tb.exec("/heartbeat pause soon")
        assert answer.startswith("❓") and "'soon' is not a duration" in answer
        assert (await tb.exec("/heartbeat pause 31d")).startswith("❓")
        assert (await tb.exec("/heartbeat later")).startswith("❓")


@pytest.mark.redis
async def test_a_pause_typed_to_one_replica_is_shown_on_the_other(tmp_path: Path) -> None:
    # The leader, which posts, may be either replica: the pause is kept in Redis and the
    # leader reads it before each run (tests/cluster/test_scheduled_on_one_replica.py).
    name = f"ops{uuid.uuid4().hex[:8]}"
    text = config(heartbeat(name)) + state_redis()
    clock = ManualClock(FUTURE)
    try:
        async with (
            running_bot(text, clock=clock, data_dir=tmp_path / "one") as one,
            running_bot(text, clock=clock, data_dir=tmp_path / "two") as two,
        ):
            assert "Paused" in await two.exec(f"/heartbeat pause 2h {name}")
            assert rows(await one.send("/heartbeat"))[name][3] == "2099-01-07 14:00 UTC (in 2h)"
    finally:
        client = aioredis.Redis.from_url(redis_url())
        await client.delete(f"opsbot:pause:{name}")
        await client.aclose()


async def test_with_its_redis_down_a_pause_is_refused_and_says_why() -> None:
    text = config(heartbeat("ops")) + STATE_REDIS_DOWN
    async with running_bot(text, clock=ManualClock(FUTURE)) as tb:
        answer = await tb.exec("/heartbeat pause 2h ops")
        assert answer.startswith("❌") and "heartbeat 'ops' not paused" in answer
        assert "cannot reach its Redis" in answer
        assert rows(await tb.send("/heartbeat"))["ops"][3] == "-"
        events = [e.status for e in await tb.audit() if e.kind == "heartbeat"]
        assert events == ["paused", "pause_failed"]


async def test_pause_is_audited_and_moves_the_next_run() -> None:
    clock = ManualClock(FUTURE)
    text = config(heartbeat("ops"), heartbeat("daily", cron='"0 6 * * *"'))
    async with running_bot(text, clock=clock) as tb:
        assert rows(await tb.send("/heartbeat"))["ops"][2] == "2099-01-07 12:30 UTC (in 30m)"

        paused = await tb.send("/heartbeat pause 2h ops")
        assert paused is not None
        assert paused.title == "Paused heartbeat 'ops' until 2099-01-07 14:00 UTC (2h)"
        assert rows(paused) == {"ops": ("2099-01-07 14:00 UTC (in 2h)",)}
        assert tb.bot.scheduler.next_run("ops") == FUTURE + timedelta(hours=2)

        listing = rows(await tb.send("/heartbeat"))
        assert listing["ops"][2:4] == (
            "2099-01-07 14:00 UTC (in 2h)",
            "2099-01-07 14:00 UTC (in 2h)",
        )
        assert listing["daily"][2:4] == ("2099-01-08 06:00 UTC (in 18h)", "-")  # not paused

        # The pause is a change: the pipeline audits the command, and the pause itself
        # is recorded as a heartbeat event.
        events = [e for e in await tb.audit() if e.kind == "heartbeat"]
        assert [(e.status, e.principal, e.command) for e in events] == [
            ("paused", "alice", "heartbeat")
        ]
        assert events[0].args == {"heartbeats": ["ops"], "duration": "2h"}
        assert "until 2099-01-07T14:00:00+00:00" in events[0].detail
        commands = [e for e in await tb.commands_audited() if e.command == "heartbeat"]
        assert [e.status for e in commands] == ["ok", "ok", "ok"]

        # A shorter pause replaces the longer one: back on the 30-minute grid.
        await tb.send("/heartbeat pause 1m ops")
        assert tb.bot.scheduler.next_run("ops") == FUTURE + timedelta(minutes=30)

        # Without a name, every heartbeat; a cron one resumes at its next time after.
        await tb.send("/heartbeat pause 1d")
        assert tb.bot.scheduler.next_run("daily") == datetime(2099, 1, 9, 6, 0, tzinfo=UTC)
        assert tb.bot.scheduler.next_run("ops") == FUTURE + timedelta(days=1)

        # Once the time has passed, the pause is no longer shown.
        clock.advance(timedelta(days=1, minutes=1))
        assert rows(await tb.send("/heartbeat"))["ops"][3] == "-"

        assert (await tb.exec("/heartbeat pause 1h", as_="bob")).startswith("⛔")
        assert len([e for e in await tb.audit() if e.kind == "heartbeat"]) == 3


async def test_a_refused_post_is_retried_then_goes_out() -> None:
    async with running_bot(config(heartbeat("ops")), clock=ManualClock(FUTURE)) as tb:
        flaky = FlakyOutbox(tb.bot.outbox, failures=2)
        tb.bot.heartbeats.outbox = flaky
        tb.bot.heartbeats.retry_delays = (0.01, 0.02, 0.03)
        with capture_logs() as logs:
            await tb.exec("/heartbeat now")
            await tb.bot.scheduler.join()
        retries = [e for e in logs if e["event"] == "heartbeat.post_retry"]
        assert [(e["heartbeat"], e["platform"], e["attempt"]) for e in retries] == [
            ("ops", "console", 1),
            ("ops", "console", 2),
        ]
        assert [e["retry_in_s"] for e in retries] == [0.01, 0.02]
        assert not [e for e in logs if e["event"] == "heartbeat.post_failed"]
        assert "💓 opsbot" in await tb.posted("💓")
        assert flaky.calls == 3
        assert gauge(tb, "ops") == FUTURE.timestamp()


async def test_a_post_refused_every_time_is_logged_and_the_gauge_stays() -> None:
    async with running_bot(config(heartbeat("ops")), clock=ManualClock(FUTURE)) as tb:
        tb.bot.heartbeats.outbox = FlakyOutbox(tb.bot.outbox, failures=100)
        tb.bot.heartbeats.retry_delays = (0.01, 0.01, 0.01)
        with capture_logs() as logs:
            await tb.exec("/heartbeat now ops")
            await tb.bot.scheduler.join()
        assert len([e for e in logs if e["event"] == "heartbeat.post_retry"]) == 3
        failed = [e for e in logs if e["event"] == "heartbeat.post_failed"]
        assert [(e["heartbeat"], e["platform"], e["channel"], e["attempts"]) for e in failed] == [
            ("ops", "console", "ops", 4)
        ]
        assert failed[0]["log_level"] == "error"
        assert [e["event"] for e in logs if e["event"] == "heartbeat.incomplete"]
        assert gauge(tb, "ops") is None
        assert tb.all_posted() == []
        assert rows(await tb.send("/heartbeat"))["ops"][4] == "-"


@pytest.mark.redis
async def test_queue_length_trend_and_a_critical_queue(rds: tuple[aioredis.Redis, str]) -> None:
    client, prefix = rds
    stream = f"{prefix}jobs"
    await client.xgroup_create(stream, "workers", id="$", mkstream=True)
    await client.xgroup_createconsumer(stream, "workers", "w1")  # one live worker
    queue = f"""
[[queues]]
name = "jobs"
redis_url = "{redis_url()}"
stream = "{stream}"
group = "workers"
thresholds.length = {{ warn = 3, critical = 5 }}
thresholds.workers = {{ warn = 1, critical = 0 }}
"""
    text = config(heartbeat("ops", queues="true", failing="true", trend_samples="3")) + queue
    async with running_bot(text, clock=ManualClock(FUTURE)) as tb:
        for count in (1, 2, 4, 1):  # lengths 1, 3, 7, 8
            for i in range(count):
                await client.xadd(stream, {"n": str(i)})
            await tb.exec("/heartbeat now")
            await tb.bot.scheduler.join()
        posted = await tb.posted("queue jobs  8 ")
        lines = posted.splitlines()
        assert lines[0].startswith("❌ 💓 opsbot")
        # The last 3 samples, 3 7 8, scaled from lowest to highest.
        assert "  queue jobs  8 ▁▇█  CRIT" in lines
        assert "  failing     queue jobs critical: length 8" in lines
        earlier = [p for p in tb.all_posted() if "queue jobs  3 " in p]
        assert "  queue jobs  3 ▁█" in earlier[0].splitlines()


async def test_a_waiting_entry_is_said_in_time_as_queue_says_it(
    rds: tuple[aioredis.Redis, str],
) -> None:
    client, prefix = rds
    stream = f"{prefix}slow"
    await client.xgroup_create(stream, "workers", id="$", mkstream=True)
    entry = await client.xadd(stream, {"n": "1"})
    await client.xreadgroup("workers", "w1", {stream: ">"})
    await client.xclaim(stream, "workers", "w1", 0, [entry], idle=3_953_240)  # 1h 5m 53s
    queue = f"""
[[queues]]
name = "slow"
redis_url = "{redis_url()}"
stream = "{stream}"
group = "workers"
thresholds.oldest_pending_idle = {{ warn = 60, critical = 300 }}
"""
    text = config(heartbeat("ops", queues="true", failing="true")) + queue
    async with running_bot(text, clock=ManualClock(FUTURE)) as tb:
        await tb.exec("/heartbeat now")
        await tb.bot.scheduler.join()
        posted = await tb.posted("failing")
    failing = next(line for line in posted.splitlines() if "failing" in line)
    assert "queue slow critical: oldest pending idle 1h 5m" in failing, failing
    assert "3953" not in posted


async def test_an_unreachable_queue_is_a_dot_in_the_trend_and_failing() -> None:
    queue = f"""
[[queues]]
name = "jobs"
redis_url = "redis://{refused_url().removeprefix("http://").rstrip("/")}/0"
stream = "jobs"
"""
    text = config(heartbeat("ops", queues="true", failing="true", version_uptime="false"))
    async with running_bot(text + queue, clock=ManualClock(FUTURE)) as tb:
        await tb.exec("/heartbeat now")
        posted = await tb.posted("💓")
        lines = posted.splitlines()
        assert lines[0] == "❌ 💓 opsbot heartbeat"
        assert any(line.startswith("  queue jobs  ? ·  Redis at 127.0.0.1:") for line in lines)
        assert any(
            "failing     queue jobs: Redis at 127.0.0.1:" in line and "unreachable" in line
            for line in lines
        )


def test_sparkline() -> None:
    assert sparkline([1, 2, 3, 5, 7]) == "▁▂▃▆█"
    assert sparkline([4, 4, 4]) == "▁▁▁"
    assert sparkline([0, None, 7]) == "▁·█"
    assert sparkline([None, None]) == "··"
    assert sparkline([]) == ""


# ---------------------------------------------------------------------- the facade


@pytest.mark.parametrize(
    ("line", "after", "expected"),
    [
        ("0 9 * * 1", FUTURE, datetime(2099, 1, 12, 9, 0, tzinfo=UTC)),  # Monday
        ("0 9 * * 0", FUTURE, datetime(2099, 1, 11, 9, 0, tzinfo=UTC)),  # Sunday
        ("0 9 * * 7", FUTURE, datetime(2099, 1, 11, 9, 0, tzinfo=UTC)),  # Sunday too
        ("0 9 * * mon-fri", FUTURE, datetime(2099, 1, 8, 9, 0, tzinfo=UTC)),
        ("0 9 * * 1-5", datetime(2099, 1, 9, 10, tzinfo=UTC), datetime(2099, 1, 12, 9, tzinfo=UTC)),
        # Both day fields restricted: cron runs when either matches (the 13th, or Friday).
        ("0 0 13 * 5", FUTURE, datetime(2099, 1, 9, 0, 0, tzinfo=UTC)),
        ("*/15 * * * *", FUTURE + timedelta(seconds=1), FUTURE + timedelta(minutes=15)),
    ],
)
def test_crontab_lines_mean_what_cron_means(line: str, after: datetime, expected: datetime) -> None:
    assert next_fire_time(crontab_trigger(line), after) == expected


async def test_scheduler_runs_jobs_by_apscheduler_and_survives_a_failing_one() -> None:
    """The real APScheduler wiring, at a 50 ms interval (the facade has no minimum; the
    config's 5 minutes is a rule for heartbeats)."""
    scheduler = Scheduler(SystemClock())
    calls = 0
    enough = asyncio.Event()

    async def tick() -> None:
        nonlocal calls
        calls += 1
        if calls >= 3:
            enough.set()
        if calls == 1:
            raise RuntimeError("first run fails")

    scheduler.add("tick", tick, Every(timedelta(milliseconds=50)))
    assert scheduler.next_run("tick") is None  # not started
    with capture_logs() as logs:
        await scheduler.start()
        try:
            await asyncio.wait_for(enough.wait(), 5)
        finally:
            await scheduler.stop()
    failed = [e for e in logs if e["event"] == "failure"]
    assert [(e["where"], e["job"]) for e in failed] == [("scheduler.job", "tick")]
    assert isinstance(failed[0]["exc_info"], RuntimeError)
    assert len(failed[0]["request_id"]) == 12  # the id a person could quote
    assert calls >= 3
    assert scheduler.next_run("tick") is None
    assert not scheduler.job("tick").running


async def test_stop_awaits_running_jobs_and_cancels_them_after_the_grace() -> None:
    clock = ManualClock(FUTURE)
    scheduler = Scheduler(clock, shutdown_grace=timedelta(seconds=0.2))
    finished: list[str] = []
    never = asyncio.Event()

    async def short() -> None:
        await asyncio.sleep(0.05)
        finished.append("short")

    async def stuck() -> None:
        await never.wait()
        finished.append("stuck")

    scheduler.add("short", short, Every(timedelta(minutes=5)))
    scheduler.add("stuck", stuck, Cron("30 * * * *"))
    await scheduler.start()
    assert scheduler.next_run("short") == FUTURE + timedelta(minutes=5)
    assert scheduler.next_run("stuck") == FUTURE + timedelta(minutes=30)
    first = scheduler.run_now("short")
    assert scheduler.run_now("short") is first  # never two runs of one job at once
    stuck_task = scheduler.run_now("stuck")
    with capture_logs() as logs:
        await scheduler.stop()
    assert finished == ["short"]
    assert stuck_task.cancelled()
    assert [e["jobs"] for e in logs if e["event"] == "scheduler.jobs_cancelled"] == [["job:stuck"]]
    with pytest.raises(RuntimeError, match="not running"):
        scheduler.run_now("short")


async def test_a_pause_before_start_is_kept() -> None:
    clock = ManualClock(FUTURE)
    scheduler = Scheduler(clock)

    async def job() -> None:
        return None

    scheduler.add("ops", job, Every(timedelta(minutes=30)))
    assert scheduler.pause("ops", FUTURE + timedelta(hours=1, minutes=10)) is None
    await scheduler.start()
    try:
        # The grid counts from the epoch, as on every replica: 12:30, 13:00, 13:30...
        assert scheduler.next_run("ops") == FUTURE + timedelta(hours=1, minutes=30)
        assert scheduler.paused_until("ops") == FUTURE + timedelta(hours=1, minutes=10)
    finally:
        await scheduler.stop()


async def test_every_replica_has_the_same_interval_grid() -> None:
    """Replicas started at different times run an interval job at the same moments, so
    a new leader neither doubles a heartbeat nor leaves a gap after a handover."""
    next_runs = []
    for started in (FUTURE + timedelta(minutes=7), FUTURE + timedelta(minutes=23, seconds=5)):
        scheduler = Scheduler(ManualClock(started))

        async def job() -> None:
            return None

        scheduler.add("ops", job, Every(timedelta(minutes=30)))
        await scheduler.start()
        try:
            next_runs.append(scheduler.next_run("ops"))
        finally:
            await scheduler.stop()
    assert next_runs == [FUTURE + timedelta(minutes=30)] * 2
