"""The ``opsbot`` command line, run as a real process, as a newcomer or a script would."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.processes import ROOT, clean_env, run_opsbot

EXAMPLE = str(ROOT / "examples" / "opsbot.toml")


# The bot keeps its audit log under data_dir (default ./.opsbot): never the checkout's.
DATA_DIR = tempfile.mkdtemp(prefix="opsbot-cli-test-")


def opsbot(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_opsbot(*args, stdin=stdin, env=env or _clean_env())


def _clean_env(**extra: str) -> dict[str, str]:
    return clean_env(OPSBOT_DATA_DIR=DATA_DIR, **extra)


def test_one_command_exit_codes_tell_scripts_what_happened() -> None:
    ok = opsbot("console", "--config", EXAMPLE, "--no-http", "-c", "/whoami")
    assert ok.returncode == 0, ok.stderr
    assert "You are alice" in ok.stdout
    denied = opsbot(
        "console", "--config", EXAMPLE, "--no-http", "--as", "bob", "-c", "/policy off 1h"
    )
    assert denied.returncode == 77
    assert "needs role admin" in denied.stdout
    usage = opsbot("console", "--config", EXAMPLE, "--no-http", "-c", "/nosuch")
    assert usage.returncode == 64
    down = opsbot("console", "--config", EXAMPLE, "--no-http", "-c", "/health billing")
    assert down.returncode == 2
    assert "connection refused" in down.stdout


def test_example_config_shows_a_healthy_and_a_failing_service(tmp_path: Path) -> None:
    # The example probes the bot's own port 8080; move it to a port that is surely free.
    port = _free_port()
    config = tmp_path / "example.toml"
    # web, the rollback runbook's demo service (examples/demo.sh starts it), is not started.
    text = Path(EXAMPLE).read_text().replace("8080", str(port))
    config.write_text(text.replace("8099", str(_free_port())))
    result = opsbot("console", "--config", str(config), "-c", "/health")
    assert result.returncode == 2, result.stderr  # two services are down
    lines = result.stdout.splitlines()
    assert lines[0].startswith("❌ Health: 1 up, 2 down")
    assert any(line.split()[:3] == ["opsbot", "up", "200"] for line in lines)
    assert any(line.split()[:2] == ["billing", "DOWN"] for line in lines)
    assert any(line.split()[:2] == ["web", "DOWN"] for line in lines)


def test_interactive_session_reads_until_end_of_input() -> None:
    result = opsbot(
        "console", "--config", EXAMPLE, "--no-http", stdin="/whoami\n\n/status\n/quit\n/help\n"
    )
    assert result.returncode == 0, result.stderr
    assert "You are alice" in result.stdout
    assert "policy    strict" in result.stdout
    assert "Commands you may run here" not in result.stdout  # after /quit


def test_built_in_default_config_needs_nothing() -> None:
    result = opsbot("console", "--no-http", "-c", "/whoami")
    assert result.returncode == 0, result.stderr
    assert "You are operator" in result.stdout


def test_invalid_config_exits_78_with_the_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[identities.x]\nids = ['slack:nope']\n")
    result = opsbot("console", "--config", str(bad), "-c", "/whoami")
    assert result.returncode == 78
    assert "identities.x.ids[0]: 'slack:nope' is not a valid slack user id" in result.stderr
    assert opsbot("check-config", str(bad)).returncode == 78
    assert opsbot("check-config", EXAMPLE).returncode == 0


def test_run_serves_http_and_stops_gracefully_on_sigterm() -> None:
    port = _free_port()
    env = _clean_env(OPSBOT_HTTP_PORT=str(port), OPSBOT_LOG_FORMAT="json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", EXAMPLE],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        answer = None
        while time.monotonic() < deadline and answer is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
            except httpx.TransportError:
                time.sleep(0.05)
        assert answer == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert "opsbot.started" in events
    assert "opsbot.stopped" in events


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ctrl_c_in_the_console_keeps_every_audit_record(tmp_path: Path) -> None:
    # Ctrl-C in a terminal signals the whole process group, the audit writer process
    # included: it must outlive the bot's last batch, not spool or lose it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "console", "--no-http"],
        cwd=ROOT,
        env=clean_env(OPSBOT_DATA_DIR=str(tmp_path)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        for _ in range(3):
            proc.stdin.write("/whoami\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            while "You are operator" not in line:
                assert line, "the console stopped before answering"
                line = proc.stdout.readline()
        os.killpg(proc.pid, signal.SIGINT)
        _, errors = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert "Traceback" not in errors, errors
    assert "database_down" not in errors, errors
    assert not (tmp_path / "audit-spool.jsonl").exists()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        stages = db.execute(
            "SELECT stage, count(*) FROM audit_log WHERE command = 'whoami' GROUP BY stage"
        ).fetchall()
    assert dict(stages) == {"finished": 3}  # read-only: one entry each, decision included
