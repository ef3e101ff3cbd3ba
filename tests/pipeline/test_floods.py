"""A flood of turned-away messages (throttled, or from a sender the config does not know)
leaves one audit entry per sender per window with a count, not one per message."""

from __future__ import annotations

import asyncio

from tests.botharness import BASE_CONFIG, TestBot, running_bot

FAST_WINDOW = """
[flood]
max_commands = 3
per = "1s"
"""


async def _after_the_window(tb: TestBot) -> None:
    await asyncio.sleep(1.1)
    await tb.send("/whoami", as_="carol")  # any message closes the windows that ran out


async def test_a_throttled_flood_is_three_answers_a_notice_and_one_count() -> None:
    async with running_bot(BASE_CONFIG + FAST_WINDOW) as tb:
        replies = [await tb.send("/whoami", as_="bob") for _ in range(100)]
        assert sum(1 for r in replies if r is not None and r.title == "You are bob") == 3
        assert sum(1 for r in replies if r is not None and "faster than a person" in r.title) == 1
        await _after_the_window(tb)
        bobs = [e for e in await tb.audit() if e.user_id == "bob"]
        throttled = [e for e in bobs if e.status == "throttled"]
        assert len(bobs) == 3 + 2  # one entry per read-only run; the notice; the count
        assert [e.raw_text for e in throttled] == ["/whoami", ""]
        assert throttled[1].detail.startswith("96 more message(s) throttled, ")
        assert (throttled[1].rule, throttled[1].decision) == ("flood:throttled", "denied")


async def test_an_unknown_senders_flood_is_one_denial_and_one_count() -> None:
    config = BASE_CONFIG + '\n[flood]\nmax_commands = 1000\nper = "1s"\n'
    async with running_bot(config) as tb:
        replies = [await tb.send("/health", as_="mallory") for _ in range(40)]
        assert all(r is not None and "I don't know you" in r.title for r in replies)
        await _after_the_window(tb)
        entries = [e for e in await tb.audit() if e.user_id == "mallory"]
        assert [(e.status, e.rule) for e in entries] == [("denied", "deny:unknown-user")] * 2
        assert entries[0].raw_text == "/health"
        assert entries[1].detail.startswith("39 more message(s) from an unknown sender, ")


async def test_counts_still_open_at_shutdown_are_recorded() -> None:
    async with running_bot(BASE_CONFIG + '\n[flood]\nmax_commands = 1000\nper = "1h"\n') as tb:
        for _ in range(10):
            await tb.send("/whoami", as_="mallory")
        store = tb.bot.audit.store
        await tb.bot.dispatcher.close()
        await store.flush()
        entries = [e for e in await tb.audit() if e.user_id == "mallory"]
        assert entries[-1].detail.startswith("9 more message(s) from an unknown sender")
