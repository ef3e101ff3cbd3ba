"""Which replica leads: leader-only work (heartbeats) runs on one replica at a time.

With ``state.redis_url`` set, the replicas compete for a Redis lease (:class:`LeaderLease`);
without it the process is alone and always leads (:class:`SoleLeader`). Both have the
:class:`Leadership` interface, which a scheduler facade uses to start and stop leader-only
jobs (``on_change``) and to guard each side effect (``check_fence`` / ``run_if_leader``).

The lease is a Redis key holding this replica's value, set with ``NX PX lease`` and renewed
(compare-and-pexpire) every ``renew_every``. Each acquisition also increments a fencing
counter in the same script; the number it returns is this term's token. Three rules keep two
replicas from acting as leader at once:

* ``is_leader`` is local and conservative: true only while the last successful acquire or
  renew was *sent* less than ``lease - margin`` ago (margin = lease / 5), by a monotonic
  clock that keeps counting while the machine sleeps. Redis starts the expiry when the
  command arrives, after we sent it, so a process that stalls or loses Redis stops calling
  itself leader before the key can expire and another replica can take it.
* ``check_fence`` asks Redis, in one script, whether the key still holds our value and the
  counter still equals our token, right before a side effect. It catches what the local
  view cannot: a clock that did not see a pause, a key lost in a Redis failover.
* The token itself is the true fence for a target that can compare it (pass it along,
  e.g. in the heartbeat payload, and refuse a smaller one than last seen). The counter is
  only monotonic as long as Redis keeps it: a Redis that loses its data restarts it.

The key and its counter (``KEY:fence``) are two keys in one script: a single Redis server
or a primary with replicas, not Redis Cluster.

Errors: :class:`LostLeadership` (an :class:`~bot.kernel.errors.InternalError`, ``original`` set
when Redis could not be asked) means "not done, because this replica is not, or cannot
prove it is, the leader". It is expected around a hand-over; a job sink should log it at
info level rather than report a failure.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import structlog
from msgspec import Struct
from pydantic import SecretStr

from bot.cluster.redis_clients import RedisClients, redis_error
from bot.kernel.errors import InternalError

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from bot.cluster.config import StateSection

log = structlog.get_logger("opsbot.leader")

T = TypeVar("T")

_MARGIN = 0.2  # of the lease: how long before Redis could let the key go we stand down
_UNREACHABLE_LOG_EVERY = 30.0  # seconds between two "still unreachable" log lines
_MAX_TIMEOUT = 2.0  # per Redis call; shorter when renewals are more frequent
_STOPPED = "stopped"
_LAPSED = "lease lapsed: Redis unreachable or this process stalled"


# CLOCK_MONOTONIC stops while the machine is suspended; Redis's clock does not, so a
# suspended leader would wake up believing its lease still ran. BOOTTIME counts it.
if sys.platform == "linux":

    def _default_monotonic() -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

else:
    _default_monotonic = time.monotonic


# KEYS[1] the lease, KEYS[2] the fencing counter. ARGV[1] our value, ARGV[2] lease in ms.
# A key that still holds our value (a reply lost to a timeout, a lapse of the local view)
# is taken again as a new term: the counter moves, so the old token is dead.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  return 0
end
return redis.call('INCR', KEYS[2])
"""

# ARGV[1] our value, ARGV[2] lease in ms, ARGV[3] our token.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[3] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# ARGV[1] our value, ARGV[2] our token.
_CHECK = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  return 1
end
return 0
"""

# ARGV[1] our value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# KEYS[3] a scheduled job's record of the last slot it ran (ms since the epoch).
# ARGV[1] our value, ARGV[2] our token, ARGV[3] the slot, ARGV[4] '1': only if a record
# exists. -1: not the leader; 0: that slot (or a later one) ran, or no record; 1: ours.
_CLAIM_SLOT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local last = redis.call('GET', KEYS[3])
if last == false then
  if ARGV[4] == '1' then return 0 end
elseif tonumber(last) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('SET', KEYS[3], ARGV[3])
return 1
"""


class LostLeadership(InternalError):
    """This replica is not the leader, or could not prove it is: the work was not done."""

    def __init__(self, holder: str, reason: str, original: BaseException | None = None) -> None:
        super().__init__(f"{holder} is not the leader: {reason}", original)
        self.holder = holder
        self.reason = reason


class LeaderView(Struct, frozen=True):
    """What /ready, /status and /metrics show of the cluster, as of the lease task's last
    round trip (every ``leader_renew_every``): no I/O to read it."""

    redis: str  # "ok", "unreachable", "not used" (one process alone)
    leader: str  # the leading replica's id, "none", or "unknown" (Redis unreachable)
    leading: bool  # this replica leads (its own conservative view)


class Leadership(Protocol):
    """What a scheduler facade needs to run leader-only work."""

    @property
    def is_leader(self) -> bool:
        """This replica's own, conservative view; no I/O."""
        ...

    @property
    def fence(self) -> int | None:
        """The token of the current term, None when not leading."""
        ...

    def view(self) -> LeaderView:
        """Redis reachability and who leads, as last seen; no I/O."""
        ...

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(True)`` on becoming leader and ``callback(False)`` on standing
        down, including at ``stop()``. Called in the event loop; must not block. Stand-down
        is reported before the lease is released, so leader-only jobs stop first."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def check_fence(self) -> int:
        """The current token if this replica still leads; raises :class:`LostLeadership`."""
        ...

    async def run_if_leader(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``check_fence()``, then ``fn()``; raises :class:`LostLeadership` without
        calling ``fn`` when this replica does not lead."""
        ...

    async def claim_slot(self, key: str, slot: int, *, only_after_a_claim: bool = False) -> bool:
        """Fenced, in one step: record in ``key`` that this term runs ``slot`` (an
        increasing number), True unless that slot or a later one was claimed before (by
        any leader). ``only_after_a_claim``: False too when nothing was ever claimed.
        Raises :class:`LostLeadership` when this replica does not lead."""
        ...


class LeaderLease:
    """One replica's side of the Redis lease. No I/O before ``start()``."""

    def __init__(
        self,
        clients: RedisClients,
        url: SecretStr | str,
        *,
        holder: str,
        lease: float,
        renew_every: float,
        key: str = "opsbot:leader",
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        if lease <= 0 or renew_every <= 0:
            raise ValueError("lease and renew_every must be positive")
        if renew_every * 2 > lease:
            raise ValueError(
                f"renew_every ({renew_every}s) must be at most half the lease ({lease}s)"
            )
        self._clients = clients
        self._url = url
        self._key = key
        self._fence_key = f"{key}:fence"
        self.holder = holder
        # The replica id plus a per-process suffix: two processes given the same replica
        # id (a misconfiguration, a restart while the old lease runs) stay distinct.
        self._value = f"{holder}/{secrets.token_hex(4)}"
        self._lease = lease
        self._lease_ms = max(1, round(lease * 1000))
        self._window = lease * (1 - _MARGIN)
        self._renew_every = renew_every
        self._timeout = min(renew_every, _MAX_TIMEOUT)
        self._monotonic = monotonic or _default_monotonic
        self._callbacks: list[Callable[[bool], None]] = []
        self._scripts: dict[str, AsyncScript] = {}
        self._task: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._token: int | None = None
        self._confirmed_at = 0.0  # monotonic time the last successful call was sent
        self._reported: int | None = None  # the token on_change last announced, if any
        self._failures = 0
        self._last_failure_log = -_UNREACHABLE_LOG_EVERY
        self._redis_ok: bool | None = None  # None: not asked yet
        self._leader: str | None = None  # the holder's replica id Redis last named

    @property
    def is_leader(self) -> bool:
        return self._token is not None and self._monotonic() - self._confirmed_at < self._window

    @property
    def fence(self) -> int | None:
        return self._token if self.is_leader else None

    def view(self) -> LeaderView:
        if self._redis_ok is None:
            return LeaderView("not asked yet", "unknown", leading=False)
        if not self._redis_ok:
            # The key may still name a replica, but nobody can renew it: nobody leads.
            return LeaderView("unreachable", "unknown", leading=self.is_leader)
        leading = self.is_leader
        return LeaderView("ok", self.holder if leading else self._leader or "none", leading)

    def on_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"leader-lease:{self.holder}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])
        if self._expiry is not None:
            self._expiry.cancel()
        held, self._token = self._token, None
        self._publish(_STOPPED)  # before the release: our jobs stop before another's start
        if held is None:
            return
        try:
            await self._script("release", _RELEASE)(keys=[self._key], args=[self._value])
        except (redis_error(), OSError) as exc:
            log.warning(
                "leader.release_failed",
                holder=self.holder,
                error=str(exc),
                hint=f"the lease lapses on its own within {self._lease:g}s",
            )

    async def check_fence(self) -> int:
        token = self._token
        if token is None or not self.is_leader:
            raise LostLeadership(self.holder, "no current lease")
        try:
            ok = await self._script("check", _CHECK)(
                keys=[self._key, self._fence_key], args=[self._value, token]
            )
        except (redis_error(), OSError) as exc:
            raise LostLeadership(self.holder, f"Redis could not confirm it ({exc})", exc) from exc
        if not ok:
            if self._token == token:
                self._token = None
                self._publish("fenced: the lease or its token changed in Redis")
            raise LostLeadership(self.holder, "another replica holds the lease")
        if not self.is_leader:  # the round trip outlived the local window
            raise LostLeadership(self.holder, "lease lapsed while confirming it")
        return token

    async def run_if_leader(self, fn: Callable[[], Awaitable[T]]) -> T:
        await self.check_fence()
        _honour_cancellation()  # a job cancelled during the check must not go on to fn
        return await fn()

    async def claim_slot(self, key: str, slot: int, *, only_after_a_claim: bool = False) -> bool:
        token = self._token
        if token is None or not self.is_leader:
            raise LostLeadership(self.holder, "no current lease")
        try:
            won = await self._script("claim_slot", _CLAIM_SLOT)(
                keys=[self._key, self._fence_key, key],
                args=[self._value, token, slot, "1" if only_after_a_claim else "0"],
            )
        except (redis_error(), OSError) as exc:
            raise LostLeadership(self.holder, f"Redis could not confirm it ({exc})", exc) from exc
        if int(won) < 0:
            if self._token == token:
                self._token = None
                self._publish("fenced: the lease or its token changed in Redis")
            raise LostLeadership(self.holder, "another replica holds the lease")
        return bool(won)

    # -- the background task -------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self._attempt()
            except (redis_error(), OSError) as exc:
                self._unreachable(loop.time(), exc)
            except Exception:
                # Never let the task die: a dead task would look like a healthy follower.
                log.exception("leader.attempt_failed", holder=self.holder)
            _honour_cancellation()
            self._publish(_LAPSED)
            await asyncio.sleep(max(0.0, began + self._renew_every - loop.time()))

    async def _attempt(self) -> None:
        sent = self._monotonic()
        if self._token is not None:
            renewed = await self._script("renew", _RENEW)(
                keys=[self._key, self._fence_key],
                args=[self._value, self._lease_ms, self._token],
            )
            self._reachable()
            if renewed:
                self._confirmed(sent)
                self._leader = self.holder
                return
            self._token = None
            self._publish("the lease expired or changed hands in Redis")
        token = await self._script("acquire", _ACQUIRE)(
            keys=[self._key, self._fence_key], args=[self._value, self._lease_ms]
        )
        self._reachable()
        if token:
            self._token = int(token)
            self._confirmed(sent)
            self._leader = self.holder
        else:
            self._leader = await self._holder_now()

    async def _holder_now(self) -> str | None:
        """The replica id in the lease key (its value is ``<replica id>/<suffix>``)."""
        client = self._clients.client(self._url, timeout=self._timeout)
        value = await client.get(self._key)
        return None if value is None else str(value).rpartition("/")[0] or str(value)

    def _confirmed(self, sent: float) -> None:
        self._confirmed_at = sent
        # Report the lapse when it happens, even if a Redis call is hanging then.
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, sent + self._window - self._monotonic())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._publish, _LAPSED)

    def _publish(self, reason: str) -> None:
        """Tell on_change and the log when ``is_leader`` changed since the last report."""
        leading = self.is_leader
        if leading == (self._reported is not None):
            return
        if leading:
            self._reported = self._token
            log.info("leader.acquired", holder=self.holder, fence=self._token)
        else:
            fence, self._reported = self._reported, None
            if reason == _STOPPED:
                log.info("leader.stood_down", holder=self.holder, fence=fence, reason=reason)
            else:
                log.warning("leader.lost", holder=self.holder, fence=fence, reason=reason)
        for callback in list(self._callbacks):
            try:
                callback(leading)
            except Exception:
                log.exception("leader.callback_failed", holder=self.holder)

    def _unreachable(self, now: float, exc: BaseException) -> None:
        self._redis_ok = False
        self._failures += 1
        if now - self._last_failure_log >= _UNREACHABLE_LOG_EVERY:
            self._last_failure_log = now
            log.warning(
                "leader.redis_unreachable",
                holder=self.holder,
                error=str(exc) or type(exc).__name__,
                failures=self._failures,
                hint="retrying every renew interval; a lease not renewed in time is given up",
            )

    def _reachable(self) -> None:
        self._redis_ok = True
        if self._failures:
            log.info("leader.redis_back", holder=self.holder, failures=self._failures)
            self._failures = 0
            self._last_failure_log = -_UNREACHABLE_LOG_EVERY

    def _script(self, name: str, text: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            client = self._clients.client(self._url, timeout=self._timeout)
            script = self._scripts[name] = client.register_script(text)
        return script


class SoleLeader:
    """The only replica (no ``state.redis_url``): it leads from construction to ``stop()``."""

    def __init__(self, holder: str = "sole") -> None:
        self.holder = holder
        self._stopped = False
        self._started = False
        self._callbacks: list[Callable[[bool], None]] = []
        self._slots: dict[str, int] = {}  # claim_slot's records: this process is alone

    @property
    def is_leader(self) -> bool:
        return not self._stopped

    @property
    def fence(self) -> int | None:
        return 1 if self.is_leader else None

    def view(self) -> LeaderView:
        return LeaderView("not used", self.holder, leading=self.is_leader)

    def on_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        if not self._started:
            self._started, self._stopped = True, False
            self._notify(True)

    async def stop(self) -> None:
        if self._started:
            self._started, self._stopped = False, True
            self._notify(False)

    async def check_fence(self) -> int:
        if self._stopped:
            raise LostLeadership(self.holder, "stopped")
        return 1

    async def run_if_leader(self, fn: Callable[[], Awaitable[T]]) -> T:
        await self.check_fence()
        return await fn()

    async def claim_slot(self, key: str, slot: int, *, only_after_a_claim: bool = False) -> bool:
        await self.check_fence()
        last = self._slots.get(key)
        if (last is None and only_after_a_claim) or (last is not None and last >= slot):
            return False
        self._slots[key] = slot
        return True

    def _notify(self, leading: bool) -> None:
        for callback in list(self._callbacks):
            try:
                callback(leading)
            except Exception:
                log.exception("leader.callback_failed", holder=self.holder)


def _honour_cancellation() -> None:
    """Raise CancelledError if this task was asked to stop.

    On Python 3.11, ``asyncio.wait_for`` (which redis-py uses around socket writes) drops a
    cancellation that arrives as the wrapped call completes: the call returns normally and
    the task runs on. Without this check ``stop()`` could wait forever for the lease task.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def leadership_for(state: StateSection, clients: RedisClients, holder: str) -> Leadership:
    """The lease when replicas share a Redis, else the sole leader."""
    if state.redis_url is None:
        return SoleLeader(holder)
    return LeaderLease(
        clients,
        state.redis_url,
        holder=holder,
        lease=state.leader_lease.total_seconds(),
        renew_every=state.leader_renew_every.total_seconds(),
    )


__all__ = [
    "LeaderLease",
    "LeaderView",
    "Leadership",
    "LostLeadership",
    "SoleLeader",
    "leadership_for",
]
