"""A command's dependencies are the dataclass its spec names: the application builds it
from the services it registered, and a test builds it by hand from only those parts,
without booting a bot."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from bot.app.config import parse_config
from bot.app.runtime import Bot
from bot.cluster.http_clients import HttpClients
from bot.cluster.redis_clients import RedisClients
from bot.features.probes.config import Service
from bot.features.probes.targets import ServiceTargets
from bot.kernel.command import Decision, Principal, Request
from bot.kernel.errors import UsageError
from bot.kernel.message import Location, Message
from bot.kernel.reply import Status
from commands import COMMANDS
from commands.health import HealthArgs, HealthDeps
from commands.health import run as health
from tests.botharness import BASE_CONFIG
from tests.httpfakes import Route, serve

ALICE = Principal("alice", frozenset({"oncall"}), ("console:alice",))


def _request(text: str) -> Request:
    message = Message(
        location=Location("console", "ops"),
        user_id="alice",
        text=text,
        event_id="ev-1",
        received_at=datetime(2026, 12, 2, 3, 0, tzinfo=UTC),
        addressed=True,
    )
    return Request("0001feedbeef", message, ALICE, "ops", Decision(True, "test"))


async def test_health_runs_with_only_its_services_and_an_http_client() -> None:
    async with serve({"/health": Route.of_json({"status": "ok"})}) as server:
        http = HttpClients()
        try:
            deps = HealthDeps(
                targets=ServiceTargets([Service(name="api", health_url=server.url("/health"))]),
                http=http,
                redis=RedisClients(),  # for services of kind redis; none here
            )
            reply = await health(_request("/health"), HealthArgs(), deps)
        finally:
            await http.close()
    assert (reply.title, reply.status) == ("Health: 1 up", Status.OK)
    assert server.requests[0].headers["X-Request-ID"] == "0001feedbeef"
    with pytest.raises(UsageError, match=r"unknown service 'nope' \(services: none configured\)"):
        await health(
            _request("/health nope"),
            HealthArgs(service="nope"),
            HealthDeps(targets=ServiceTargets([]), http=HttpClients(), redis=RedisClients()),
        )


def test_every_command_declares_struct_dependencies_the_bot_provides() -> None:
    config = parse_config(BASE_CONFIG, "test", {}, [spec.name for spec in COMMANDS])
    bot = Bot(config, COMMANDS)  # no I/O until start()
    for spec in COMMANDS:
        assert issubclass(spec.needs, msgspec.Struct), spec.name
        deps = bot.services.provide(spec.needs, command=spec.name)
        for field in msgspec.structs.fields(deps):
            assert getattr(deps, field.name) is not None, (spec.name, field.name)
    # Nothing reaches everything: the widest command sees five services of twenty.
    widest = max(len(spec.needs.__struct_fields__) for spec in COMMANDS)
    assert widest <= 5


def test_a_dependency_the_runtime_does_not_provide_is_named() -> None:
    class Wants(msgspec.Struct, frozen=True):
        unknown: Location

    config = parse_config(BASE_CONFIG, "test", {}, [spec.name for spec in COMMANDS])
    bot = Bot(config, COMMANDS)
    with pytest.raises(LookupError, match=r"/x needs unknown: Location, which the runtime"):
        bot.services.provide(Wants, command="x")
