"""Outbound fan-out benchmark: alerts to many channels through the Outbox, against fake
platforms that enforce the platforms' rate limits.

    .venv/bin/python bench/fanout.py [--alerts 1000] [--channels 10]
                                     [--platforms slack,telegram,discord] [--no-coalesced]

For each platform: its fake (tests/fakes/*_server.py) on 127.0.0.1 with
``enforce_limits()`` on, the real adapter (slack-bolt, python-telegram-bot, discord.py)
started against it, and an :class:`~bot.delivery.outbox.Outbox` on the real store (an
``OutboxStore`` on a fresh SQLite state database, migrated as ``opsbot run`` migrates it)
with the adapter's ``post`` and ``limits`` registered and the production ``RetryPolicy``.
``--alerts`` alerts (titles ``FANOUT-00000`` ...) are posted round-robin over
``--channels`` channels, then the Outbox is drained (bounded: twice the time the allowed
rate needs, plus 30 s).

Two runs per platform:
  one-each   ``coalesce=False``: every alert is one message, so the pace is what is measured;
  coalesced  ``coalesce=True`` (what alerts use): storm control merges what waits for a
             channel into one message; ``msgs`` shows how many it actually sent.

Columns: ``delivered`` distinct alerts the fake accepted (in any message); ``lost`` posted
minus delivered (dead letters included); ``dead`` dead letters in the store; ``dup``
alerts the fake accepted more than once; ``msgs`` messages the fake accepted; ``429s`` what
the fake refused (retried by the adapter's client library or by the Outbox); ``fails``
posts that raised into the Outbox; ``post s`` how long the ``post()`` calls took (each
one a row in the store); ``drain s`` from the first post to the Outbox drained (``!``: the
bound ran out first); ``rate/s`` delivered alerts / drain s; ``allowed/s`` the documented
limit for these channels; ``fraction`` their ratio (one-each runs only); ``order`` whether
every channel got its alerts in posting order.

Allowed rates: Slack 1 message/s per channel; Telegram 1 message/s per chat (private
chats, positive ids, are used: a group chat would add 20/min per group), 30/s overall;
Discord 5 per 5 s per channel. ``n`` messages at one per second take ``n - 1`` seconds,
so a perfect run's fraction is slightly above 1.

PASS when every one-each run reaches a fraction of at least 0.9 and no run loses an alert.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.discord.adapter import LIMITS as DISCORD_LIMITS  # noqa: E402
from adapters.discord.adapter import DiscordAdapter  # noqa: E402
from adapters.slack.adapter import LIMITS as SLACK_LIMITS  # noqa: E402
from adapters.slack.adapter import SlackAdapter  # noqa: E402
from adapters.telegram.adapter import LIMITS as TELEGRAM_LIMITS  # noqa: E402
from adapters.telegram.adapter import TelegramAdapter  # noqa: E402
from bot.app.config import parse_config  # noqa: E402
from bot.app.config.models import Config  # noqa: E402
from bot.app.logs import configure_logging  # noqa: E402
from bot.audit.trail import migrate  # noqa: E402
from bot.delivery.outbox import Outbox  # noqa: E402
from bot.delivery.store import OutboxStore, RowState  # noqa: E402
from bot.kernel.adapter import Poster  # noqa: E402
from bot.kernel.clock import SystemClock  # noqa: E402
from bot.kernel.message import Location, Message  # noqa: E402
from bot.kernel.reply import Reply, Status  # noqa: E402
from bot.storage.database import StateDatabase  # noqa: E402
from commands import COMMANDS  # noqa: E402
from tests.fakes.discord_server import GUILD_ID, FakeDiscord  # noqa: E402
from tests.fakes.slack_server import TEAM_ID, FakeSlack  # noqa: E402
from tests.fakes.telegram_server import FakeTelegram  # noqa: E402

PLATFORMS = ("slack", "telegram", "discord")
PER_CHANNEL = {"slack": 1.0, "telegram": 1.0, "discord": 5 / 5.0}  # messages/s
OVERALL = {"telegram": 30.0}  # messages/s, whatever the number of chats
TARGET = 0.9
ALERT = re.compile(r"FANOUT-(\d{5})")
# Just enough for the config checks; the adapters only read their own section.
BASE_CONFIG = "[roles.admin]\n"


@dataclass
class Platform:
    """A running fake and adapter: where to post, and what the fake accepted."""

    name: str
    post: Poster
    destinations: list[Location]
    received: Callable[[], list[tuple[str, str]]]  # (channel, text) accepted, in order
    rate_limited: Callable[[], int]  # 429s the fake sent


@dataclass
class Result:
    platform: str
    coalesce: bool
    posted: int
    delivered: int
    duplicates: int
    dead: int
    messages: int
    rate_limited: int
    failures: int
    post_s: float
    drain_s: float
    drained: bool
    in_order: bool
    allowed: float

    @property
    def lost(self) -> int:
        return self.posted - self.delivered

    @property
    def rate(self) -> float:
        return self.delivered / self.drain_s if self.drain_s > 0 else float("nan")

    @property
    def fraction(self) -> float:
        return self.rate / self.allowed


ADAPTER_LIMITS = {"slack": SLACK_LIMITS, "telegram": TELEGRAM_LIMITS, "discord": DISCORD_LIMITS}


def allowed_rate(platform: str, channels: int) -> float:
    return min(PER_CHANNEL[platform] * channels, OVERALL.get(platform, float("inf")))


def _config(section: str) -> Config:
    return parse_config(BASE_CONFIG + section, "bench", {}, [spec.name for spec in COMMANDS])


async def _no_commands(message: Message) -> Reply | None:
    return None  # nobody types commands here


@asynccontextmanager
async def slack(channels: int) -> AsyncIterator[Platform]:
    async with FakeSlack() as fake:
        fake.enforce_limits()
        adapter = SlackAdapter(_config(fake.config()).slack, COMMANDS, SystemClock())
        await adapter.start(_no_commands)
        try:
            yield Platform(
                "slack",
                adapter.post,
                [Location("slack", f"C0FAN{n:04d}", workspace=TEAM_ID) for n in range(channels)],
                lambda: [(m.channel, m.all_text()) for m in list(fake.messages.values())],
                lambda: fake.rate_limited,
            )
        finally:
            await adapter.stop()


@asynccontextmanager
async def telegram(channels: int) -> AsyncIterator[Platform]:
    async with FakeTelegram() as fake:
        fake.enforce_limits()
        adapter = TelegramAdapter(_config(fake.config()).telegram, COMMANDS, SystemClock())
        await adapter.start(_no_commands)
        try:
            yield Platform(
                "telegram",
                adapter.post,
                # Private chats (positive ids): 1 message/s each, 30/s overall.
                [Location("telegram", str(500_000_001 + n)) for n in range(channels)],
                lambda: [(str(c.params["chat_id"]), c.text) for c in fake.calls_of("sendMessage")],
                lambda: fake.rate_limited,
            )
        finally:
            await adapter.stop()


_CHANNEL_MESSAGES = re.compile(r"/channels/(\d+)/messages")


@asynccontextmanager
async def discord(channels: int) -> AsyncIterator[Platform]:
    async with FakeDiscord() as fake:
        fake.enforce_limits()
        adapter = DiscordAdapter(
            _config(fake.config()).discord, COMMANDS, SystemClock(), guild_ready_timeout=0.05
        )
        await adapter.start(_no_commands)

        def received() -> list[tuple[str, str]]:
            return [
                (m[1], call.text)
                for call in list(fake.calls)
                if call.method == "POST"
                and call.status == 200
                and (m := _CHANNEL_MESSAGES.fullmatch(call.path))
            ]

        try:
            yield Platform(
                "discord",
                adapter.post,
                [
                    Location("discord", str(200_000_000_000_000_101 + n), workspace=GUILD_ID)
                    for n in range(channels)
                ],
                received,
                lambda: fake.rate_limited,
            )
        finally:
            await adapter.stop()


STARTERS = {"slack": slack, "telegram": telegram, "discord": discord}


@asynccontextmanager
async def stored_outbox() -> AsyncIterator[tuple[Outbox, OutboxStore]]:
    """An Outbox on the real store: a fresh SQLite state database, migrated."""
    with tempfile.TemporaryDirectory(prefix="opsbot-fanout-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'state.db'}"
        await migrate(url)
        database = StateDatabase(url)
        await database.start()
        store = OutboxStore(database)
        outbox = Outbox(store)
        await outbox.start()
        try:
            yield outbox, store
        finally:
            await outbox.stop(grace=1.0)
            outbox.closed()
            await database.close()


class CountingPoster:
    """The adapter's post, counting the posts that raised into the Outbox."""

    def __init__(self, post: Poster) -> None:
        self._post = post
        self.failures: Counter[str] = Counter()

    async def __call__(self, destination: Location, reply: Reply, key: str | None) -> None:
        try:
            await self._post(destination, reply, key)
        except Exception as exc:
            self.failures[type(exc).__name__] += 1
            raise


def alert(n: int, destination: Location) -> Reply:
    return Reply(
        title=f"FANOUT-{n:05d}",
        status=Status.ERROR,
        text=f"disk full on host-{n % 97:02d} (channel {destination.channel_id})",
    )


async def run(platform: str, alerts: int, channels: int, *, coalesce: bool) -> Result:
    ideal = alerts / allowed_rate(platform, channels)
    async with STARTERS[platform](channels) as target, stored_outbox() as (outbox, store):
        poster = CountingPoster(target.post)
        outbox.register(platform, poster, ADAPTER_LIMITS[platform])
        destinations = target.destinations
        started = time.perf_counter()
        for n in range(alerts):
            destination = destinations[n % len(destinations)]
            if not await outbox.post(destination, alert(n, destination), coalesce=coalesce):
                raise RuntimeError(f"alert {n} was not queued")
        post_s = time.perf_counter() - started
        drained = await outbox.drain(2 * ideal + 30.0)
        drain_s = time.perf_counter() - started
        dead = await store.count(RowState.DEAD)
        received = target.received()
        rate_limited = target.rate_limited()
    seen: Counter[int] = Counter()
    per_channel: dict[str, list[int]] = {}
    for channel, text in received:
        ids = list(dict.fromkeys(int(m) for m in ALERT.findall(text)))  # once per message
        seen.update(ids)
        per_channel.setdefault(channel, []).extend(ids)
    expected = {
        d.channel_id: [n for n in range(alerts) if n % len(destinations) == i]
        for i, d in enumerate(destinations)
    }
    in_order = all(
        list(dict.fromkeys(per_channel.get(channel, []))) == [n for n in ids if n in seen]
        for channel, ids in expected.items()
    )
    return Result(
        platform=platform,
        coalesce=coalesce,
        posted=alerts,
        delivered=sum(1 for n in range(alerts) if seen[n]),
        duplicates=sum(count - 1 for count in seen.values() if count > 1),
        dead=dead,
        messages=len(received),
        rate_limited=rate_limited,
        failures=sum(poster.failures.values()),
        post_s=post_s,
        drain_s=drain_s,
        drained=drained,
        in_order=in_order,
        allowed=allowed_rate(platform, channels),
    )


HEADER = (
    f"{'platform':<10}{'mode':<11}{'posted':>7}{'delivered':>10}{'lost':>6}{'dead':>6}"
    f"{'dup':>5}{'msgs':>6}{'429s':>6}{'fails':>6}{'post s':>8}{'drain s':>9}{'rate/s':>8}"
    f"{'allowed/s':>10}{'fraction':>9}  order"
)


def row(r: Result) -> str:
    mode = "coalesced" if r.coalesce else "one-each"
    drain = f"{r.drain_s:.2f}" + ("" if r.drained else "!")
    # Coalesced, one message carries many alerts: a fraction of a message rate means nothing.
    fraction = "-" if r.coalesce else f"{r.fraction:.3f}"
    return (
        f"{r.platform:<10}{mode:<11}{r.posted:>7}{r.delivered:>10}{r.lost:>6}{r.dead:>6}"
        f"{r.duplicates:>5}{r.messages:>6}{r.rate_limited:>6}{r.failures:>6}{r.post_s:>8.2f}"
        f"{drain:>9}{r.rate:>8.2f}{r.allowed:>10.2f}{fraction:>9}  "
        f"{'ok' if r.in_order else 'WRONG'}"
    )


def verdicts(results: Sequence[Result]) -> list[str]:
    lines = []
    for r in results:
        if r.coalesce:
            ok = r.lost == 0 and r.drained
            lines.append(
                f"{'PASS' if ok else 'FAIL'} {r.platform} coalesced: {r.delivered}/{r.posted} "
                f"alerts in {r.messages} messages, lost {r.lost}"
            )
            continue
        ok = r.fraction >= TARGET and r.lost == 0 and r.drained and r.in_order
        lines.append(
            f"{'PASS' if ok else 'FAIL'} {r.platform}: {r.fraction:.3f} of the allowed rate "
            f"({'>=' if r.fraction >= TARGET else '<'} {TARGET}), lost {r.lost}, "
            f"429s {r.rate_limited}, drained in {r.drain_s:.1f} s"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=1000, help="alerts per platform and run")
    parser.add_argument("--channels", type=int, default=10, help="channels they are spread over")
    parser.add_argument(
        "--platforms", default=",".join(PLATFORMS), help="comma-separated: slack,telegram,discord"
    )
    parser.add_argument(
        "--no-coalesced", dest="coalesced", action="store_false", help="skip the coalesce=True run"
    )
    opts = parser.parse_args()
    platforms = [p.strip() for p in opts.platforms.split(",") if p.strip()]
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or opts.alerts < 1 or opts.channels < 1:
        parser.error(f"unknown platform(s) {unknown}" if unknown else "alerts, channels >= 1")
    configure_logging("error", "json", io.StringIO())  # the Outbox's retry lines are counted
    print(
        f"opsbot outbound fan-out: {opts.alerts} alerts round-robin over {opts.channels} "
        f"channels per platform; real adapters against fakes enforcing the platform limits; "
        f"Outbox on SQLite, production LIMITS and RetryPolicy; Python {sys.version.split()[0]}"
    )
    print(HEADER, flush=True)
    results: list[Result] = []
    for platform in platforms:
        for coalesce in (False, True) if opts.coalesced else (False,):
            result = asyncio.run(run(platform, opts.alerts, opts.channels, coalesce=coalesce))
            results.append(result)
            print(row(result), flush=True)
    lines = verdicts(results)
    print("\n".join(lines))
    return 0 if all(line.startswith("PASS") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
