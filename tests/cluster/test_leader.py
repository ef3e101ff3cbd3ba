"""Leader election among replicas: a Redis lease with a fencing token (bot/cluster/leader.py).

Short leases (0.6 s, renewed every 0.2 s) keep each test to a second or two. A replica
that must stall runs on its own event loop in a thread, so the test can block that loop
(``time.sleep``) while the other replica carries on; a replica that must die is a
subprocess killed with SIGKILL; a replica cut off from Redis talks through a proxy that
can go silent.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from bot.cluster.config import StateSection
from bot.cluster.leader import LeaderLease, LostLeadership, SoleLeader, leadership_for
from bot.cluster.redis_clients import RedisClients
from tests.infra import redis_url

T = TypeVar("T")

LEASE = 0.6
RENEW = 0.2
SLACK = 0.3  # scheduling and round trips on a busy CI machine


@pytest.fixture
async def clients() -> AsyncIterator[RedisClients]:
    clients = RedisClients()
    yield clients
    await clients.close()


@pytest.fixture
async def key(clients: RedisClients) -> AsyncIterator[str]:
    """A lease key of this test's own, deleted (with its fence counter) afterwards."""
    name = f"opsbot:test:leader:{uuid.uuid4().hex}"
    yield name
    await clients.client(redis_url(), timeout=2).delete(name, f"{name}:fence")


def make_lease(
    clients: RedisClients,
    key: str,
    holder: str,
    *,
    url: str | None = None,
    lease: float = LEASE,
    renew_every: float = RENEW,
    monotonic: Callable[[], float] | None = None,
) -> LeaderLease:
    return LeaderLease(
        clients,
        url or redis_url(),
        key=key,
        holder=holder,
        lease=lease,
        renew_every=renew_every,
        monotonic=monotonic,
    )


async def eventually(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails after ``within``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"not {what} within {within}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


class Changes:
    """What a lease reported through on_change, and when (time.monotonic)."""

    def __init__(self, lease: LeaderLease) -> None:
        self.seen: list[tuple[bool, float]] = []
        lease.on_change(lambda leading: self.seen.append((leading, time.monotonic())))

    def values(self) -> list[bool]:
        return [leading for leading, _ in self.seen]

    def when(self, leading: bool) -> float:
        return next(at for value, at in self.seen if value is leading)


class ThreadReplica:
    """A lease on its own event loop in a thread: another process, as far as the lease
    can tell, whose event loop the test can block."""

    def __init__(self, key: str, holder: str, monotonic: Callable[[], float] | None = None):
        self.clients = RedisClients()  # its connections belong to its loop
        self.lease = make_lease(self.clients, key, holder, monotonic=monotonic)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=holder, daemon=True)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def stall(self, seconds: float) -> None:
        """Block its event loop, as a long synchronous call or a GC pause would."""
        self._loop.call_soon_threadsafe(time.sleep, seconds)

    async def __aenter__(self) -> ThreadReplica:
        self._thread.start()
        await self.run(self.lease.start())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.run(self.lease.stop())
            await self.run(self.clients.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10)
            self._loop.close()


class PausableClock:
    """time.monotonic that can stop, like the clock of a suspended VM that did not count
    the pause."""

    def __init__(self) -> None:
        self._stopped_at: float | None = None

    def __call__(self) -> float:
        return time.monotonic() if self._stopped_at is None else self._stopped_at

    def stop(self) -> None:
        self._stopped_at = time.monotonic()


class RedisProxy:
    """A TCP proxy to the test Redis that can go silent (a partition: requests and replies
    are dropped, calls time out) and heal."""

    def __init__(self, url: str) -> None:
        target = urlsplit(url)
        self._host, self._port = target.hostname or "127.0.0.1", target.port or 6379
        self._path = target.path
        self.silent = False
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RedisProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}{self._path}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._drop_connections()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    def go_silent(self) -> None:
        self.silent = True

    def heal(self) -> None:
        self.silent = False
        self._drop_connections()  # their streams lost bytes while silent

    def _drop_connections(self) -> None:
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.append(client_w)
        try:
            upstream_r, upstream_w = await asyncio.open_connection(self._host, self._port)
            self._writers.append(upstream_w)
            await asyncio.gather(
                self._pump(client_r, upstream_w),
                self._pump(upstream_r, client_w),
                return_exceptions=True,
            )
        except OSError:
            pass
        finally:
            client_w.close()
            self._handlers.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if not self.silent:
                    sink.write(data)
                    await sink.drain()
        finally:
            sink.close()


# -- the lease ----------------------------------------------------------------------------


@pytest.mark.redis
async def test_of_two_replicas_exactly_one_leads(clients: RedisClients, key: str) -> None:
    one, two = make_lease(clients, key, "one"), make_lease(clients, key, "two")
    await asyncio.gather(one.start(), two.start())
    try:
        await eventually(lambda: one.is_leader or two.is_leader, 2, "anyone leading")
        for _ in range(50):  # 1 s: five renewals
            assert [one.is_leader, two.is_leader].count(True) == 1
            await asyncio.sleep(0.02)
        leader, follower = (one, two) if one.is_leader else (two, one)
        assert leader.fence is not None and follower.fence is None
        assert await leader.check_fence() == leader.fence
        with pytest.raises(LostLeadership):
            await follower.check_fence()
        holder = await clients.client(redis_url(), timeout=2).get(key)
        assert str(holder).startswith(f"{leader.holder}/")
    finally:
        await asyncio.gather(one.stop(), two.stop())


@pytest.mark.redis
async def test_a_released_lease_is_taken_over_within_a_renew_interval(
    clients: RedisClients, key: str
) -> None:
    first = make_lease(clients, key, "first")
    first_changes = Changes(first)
    second = make_lease(clients, key, "second")
    await first.start()
    await eventually(lambda: first.is_leader, 2, "first leading")
    await second.start()
    try:
        await asyncio.sleep(2 * RENEW)
        assert not second.is_leader
        first_fence = first.fence
        assert first_fence is not None

        await first.stop()
        assert not first.is_leader
        assert first_changes.values() == [True, False]
        await eventually(lambda: second.is_leader, RENEW + SLACK, "second leading")
        assert second.fence is not None and second.fence > first_fence
        assert await clients.client(redis_url(), timeout=2).get(f"{key}:fence") == str(second.fence)
    finally:
        await second.stop()


_DOOMED = """
import asyncio, sys
from bot.cluster.leader import LeaderLease
from bot.cluster.redis_clients import RedisClients

async def main() -> None:
    url, key, lease, renew = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    leader = LeaderLease(RedisClients(), url, key=key, holder="doomed", lease=lease,
                         renew_every=renew)
    leader.on_change(lambda leading: print("LEADING" if leading else "STOOD DOWN", flush=True))
    await leader.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.redis
async def test_a_killed_leader_is_replaced_within_the_lease(
    clients: RedisClients, key: str
) -> None:
    doomed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DOOMED,
        *(redis_url(), key, str(LEASE), str(RENEW)),
        stdout=asyncio.subprocess.PIPE,
    )
    survivor = make_lease(clients, key, "survivor")
    try:
        assert doomed.stdout is not None
        while (await asyncio.wait_for(doomed.stdout.readline(), 20)).strip() != b"LEADING":
            pass
        await survivor.start()
        await asyncio.sleep(3 * RENEW)
        assert not survivor.is_leader  # the doomed one keeps renewing

        doomed.kill()  # no stop(), no release: the key lapses on its own
        await doomed.communicate()
        took = await eventually(lambda: survivor.is_leader, LEASE + RENEW + SLACK, "taken over")
        # Not before the key could lapse: the last renewal was at most RENEW before the kill.
        assert took >= LEASE - RENEW - 0.05
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.communicate()
        await survivor.stop()


@pytest.mark.redis
async def test_a_stalled_leader_stands_down_before_it_is_replaced(
    clients: RedisClients, key: str
) -> None:
    async with ThreadReplica(key, "stalled") as old:
        await eventually(lambda: old.lease.is_leader, 2, "old leading")
        old_fence = old.lease.fence
        assert old_fence is not None
        new = make_lease(clients, key, "new")
        old_view_at_handover: list[bool] = []
        new.on_change(lambda leading: old_view_at_handover.append(old.lease.is_leader))
        await new.start()
        try:
            old.stall(2 * LEASE)  # no renewals: its loop is blocked
            await eventually(lambda: new.is_leader, LEASE + RENEW + SLACK, "new leading")
            # Its own clock told the stalled replica it had stood down before the hand-over,
            # without running any code.
            assert old_view_at_handover == [False]
            with pytest.raises(LostLeadership):
                await old.run(old.lease.check_fence())  # runs once the stall is over
            assert not old.lease.is_leader
            assert new.is_leader
            assert await new.check_fence() > old_fence
        finally:
            await new.stop()


@pytest.mark.redis
async def test_the_fence_stops_a_leader_whose_clock_missed_the_stall(
    clients: RedisClients, key: str
) -> None:
    clock = PausableClock()
    async with ThreadReplica(key, "asleep", monotonic=clock) as old:
        await eventually(lambda: old.lease.is_leader, 2, "old leading")
        new = make_lease(clients, key, "new")
        await new.start()
        try:
            clock.stop()  # like a suspended VM whose monotonic clock skipped the pause
            old.stall(2 * LEASE)
            await eventually(lambda: new.is_leader, LEASE + RENEW + SLACK, "new leading")
            assert old.lease.is_leader  # its own view is wrong ...
            done: list[str] = []

            async def post_heartbeat() -> None:
                done.append("heartbeat")

            with pytest.raises(LostLeadership):  # ... the fence is not
                await old.run(old.lease.run_if_leader(post_heartbeat))
            assert done == []
            assert not old.lease.is_leader
            await new.run_if_leader(post_heartbeat)
            assert done == ["heartbeat"]
        finally:
            await new.stop()


@pytest.mark.redis
async def test_the_fence_catches_a_lease_lost_in_redis(clients: RedisClients, key: str) -> None:
    # Renewing rarely, the old leader's own view lags for up to 1.5 s; the fence does not.
    old = make_lease(clients, key, "old", lease=3.0, renew_every=1.5)
    old_changes = Changes(old)
    new = make_lease(clients, key, "new", lease=3.0, renew_every=0.05)
    await old.start()
    try:
        await eventually(lambda: old.is_leader, 2, "old leading")
        await new.start()
        await asyncio.sleep(0.1)
        assert not new.is_leader
        await clients.client(redis_url(), timeout=2).delete(key)  # a failover lost the key
        await eventually(lambda: new.is_leader, 1, "new leading")
        assert old.is_leader

        with pytest.raises(LostLeadership, match="another replica holds the lease"):
            await old.check_fence()
        assert not old.is_leader and old.fence is None
        assert old_changes.values() == [True, False]
    finally:
        await asyncio.gather(old.stop(), new.stop())


@pytest.mark.redis
async def test_a_leader_cut_off_from_redis_stands_down_first_and_rejoins(
    clients: RedisClients, key: str
) -> None:
    async with RedisProxy(redis_url()) as proxy:
        cut = make_lease(clients, key, "cut", url=proxy.url)
        other = make_lease(clients, key, "other")
        cut_changes, other_changes = Changes(cut), Changes(other)
        await cut.start()
        try:
            await eventually(lambda: cut.is_leader, 2, "cut leading")
            await other.start()
            await asyncio.sleep(2 * RENEW)

            proxy.go_silent()
            await eventually(lambda: other.is_leader, LEASE + 2 * RENEW + SLACK, "other leading")
            assert cut_changes.when(False) < other_changes.when(True)
            assert not cut.is_leader

            proxy.heal()
            await asyncio.sleep(4 * RENEW)
            assert other.is_leader and not cut.is_leader  # back, as a follower

            await other.stop()
            await eventually(lambda: cut.is_leader, 2 * RENEW + SLACK, "cut leading again")
            assert cut_changes.values() == [True, False, True]
        finally:
            await asyncio.gather(cut.stop(), other.stop())


async def test_unreachable_redis_means_not_leading_and_nothing_raised(
    clients: RedisClients,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lease = LeaderLease(
        clients, f"redis://127.0.0.1:{port}/0", holder="alone", lease=LEASE, renew_every=RENEW
    )
    with capture_logs() as logs:
        await lease.start()
        await asyncio.sleep(5 * RENEW)
        assert not lease.is_leader and lease.fence is None
        with pytest.raises(LostLeadership):
            await lease.check_fence()
        await lease.stop()
    # Five failed attempts, one log line: the rest wait for the next rate-limit window.
    assert [e["event"] for e in logs] == ["leader.redis_unreachable"]


# -- without Redis, and the settings --------------------------------------------------------


async def test_without_redis_the_process_is_the_sole_leader() -> None:
    sole = SoleLeader("alone")
    changes: list[bool] = []
    sole.on_change(changes.append)
    assert sole.is_leader

    await sole.start()
    assert changes == [True]
    assert await sole.check_fence() == sole.fence == 1

    async def post_heartbeat() -> str:
        return "posted"

    assert await sole.run_if_leader(post_heartbeat) == "posted"
    await sole.stop()
    assert changes == [True, False] and not sole.is_leader
    with pytest.raises(LostLeadership):
        await sole.check_fence()


def test_the_state_settings_choose_the_leadership() -> None:
    clients = RedisClients()  # no I/O: nothing to close
    assert isinstance(leadership_for(StateSection(), clients, "one"), SoleLeader)
    state = StateSection.model_validate(
        {"redis_url": "redis://127.0.0.1:1/0", "leader_lease": "3s", "leader_renew_every": "1s"}
    )
    lease = leadership_for(state, clients, "one")
    assert isinstance(lease, LeaderLease) and not lease.is_leader
    assert StateSection().leader_lease.total_seconds() == 15
    with pytest.raises(ValidationError, match="at most half of leader_lease"):
        StateSection.model_validate({"leader_lease": "10s", "leader_renew_every": "6s"})
    with pytest.raises(ValueError, match="at most half the lease"):
        LeaderLease(clients, "redis://127.0.0.1:1/0", holder="one", lease=1, renew_every=0.6)


@pytest.mark.redis
async def test_stop_ends_the_lease_task_whenever_it_comes(clients: RedisClients, key: str) -> None:
    # Python 3.11's asyncio.wait_for (inside redis-py) can drop a cancellation that lands
    # as a Redis call completes; stop() must not then wait for the lease task forever.
    for cycle in range(100):
        lease = make_lease(clients, key, f"busy-{cycle}", lease=0.2, renew_every=0.001)
        await lease.start()
        await asyncio.sleep(random.uniform(0, 0.01))
        try:
            await asyncio.wait_for(lease.stop(), 2)
        except TimeoutError:
            await _put_down_lease_tasks()  # or the event loop could never close
            pytest.fail(f"stop() did not end the lease task (cycle {cycle})")
        assert not lease.is_leader


async def _put_down_lease_tasks() -> None:
    for task in asyncio.all_tasks():
        while task.get_name().startswith("leader-lease:") and not task.done():
            task.cancel()
            await asyncio.sleep(0.01)
