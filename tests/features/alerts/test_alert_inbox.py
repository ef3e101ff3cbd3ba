"""Alert intake under a storm: 202 once the delivery is committed, processed after it,
nothing lost across a crash, and every bound a clear answer."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.botharness import BASE_CONFIG, running_bot
from tests.faults import needs_root, tmpfs
from tests.features.alerts.test_alerts import ALERTS, AUTH, am_alert, webhook


def config(extra: str = "") -> str:
    return BASE_CONFIG + ALERTS.replace(
        "max_body_bytes = 2048", f"max_body_bytes = 1048576\n{extra}"
    )


async def test_a_delivery_answered_202_survives_a_crash_before_it_is_processed(
    tmp_path: Path,
) -> None:
    body = webhook(am_alert("DiskFull", severity="critical", fp="fp-crash"), group="g-crash")
    async with running_bot(config(), serve_http=True, data_dir=tmp_path) as tb:
        # The bot "dies" right after the 202: nothing processes the inbox.
        await tb.bot.alert_intake.stop()
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            answer = await client.post("/alerts/alertmanager", json=body, headers=AUTH)
        assert answer.status_code == 202, answer.text
        assert await tb.bot.alert_board.firing() == []
    async with running_bot(config(), serve_http=True, data_dir=tmp_path) as tb:
        await tb.bot.alert_intake.drained()
        assert [a.fingerprint for a in await tb.bot.alert_board.firing()] == ["fp-crash"]
        assert "DiskFull" in await tb.posted("DiskFull")


async def test_bounds_are_clear_answers_and_counted() -> None:
    extra = "max_alerts_per_payload = 5\nmax_queued_payloads = 2\nmax_board_alerts = 10\n"
    async with running_bot(config(extra), serve_http=True) as tb:
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            six = webhook(*(am_alert(f"A{i}", fp=f"fp-a{i}") for i in range(6)), group="g-a")
            too_many = await client.post("/alerts/alertmanager", json=six, headers=AUTH)
            assert too_many.status_code == 413
            assert "6 alerts in one delivery; at most 5" in too_many.json()["error"]

            await tb.bot.alert_intake.stop()  # nothing is processed: the queue fills up
            statuses = []
            for g in range(3):
                five = webhook(
                    *(am_alert(f"B{g}x{i}", fp=f"fp-b{g}-{i}") for i in range(5)), group=f"g-b{g}"
                )
                statuses.append(await client.post("/alerts/alertmanager", json=five, headers=AUTH))
            assert [s.status_code for s in statuses] == [202, 202, 429]
            assert statuses[2].headers["retry-after"] == "5"
            assert "2 deliveries are waiting" in statuses[2].json()["error"]

            tb.bot.alert_intake.start()  # processing resumes: the board keeps 10 of 10
            await tb.bot.alert_intake.drained()
            third = webhook(*(am_alert(f"C{i}", fp=f"fp-c{i}") for i in range(5)), group="g-c")
            assert (
                await client.post("/alerts/alertmanager", json=third, headers=AUTH)
            ).status_code == 202
            await tb.bot.alert_intake.drained()
            board = await tb.bot.alert_board.firing()
            metrics = (await client.get("/metrics")).text
    assert len(board) == 10
    assert 'opsbot_alert_limits_total{limit="payload"} 1.0' in metrics
    assert 'opsbot_alert_limits_total{limit="queue"} 1.0' in metrics
    assert 'opsbot_alert_limits_total{limit="board"} 5.0' in metrics


async def test_a_storm_is_answered_at_once_and_chat_keeps_answering() -> None:
    """1,000 alerts in 10 deliveries from 5 senders at once (bounded: a test, not the
    benchmark; bench/alert_storm.py is the full storm)."""
    async with running_bot(config(), serve_http=True) as tb:
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        bodies = [
            webhook(
                *(am_alert(f"S{d}x{i}", fp=f"fp-s{d}-{i}", instance=f"i{i}") for i in range(100)),
                group=f"g-storm-{d}",
            )
            for d in range(10)
        ]
        async with httpx.AsyncClient(base_url=base) as client:

            async def send(body: dict[str, object]) -> float:
                started = time.perf_counter()
                answer = await client.post("/alerts/alertmanager", json=body, headers=AUTH)
                assert answer.status_code == 202, answer.text
                return time.perf_counter() - started

            storm = asyncio.gather(*(send(b) for b in bodies))
            chat_started = time.perf_counter()
            assert "You are bob" in await tb.exec("/whoami", as_="bob")
            chat = time.perf_counter() - chat_started
            latencies = await storm
            await tb.bot.alert_intake.drained()
            board = await tb.bot.alert_board.firing()
    assert len(board) == 1000
    assert chat < 0.5, f"/whoami took {chat * 1000:.0f} ms during the storm"
    assert max(latencies) < 2.0, latencies


async def test_stop_finishes_the_delivery_in_hand_and_leaves_the_rest_for_the_next_start(
    tmp_path: Path,
) -> None:
    """SIGTERM during a storm while the database is slow: the delivery being processed is
    finished, not cut off inside its writes; those after it wait in the inbox."""
    async with running_bot(config(), serve_http=True, data_dir=tmp_path) as tb:
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        other_writer = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        try:
            other_writer.execute("BEGIN IMMEDIATE")  # processing waits for the database
            async with httpx.AsyncClient(base_url=base) as client:
                for n in range(3):
                    body = webhook(am_alert(f"Disk{n}", fp=f"fp-{n}"), group=f"g-{n}")
                    answer = await client.post("/alerts/alertmanager", json=body, headers=AUTH)
                    assert answer.status_code == 202, answer.text
            await asyncio.sleep(0.3)  # the first delivery is waiting in its write
            asyncio.get_running_loop().call_later(0.5, other_writer.execute, "ROLLBACK")
            await tb.bot.alert_intake.stop()
        finally:
            other_writer.close()
        assert [a.fingerprint for a in await tb.bot.alert_board.firing()] == ["fp-0"]
    async with running_bot(config(), serve_http=True, data_dir=tmp_path) as tb:
        await tb.bot.alert_intake.drained()
        firing = sorted(a.fingerprint for a in await tb.bot.alert_board.firing())
        assert firing == ["fp-0", "fp-1", "fp-2"]


async def test_the_journal_takes_a_failed_delivery_again_and_survives_a_crash_while_emptied(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    from bot.features.alerts.inbox import AlertInbox

    now = datetime.now(UTC)
    inbox = AlertInbox(tmp_path / "alert-inbox.journal")
    assert await inbox.prepare() == 0
    for body in (b"b0", b"b1", b"b2"):
        await inbox.put("alertmanager", body, 1, now)
    taken = await inbox.take(10)
    assert [d.body for d in taken] == [b"b0", b"b1", b"b2"]
    # b1 failed: b0 is done, b1 and b2 are taken again, in order.
    inbox.rewind(taken[1])
    await inbox.done(taken[:1])
    assert [d.body for d in await inbox.take(10)] == [b"b1", b"b2"]

    # A crash while the journal was emptied left the offset of the records it held.
    (tmp_path / "alert-inbox.journal").write_bytes(b"")
    again = AlertInbox(tmp_path / "alert-inbox.journal")
    assert await again.prepare() == 0
    for body in (b"c0", b"c1", b"c2", b"c3"):
        await again.put("generic", body, 1, now)
    assert [d.body for d in await again.take(10)] == [b"c0", b"c1", b"c2", b"c3"]


@needs_root
async def test_a_delivery_the_disk_cannot_hold_is_refused_whole_and_the_next_one_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import gc
    from datetime import UTC, datetime

    from bot.features.alerts.inbox import AlertInbox

    with tmpfs(tmp_path / "disk", "64k") as disk:
        now = datetime.now(UTC)
        inbox = AlertInbox(disk / "alert-inbox.journal")
        await inbox.prepare()
        await inbox.put("generic", b"x" * 30_000, 1, now)
        with pytest.raises(OSError, match="No space left"):
            await inbox.put("generic", b"y" * 60_000, 1, now)  # half fits: none is kept
        await inbox.put("generic", b"z" * 1000, 1, now)
        assert [len(d.body) for d in await inbox.take(10)] == [30_000, 1000]
    gc.collect()
    assert "never retrieved" not in caplog.text  # the refusal was raised once, to its caller
