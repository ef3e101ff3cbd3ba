"""Real scripts as actions, and a config that allow-lists them, for the action tests."""

from __future__ import annotations

import asyncio
import os
import stat
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests.botharness import BASE_CONFIG


@dataclass
class Scripts:
    dir: Path
    marker: Path  # every run of the rollback script appends its tag here

    def runs(self) -> list[str]:
        return self.marker.read_text().split() if self.marker.exists() else []


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def make_scripts(tmp_path: Path) -> Scripts:
    marker = tmp_path / "runs.txt"
    _script(
        tmp_path / "rollback.sh",
        """\
        echo "rolling back to $1"
        echo "$1" >> "$MARKER"
        echo "done"
        """,
    )
    _script(
        tmp_path / "slow.sh", 'echo "step 1"; sleep 1.5; echo "step 2"; echo "$1" >> "$MARKER"\n'
    )
    _script(
        tmp_path / "hang.sh",
        """\
        echo "started $$"
        echo $$ > "$PIDFILE"
        while true; do echo tick; sleep 0.2; done
        """,
    )
    _script(tmp_path / "fail.sh", 'echo "cannot reach the deploy API" >&2; exit 3\n')
    return Scripts(tmp_path, marker)


def actions_config(scripts: Scripts, extra: str = "") -> str:
    d = scripts.dir
    return (
        BASE_CONFIG
        + f"""
[jobs]
ack_after = "0.5s"
progress_every = "0.3s"
shutdown_grace = "0.5s"

[[actions]]
name = "rollback"
argv = ["{d}/rollback.sh", "{{tag}}"]
env = {{ MARKER = "{scripts.marker}" }}
risk = "high"
roles = ["oncall", "deployer"]
approver_roles = ["oncall"]
approval_ttl = "10m"
lock_group = "deploy"
timeout = "10s"
kill_grace = "0.5s"
[[actions.args]]
name = "tag"
pattern = '^v\\d+\\.\\d+(\\.\\d+)?$'

[[actions]]
name = "slow-deploy"
argv = ["{d}/slow.sh", "{{tag}}"]
env = {{ MARKER = "{scripts.marker}" }}
risk = "write"
roles = ["oncall", "deployer"]
lock_group = "deploy"
timeout = "10s"
kill_grace = "0.5s"
[[actions.args]]
name = "tag"
pattern = '^v\\d+\\.\\d+(\\.\\d+)?$'

[[actions]]
name = "hang"
argv = ["{d}/hang.sh"]
env = {{ PIDFILE = "{d}/hang.pid" }}
risk = "write"
roles = ["oncall"]
timeout = "30s"
kill_grace = "0.5s"

[[actions]]
name = "fail"
argv = ["{d}/fail.sh"]
risk = "write"
roles = ["oncall"]

[policy.commands.rollback]
roles = ["oncall", "deployer"]
[policy.commands.run]
roles = ["oncall", "deployer"]
[policy.commands.approvals]
roles = ["*"]
[policy.commands.approve]
roles = ["*"]
[policy.commands.deny]
roles = ["*"]
[policy.commands.jobs]
roles = ["*"]
[policy.commands.cancel]
roles = ["oncall", "deployer"]
"""
        + extra
    )


def approval_id(reply_text: str) -> str:
    marker = "(request "
    start = reply_text.index(marker) + len(marker)
    return reply_text[start : reply_text.index(")", start)]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped by its parent still answers signal 0.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return status != "Z"


async def pid_in(pidfile: Path, within: float = 20.0) -> int:
    """The pid the hang script writes once it runs (polling: it is another process)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        text = await asyncio.to_thread(_read_text, pidfile)
        if text:
            return int(text)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pidfile} was not written within {within} s")


def _read_text(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""
