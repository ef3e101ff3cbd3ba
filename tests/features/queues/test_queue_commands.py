"""/queue and /workers in chat, against a real Redis: real streams, groups, consumers,
pending entries and dead letters, made with the same commands workers use."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from bot.cluster.redis_clients import RedisClients
from bot.features.queues.config import FloorLevel, Level, QueueConfig
from bot.features.queues.inspect import (
    QueueFailure,
    QueueState,
    Severity,
    above,
    below,
    inspect_queue,
)
from bot.kernel.reply import Reply, Status
from tests.botharness import BASE_CONFIG, running_bot
from tests.infra import redis_url

pytestmark = pytest.mark.redis

RULES = """
[policy.commands.queue]
roles = ["oncall"]
[policy.commands.workers]
roles = ["oncall"]
"""


def queue_toml(name: str, stream: str, url: str | None = None, **options: str) -> str:
    """One [[queues]] table; option values are TOML (quoted strings, inline tables)."""
    lines = [
        "[[queues]]",
        f'name = "{name}"',
        f'redis_url = "{url or redis_url()}"',
        f'stream = "{stream}"',
    ]
    lines += [f"{key} = {value}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def config(*queues: str) -> str:
    return BASE_CONFIG + RULES + "\n".join(queues)


def rows_of(reply: Reply | None) -> dict[tuple[str, str], tuple[str, ...]]:
    """Table rows keyed by (queue, group)."""
    assert reply is not None
    assert reply.table is not None
    return {(row[0], row[1]): row[2:] for row in reply.table.rows}


async def add(client: aioredis.Redis, stream: str, count: int) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(stream, {"job": str(i)})
    return [str(entry_id) for entry_id in await pipe.execute()]


async def read(client: aioredis.Redis, stream: str, group: str, consumer: str, count: int) -> int:
    """Deliver ``count`` entries to ``consumer`` without acknowledging them."""
    answer: Any = await client.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return sum(len(entries) for _, entries in answer)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def blackhole() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def test_redis_url_is_local() -> None:
    # The loopback guard in conftest covers sockets; this keeps the URL honest too.
    assert urlsplit(redis_url()).hostname in {"127.0.0.1", "localhost"}


def test_levels_at_their_boundaries() -> None:
    # "warn above warn, critical above critical"; workers: "warn below, critical at or below".
    length = Level(warn=100, critical=500)
    assert [above(v, length) for v in (100, 101, 500, 501, None)] == [
        Severity.OK,
        Severity.WARN,
        Severity.WARN,
        Severity.CRITICAL,
        Severity.OK,
    ]
    dead = Level(warn=0, critical=100)
    assert [above(v, dead) for v in (0, 1)] == [Severity.OK, Severity.WARN]
    workers = FloorLevel(warn=2, critical=0)
    assert [below(v, workers) for v in (0, 1, 2, 3)] == [
        Severity.CRITICAL,
        Severity.WARN,
        Severity.OK,
        Severity.OK,
    ]


async def test_a_stream_exactly_at_a_threshold_is_not_over_it(
    rds: tuple[aioredis.Redis, str],
) -> None:
    client, p = rds
    for name, count in (("at", 4), ("over", 5)):
        await add(client, f"{p}{name}", count)
        await client.xgroup_create(f"{p}{name}", "workers", id="0")
        for consumer in ("w-1", "w-2"):
            assert await read(client, f"{p}{name}", "workers", consumer, 1) == 1
    limits = "{ length = { warn = 4, critical = 9 }, workers = { warn = 1, critical = 0 } }"
    text = config(
        *(
            queue_toml(name, f"{p}{name}", group='"workers"', thresholds=limits)
            for name in ("at", "over")
        )
    )
    async with running_bot(text) as tb:
        reply = await tb.send("/queue", as_="bob")
    rows = rows_of(reply)
    assert rows[("at", "workers")][:2] == ("ok", "4")
    assert rows[("over", "workers")][:2] == ("WARN len", "5")


async def test_queue_marks_length_pending_lag_workers_and_dead_letters(
    rds: tuple[aioredis.Redis, str],
) -> None:
    client, p = rds
    # calm: 3 entries, 2 consumers, 1 pending: all under the default thresholds.
    await add(client, f"{p}calm", 3)
    await client.xgroup_create(f"{p}calm", "workers", id="0")
    assert await read(client, f"{p}calm", "workers", "calm-1", 1) == 1
    assert await read(client, f"{p}calm", "workers", "calm-2", 2) == 2
    await client.xack(f"{p}calm", "workers", *(await _ids(client, f"{p}calm"))[1:])
    # busy: 150 entries (warn > 100), 120 delivered and not acknowledged (warn > 100),
    # one consumer (warn < 2), 30 not yet delivered (lag ok).
    await add(client, f"{p}busy", 150)
    await client.xgroup_create(f"{p}busy", "workers", id="0")
    assert await read(client, f"{p}busy", "workers", "busy-1", 120) == 120
    # flood: 600 entries (critical > 500), nobody reads (critical), all 600 lag
    # (critical); 3 dead letters (warn > 0).
    await add(client, f"{p}flood", 600)
    await client.xgroup_create(f"{p}flood", "workers", id="0")
    await add(client, f"{p}flood:dead", 3)
    # fanout: every group of the stream; "audit" has an entry waiting 400 s (critical > 300).
    ids = await add(client, f"{p}fanout", 5)
    await client.xgroup_create(f"{p}fanout", "mailer", id="$")
    await client.xgroup_create(f"{p}fanout", "audit", id="0")
    await add(client, f"{p}fanout", 2)
    for consumer in ("m-1", "m-2"):
        assert await read(client, f"{p}fanout", "mailer", consumer, 1) == 1
    await client.xack(f"{p}fanout", "mailer", *(await _ids(client, f"{p}fanout"))[-2:])
    for consumer in ("a-1", "a-2"):
        await read(client, f"{p}fanout", "audit", consumer, 1)
    await client.xclaim(f"{p}fanout", "audit", "a-1", 0, [ids[0]], idle=400_000)

    text = config(
        queue_toml("calm", f"{p}calm", group='"workers"'),
        queue_toml("busy", f"{p}busy", group='"workers"'),
        queue_toml("flood", f"{p}flood", group='"workers"', dead_letter_stream=f'"{p}flood:dead"'),
        queue_toml("fanout", f"{p}fanout"),
    )
    async with running_bot(text) as tb:
        reply = await tb.send("/queue", as_="bob")
        one = await tb.send("/queue busy", as_="bob")

    assert reply is not None
    assert reply.status is Status.ERROR
    assert reply.title == "4 queues: 2 critical, 1 warn, 1 ok"
    assert reply.text == ""
    assert reply.table is not None
    assert reply.table.columns == (
        "queue",
        "group",
        "state",
        "len",
        "pending",
        "lag",
        "oldest",
        "dead",
        "workers",
    )
    # Worst first; equally bad queues keep their config order.
    assert [row[0] for row in reply.table.rows] == ["flood", "fanout", "fanout", "busy", "calm"]
    rows = rows_of(reply)
    assert rows[("flood", "workers")] == (
        "CRIT len; CRIT lag; CRIT workers; WARN dead",
        "600",
        "0",
        "600",
        "-",
        "3",
        "0",
    )
    assert rows[("fanout", "audit")] == ("CRIT oldest", "7", "2", "5", "6m 40s", "-", "2")
    assert rows[("fanout", "mailer")] == ("ok", "7", "0", "0", "-", "-", "2")
    assert rows[("busy", "workers")][:3] == ("WARN len; WARN pending; WARN workers", "150", "120")
    assert rows[("busy", "workers")][3] == "30"
    assert rows[("busy", "workers")][6] == "1"
    calm = rows[("calm", "workers")]
    assert calm[:4] == ("ok", "3", "1", "0")
    assert calm[6] == "2"

    assert one is not None
    assert one.status is Status.WARNING
    assert one.title == "1 queue: 1 warn"
    assert [row[0] for row in rows_of(one)] == ["busy"]


async def _ids(client: aioredis.Redis, stream: str) -> list[str]:
    entries: Any = await client.xrange(stream)
    return [str(entry_id) for entry_id, _ in entries]


async def test_thresholds_from_the_config_and_lag_redis_cannot_tell(
    rds: tuple[aioredis.Redis, str],
) -> None:
    client, p = rds
    ids = await add(client, f"{p}jobs", 10)
    await client.xgroup_create(f"{p}jobs", "workers", id="0")
    await read(client, f"{p}jobs", "workers", "w-1", 2)
    await read(client, f"{p}jobs", "workers", "w-2", 1)
    # A deletion past the group's position leaves Redis unable to count the lag.
    await client.xdel(f"{p}jobs", ids[6])
    strict = (
        "{ length = { warn = 5, critical = 8 }, pending = { warn = 1, critical = 2 }, "
        "workers = { warn = 3, critical = 1 } }"
    )
    text = config(queue_toml("jobs", f"{p}jobs", group='"workers"', thresholds=strict))
    async with running_bot(text) as tb:
        reply = await tb.send("/queue", as_="bob")
    rows = rows_of(reply)
    assert rows[("jobs", "workers")] == (
        "CRIT len; CRIT pending; WARN workers",
        "9",
        "3",
        "n/a",
        "0s",
        "-",
        "2",
    )
    assert reply is not None
    assert reply.status is Status.ERROR


async def test_a_lag_past_a_trim_is_at_most_the_stream_and_explained(
    rds: tuple[aioredis.Redis, str],
) -> None:
    client, p = rds
    await add(client, f"{p}jobs", 10)
    await client.xgroup_create(f"{p}jobs", "workers", id="0")
    await read(client, f"{p}jobs", "workers", "w-1", 2)
    # Redis counts the lag from entries ever added: 10 - 2 read = 8, with 3 left.
    await client.xtrim(f"{p}jobs", maxlen=3, approximate=False)
    text = config(queue_toml("jobs", f"{p}jobs", group='"workers"'))
    async with running_bot(text) as tb:
        reply = await tb.send("/queue", as_="bob")
    rows = rows_of(reply)
    assert rows[("jobs", "workers")][1:4] == ("3", "2", "3")  # length, pending, lag
    assert reply is not None
    assert "Redis reports a lag of 8 for group workers, more than the 3 entries" in reply.text
    assert "trimmed before the group read them" in reply.text


async def test_a_dead_letter_stream_watched_alone_needs_no_workers(
    rds: tuple[aioredis.Redis, str],
) -> None:
    client, p = rds
    await add(client, f"{p}dlq", 2)
    text = config(
        queue_toml("dlq", f"{p}dlq", workers_expected="false"),
        queue_toml("jobs", f"{p}dlq"),  # the same stream, as a work queue: nobody reads it
    )
    async with running_bot(text) as tb:
        reply = await tb.send("/queue", as_="bob")
    rows = rows_of(reply)
    assert rows[("dlq", "(none)")][0] == "ok"
    assert rows[("jobs", "(none)")][0] == "CRIT workers"


async def test_workers_counts_stalled_consumers(rds: tuple[aioredis.Redis, str]) -> None:
    client, p = rds
    await add(client, f"{p}jobs", 10)
    await client.xgroup_create(f"{p}jobs", "workers", id="0")
    await read(client, f"{p}jobs", "workers", "w-old", 4)
    await read(client, f"{p}jobs", "workers", "w-older", 1)
    # quiet: everything read and acknowledged; its workers keep polling and find nothing.
    await add(client, f"{p}quiet", 2)
    await client.xgroup_create(f"{p}quiet", "workers", id="0")
    for consumer in ("q-1", "q-2"):
        assert await read(client, f"{p}quiet", "workers", consumer, 1) == 1
    await client.xack(f"{p}quiet", "workers", *(await _ids(client, f"{p}quiet")))
    await asyncio.sleep(1.3)  # w-live then has a second to spare for the bot to start
    await read(client, f"{p}jobs", "workers", "w-live", 2)
    for consumer in ("q-1", "q-2"):
        # Redis before 7.2 leaves their idle time running through this: they must still
        # count as live, since nothing waits for them.
        assert await read(client, f"{p}quiet", "workers", consumer, 1) == 0
    await add(client, f"{p}mail", 3)
    await client.xgroup_create(f"{p}mail", "senders", id="0")
    for consumer in ("s-1", "s-2", "s-3"):
        await read(client, f"{p}mail", "senders", consumer, 1)
    await add(client, f"{p}orphan", 1)  # no group: nobody reads it

    text = config(
        queue_toml("jobs", f"{p}jobs", group='"workers"', stalled_after='"1s"'),
        queue_toml("mail", f"{p}mail", stalled_after='"1m"'),
        queue_toml("orphan", f"{p}orphan"),
        queue_toml("quiet", f"{p}quiet", stalled_after='"1s"'),
    )
    async with running_bot(text) as tb:
        reply = await tb.send("/workers", as_="bob")
        queue_reply = await tb.send("/queue jobs", as_="bob")

    assert reply is not None
    assert reply.status is Status.ERROR
    assert reply.title == "Workers of 4 queues: 1 critical, 1 warn, 2 ok"
    assert reply.text.splitlines() == [
        "orphan: CRIT no consumer group reads stream " + f"'{p}orphan'",
        "jobs/workers: WARN 1 live of 3, 2 stalled (idle > 1s); want at least 2",
    ]
    assert reply.table is not None
    assert reply.table.columns == ("queue", "group", "consumer", "state", "idle", "pending")
    table = [(row[0], row[2], row[3], row[5]) for row in reply.table.rows]
    # Stalled first, longest idle first; the orphan has no consumer to list.
    assert table == [
        ("jobs", "w-old", "STALLED", "4"),
        ("jobs", "w-older", "STALLED", "1"),
        ("jobs", "w-live", "live", "2"),
        ("mail", "s-1", "live", "1"),
        ("mail", "s-2", "live", "1"),
        ("mail", "s-3", "live", "1"),
        ("quiet", "q-1", "live", "0"),
        ("quiet", "q-2", "live", "0"),
    ]
    queue_rows = rows_of(queue_reply)
    assert queue_rows[("jobs", "workers")][0] == "WARN workers"
    assert queue_rows[("jobs", "workers")][-1] == "1 of 3"


async def test_missing_stream_group_and_unreachable_redis_are_one_line_each(
    rds: tuple[aioredis.Redis, str],
) -> None:
    client, p = rds
    await add(client, f"{p}jobs", 2)
    await client.xgroup_create(f"{p}jobs", "workers", id="0")
    await read(client, f"{p}jobs", "workers", "w-1", 1)
    await read(client, f"{p}jobs", "workers", "w-2", 1)
    await client.set(f"{p}plain", "not a stream")
    refused = free_port()
    secret = "hunter2-s3cret-pw"
    async with blackhole() as hole:
        text = config(
            queue_toml("good", f"{p}jobs", group='"workers"'),
            queue_toml("nostream", f"{p}nothing", group='"workers"'),
            queue_toml("nogroup", f"{p}jobs", group='"senders"'),
            queue_toml("wrongtype", f"{p}plain"),
            # No user name: the pipeline's URL redaction would not catch this password,
            # so only the command itself keeps it out of the reply.
            queue_toml("refused", "jobs", url=f"redis://:{secret}@127.0.0.1:{refused}/0"),
            queue_toml(
                "blackhole", "jobs", url=f"redis://:{secret}@127.0.0.1:{hole}/0", timeout='"0.5s"'
            ),
        )
        async with running_bot(text) as tb:
            started = time.perf_counter()
            reply = await tb.send("/queue", as_="bob")
            elapsed = time.perf_counter() - started
            out = await tb.exec("/queue", as_="bob")
            workers = await tb.exec("/workers", as_="bob")
            audited = await tb.audit()

    assert reply is not None
    assert reply.status is Status.ERROR
    assert reply.title == "6 queues: 5 error, 1 ok"
    assert reply.text.splitlines() == [
        f"nostream: stream '{p}nothing' does not exist",
        f"nogroup: no consumer group 'senders' on stream '{p}jobs'",
        f"wrongtype: key '{p}plain' is a string, not a stream",
        f"refused: Redis at 127.0.0.1:{refused} unreachable (connection refused)",
        f"blackhole: Redis at 127.0.0.1:{hole} unreachable (timed out after 0.5s)",
    ]
    assert list(rows_of(reply)) == [("good", "workers")]
    # Queues are inspected at once: the 0.5 s blackhole bounds the whole answer.
    assert elapsed < 0.5 + 0.3
    assert f"blackhole: Redis at 127.0.0.1:{hole} unreachable (timed out after 0.5s)" in workers
    assert "good   workers  w-1       live" in workers
    for rendered in (out, workers, *(repr(entry) for entry in audited)):
        assert secret not in rendered
    assert "Traceback" not in out


async def test_a_wrong_password_names_the_queue_and_hides_the_password(
    rds: tuple[aioredis.Redis, str],
) -> None:
    client, p = rds
    user = f"{p}user".replace(":", "-")
    await client.acl_setuser(
        user, enabled=True, passwords=["+right-password"], keys=["*"], commands=["+@all"]
    )
    await add(client, f"{p}jobs", 1)
    port = urlsplit(redis_url()).port
    wrong = f"redis://{user}:wrong-password-123@127.0.0.1:{port}/0"
    try:
        queue = QueueConfig.model_validate(
            {"name": "billing", "redis_url": wrong, "stream": f"{p}jobs"}
        )
        clients = RedisClients()
        try:
            report = await inspect_queue(clients, queue)
        finally:
            await clients.close()
        async with running_bot(config(queue_toml("billing", f"{p}jobs", url=wrong))) as tb:
            out = await tb.exec("/queue", as_="bob")
    finally:
        await client.acl_deluser(user)

    expected = (
        f"Redis at 127.0.0.1:{port} refused the login (wrong user name or password, or none given)"
    )
    assert report == QueueFailure("billing", expected)
    assert report.severity is Severity.CRITICAL
    assert f"billing: {expected}" in out
    assert "wrong-password-123" not in out


async def test_inspection_report_is_typed(rds: tuple[aioredis.Redis, str]) -> None:
    client, p = rds
    await add(client, f"{p}jobs", 120)
    await client.xgroup_create(f"{p}jobs", "workers", id="0")
    await read(client, f"{p}jobs", "workers", "w-1", 20)
    queue = QueueConfig(
        name="jobs",
        redis_url=redis_url(),  # type: ignore[arg-type]  # pydantic turns it into a SecretStr
        stream=f"{p}jobs",
        stalled_after=timedelta(minutes=1),
    )
    clients = RedisClients()
    try:
        report = await inspect_queue(clients, queue)
    finally:
        await clients.close()
    assert isinstance(report, QueueState)
    assert report.length.value == 120
    assert report.length.severity is Severity.WARN
    assert report.dead_letter is None
    (group,) = report.groups
    assert group.name == "workers"
    assert (group.pending.value, group.lag.value, group.workers.value) == (20, 100, 1)
    assert group.workers.severity is Severity.WARN
    assert [c.name for c in group.consumers] == ["w-1"]
    assert report.severity is Severity.WARN


async def test_unknown_queue_no_queues_denial_and_audit(rds: tuple[aioredis.Redis, str]) -> None:
    client, p = rds
    await add(client, f"{p}a", 1)
    text = config(queue_toml("alpha", f"{p}a"), queue_toml("beta", f"{p}b"))
    async with running_bot(text) as tb:
        unknown = await tb.exec("/queue nope", as_="bob")
        unknown_workers = await tb.exec("/workers nope", as_="bob")
        denied = await tb.exec("/queue", as_="carol")
        denied_workers = await tb.exec("/workers alpha", as_="carol")
        allowed = await tb.send("/queue alpha", as_="bob")
        audited = await tb.commands_audited()
    async with running_bot(config()) as tb:
        empty = await tb.send("/queue", as_="bob")
        empty_workers = await tb.send("/workers", as_="bob")

    assert "unknown queue 'nope' (queues: alpha, beta). Usage: /queue [name]" in unknown
    assert "unknown queue 'nope' (queues: alpha, beta). Usage: /workers [name]" in unknown_workers
    assert denied.startswith("⛔ Denied")
    assert denied_workers.startswith("⛔ Denied")
    assert allowed is not None
    assert allowed.title == "1 queue: 1 critical"  # alpha has no consumer group
    summary = [(e.command, e.principal, e.status) for e in audited]
    assert summary == [
        ("queue", "bob", "usage"),
        ("workers", "bob", "usage"),
        ("queue", "carol", "denied"),
        ("workers", "carol", "denied"),
        ("queue", "bob", "error"),
    ]
    for reply in (empty, empty_workers):
        assert reply is not None
        assert reply.title == "No queues configured"
        assert "[[queues]]" in reply.text
