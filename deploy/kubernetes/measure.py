"""Measure what one `opsbot run` replica of these manifests uses: the figures behind the
StatefulSet's resources (docs/deploy.md, "Resources").

    .venv/bin/python deploy/kubernetes/measure.py [--idle 60] [--load 60] [--rate 5]

Needs the test Redis and PostgreSQL (OPSBOT_TEST_REDIS_URL, OPSBOT_TEST_POSTGRES_URL, as
for the tests). It runs the real `opsbot run` with the ConfigMap's opsbot.toml, whose chat
sections point at the local fake Slack (Socket Mode), Telegram (webhook mode) and Discord
of tests/fakes, on a fresh migrated PostgreSQL database, then samples the process's RSS and
CPU time (it and its children, from /proc) through two phases:

- idle: connected, nothing asked;
- load: every second, ``--rate`` commands each from Slack, Telegram and Discord
  (``/status``, policy-checked and audited), ``2 x --rate`` GETs of /ready and /metrics,
  and one POST /alerts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import tomli_w
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fakes.discord_server import FakeDiscord  # noqa: E402
from tests.fakes.slack_server import FakeSlack  # noqa: E402
from tests.fakes.telegram_server import FakeTelegram, post_webhook  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# Made up for this run, known to the fakes and the bot only.
WEBHOOK_SECRET = "measure-webhook-secret"  # noqa: S105
ALERTS_TOKEN = "measure-alerts-token"  # noqa: S105
TG_USERS = range(111111200, 111111400)  # alice's Telegram accounts, one chat each


def configmap_toml() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "deploy/kubernetes/10-config.yaml").read_text())
    return tomllib.loads(doc["data"]["opsbot.toml"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tree(pid: int) -> list[int]:
    """``pid`` and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def sample(pid: int) -> tuple[int, float]:
    """RSS in bytes and CPU seconds (user + system) of the tree."""
    rss, cpu = 0, 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError):
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return rss, cpu


async def phase(pid: int, seconds: float) -> dict[str, float]:
    rss_peak, rss_sum, n = 0, 0, 0
    _, cpu0 = sample(pid)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        rss, _ = sample(pid)
        rss_peak, rss_sum, n = max(rss_peak, rss), rss_sum + rss, n + 1
        await asyncio.sleep(0.5)
    _, cpu1 = sample(pid)
    elapsed = time.monotonic() - start
    return {
        "rss_mean_mib": rss_sum / n / 2**20,
        "rss_peak_mib": rss_peak / 2**20,
        "cpu_cores": (cpu1 - cpu0) / elapsed,
    }


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    base = os.environ["OPSBOT_TEST_POSTGRES_URL"]
    name = f"opsbot_measure_{os.getpid()}"
    admin = await asyncpg.connect(base)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def opsbot(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def main(idle: float, load: float, rate: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            database() as url,
            FakeSlack() as slack,
            FakeTelegram() as tg,
            FakeDiscord() as discord,
            httpx.AsyncClient(timeout=10) as client,
        ):
            config = configmap_toml()
            http_port, webhook_port = free_port(), free_port()
            config["state"]["redis_url"] = os.environ["OPSBOT_TEST_REDIS_URL"].rsplit("/", 1)[0]
            config["state"]["redis_url"] += "/12"
            for name, fake_section in (
                ("slack", slack.config()),
                ("telegram", tg.config()),
                ("discord", discord.config()),
            ):
                config[name] = {**config[name], **tomllib.loads(fake_section)[name]}
            config["telegram"].update(
                webhook_url=f"http://127.0.0.1:{webhook_port}/telegram",
                webhook_host="127.0.0.1",
                webhook_port=webhook_port,
                set_commands_on_start=False,
            )
            # One person sends everything here: lift the per-person flood budget.
            config["flood"] = {"max_commands": 100_000, "per": "10s"}
            config["identities"]["alice"]["ids"] += [f"telegram:{u}" for u in TG_USERS]
            config["http"].update(host="127.0.0.1", port=http_port)
            config["services"][0]["health_url"] = f"http://127.0.0.1:{http_port}/health"
            config["services"][0]["version_url"] = f"http://127.0.0.1:{http_port}/version"
            config_path = Path(tmp, "opsbot.toml")
            await asyncio.to_thread(config_path.write_text, tomli_w.dumps(config))
            env = {
                "PATH": os.environ["PATH"],
                "OPSBOT_DATABASE_URL": url,
                "OPSBOT_AUDIT_KEY": secrets.token_hex(32),
                "OPSBOT_DATA_DIR": str(Path(tmp, "data")),
                "OPSBOT_TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "OPSBOT_ALERTS_TOKEN": ALERTS_TOKEN,
                "OPSBOT_LOG_LEVEL": "info",
            }
            migrate = await opsbot("db", "upgrade", "--config", str(config_path), env=env)
            assert await migrate.wait() == 0, "opsbot db upgrade failed"
            bot = await opsbot("run", "--config", str(config_path), env=env)
            base = f"http://127.0.0.1:{http_port}"
            try:
                started = time.monotonic()
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{base}/ready")).status_code == 200:
                            break
                    if time.monotonic() - started > 60:
                        raise SystemExit("not ready within 60 s")
                    await asyncio.sleep(0.5)
                print(f"ready after {time.monotonic() - started:.1f} s")
                await asyncio.sleep(5)  # let start-up work settle
                print("idle:", await phase(bot.pid, idle))

                answered = {"slack": 0, "telegram": 0, "discord": 0, "http": 0}
                tg_users = itertools.cycle(TG_USERS)

                async def one_second() -> None:
                    for _ in range(rate):
                        command = slack.slash_command("/ops", "status", user="U0ALICE01")
                        await slack.send("slash_commands", command)
                        # Private chats, a new one each time: a group's replies are
                        # paced at 20 a minute (Telegram's limit), which would measure that.
                        update = tg.command("/status", user_id=next(tg_users), queue=False)
                        status = await post_webhook(
                            f"http://127.0.0.1:{webhook_port}/telegram", update, WEBHOOK_SECRET
                        )
                        assert status == 200, f"webhook answered {status}"
                        await discord.message("!status", user="100000000000000001")
                        for path in ("/ready", "/metrics"):
                            answered["http"] += (await client.get(base + path)).status_code == 200
                    await client.post(
                        f"{base}/alerts",
                        headers={"Authorization": f"Bearer {ALERTS_TOKEN}"},
                        json={"alerts": [{"name": "Measure", "severity": "warning"}]},
                    )

                async def drive() -> None:
                    end = time.monotonic() + load
                    while time.monotonic() < end:
                        tick = time.monotonic()
                        await one_second()
                        await asyncio.sleep(max(0.0, 1 - (time.monotonic() - tick)))

                driver = asyncio.create_task(drive())
                print("load:", await phase(bot.pid, load))
                await driver
                await asyncio.sleep(3)  # the last answers
                answered["slack"] = len(slack.responses) + len(slack.messages)
                answered["telegram"] = sum(c.method == "sendMessage" for c in tg.calls)
                answered["discord"] = len(discord.messages)
                print("answered:", answered, f"of {int(load) * rate} commands per platform")
            finally:
                bot.terminate()
                stopping = time.monotonic()
                try:
                    await asyncio.wait_for(bot.wait(), 60)
                    print(f"stopped {time.monotonic() - stopping:.1f} s after SIGTERM")
                except TimeoutError:
                    print("still running 60 s after SIGTERM: killed")
                    bot.kill()
                    await bot.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--load", type=float, default=60)
    parser.add_argument("--rate", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.idle, args.load, args.rate))
