"""The durable audit store on real SQLite files and a real PostgreSQL (no mocks).

Tampering is done with raw SQL through an engine of its own, as an intruder with database
access would; "database down" is a TCP proxy in front of PostgreSQL that the test cuts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditStore,
    ChainVerifier,
    canonical_json,
    check_schema,
    entry_hash,
    head_revision,
    upgrade,
)
from bot.audit.chain import hash_of, link
from bot.audit.record import FIELD_NAMES
from bot.kernel.errors import DependencyError
from tests.auditlog_helpers import (
    BASE_TIME,
    Db,
    TcpProxy,
    entry,
    pg_schema,
    wait_until,
    with_port,
)


@pytest.fixture
async def store(db: Db, tmp_path: Path) -> AsyncIterator[AuditStore]:
    s = db.store(tmp_path)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def full_entry() -> AuditEntry:
    return AuditEntry(
        request_id="5d0c2f0e41a7",
        # Not UTC, on purpose: stored and hashed as UTC.
        at=datetime(2025, 3, 1, 14, 30, 5, 7, tzinfo=timezone(timedelta(hours=2))),
        stage="finished",
        kind="command",
        platform="slack",
        workspace="T0WORK",
        channel="C0OPS0001",
        thread="1712345678.000100",
        user_id="U0ALICE01",
        principal="alice",
        command="restart",
        raw_text='/restart api --force note="ünïcode ✓"',
        args={"service": "api", "force": True, "n": 3, "ratio": 0.1, "tags": ("a", "b"), "x": None},
        decision="allowed",
        rule="policy.commands.restart",
        approvers=("bob", "carol"),
        status="ok",
        exit_code=0,
        duration_ms=1234.5678,
        output_digest="sha256:" + "ab" * 32,
        output_excerpt="restarted 3 pods\nall ready",
        error=None,
        detail="restarted by alice, approved by bob and carol",
    )


# ----------------------------------------------------------------- records and the chain


def test_entry_is_normalised_so_it_hashes_the_same_everywhere() -> None:
    e = full_entry()
    assert e.at == datetime(2025, 3, 1, 12, 30, 5, 7, tzinfo=UTC)
    assert e.at.tzinfo is UTC
    assert e.args["tags"] == ["a", "b"]  # as JSON will give it back
    assert AuditEntry.from_json_dict(json.loads(canonical_json(e.to_json_dict()))) == e
    assert e.to_json_dict()["at"] == "2025-03-01T12:30:05.000007+00:00"
    same_instant = entry(0, at=BASE_TIME.astimezone(timezone(timedelta(hours=-5))))
    assert entry_hash(GENESIS_HASH, same_instant, 1) == entry_hash(GENESIS_HASH, entry(0), 1)
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"at": datetime(2025, 1, 1)}, "timezone-aware"),
        ({"stage": "done"}, "stage"),
        ({"decision": "maybe"}, "decision"),
    ],
)
def test_entry_refuses_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        entry(0, **overrides)


def test_values_json_cannot_hold_are_stored_as_null_rather_than_lost() -> None:
    # A float('nan') argument must not cost the whole record; it hashes as null.
    e = entry(0, args={"x": float("nan"), "y": 1})
    assert e.args == {"x": None, "y": 1}


def test_verifier_names_the_first_problem() -> None:
    rows, prev = [], GENESIS_HASH
    for i in range(1, 6):
        rows.append(link(prev, i, entry(i)))
        prev = rows[-1].hash

    def run(chain: list) -> tuple[bool, str | None, int | None]:  # type: ignore[type-arg]
        v = ChainVerifier()
        for row in chain:
            v.feed(row)
        r = v.finish()
        return r.ok, r.problem, r.seq

    assert run(rows) == (True, None, None)
    assert (
        run(rows[:2] + rows[3:])[1] == "gap in the chain: expected seq 3, found 4 (row(s) deleted)"
    )
    edited = rows[2].__class__(3, rows[2].prev_hash, rows[2].hash, entry(99))
    assert run([*rows[:2], edited, *rows[3:]])[1:] == ("seq 3: hash mismatch (row edited)", 3)
    assert "prev_hash does not match" in str(run([rows[0], link(GENESIS_HASH, 2, entry(2))])[1])


# ----------------------------------------------------------------- storing and reading


async def test_every_field_round_trips_and_the_chain_verifies(db: Db, store: AuditStore) -> None:
    original = full_entry()
    minimal = AuditEntry(
        request_id="r-min", at=original.at + timedelta(minutes=1), stage="event", kind="policy"
    )
    await store.append_durably(original)
    await store.append_durably(minimal)

    newest_first = await store.query()
    assert [s.entry for s in newest_first] == [minimal, original]
    got = newest_first[1]
    assert got.entry == original
    assert got.entry.at.tzinfo is UTC
    assert got.entry.approvers == ("bob", "carol")
    assert (got.seq, got.prev_hash) == (1, GENESIS_HASH)
    assert got.hash == entry_hash(GENESIS_HASH, original, 1)
    assert newest_first[0].prev_hash == got.hash

    result = await store.verify()
    assert (result.ok, result.checked, result.problem) == (True, 2, None)


async def test_append_durably_returns_after_commit(db: Db, store: AuditStore) -> None:
    await store.append_durably(entry(1))
    # Another engine (another process, as far as the database knows) sees it already.
    assert await db.request_ids() == ["req-0001"]


async def test_append_is_queued_and_close_writes_everything(db: Db, tmp_path: Path) -> None:
    s = db.store(tmp_path, batch_size=40)
    await s.start()
    for i in range(100):
        await s.append(entry(i))
    await s.close()
    assert await db.request_ids() == [f"req-{i:04d}" for i in range(100)]


@pytest.mark.parametrize(
    "tamper",
    [
        "edit",
        "delete",
        "reorder",
        "relink",
        "truncate",
        "past-head",
        "head-deleted",
        "forged-anchor",
    ],
)
async def test_verify_finds_tampering(db: Db, store: AuditStore, tamper: str) -> None:
    await asyncio.gather(*(store.append_durably(entry(i)) for i in range(1, 11)))
    assert (await store.verify()).ok
    expected: tuple[int, str]
    if tamper == "edit":
        await db.execute("UPDATE audit_log SET raw_text = '/health nothing' WHERE seq = 4")
        expected = (4, "seq 4: hash mismatch (row edited)")
    elif tamper == "delete":
        await db.execute("DELETE FROM audit_log WHERE seq = 4")
        expected = (4, "gap in the chain: expected seq 4, found 5 (row(s) deleted)")
    elif tamper == "reorder":
        await db.execute("UPDATE audit_log SET seq = -1 WHERE seq = 4")
        await db.execute("UPDATE audit_log SET seq = 4 WHERE seq = 5")
        await db.execute("UPDATE audit_log SET seq = 5 WHERE seq = -1")
        expected = (4, "seq 4: prev_hash does not match the hash of the previous row")
    elif tamper == "relink":
        # A forged row slipped in: its own hash is right, its link to seq 5 is not.
        await db.execute(f"UPDATE audit_log SET prev_hash = '{'f' * 64}' WHERE seq = 6")
        expected = (6, "seq 6: prev_hash does not match the hash of the previous row")
    elif tamper == "truncate":
        await db.execute("DELETE FROM audit_log WHERE seq >= 9")
        expected = (9, "the chain head is at seq 10 but the last row is seq 8")
    elif tamper == "past-head":
        # A forged row after the head, linked and hashed the way opsbot would: the walk
        # accepts it, and only the head says it was never written by opsbot.
        last = [row async for row in store.export(datetime(1970, 1, 1, tzinfo=UTC))][-1]
        fields = ", ".join(FIELD_NAMES)
        await db.execute(
            f"INSERT INTO audit_log (seq, prev_hash, hash, {fields}) "
            f"SELECT 11, :prev, :hash, {fields} FROM audit_log WHERE seq = 10",
            prev=last.hash,
            hash=hash_of(last.hash, 11, last.entry.canonical()),
        )
        expected = (11, "seq 11: row(s) past the chain head (at seq 10)")
    elif tamper == "head-deleted":
        await db.execute("DELETE FROM audit_chain_head")
        expected = (11, "the chain head row is missing")
    else:
        # A prefix removed by hand, with the anchor retention would have left: what is
        # missing is the retention event that names it.
        [(boundary,)] = await db.execute("SELECT hash FROM audit_log WHERE seq = 3")
        await db.execute("DELETE FROM audit_log WHERE seq <= 3")
        await db.execute(
            "INSERT INTO audit_anchor (id, seq, hash, applied_at) VALUES (1, 3, :h, :at)",
            h=boundary,
            at=BASE_TIME,
        )
        expected = (4, "the retention anchor at seq 3 has no retention event recording it")
    result = await store.verify()
    assert not result.ok
    assert result.seq == expected[0]
    assert result.problem is not None and result.problem.startswith(expected[1])


async def test_two_stores_on_one_database_make_one_chain(db: Db, tmp_path: Path) -> None:
    # Two replicas: separate engines, writers and spools; small batches so they interleave.
    a = db.store(tmp_path, "spool-a", batch_size=25)
    b = db.store(tmp_path, "spool-b", batch_size=25)
    await a.start()
    await b.start()
    try:
        # In rounds, so each replica keeps writing after the other has moved the head
        # (SQLite's busy handler would otherwise let one writer finish first).
        for r in range(0, 300, 30):
            await asyncio.gather(
                *(a.append_durably(entry(i, request_id=f"a-{i:03d}")) for i in range(r, r + 30)),
                *(b.append_durably(entry(i, request_id=f"b-{i:03d}")) for i in range(r, r + 30)),
            )
        result = await a.verify()
        assert (result.ok, result.checked) == (True, 600), result
        ids = await db.request_ids()
        assert len(ids) == 600
        # Each replica's entries keep their order within the one chain.
        switches = sum(1 for x, y in itertools.pairwise(ids) if x[0] != y[0])
        assert switches >= 10, f"the two writers did not interleave ({switches} switches)"
        assert [i for i in ids if i.startswith("a-")] == [f"a-{i:03d}" for i in range(300)]
        assert [i for i in ids if i.startswith("b-")] == [f"b-{i:03d}" for i in range(300)]
        seqs = await db.execute("SELECT min(seq), max(seq), count(*) FROM audit_log")
        assert tuple(seqs[0]) == (1, 600, 600)
    finally:
        await a.close()
        await b.close()


async def test_query_filters_and_newest_first(store: AuditStore) -> None:
    people = ["alice", "bob", "alice", "carol", "alice", "bob"]
    commands = ["health", "health", "restart", "health", "restart", "version"]
    statuses = ["ok", "denied", "ok", "ok", "error", "ok"]
    for i, (who, cmd, status) in enumerate(zip(people, commands, statuses, strict=True)):
        await store.append(entry(i, principal=who, command=cmd, status=status))
    await store.flush()

    def ids(rows: list) -> list[str]:  # type: ignore[type-arg]
        return [r.entry.request_id for r in rows]

    assert ids(await store.query(user="alice")) == ["req-0004", "req-0002", "req-0000"]
    assert ids(await store.query(command="restart")) == ["req-0004", "req-0002"]
    assert ids(await store.query(status="ok", user="bob")) == ["req-0005"]
    assert ids(await store.query(since=BASE_TIME + timedelta(seconds=4))) == [
        "req-0005",
        "req-0004",
    ]
    assert ids(await store.query(limit=2)) == ["req-0005", "req-0004"]
    assert await store.query(user="nobody") == []


async def test_export_since_in_chain_order(store: AuditStore) -> None:
    for i in range(10):
        await store.append(entry(i))
    await store.flush()
    got = [s async for s in store.export(BASE_TIME + timedelta(seconds=7))]
    assert [(s.seq, s.entry.request_id) for s in got] == [
        (8, "req-0007"),
        (9, "req-0008"),
        (10, "req-0009"),
    ]


async def test_close_interrupted_finishes_started_commands(db: Db, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    s = db.store(tmp_path)
    await s.start()
    try:
        await s.append(entry(1, request_id="done", stage="started", at=now))
        await s.append(entry(2, request_id="done", stage="finished", at=now))
        await s.append(entry(3, request_id="cut", stage="started", at=now, command="restart"))
        await s.append(entry(4, request_id="decided-only", stage="decided", at=now))
        assert await s.close_interrupted() == 1
        assert await s.close_interrupted() == 0  # already closed
        [closed] = await s.query(status="interrupted")
        assert closed.entry.request_id == "cut"
        assert (closed.entry.stage, closed.entry.command) == ("finished", "restart")
        assert (await s.verify()).ok
    finally:
        await s.close()


async def test_retention_removes_a_prefix_and_the_chain_still_verifies(
    db: Db, store: AuditStore
) -> None:
    for i in range(10):
        await store.append(entry(i))  # at = BASE_TIME + i seconds
    # Older than its predecessor (a replica's clock, or an entry replayed from the spool):
    await store.append(entry(10, at=BASE_TIME - timedelta(days=1), request_id="late"))
    await store.append(entry(11))
    await store.flush()

    cutoff = BASE_TIME + timedelta(seconds=6)
    assert await store.apply_retention(cutoff) == 6  # seq 1..6; "late" (seq 11) waits
    result = await store.verify()
    assert (result.ok, result.checked) == (True, 7), result  # seq 7..12 and the event
    ids = await db.request_ids()
    assert ids[:5] == ["req-0006", "req-0007", "req-0008", "req-0009", "late"]
    [event] = await store.query(status="ok", user=None, command=None, limit=1)
    assert (event.entry.stage, event.entry.kind) == ("event", "retention")
    [(anchor_hash,)] = await db.execute("SELECT hash FROM audit_anchor")
    assert event.entry.args == {
        "removed": 6,
        "up_to_seq": 6,
        "anchor_hash": anchor_hash,
        "cutoff": "2025-03-01T12:00:06.123456+00:00",
    }
    assert "removed 6 row(s)" in event.entry.detail

    assert await store.apply_retention(cutoff) == 0  # nothing more to remove, no new event
    await store.append_durably(entry(20))
    assert (await store.verify()).ok
    anchor = await db.execute("SELECT seq FROM audit_anchor")
    assert anchor[0][0] == 6

    # Tampering below the remaining rows is still caught: drop the anchor.
    await db.execute("DELETE FROM audit_anchor")
    result = await store.verify()
    assert not result.ok
    assert result.problem == "gap in the chain: expected seq 1, found 7 (row(s) deleted)"


# ----------------------------------------------------------------- database down


@pytest.mark.postgres
async def test_database_down_spools_then_replays_in_order(tmp_path: Path) -> None:
    async with pg_schema() as (url, schema):
        await upgrade(url, schema=schema)
        target = make_url(url)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
        await proxy.start()
        db = Db("postgres", url, schema)  # direct, for checking
        spool = tmp_path / "spool"
        s = AuditStore(
            with_port(url, proxy.port),
            schema=schema,
            spool_path=spool,
            retry_initial=0.05,
            retry_max=0.2,
        )
        await s.start()
        try:
            for i in range(5):
                await s.append_durably(entry(i))
            assert s.spool_depth == 0

            await proxy.stop()  # the database is gone, live connections cut
            for i in range(5, 25):
                await s.append_durably(entry(i))  # returns once fsynced to the spool
            assert s.spool_depth == 20
            assert len(spool.read_text().splitlines()) == 20
            assert len(await db.request_ids()) == 5

            await proxy.start()  # back, same port
            # Newer than everything spooled: must land after it in the chain.
            await s.append_durably(entry(25))
            await wait_until(lambda: s.spool_depth == 0)
            await s.flush()
            assert await db.request_ids() == [f"req-{i:04d}" for i in range(26)]
            assert not spool.exists()
            result = await s.verify()
            assert (result.ok, result.checked) == (True, 26), result
        finally:
            await s.close()
            await proxy.stop()


@pytest.mark.postgres
async def test_spool_outlives_the_process(tmp_path: Path) -> None:
    async with pg_schema() as (url, schema):
        await upgrade(url, schema=schema)
        target = make_url(url)
        proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
        await proxy.start()
        await proxy.stop()  # the database is unreachable from the start
        proxied = with_port(url, proxy.port)
        spool = tmp_path / "spool"
        first = AuditStore(proxied, schema=schema, spool_path=spool, retry_initial=0.05)
        await first.start()
        for i in range(3):
            await first.append_durably(entry(i))
        await first.close()  # still down: the entries stay in the spool
        assert len(spool.read_text().splitlines()) == 3

        await proxy.start()
        second = AuditStore(proxied, schema=schema, spool_path=spool, retry_initial=0.05)
        await second.start()
        try:
            assert second.spool_depth == 3
            await second.append_durably(entry(3))
            await wait_until(lambda: second.spool_depth == 0)
            await second.flush()
            db = Db("postgres", url, schema)
            assert await db.request_ids() == [f"req-{i:04d}" for i in range(4)]
            assert (await second.verify()).ok
        finally:
            await second.close()
            await proxy.stop()


# ----------------------------------------------------------------- migrations


async def test_check_schema_on_an_empty_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(DependencyError, match=r"not migrated yet: run `opsbot db upgrade`"):
        await check_schema(url)
    await upgrade(url)
    await upgrade(url)  # idempotent
    await check_schema(url)


@pytest.mark.postgres
async def test_migrations_on_an_empty_postgres_schema() -> None:
    async with pg_schema() as (url, schema):
        with pytest.raises(DependencyError, match=r"not migrated yet: run `opsbot db upgrade`"):
            await check_schema(url, schema=schema)
        await upgrade(url, schema=schema)
        await check_schema(url, schema=schema)
        db = Db("postgres", url, schema)
        head = await db.execute("SELECT seq, hash FROM audit_chain_head")
        assert tuple(head[0]) == (0, GENESIS_HASH)
        indexes = await db.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = :s AND tablename = 'audit_log'",
            s=schema,
        )
        assert {r[0] for r in indexes} >= {
            "ix_audit_log_principal_at",
            "ix_audit_log_command_at",
            "ix_audit_log_status_at",
            "ix_audit_log_at",
            "ix_audit_log_request_id",
        }


async def test_check_schema_refuses_a_newer_database(db: Db) -> None:
    await db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(DependencyError) as info:
        await check_schema(db.url, schema=db.schema)
    assert str(info.value) == (
        f"audit database: schema rev 9999 is newer than this opsbot's (rev {head_revision()}); "
        "run the opsbot version that wrote it, or restore a backup"
    )
    with pytest.raises(DependencyError, match="is newer"):
        await upgrade(db.url, schema=db.schema)  # upgrading cannot help, and touches nothing


def test_the_revision_list_start_up_checks_against_is_alembics_history() -> None:
    from alembic.script import ScriptDirectory

    from bot.storage.migrate import REVISIONS, alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    history = [rev.revision for rev in script.walk_revisions()]  # newest first
    assert tuple(reversed(history)) == REVISIONS
    assert script.get_current_head() == head_revision()


def test_the_row_layout_is_the_audit_log_table() -> None:
    # The sqlite3 writer builds rows in bot.audit.rows.COLUMNS order; the table is
    # bot.storage.schema's (which the migrations make).
    from bot.audit.rows import COLUMNS
    from bot.storage.schema import audit_log

    assert tuple(column.name for column in audit_log.columns) == COLUMNS
