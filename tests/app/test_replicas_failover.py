"""Replicas under chaos: real ``opsbot run`` processes on one Redis and one PostgreSQL,
each talking to a fake Telegram (tests/fakes/telegram_server.py, in this process).

* A ``max_concurrent = 1`` action runs on one replica, which is killed (-9): its job runs
  on. The other replica must not start the action again while that job's processes live,
  however long after the lease; once they are gone, it may.
* A replica leading the heartbeats is killed just before a slot of the schedule: the
  survivor takes the lease over after the slot and posts it once, marked late. The same
  when Redis stops answering across a slot: the replica leading once it is back posts it.
  Every slot is posted once; the one after is on time, unless the host stalled for longer
  than the lease again (then the leader's log says it lost the lease, and it too is late).

The config refuses heartbeats more often than every 5 minutes, so each process runs
``opsbot run`` with that constant lowered to 5 seconds (``_LAUNCH``); everything else is
the command as an operator runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.audit import upgrade
from tests.app.test_replicas_chaos import redis_server
from tests.app.test_replicas_run import (
    OPS,
    START_WITHIN,
    Replica,
    Replicas,
    heartbeats,
    utc,
)
from tests.auditlog_helpers import pg_database
from tests.fakes.telegram_server import FakeTelegram
from tests.processes import ROOT, clean_env

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.timeout(180)]
# Each test has a redis-server of its own (tests/app/test_replicas_chaos.py): no lease or
# slot left by a bot of another test in a shared database can hold its replicas off.

SCRIPTS = ROOT / "tests" / "scripts"
BOB = 222222222
EVERY = 10  # seconds between two heartbeats

_LAUNCH = """
import sys
from datetime import timedelta

import bot.features.heartbeats.config

# The test cannot wait 5 minutes between heartbeats.
bot.features.heartbeats.config.MIN_INTERVAL = timedelta(seconds=5)

from bot.app.cli import main

sys.exit(main())
"""


@dataclass
class FastReplica(Replica):
    """A Replica whose heartbeats may come every few seconds, and that may be started
    again after a kill (its log goes on in the same file)."""

    async def start(self, config: Path) -> None:
        if self._log is not None:  # started again after a kill
            self._log.close()
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LAUNCH,
            "run",
            "--config",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._log,
            cwd=ROOT,
            env=clean_env(),
        )


def base_config(
    replica: str, *, tmp_path: Path, database_url: str, redis: str, lease: str, renew: str
) -> str:
    return f"""
[bot]
name = "opsbot"
replica_id = "{replica}"
data_dir = "{tmp_path / replica}"
log_format = "json"

[http]
enabled = false

[roles.admin]
[roles.oncall]

[identities.bob]
roles = ["oncall"]
ids = ["telegram:{BOB}"]

[channels.ops]
ids = ["telegram:{OPS}"]

[state]
redis_url = "{redis}"
leader_lease = "{lease}"
leader_renew_every = "{renew}"

[audit]
database_url = "{database_url}"
"""


@contextlib.asynccontextmanager
async def started(
    replicas: Replicas, configs: list[str], tmp_path: Path, database_url: str
) -> AsyncIterator[None]:
    await upgrade(database_url)  # what `opsbot db upgrade` does before replicas start
    try:
        for replica, text in zip(replicas.all, configs, strict=True):
            config = tmp_path / f"{replica.name}.toml"
            config.write_text(text)
            await replica.start(config)
        await replicas.until(
            lambda: all(r.started for r in replicas.all), START_WITHIN, "both start"
        )
        yield
    finally:
        for replica in replicas.all:
            await replica.stop()


# ------------------------------------------------------------------------ job slots


def runs(record: Path) -> list[tuple[int, float, float | None]]:
    """(pid, start, end or None) of each run the record script wrote, in start order."""
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    if record.exists():
        for line in record.read_text().splitlines():
            what, at, pid = line.split()
            (starts if what == "start" else ends)[int(pid)] = float(at)
    return sorted(((pid, at, ends.get(pid)) for pid, at in starts.items()), key=lambda r: r[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by init) is not running.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


@pytest.mark.parametrize(("then", "seconds"), [("the job ends", 9), ("its replica restarts", 40)])
async def test_a_killed_replicas_job_keeps_its_slot_while_its_processes_live(
    tmp_path: Path, then: str, seconds: int
) -> None:
    """Until the job ends by itself (the other replica, on the same host, sees it gone in
    /proc), or until its replica restarts (it stops its orphans, then frees their slots)."""
    record = tmp_path / "runs.txt"
    action = f"""
[policy.commands.run]
roles = ["oncall"]

[jobs]
ack_after = "1s"
shutdown_grace = "1s"

[[actions]]
name = "serial"
argv = ["{SCRIPTS}/record_run.sh", "{seconds}"]
env = {{ RECORD = "{record}" }}
risk = "write"
roles = ["oncall"]
max_concurrent = 1
timeout = "60s"
kill_grace = "1s"
"""
    # Replica ids of its own: a bot of another test starting as "one" on this host would
    # stop the orphaned job (rightly: its own replica restarted) before the test is done.
    tag = secrets.token_hex(3)
    names = (f"one-{tag}", f"two-{tag}")
    replicas = Replicas([FastReplica(n, tmp_path / f"{n}.log") for n in names])
    one, two = replicas.all
    async with (
        pg_database() as database_url,
        redis_server(tmp_path) as (redis, _),
        FakeTelegram() as tg_one,
        FakeTelegram() as tg_two,
    ):
        # A short lease: on the old code the dead replica's slot was free after it.
        configs = [
            base_config(
                r.name,
                tmp_path=tmp_path,
                database_url=database_url,
                redis=redis,
                lease="2s",
                renew="0.5s",
            )
            + action
            + tg.config(set_commands_on_start=False)
            for r, tg in ((one, tg_one), (two, tg_two))
        ]
        # Each fake numbers its updates from the same start, and an update id two replicas
        # both saw is one event to the shared dedup: two's updates get numbers of their own.
        tg_two.command("/help", user_id=BOB, queue=False)
        async with started(replicas, configs, tmp_path, database_url):
            try:
                tg_one.command("/run serial", user_id=BOB)
                await replicas.until(lambda: len(runs(record)) == 1, 15, "the job starts on one")
                first_pid = runs(record)[0][0]
                # Its answer sent first: one's outbox has nothing left for two to deliver.
                await tg_one.wait_call("sendMessage", lambda c: "running as job" in c.text)
                replicas.killed.add(one.name)
                await one.kill()
                # Well past the lease: the slot is not kept alive by renewals any more.
                await asyncio.sleep(3)
                assert alive(first_pid), replicas.report("the job died with its bot")

                tg_two.command("/run serial", user_id=BOB)
                refusal = await tg_two.wait_call(
                    "sendMessage", lambda c: c.params.get("chat_id") == BOB, within=15
                )
                assert alive(first_pid), replicas.report("the job ended before the refusal")
                assert len(runs(record)) == 1, replicas.report(
                    f"a second run started while the first still ran: {runs(record)}"
                )
                assert "/serial is already running once (max_concurrent = 1)" in refusal.text
                assert f"on replica {one.name}" in refusal.text, refusal.text

                if then == "the job ends":
                    # Once the orphan has ended by itself, the slot is taken over.
                    await replicas.until(
                        lambda: not alive(first_pid), 15, "the first job ends by itself"
                    )
                else:
                    await one.start(tmp_path / f"{one.name}.toml")
                    replicas.killed.discard(one.name)
                    await replicas.until(
                        lambda: len(one.events("opsbot.started")) == 2,
                        START_WITHIN,
                        f"{one.name} starts again",
                    )
                    assert not alive(first_pid), replicas.report("the orphan was not stopped")
                    assert one.events("jobs.slot_released_after_restart"), replicas.report(
                        "its slot was not released"
                    )
                asked = len(tg_two.calls_of("sendMessage"))
                tg_two.command("/run serial", user_id=BOB)
                await replicas.until(
                    lambda: len(runs(record)) == 2, 15, "the job starts on two once it is free"
                )
                answers = tg_two.calls_of("sendMessage")[asked:]
                assert not any("already running" in c.text for c in answers), answers
                if then == "the job ends":
                    assert two.events("jobs.slot_reclaimed"), replicas.report("not reclaimed")
            finally:
                for pid, _, _ in runs(record):
                    with contextlib.suppress(OSError):
                        os.killpg(os.getpgid(pid), signal.SIGKILL)
        (_, _, end_1), (_, start_2, _) = runs(record)
        if then == "the job ends":
            assert end_1 is not None and end_1 <= start_2, f"two runs at once: {runs(record)}"
        else:
            assert end_1 is None, f"the orphan was not stopped: {runs(record)}"


# ------------------------------------------------------------------------ heartbeats


def next_slot(margin: float) -> float:
    """The next slot of the heartbeat (epoch seconds) at least ``margin`` seconds away."""
    return float((math.floor((time.time() + margin) / EVERY) + 1) * EVERY)


# Called a second before a slot; returns once the slot has passed and a replica leads again.
Interruption = Callable[[Replicas], Awaitable[None]]


async def missed_slot_is_posted_once_late(
    tmp_path: Path, redis: str, interrupt: Interruption
) -> None:
    replicas = Replicas([FastReplica(n, tmp_path / f"{n}.log") for n in ("one", "two")])
    beat = f"""
[[heartbeat]]
name = "ops"
channels = ["ops"]
interval = "{EVERY}s"
"""
    async with pg_database() as database_url, FakeTelegram() as tg:
        configs = [
            base_config(
                r.name,
                tmp_path=tmp_path,
                database_url=database_url,
                redis=redis,
                lease="3s",
                renew="1s",
            )
            + beat
            + tg.config(set_commands_on_start=False)
            for r in replicas.all
        ]
        async with started(replicas, configs, tmp_path, database_url):
            await replicas.until(
                lambda: sum(r.leading for r in replicas.all) == 1, 10, "one of them leads"
            )
            # One slot posted on time: the shared record the next leader compares with.
            await replicas.until(lambda: bool(heartbeats(tg)), EVERY + 5, "a first heartbeat")

            # A second before a slot: the lease lapses only after it.
            slot = next_slot(margin=3)
            await asyncio.sleep(max(0.0, slot - 1.0 - time.time()))
            await interrupt(replicas)
            leading_again = time.time()
            assert leading_again > slot, "leading again before the slot came"
            # The slot after it, on time, and a few seconds more for any duplicate.
            await asyncio.sleep(max(0.0, slot + EVERY + 4 - time.time()))

        posts = [(at, call.text, slot_of(at, call.text)) for at, call in heartbeats(tg)]
        shown = [(utc(at), text.splitlines()[-1]) for at, text, _ in posts]
        # Never two posts for one slot.
        per_slot = Counter(for_slot for _, _, for_slot in posts)
        assert max(per_slot.values()) == 1, shown

        def posted_for(wanted: float) -> list[tuple[float, str, float]]:
            return [post for post in posts if post[2] == wanted]

        missed = posted_for(slot)
        assert len(missed) == 1, replicas.report(
            f"{len(missed)} heartbeats for the slot at {utc(slot)} UTC, not one: {shown}"
        )
        assert is_late(missed[0][1]), shown
        following = posted_for(slot + EVERY)
        assert len(following) == 1, shown
        # On time, unless the replica leading lost its lease again meanwhile (a host that
        # stalled for longer than the lease): then that slot too is one posted late.
        lapses = [r.name for r in replicas.all if lost_since(r, leading_again)]
        assert lapses or not is_late(following[0][1]), replicas.report(f"{shown}")


_LATE = re.compile(r"Heartbeat for (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC, posted late")


def is_late(text: str) -> bool:
    return _LATE.search(text) is not None


def slot_of(at: float, text: str) -> float:
    """The slot a post is for: the one a late post names, else the slot it came at."""
    late = _LATE.search(text)
    if late is None:
        return float(math.floor((at + 0.5) / EVERY) * EVERY)
    named = datetime.strptime(late.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return named.timestamp()


def lost_since(replica: Replica, since: float) -> bool:
    return any(
        datetime.fromisoformat(event["timestamp"]).timestamp() >= since
        for event in replica.events("leader.lost")
    )


async def test_a_heartbeat_slot_that_falls_in_a_leader_hand_over_is_posted_once_late(
    tmp_path: Path,
) -> None:
    async def kill_the_leader(replicas: Replicas) -> None:
        leader = next(r for r in replicas.all if r.leading)
        survivor = next(r for r in replicas.all if r is not leader)
        replicas.killed.add(leader.name)
        await leader.kill()
        await replicas.until(lambda: survivor.leading, 10, f"{survivor.name} takes over")

    async with redis_server(tmp_path) as (redis, _):
        await missed_slot_is_posted_once_late(tmp_path, redis, kill_the_leader)


async def test_a_heartbeat_slot_that_falls_in_a_redis_outage_is_posted_once_late(
    tmp_path: Path,
) -> None:
    """Redis frozen (SIGSTOP: its data kept, as in a network partition) across a slot: no
    replica can lead; once it answers again, the one that leads posts the slot late."""
    async with redis_server(tmp_path) as (redis, control):

        async def freeze_redis(replicas: Replicas) -> None:
            assert control.process is not None
            control.process.send_signal(signal.SIGSTOP)
            try:
                await replicas.until(
                    lambda: not any(r.leading for r in replicas.all), 10, "nobody leads"
                )
                await asyncio.sleep(2)
            finally:
                control.process.send_signal(signal.SIGCONT)
            await replicas.until(
                lambda: sum(r.leading for r in replicas.all) == 1, 15, "one leads again"
            )

        await missed_slot_is_posted_once_late(tmp_path, redis, freeze_redis)
