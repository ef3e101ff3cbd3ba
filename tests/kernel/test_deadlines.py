"""bot.kernel.deadlines: the one-timer stand-in for asyncio.timeout and per-reply timers."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.kernel.deadlines import Deadlines


async def test_a_limit_raises_timeout_error_about_on_time() -> None:
    deadlines = Deadlines(tick=0.02)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadlines.limit(0.1):
            await asyncio.sleep(5)
    took = time.monotonic() - began
    assert 0.1 <= took < 0.5, took


async def test_a_block_that_finishes_in_time_is_left_alone() -> None:
    deadlines = Deadlines(tick=0.02)
    async with deadlines.limit(0.05):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the deadline passes after the block: nothing happens
    task = asyncio.current_task()
    assert task is not None
    assert not task.cancelling()


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    deadlines = Deadlines(tick=0.02)

    async def guarded() -> None:
        async with deadlines.limit(10):
            await asyncio.sleep(5)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_expire_calls_back_only_for_futures_still_waiting() -> None:
    deadlines = Deadlines(tick=0.02)
    loop = asyncio.get_running_loop()
    waiting, answered = loop.create_future(), loop.create_future()
    called: list[str] = []
    deadlines.expire(waiting, 0.05, lambda: (called.append("waiting"), waiting.set_result(None)))
    deadlines.expire(answered, 0.05, lambda: called.append("answered"))
    answered.set_result(None)
    await asyncio.wait_for(waiting, 1)
    await asyncio.sleep(0.1)
    assert called == ["waiting"]
