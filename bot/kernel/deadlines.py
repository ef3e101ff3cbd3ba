"""Deadlines for the hot path, checked a few times a second by one timer.

Every command used to arm two event-loop timers (its timeout, and how long its reply
waits for the audit commit) and cancel both a few milliseconds later; at thousands of
commands a second the timer heap churn cost more than the command itself
(bench/audit.py). Here a command's deadline is a dict entry and a receipt's is a deque
entry, and one timer, armed only while something is pending, looks at them every
``tick`` seconds. A deadline therefore fires up to one tick late, which is nothing next
to timeouts measured in seconds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

DEFAULT_TICK_S = 0.1


class Deadlines:
    def __init__(self, tick: float = DEFAULT_TICK_S) -> None:
        self._tick = tick
        self._limits: dict[_Limit, None] = {}
        # (when, future, callback): one wait length per queue keeps it ordered by ``when``.
        self._expiries: dict[float, deque[tuple[float, asyncio.Future[Any], Callable[[], None]]]]
        self._expiries = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def limit(self, seconds: float) -> _Limit:
        """``async with deadlines.limit(s):`` as ``asyncio.timeout(s)``: the task is
        cancelled when the time is up and the block raises ``TimeoutError``."""
        return _Limit(self, seconds)

    def expire(
        self, future: asyncio.Future[Any], after: float, on_expire: Callable[[], None]
    ) -> None:
        """Call ``on_expire`` if ``future`` is still not done ``after`` seconds from now.

        ``on_expire`` typically completes the future; a done future is just dropped."""
        loop = self._running_loop()
        queue = self._expiries.get(after)
        if queue is None:
            queue = self._expiries[after] = deque()
        queue.append((loop.time() + after, future, on_expire))
        self._arm(loop)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
            self._timer = None
        return loop

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._timer = loop.call_later(self._tick, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        loop = self._running_loop()
        now = loop.time()
        expired = [limit for limit in self._limits if limit.when <= now]
        for limit in expired:
            del self._limits[limit]
            limit.expire()
        for queue in self._expiries.values():
            while queue and queue[0][0] <= now:
                _, future, on_expire = queue.popleft()
                if not future.done():
                    on_expire()
        if self._limits or any(self._expiries.values()):
            self._arm(loop)


class _Limit:
    __slots__ = ("_cancelling", "_deadlines", "_expired", "_seconds", "_task", "when")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self._deadlines = deadlines
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._expired = False
        self.when = 0.0

    async def __aenter__(self) -> None:
        deadlines = self._deadlines
        loop = deadlines._running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.limit() must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.when = loop.time() + self._seconds
        deadlines._limits[self] = None
        deadlines._arm(loop)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._deadlines._limits.pop(self, None)
        if (
            self._expired
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            # Our cancel, not someone else's: report it as asyncio.timeout does.
            raise TimeoutError from exc

    def expire(self) -> None:
        if self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()
