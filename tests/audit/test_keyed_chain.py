"""The keyed chain and the outside witness, attacked the way someone with write access to
the database (and sometimes the key) would: raw SQL through an engine of their own, on a
real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from bot.audit import AuditStore, StoredEntry
from bot.audit.chain import GENESIS_HASH, KEY_EVENT, ChainKey, link
from bot.audit.witness import WitnessPoint, append_point, read_points
from bot.kernel.errors import DependencyError
from tests.auditlog_helpers import Db, entry, wait_until

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY = ChainKey.from_text("k" * 40)
OTHER_KEY = ChainKey.from_text("o" * 40)


async def rows_of(store: AuditStore) -> list[StoredEntry]:
    return [row async for row in store.export(EPOCH)]


async def write(db: Db, tmp_path: Path, key: ChainKey | None, ids: range, name: str) -> None:
    store = db.store(tmp_path, name, key=key)
    await store.start()
    try:
        await asyncio.gather(*(store.append_durably(entry(i)) for i in ids))
    finally:
        await store.close()


async def rewrite(
    db: Db, store: AuditStore, start: int, *, key: ChainKey | None, raw_text: str = "/forged"
) -> None:
    """Edit row ``start`` and compute every hash after it again, and the head: what an
    intruder does so that a plain hash chain still verifies."""
    rows = await rows_of(store)
    prev = next((r.hash for r in rows if r.seq == start - 1), GENESIS_HASH)
    for row in rows:
        if row.seq < start:
            continue
        edited = (
            dataclasses.replace(row.entry, raw_text=raw_text) if row.seq == start else row.entry
        )
        new = link(prev, row.seq, edited, key)
        await db.execute(
            "UPDATE audit_log SET raw_text = :raw, prev_hash = :prev, hash = :hash, "
            "key_id = :key_id WHERE seq = :seq",
            raw=edited.raw_text,
            prev=prev,
            hash=new.hash,
            key_id=new.key_id,
            seq=row.seq,
        )
        prev = new.hash
    await db.execute("UPDATE audit_chain_head SET hash = :hash", hash=prev)


async def test_keying_starts_with_an_event_and_the_unkeyed_rows_before_it_still_verify(
    db: Db, tmp_path: Path
) -> None:
    await write(db, tmp_path, None, range(1, 4), "spool-a")  # seq 1-3, as before this version
    await write(db, tmp_path, KEY, range(4, 7), "spool-b")  # the key event, then seq 5-7
    store = db.store(tmp_path, "spool-c", key=KEY)
    await store.start()
    try:
        rows = await rows_of(store)
        assert [r.key_id for r in rows] == [None] * 3 + [KEY.key_id] * 4
        event = rows[3].entry
        assert (event.stage, event.kind) == ("event", KEY_EVENT)
        assert event.args == {"key_id": KEY.key_id, "previous_key_id": ""}

        result = await store.verify([KEY])
        assert (result.ok, result.checked, result.keyed) == (True, 7, 4), result
        without = await store.verify()
        assert (without.ok, without.seq) == (False, 4)
        assert without.problem == (
            f"seq 4: keyed with key {KEY.key_id}, which verify was not given "
            "(pass it with --key-file; a forger cannot know a key either)"
        )
    finally:
        await store.close()


@pytest.mark.parametrize("forger", ["unkeyed", "wrong-key", "whole-chain-unkeyed"])
async def test_without_the_key_an_edit_cannot_be_made_to_verify(
    db: Db, tmp_path: Path, forger: str
) -> None:
    await write(db, tmp_path, None, range(1, 3), "spool-a")  # seq 1-2 unkeyed
    store = db.store(tmp_path, key=KEY)
    await store.start()
    try:
        await asyncio.gather(*(store.append_durably(entry(i)) for i in range(3, 11)))
        assert (await store.verify([KEY])).ok
        if forger == "unkeyed":
            await rewrite(db, store, 6, key=None)
            expected = (6, "seq 6: an unkeyed row after keying started at seq 3")
        elif forger == "wrong-key":
            # The key id copied, the HMAC made with a key of the intruder's own.
            forged = ChainKey(OTHER_KEY.secret)
            msgspec.structs.force_setattr(forged, "key_id", KEY.key_id)
            await rewrite(db, store, 6, key=forged)
            expected = (6, "seq 6: hash mismatch (row edited)")
        else:
            await rewrite(db, store, 1, key=None)
            expected = (11, "no row is keyed, though verify was given a key")
        result = await store.verify([KEY])
        assert (result.ok, result.seq) == (False, expected[0]), result
        assert result.problem is not None and result.problem.startswith(expected[1])
    finally:
        await store.close()


async def test_a_rotation_is_recorded_and_verify_needs_both_keys(db: Db, tmp_path: Path) -> None:
    await write(db, tmp_path, KEY, range(1, 4), "spool-a")  # event + 3
    await write(db, tmp_path, OTHER_KEY, range(4, 6), "spool-b")  # event + 2
    store = db.store(tmp_path, "spool-c", key=OTHER_KEY)
    await store.start()
    try:
        rows = await rows_of(store)
        rotation = rows[4]
        assert (rotation.seq, rotation.key_id, rotation.entry.kind) == (
            5,
            OTHER_KEY.key_id,
            KEY_EVENT,
        )
        assert rotation.entry.args == {"key_id": OTHER_KEY.key_id, "previous_key_id": KEY.key_id}
        assert (await store.verify([OTHER_KEY, KEY])).ok
        only_new = await store.verify([OTHER_KEY])
        assert (only_new.ok, only_new.seq) == (False, 1)
        # A key change slipped in without the event that must announce it:
        await db.execute("UPDATE audit_log SET kind = 'policy' WHERE seq = 5")
        await rewrite(db, store, 5, key=OTHER_KEY, raw_text="")
        result = await store.verify([OTHER_KEY, KEY])
        assert (result.ok, result.seq) == (False, 5), result
        assert result.problem == (
            f"seq 5: the key changes to {OTHER_KEY.key_id} without an {KEY_EVENT} event"
        )
    finally:
        await store.close()


async def test_a_store_without_the_key_refuses_to_extend_a_keyed_chain(
    db: Db, tmp_path: Path
) -> None:
    await write(db, tmp_path, KEY, range(1, 3), "spool-a")
    store = db.store(tmp_path, "spool-b")
    with pytest.raises(DependencyError, match=f"keyed \\(its last row with key {KEY.key_id}\\)"):
        await store.start()


async def test_a_forged_row_past_the_head_does_not_jam_the_writer(db: Db, tmp_path: Path) -> None:
    store = db.store(tmp_path, key=KEY)
    await store.start()
    try:
        await asyncio.gather(*(store.append_durably(entry(i)) for i in range(1, 6)))  # seq 1-6
        last = (await rows_of(store))[-1]
        forged = link(last.hash, 7, entry(99), OTHER_KEY)
        await db.execute(
            "INSERT INTO audit_log (seq, prev_hash, hash, key_id, request_id, at, stage, kind, "
            "platform, workspace, channel, user_id, raw_text, args, approvers, status, detail, "
            "replica) VALUES (7, :prev, :hash, :key_id, 'forged', :at, 'decided', 'command', "
            "'', '', '', '', '/forged', '{}', '[]', 'ok', '', '')",
            prev=last.hash,
            hash=forged.hash,
            key_id=KEY.key_id,
            at=datetime(2025, 3, 1, tzinfo=UTC),
        )
        for i in range(6, 9):
            await asyncio.wait_for(store.append_durably(entry(i)), 10)
        assert [r.seq for r in await rows_of(store)][-4:] == [7, 8, 9, 10]
        result = await store.verify([KEY])
        assert (result.ok, result.seq) == (False, 7), result
        assert result.problem == "seq 7: hash mismatch (row edited)"
    finally:
        await store.close()


@pytest.mark.parametrize("attack", ["truncate", "rewrite-with-the-key", "anchor"])
async def test_the_witness_finds_what_the_key_cannot(db: Db, tmp_path: Path, attack: str) -> None:
    witness = tmp_path / "witness.jsonl"
    store = db.store(tmp_path, key=KEY)
    await store.start()
    try:
        await asyncio.gather(*(store.append_durably(entry(i)) for i in range(1, 6)))  # seq 1-6
        append_point(witness, WitnessPoint(*await store.head(), at=datetime.now(UTC)))
        await asyncio.gather(*(store.append_durably(entry(i)) for i in range(6, 9)))  # 7-9
        append_point(witness, WitnessPoint(*await store.head(), at=datetime.now(UTC)))
        points, problems = read_points(witness)
        assert (sorted(points), problems) == ([6, 9], [])
        checked = {seq: (p.hash, str(p.at)) for seq, p in points.items()}
        result = await store.verify([KEY], checked)
        assert (result.ok, result.witnessed) == (True, 2), result

        if attack == "truncate":
            # The last rows deleted and the head moved back: every row left verifies.
            [(digest,)] = await db.execute("SELECT hash FROM audit_log WHERE seq = 7")
            await db.execute("DELETE FROM audit_log WHERE seq > 7")
            await db.execute("UPDATE audit_chain_head SET seq = 7, hash = :h", h=digest)
            expected = (8, "seq 9 was witnessed at")
        elif attack == "rewrite-with-the-key":
            await rewrite(db, store, 4, key=KEY)
            expected = (6, "seq 6: the hash differs from the one witnessed at")
        else:
            # Everything up to the head removed "by retention", with an anchor that claims so.
            await db.execute("DELETE FROM audit_log")
            await db.execute(
                "INSERT INTO audit_anchor (id, seq, hash, applied_at) VALUES (1, 9, :h, :at)",
                h="e" * 64,
                at=datetime.now(UTC),
            )
            expected = (10, "the retention anchor at seq 9 has no retention event")
        assert (await store.verify([KEY])).ok is (attack != "anchor")
        result = await store.verify([KEY], checked)
        assert (result.ok, result.seq) == (False, expected[0]), result
        assert result.problem is not None and result.problem.startswith(expected[1])
    finally:
        await store.close()


async def test_a_row_at_the_end_of_the_seq_range_cannot_jam_the_writer(
    db: Db, tmp_path: Path
) -> None:
    store = db.store(tmp_path, key=KEY, retry_initial=0.1)
    await store.start()
    try:
        await asyncio.gather(*(store.append_durably(entry(i)) for i in range(1, 4)))  # 1-4
        top = 2**63 - 1
        await db.execute(
            "INSERT INTO audit_log (seq, prev_hash, hash, key_id, request_id, at, stage, kind, "
            "platform, workspace, channel, user_id, raw_text, args, approvers, status, detail, "
            "replica) VALUES (:seq, :h, :h, NULL, 'forged', :at, 'decided', 'command', "
            "'', '', '', '', '/forged', '{}', '[]', 'ok', '', '')",
            seq=top,
            h="f" * 64,
            at=datetime(2025, 3, 1, tzinfo=UTC),
        )
        await asyncio.wait_for(store.append_durably(entry(5)), 10)  # written at seq 5
        result = await store.verify([KEY])
        assert (result.ok, result.seq) == (False, 6), result
        assert result.problem == f"gap in the chain: expected seq 6, found {top} (row(s) deleted)"

        # The head itself moved to the end of the range: nothing can be written. The store
        # says so (commands are refused) and recovers once the head is put back.
        [(digest,)] = await db.execute("SELECT hash FROM audit_log WHERE seq = 5")
        await db.execute("DELETE FROM audit_log WHERE seq = :s", s=top)
        await db.execute("UPDATE audit_chain_head SET seq = :s", s=top)
        with pytest.raises(DependencyError):
            await asyncio.wait_for(store.append_durably(entry(6)), 10)
        assert store.unwritable is not None
        assert store.unwritable.startswith("the audit database refuses entries")
        await db.execute("UPDATE audit_chain_head SET seq = 5, hash = :h", h=digest)
        await wait_until(lambda: store.unwritable is None, within=10)  # by itself
        await asyncio.wait_for(store.append_durably(entry(7)), 10)
        ids = [r.entry.request_id for r in await rows_of(store)]
        assert ids[-2:] == ["req-0006", "req-0007"]  # the held entry first, nothing lost
        assert (await store.verify([KEY])).ok
    finally:
        await store.close()


def test_a_key_shows_its_id_never_its_secret() -> None:
    shown = f"{KEY!r} {KEY!s} {[KEY]}"
    assert KEY.key_id in shown
    assert KEY.secret.decode() not in shown and str(KEY.secret) not in shown
