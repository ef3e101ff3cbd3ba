"""Drive the real bot through the console adapter: a chat message in, the reply out.

Modelled on errbot's ``testbot.exec_command``::

    async with running_bot(BASE_CONFIG) as tb:
        assert "You are alice" in await tb.exec("/whoami", as_="alice")
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.console.adapter import ConsoleAdapter
from bot.app.config import parse_config
from bot.app.config.models import Config
from bot.app.runtime import Bot
from bot.audit import AuditEntry
from bot.kernel.adapter import Adapter
from bot.kernel.command import Access, Args, CommandSpec, NoArgs, NoDeps
from bot.kernel.render import render_text
from bot.kernel.reply import Reply
from commands import COMMANDS

BASE_CONFIG = """
[bot]
name = "opsbot"

[http]
port = 0

[roles.admin]
includes = ["oncall"]
[roles.oncall]
[roles.viewer]
[roles.deployer]

[identities.alice]
roles = ["admin"]
ids = ["console:alice", "slack:U0ALICE01", "telegram:111111111", "discord:100000000000000001"]
[identities.bob]
roles = ["oncall"]
ids = ["console:bob", "slack:U0BOB0001", "telegram:222222222", "discord:100000000000000002"]
[identities.carol]
roles = ["viewer"]
ids = ["console:carol", "slack:U0CAROL01", "telegram:333333333", "discord:100000000000000003"]
[identities.dave]
roles = ["deployer"]
ids = ["console:dave", "slack:U0DAVE001", "telegram:444444444", "discord:100000000000000004"]

[channels.ops]
ids = ["console:ops", "slack:C0OPS0001", "telegram:-1001000000001", "discord:200000000000000001"]
[channels.incident]
ids = ["console:incident"]

[policy]
admin_roles = ["admin"]

[policy.commands.status]
roles = ["*"]
[policy.commands.version]
roles = ["oncall", "viewer"]
[policy.commands.policy]
roles = ["oncall"]
channels = ["ops", "incident"]
[policy.commands.audit]
roles = ["oncall"]
"""


def extra_command(
    name: str, run: Any, args: type[Args] = NoArgs, **kw: Any
) -> CommandSpec[Any, Any]:
    """A command only a test has, that any known person may run (needing no service
    unless ``needs=`` says)."""
    kw.setdefault("needs", NoDeps)
    return CommandSpec(
        name=name,
        summary=f"test command {name}",
        usage=f"/{name}",
        args_model=args,
        run=run,
        default_access=Access.ANY_PRINCIPAL,
        **kw,
    )


AdapterFactory = Callable[[Config, list[CommandSpec[Any, Any]], Any], Adapter]


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, delta: timedelta) -> None:
        self._now += delta
        self._mono += delta.total_seconds()


class TestBot:
    __test__ = False  # not a pytest class

    def __init__(self, bot: Bot, console: ConsoleAdapter) -> None:
        self.bot = bot
        self.console = console

    async def send(self, text: str, *, as_: str = "alice", channel: str = "ops") -> Reply | None:
        return await self.console.send(text, user=as_, channel=channel)

    async def exec(self, text: str, *, as_: str = "alice", channel: str = "ops") -> str:
        return await self.console.exec(text, user=as_, channel=channel)

    async def posted(self, contains: str, *, within: float = 10.0) -> str:
        """The rendered text of the first message the bot posted on its own (job progress,
        results, approval news) that contains ``contains``; fails after ``within`` s."""
        async with asyncio.timeout(within):
            reply = await self.console.wait_posted(lambda r: contains in render_text(r))
        return render_text(reply)

    async def adapter_check(
        self, adapter: str, until: Callable[[str], bool], *, within: float = 10.0
    ) -> str:
        """The adapter's check in /ready's body (``bot.readiness()``), read every 50 ms
        until ``until`` holds of it; its last value when ``within`` s ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            state = (await self.bot.readiness())[f"adapter:{adapter}"]
            if until(state) or loop.time() >= deadline:
                return state
            await asyncio.sleep(0.05)

    def all_posted(self) -> list[str]:
        return [render_text(reply) for _, reply in self.console.posted]

    async def audit(self) -> list[AuditEntry]:
        """Every entry in the bot's audit database, in chain order (after a flush)."""
        store = self.bot.audit.store
        await store.flush()
        return [row.entry async for row in store.export(datetime(1970, 1, 1, tzinfo=UTC))]

    async def commands_audited(self) -> list[AuditEntry]:
        """Each command's last entry ("finished", or "decided" when it was turned away)."""
        last: dict[str, AuditEntry] = {}
        for entry in await self.audit():
            if entry.kind == "command":
                last.pop(entry.request_id, None)
                last[entry.request_id] = entry
        return list(last.values())


@contextlib.asynccontextmanager
async def running_bot(
    config_text: str = BASE_CONFIG,
    *,
    extra_commands: Sequence[CommandSpec[Any, Any]] = (),
    clock: Any = None,
    serve_http: bool = False,
    data_dir: Path | None = None,
    adapters: Sequence[AdapterFactory] = (),
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[TestBot]:
    """``data_dir``: keep the bot's database there (a restart test starts a second bot on
    the same directory); by default a fresh temporary one. ``adapters``: platform adapters
    to attach besides the console, each made from (config, commands, clock), as
    ``bot.app.adapters.build_adapters`` makes them. ``env``: the environment the config
    is read with (its ``{ env = "OPSBOT_…" }`` secrets)."""
    specs = [*COMMANDS, *extra_commands]
    config = parse_config(config_text, "test", env or {}, [s.name for s in specs])
    with tempfile.TemporaryDirectory(prefix="opsbot-test-") as temp_dir:
        if config.bot.data_dir == Path(".opsbot"):  # never the developer's own directory
            chosen = data_dir or Path(temp_dir)
            config = config.model_copy(
                update={"bot": config.bot.model_copy(update={"data_dir": chosen})}
            )
        bot = Bot(config, specs, clock=clock, config_source="test")
        console = ConsoleAdapter("alice", "ops", bot.clock)
        # As `opsbot run` does: scheduled work starts once the adapters are attached.
        await bot.start(serve_http=serve_http, defer_scheduled=True)
        await console.start(bot.handle)
        bot.outbox.register("console", console.post, console.limits)
        bot.adapters.set("console", "connected")
        await bot.attach([make(config, specs, bot.clock) for make in adapters])
        await bot.start_scheduled()
        try:
            yield TestBot(bot, console)
        finally:
            await console.stop()
            await bot.stop()
