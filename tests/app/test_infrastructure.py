"""The real Redis and PostgreSQL started by tests/run.sh are there and usable."""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests import infra

HOW_TO_RUN = "run tests via bash tests/run.sh"


async def test_redis_round_trip_and_stream() -> None:
    client = aioredis.from_url(infra.redis_url(), socket_timeout=5, socket_connect_timeout=5)
    suffix = uuid.uuid4().hex
    key = f"opsbot-test:infra:{suffix}"
    stream = f"opsbot-test:infra-stream:{suffix}"
    try:
        assert await client.ping()
        await client.set(key, "hello", ex=60)
        assert await client.get(key) == b"hello"

        first = await client.xadd(stream, {"event": "ping", "n": "1"})
        await client.xadd(stream, {"event": "ping", "n": "2"})
        assert await client.xlen(stream) == 2
        entries = await client.xrange(stream, count=1)
        assert entries[0][0] == first
        assert entries[0][1] == {b"event": b"ping", b"n": b"1"}

        assert await client.delete(key, stream) == 2
    finally:
        await client.aclose()


async def test_postgres_query_and_temp_table() -> None:
    conn = await asyncpg.connect(infra.postgres_url(), timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "opsbot_test"

        await conn.execute(
            "CREATE TEMP TABLE opsbot_infra_check (id serial PRIMARY KEY, note text NOT NULL)"
        )
        await conn.executemany(
            "INSERT INTO opsbot_infra_check (note) VALUES ($1)", [("alpha",), ("beta",)]
        )
        rows = await conn.fetch("SELECT id, note FROM opsbot_infra_check ORDER BY id")
        assert [r["note"] for r in rows] == ["alpha", "beta"]
        await conn.execute("DROP TABLE opsbot_infra_check")
        assert await conn.fetchval("SELECT to_regclass('pg_temp.opsbot_infra_check')") is None
    finally:
        await conn.close()


def test_sqlalchemy_url_uses_asyncpg_driver() -> None:
    url = infra.postgres_sqlalchemy_url()
    assert url.startswith("postgresql+asyncpg://")
    assert url.removeprefix("postgresql+asyncpg://") == infra.postgres_url().partition("://")[2]


# The skip/fail rule itself, independent of whether the servers are running.


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_missing_url_fails_on_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.delenv(infra.REDIS_URL_ENV, raising=False)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=re.escape(HOW_TO_RUN)):
        infra.redis_url()


@pytest.mark.parametrize("ci", [None, "", "false", "1"])
def test_missing_url_skips_off_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    monkeypatch.delenv(infra.POSTGRES_URL_ENV, raising=False)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=re.escape(f"not set; {HOW_TO_RUN}")):
        infra.postgres_url()


def test_blank_url_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(infra.REDIS_URL_ENV, "  ")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        infra.redis_url()


def test_non_postgres_url_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(infra.POSTGRES_URL_ENV, "mysql://root@127.0.0.1/x")
    with pytest.raises(pytest.fail.Exception, match="not a postgresql:// URL"):
        infra.postgres_sqlalchemy_url()
