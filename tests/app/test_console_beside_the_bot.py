"""A console opened next to a running bot is a client of the shared state, never a second
bot: it runs no scheduled work, claims no alert, never leads; what it changes (the policy
mode, a heartbeat pause) holds for every process on the same data directory."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import ROOT, clean_env, run_opsbot

# A check that fails on its first run (nothing listens on port 9), every 10 s.
CONFIG = """
[bot]
name = "opsbot"

[console]
principal = "alice"
channel = "ops"

[roles.oncall]
[identities.alice]
roles = ["oncall"]
ids = ["console:alice"]
[channels.ops]
ids = ["console:ops"]

[policy]
admin_roles = ["oncall"]
[policy.commands.checks]
roles = ["oncall"]
[policy.commands.policy]
roles = ["oncall"]
[policy.commands.heartbeat]
roles = ["oncall"]

[[heartbeat]]
name = "ops"
channels = ["ops"]
interval = "30m"

[[services]]
name = "nothing"
health_url = "http://127.0.0.1:9/health"
timeout = "1s"

[[checks]]
name = "nothing-up"
kind = "health"
service = "nothing"
interval = "10s"
channels = ["ops"]
"""


def test_a_console_runs_no_scheduled_check_and_claims_no_alert(tmp_path: Path) -> None:
    config = tmp_path / "opsbot.toml"
    config.write_text(CONFIG)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "console", "--no-http", "--config", str(config)],
        cwd=ROOT,
        env=clean_env(OPSBOT_DATA_DIR=str(tmp_path)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdin is not None
        time.sleep(12.5)  # past the check's first scheduled run (10 s after start)
        out, errors = proc.communicate("/checks\n", timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert "Traceback" not in errors, errors
    assert "nothing-up" in out  # the console answered /checks
    assert "FIRING" not in out and "CRITICAL" not in out, out
    with sqlite3.connect(tmp_path / "audit.db") as db:
        assert db.execute("SELECT count(*) FROM alerts").fetchone() == (0,)

    # Asked for, the check runs in the console: the person sees what they asked for.
    asked = run_opsbot(
        "console",
        "--no-http",
        "--config",
        str(config),
        "-c",
        "/checks now nothing-up",
        env=clean_env(OPSBOT_DATA_DIR=str(tmp_path)),
    )
    assert "nothing-up" in asked.stdout, asked.stdout + asked.stderr


def test_a_policy_window_and_a_pause_made_in_one_process_hold_in_the_next(
    tmp_path: Path,
) -> None:
    config = tmp_path / "opsbot.toml"
    config.write_text(CONFIG)
    env = clean_env(OPSBOT_DATA_DIR=str(tmp_path))

    def console(command: str) -> str:
        done = run_opsbot("console", "--no-http", "--config", str(config), "-c", command, env=env)
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    assert "OFF until" in console("/policy off 30m maintenance")
    later = console("/policy")
    assert "OFF until" in later and "maintenance" in later, later
    assert "Paused" in console("/heartbeat pause 1h ops")
    listing = console("/heartbeat")
    assert "paused until" in listing.lower(), listing
    strict = console("/policy strict done")
    assert "STRICT" in strict and "STRICT" in console("/policy")
    with sqlite3.connect(tmp_path / "audit.db") as db:
        outcomes = [
            row[0]
            for row in db.execute(
                "SELECT status FROM audit_log WHERE kind = 'policy' ORDER BY seq"
            ).fetchall()
        ]
    # One window, opened and closed by people: never "changed by config" behind their back.
    assert outcomes == ["off", "strict"], outcomes


def test_check_config_names_what_opsbot_run_could_post_nowhere(tmp_path: Path) -> None:
    config = tmp_path / "opsbot.toml"
    # #ops has a console id only, and the config runs no chat platform.
    config.write_text(CONFIG)
    checked = run_opsbot("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: heartbeat[0] (ops): nowhere to post: channel(s) ops have ids only on "
        "console, and this config runs no chat platform",
        "warning: checks[0] (nothing-up): nowhere to post: channel(s) ops have ids only on "
        "console, and this config runs no chat platform",
    ]
    # A Telegram id in #ops and a [telegram] section: nothing to say.
    reachable = (
        CONFIG.replace('ids = ["console:ops"]', 'ids = ["console:ops", "telegram:-100123"]')
        + '\n[telegram]\ntoken = "123:abc"\n'
    )
    config.write_text(reachable)
    checked = run_opsbot("check-config", str(config))
    assert checked.returncode == 0 and "warning" not in checked.stdout, checked.stdout


def test_console_connect_is_a_client_of_the_running_bot(tmp_path: Path) -> None:
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = tmp_path / "opsbot.toml"
    config.write_text(CONFIG + '\n[policy.commands.whoami]\nroles = ["oncall"]\n')
    env = clean_env(
        OPSBOT_DATA_DIR=str(tmp_path),
        OPSBOT_HTTP_PORT=str(port),
        OPSBOT_CONSOLE_TOKEN="console-token-for-tests",
    )
    bot = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        # The check fails at its first run and its alert is posted to the console: wait
        # until it is out, or it may land among the answers below (and set their exit code).
        while time.monotonic() < deadline:
            scraped = httpx.get(f"{url}/metrics", timeout=1).text
            posted = _sample(
                scraped, "opsbot_alert_events_total", 'source="check"', 'event="posted"'
            )
            if posted and _sample(scraped, "opsbot_outbox_queued") == 0:
                break
            time.sleep(0.1)

        def connect(*args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
            return run_opsbot(
                "console",
                "--config",
                str(config),
                "--connect",
                url,
                *args,
                env={**env, **extra},
                stdin=stdin,
            )

        answered = connect("-c", "/whoami")
        assert answered.returncode == 0, answered.stderr
        assert "You are alice" in answered.stdout
        # The bot's own policy: a switch made through it holds in the bot.
        assert "OFF until" in connect("-c", "/policy off 30m maintenance").stdout
        assert "OFF until" in connect("-c", "/policy").stdout
        wrong = connect("-c", "/whoami", OPSBOT_CONSOLE_TOKEN="not-the-token")
        assert wrong.returncode == 69 and "401" in wrong.stderr, wrong.stderr
        lines = connect(stdin="/whoami\n/policy strict done\n")
    finally:
        bot.send_signal(signal.SIGTERM)
        bot.communicate(timeout=20)
    assert "You are alice" in lines.stdout and "STRICT" in lines.stdout, lines.stdout
    # One bot did everything: the audit log shows these commands from the console.
    with sqlite3.connect(tmp_path / "audit.db") as db:
        commands = [
            row[0]
            for row in db.execute(
                "SELECT command FROM audit_log GROUP BY request_id ORDER BY min(seq)"
            ).fetchall()
        ]
    # The refused token reached no command: nothing of it in the log.
    assert commands == ["whoami", "policy", "policy", "whoami", "policy"], commands


def _sample(scraped: str, name: str, *labels: str) -> float:
    """The value of the first Prometheus sample of ``name`` in ``scraped`` whose labels
    include every one of ``labels`` (as ``key="value"``)."""
    for line in scraped.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] == name and all(label in series for label in labels):
            return float(value)
    return 0.0
