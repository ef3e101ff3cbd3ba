"""Keeps one chat adapter connected: the one place that tries a platform again.

An adapter's ``start`` tries once. When it fails because the platform cannot be reached
(a ``transient`` AdapterError: connection refused, timeout, 5xx, 429), the keeper tries
again in the background with capped exponential back-off and jitter, while the other
adapters and the HTTP server serve. Once connected it watches the adapter's state: a
connection the platform library gave up on ("error: …") is closed and started afresh, the
same way. A permanent failure (a missing or refused token) is not retried: the same
config would be refused again, and hammering a platform with a bad token can get the
token or the IP blocked. The adapter stays in "error: …" (a 503 from /ready if it never
connected, ``degraded`` if it had) until the config is fixed and the bot restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Callable

import structlog
from msgspec import Struct

from bot.delivery.adapters import AdapterBoard
from bot.kernel.adapter import Adapter, AdapterError, MessageHandler

_log = structlog.get_logger("opsbot.runtime")


class Backoff(Struct, frozen=True):
    """``first`` s, doubling up to ``cap`` s; each wait is drawn from its upper half, so
    replicas that lost the platform together do not come back in step."""

    first: float = 1.0
    cap: float = 60.0
    watch_every: float = 5.0  # how often a connected adapter's state is read

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.first * 2.0 ** min(attempt, 32))
        wait = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311  (jitter, not a secret)
        return max(wait, retry_after or 0.0)


class AdapterKeeper:
    """Starts ``adapter`` and keeps it connected, reporting on ``board``. ``connected`` is
    called each time it connects, ``lost`` each time it is taken down to start again."""

    def __init__(
        self,
        adapter: Adapter,
        handler: MessageHandler,
        board: AdapterBoard,
        *,
        connected: Callable[[Adapter], None],
        lost: Callable[[Adapter], None],
        backoff: Backoff,
    ) -> None:
        self.adapter = adapter
        self.is_connected = False
        self._handler = handler
        self._board = board
        self._connected = connected
        self._lost = lost
        self._backoff = backoff
        self._first_try = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Returns after the first try, connected or not."""
        self._task = asyncio.create_task(self._run(), name=f"connect-{self.adapter.name}")
        waiting = asyncio.create_task(self._first_try.wait())
        await asyncio.wait({waiting, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()

    async def stop_trying(self) -> None:
        """Cancel a pending retry (and a start in progress, which cleans up after itself)
        and stop watching; a connected adapter stays connected for the caller to stop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._board.unwatch(self.adapter.name)

    async def _run(self) -> None:
        name = self.adapter.name
        self._board.set(name, "starting")
        while True:
            if not await self._connect():
                return
            reason = await self._watch()
            _log.warning("adapter.lost", adapter=name, error=reason, reconnecting=True)
            self._board.unwatch(name)
            self._board.set(name, f"connecting: {reason}")
            self.is_connected = False
            self._lost(self.adapter)
            try:
                await self.adapter.stop()
            except Exception:
                _log.exception("adapter.stop_failed", adapter=name)

    async def _connect(self) -> bool:
        """Try until connected (True) or refused for good (False)."""
        name = self.adapter.name
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                await self.adapter.start(self._handler)
            except AdapterError as exc:
                if not exc.transient:
                    self._board.set(name, f"error: {exc}")
                    _log.error("adapter.failed", adapter=name, error=str(exc))
                    self._first_try.set()
                    return False
                wait = self._backoff.delay(attempt, exc.retry_after)
                attempt += 1
                until = loop.time() + wait
                reason = str(exc)
                self._board.set(name, f"connecting: {reason}")
                self._board.watch(name, functools.partial(_connecting, reason, until, loop))
                _log.warning(
                    "adapter.unreachable",
                    adapter=name,
                    error=reason,
                    attempt=attempt,
                    next_try_s=round(wait, 1),
                )
                self._first_try.set()
                await asyncio.sleep(wait)
                self._board.watch(name, functools.partial(_trying, reason))
                continue
            except Exception as exc:  # a bug, or a vendor error the adapter did not expect
                self._board.set(name, f"error: {type(exc).__name__}: {exc}")
                _log.exception("adapter.failed", adapter=name)
                self._first_try.set()
                return False
            self._board.unwatch(name)
            self.is_connected = True
            self._connected(self.adapter)
            self._board.set(name, "connected")
            self._board.watch(name, self.adapter.state)
            _log.info("adapter.connected", adapter=name, attempts=attempt + 1)
            self._first_try.set()
            return True

    async def _watch(self) -> str:
        """Wait until the adapter reports an error its library will not recover from."""
        while True:
            await asyncio.sleep(self._backoff.watch_every)
            try:
                state = await self.adapter.state()
            except Exception as exc:
                state = f"error: {type(exc).__name__}: {exc}"
            self._board.set(self.adapter.name, state)  # its metric moves without a reader
            if state.startswith("error"):
                return state.removeprefix("error: ")


async def _connecting(reason: str, until: float, loop: asyncio.AbstractEventLoop) -> str:
    return f"connecting: {reason}, next try in {max(0, round(until - loop.time()))} s"


async def _trying(reason: str) -> str:
    return f"connecting: {reason}, trying again now"
