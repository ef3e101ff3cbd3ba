"""One person typing: a command running alone has its entries committed by the bot
itself, with no round trip to the SQLite writer process (issue 19: that hop cost more than
the commit), and without giving up anything: committed before the reply, never waiting on
a lock held by someone else, the chain whole. Commands arriving together still go through
the writer process."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.auditlog_helpers import wait_until
from tests.botharness import BASE_CONFIG, TestBot, running_bot

CONFIG = BASE_CONFIG + '\n[flood]\nmax_commands = 1000\n\n[audit]\nreply_wait = "0.3s"\n'
# A reply_wait far above what a lone command takes, so that "it did not wait for the
# writer" holds with a margin a busy machine's pauses cannot eat.
LONG_WAIT = CONFIG.replace('reply_wait = "0.3s"', 'reply_wait = "3s"')


def committed(data_dir: Path, user: str, command: str) -> list[tuple[str, str]]:
    """(stage, status) of ``user``'s ``command`` entries another connection reads now."""
    with sqlite3.connect(data_dir / "audit.db") as conn:
        return conn.execute(
            "SELECT stage, status FROM audit_log WHERE user_id = ? AND command = ? ORDER BY seq",
            (user, command),
        ).fetchall()


@asynccontextmanager
async def writer_stopped(tb: TestBot) -> AsyncIterator[None]:
    # The process starts in the background (the first commands commit inline meanwhile).
    await wait_until(lambda: tb.bot.audit.store.writer_pid is not None)
    pid = tb.bot.audit.store.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_lone_command_is_committed_before_its_reply_without_the_writer_process(
    tmp_path: Path,
) -> None:
    async with running_bot(LONG_WAIT, data_dir=tmp_path) as tb:
        await tb.send("/whoami", as_="bob")  # the writer process is up and idle
        async with writer_stopped(tb):
            began = time.monotonic()
            reply = await tb.send("/whoami", as_="bob")
            took = time.monotonic() - began
            assert reply is not None and "You are bob" in reply.title + reply.text
            # Not the reply_wait's 3 s spent waiting for a process that cannot answer.
            assert took < 1.0, took
            assert committed(tmp_path, "bob", "whoami") == [("finished", "ok")] * 2
        verified = await tb.bot.audit.store.verify()
        assert verified.ok, verified


async def test_a_lock_held_elsewhere_never_stalls_the_bot_and_the_entry_lands_after(
    tmp_path: Path,
) -> None:
    async with running_bot(CONFIG, data_dir=tmp_path) as tb:
        await tb.send("/whoami", as_="bob")
        holder = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer's lock, held
        try:
            began = time.monotonic()
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            reply = await tb.send("/whoami", as_="bob")
            took = time.monotonic() - began
            ticker.cancel()
            assert reply is not None and "You are bob" in reply.title + reply.text
            # The reply waited reply_wait at most, and the event loop kept turning.
            assert took < 1.0, took
            assert ticks >= took / 0.01 / 3, (ticks, took)
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        def both() -> bool:
            return len(committed(tmp_path, "bob", "whoami")) == 2

        await wait_until(both, within=15)
        verified = await tb.bot.audit.store.verify()
        assert verified.ok, verified


async def test_commands_arriving_together_still_go_through_the_writer_process(
    tmp_path: Path,
) -> None:
    async with running_bot(CONFIG, data_dir=tmp_path) as tb:
        await tb.send("/whoami", as_="bob")
        async with writer_stopped(tb):
            replies = await asyncio.gather(*(tb.send("/whoami", as_="bob") for _ in range(20)))
            assert all(r is not None and "You are bob" in r.title + r.text for r in replies)
            # Answered after reply_wait, their entries queued for the stopped process.
            assert len(committed(tmp_path, "bob", "whoami")) < 21
        await wait_until(lambda: len(committed(tmp_path, "bob", "whoami")) == 21, within=15)
        verified = await tb.bot.audit.store.verify()
        assert verified.ok, verified
