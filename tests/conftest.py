from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# Imported (and assertion-rewritten) here, at collection: left to its plugin's terminal
# summary, a run of one file without property tests compiled it late, and CPython 3.11.7's
# ast raised "AST constructor recursion depth mismatch" and turned a green run into exit 1.
import hypothesis  # noqa: F401
import pytest
import redis.asyncio as aioredis

from tests.actionkit import Scripts, make_scripts
from tests.botharness import TestBot, running_bot
from tests.infra import redis_url


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may talk to 127.0.0.1 only; anything else fails loudly (cf. PTB's OfflineRequest)."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple):
            host = address[0]
            try:
                if ipaddress.ip_address(host).is_loopback:
                    return
            except ValueError:
                if host == "localhost":
                    return
            raise OSError(f"test tried to reach {address!r}: only loopback is allowed")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture
async def testbot() -> AsyncIterator[TestBot]:
    async with running_bot() as tb:
        yield tb


@pytest.fixture
def scripts(tmp_path: Path) -> Scripts:
    """Action scripts in a temporary directory (see tests/actionkit.py)."""
    return make_scripts(tmp_path)


@pytest.fixture
async def rds() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A client on the test Redis and a key prefix no other test uses; keys go afterwards."""
    client = aioredis.Redis.from_url(redis_url(), decode_responses=True)
    prefix = f"opsbot-test:{uuid.uuid4().hex[:10]}:"
    try:
        yield client, prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
