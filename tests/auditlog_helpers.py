"""Helpers for the audit store tests: databases, entries, and a TCP proxy to cut the line."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bot.audit import AuditEntry, AuditStore
from bot.storage.engine import make_engine
from tests import infra

BASE_TIME = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def entry(i: int = 0, **overrides: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "request_id": f"req-{i:04d}",
        "at": BASE_TIME + timedelta(seconds=i),
        "stage": "decided",
        "kind": "command",
        "platform": "console",
        "workspace": "local",
        "channel": "ops",
        "user_id": "alice",
        "principal": "alice",
        "command": "health",
        "raw_text": f"/health {i}",
        "status": "ok",
    }
    values.update(overrides)
    return AuditEntry(**values)


@dataclass
class Db:
    """A migrated, empty audit database: a SQLite file or a fresh PostgreSQL schema."""

    backend: str
    url: str
    schema: str | None

    def store(self, tmp_path: Path, name: str = "spool", **kwargs: Any) -> AuditStore:
        return AuditStore(self.url, schema=self.schema, spool_path=tmp_path / name, **kwargs)

    async def execute(self, sql: str, **params: Any) -> list[sa.Row[Any]]:
        """Raw SQL through an engine of its own (the way someone tampering would)."""
        engine = make_engine(self.url, schema=self.schema)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(sa.text(sql), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    async def request_ids(self) -> list[str]:
        rows = await self.execute("SELECT request_id FROM audit_log ORDER BY seq")
        return [row[0] for row in rows]


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[tuple[str, str]]:
    """A fresh schema in the test PostgreSQL, dropped afterwards: (sqlalchemy url, schema)."""
    url = infra.postgres_sqlalchemy_url()
    schema = f"audit_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(infra.postgres_url(), timeout=10)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield url, schema
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh, empty database in the test PostgreSQL server, dropped afterwards: its
    SQLAlchemy URL. For tests that configure the bot by URL alone (no schema option)."""
    name = f"opsbot_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(infra.postgres_url(), timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield (
            make_url(infra.postgres_sqlalchemy_url())
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def with_port(url: str, port: int) -> str:
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that a test can take down (cutting live connections)
    and bring back on the same port: the database "goes away" without touching the server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            await asyncio.gather(*pipes, return_exceptions=True)
            self._tasks.difference_update(pipes)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
