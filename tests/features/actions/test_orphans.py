"""A job outlives a ``kill -9`` of the bot; the next start stops its whole process group,
found again by the OPSBOT_JOB marker in its environment, and records that in the audit
log. Real `opsbot` processes, a real script with a background child, a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.audit.test_audit_lifecycle import (
    _children,
    _config,
    _console,
    _running,
    _wait_for_started,
    _wait_gone,
)
from tests.processes import clean_env, spawn_console

# A process group of three: the shell, a background sleep, a foreground sleep; and, as a
# job's, the watchdog (timeout(1)) that leads it: four.
LINGER = "sleep 300 & sleep 300; wait"

ACTION = f"""
[[actions]]
name = "linger"
argv = ["/bin/sh", "-c", "{LINGER}"]
risk = "write"
roles = ["oncall"]
timeout = "10m"
kill_grace = "1s"

[policy.commands.run]
roles = ["oncall"]
"""


async def test_kill_9_during_a_job_then_restart_stops_its_process_group(tmp_path: Path) -> None:
    # A replica of its own: a bot of another test run on this host must not take this
    # job for one of its orphans, nor this bot theirs.
    replica = f"orphans-{secrets.token_hex(4)}"
    config = _config(tmp_path, ACTION)
    config.write_text(
        config.read_text().replace(
            'name = "opsbot"', f'name = "opsbot"\nreplica_id = "{replica}"', 1
        )
    )
    database = tmp_path / "data" / "audit.db"
    # The same command line, not started by opsbot (no marker): it must survive.
    bystander = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        LINGER,
        env=clean_env(),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc = await spawn_console(config)
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"/run linger\n")
            await proc.stdin.drain()
            started = await _wait_for_started(database, "linger")
            job = await _marked_processes(f"{replica}/", count=4, exact=False)
            assert all(_marker(pid).endswith(f"/{started}") for pid in job)
            group = os.getpgid(job[0])
            assert {os.getpgid(pid) for pid in job} == {group}
            assert group != os.getpgrp()
            assert group in job  # the group of the script the bot started
        finally:
            proc.kill()  # SIGKILL: the bot stops nothing
            await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == -9
        await asyncio.sleep(0.5)
        # The orphan: the job's processes outlive the bot (what the restart must fix).
        assert [pid for pid in job if _running(pid)] == job
        others = _children(bystander.pid)
        assert len(others) == 2, others

        after = await asyncio.to_thread(_console, config, clean_env())
        assert after.returncode == 0, after.stderr
        for pid in job:
            await _wait_gone(pid, within=5)

        assert _running(bystander.pid)
        assert all(_running(pid) for pid in others)
        with sqlite3.connect(database) as db:
            rows = db.execute(
                "SELECT stage, kind, status, command, detail, replica FROM audit_log "
                "WHERE request_id = ? ORDER BY seq",
                (started,),
            ).fetchall()
        assert [row[:4] for row in rows] == [
            ("started", "job", "started", "linger"),
            ("finished", "job", "interrupted", "linger"),
            ("event", "job", "stopped", None),
        ]
        assert rows[2][4] == (
            f"process group {group} (4 processes) of an interrupted job stopped after restart"
        )
        assert {row[5] for row in rows} == {replica}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bystander.pid, signal.SIGKILL)
        await asyncio.wait_for(bystander.wait(), 10)
        # If the restart did not stop them: not 300 s of sleeps left behind by a failure.
        for pid in _marked(f"{replica}/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _marked_processes(
    marker: str, *, count: int, within: float = 10.0, exact: bool = True
) -> list[int]:
    """The pids whose OPSBOT_JOB is ``marker``, once there are ``count``."""
    deadline = time.monotonic() + within
    found: list[int] = []
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(_marked, marker, exact=exact)
        if len(found) >= count:
            return sorted(found)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(found)} process(es) with OPSBOT_JOB={marker} within {within}s")


def _marker(pid: int) -> str:
    """The OPSBOT_JOB value of ``pid`` ("" without one)."""
    for variable in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = variable.decode(errors="replace").partition("=")
        if name == "OPSBOT_JOB":
            return value
    return ""


def _marked(marker: str, *, exact: bool = False) -> list[int]:
    """The processes whose OPSBOT_JOB is ``marker`` (or starts with it)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for variable in environ.split(b"\0"):
            name, _, value = variable.decode(errors="replace").partition("=")
            if name == "OPSBOT_JOB" and (
                value == marker or (not exact and value.startswith(marker))
            ):
                found.append(int(entry.name))
    return found


def test_stop_orphans_stops_only_marked_groups_of_its_replica() -> None:
    """Each marked group of the replica: SIGTERM, SIGKILL if it outlives ``grace``; never
    the caller's own group, another replica's, a job it is told to keep, nor an unmarked
    process."""
    from bot.features.actions.orphans import stop_orphans
    from bot.features.actions.process import process_identity

    replica = f"orphans-{secrets.token_hex(4)}"
    gone = "1.0"  # no process has pid 1 and start time 0: a bot that is no more
    alive = process_identity(os.getpid())  # a bot that still runs (this test)

    def start(
        marker: str | None, script: str = LINGER, *, own_group: bool = False
    ) -> subprocess.Popen[bytes]:
        env = clean_env() if marker is None else clean_env(OPSBOT_JOB=marker)
        return subprocess.Popen(
            ["/bin/sh", "-c", script],
            env=env,
            start_new_session=not own_group,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    orphan = start(f"{replica}/{gone}/r1:j1")
    stubborn = start(f"{replica}/{gone}/r2:j2", f"trap '' TERM; {LINGER}")  # ignores SIGTERM
    spared = [
        start(f"{replica}/{gone}/r3:j3", own_group=True),  # in the caller's group
        start(f"{replica}x/{gone}/r4:j4"),  # another replica
        start(f"{replica}/{gone}/r5:j5"),  # a job of this run (keep)
        start(f"{replica}/{alive}/r6:j6"),  # a job of a bot that still runs
        start(None),
    ]
    try:
        for name in ("r1:j1", "r2:j2"):
            asyncio.run(_marked_processes(f"{replica}/{gone}/{name}", count=3))
        began = time.monotonic()
        stopped = stop_orphans(replica, grace=0.5, keep={"r5:j5"})
        assert time.monotonic() - began < 5
        assert [
            (o.request_id, o.pgid, len(o.pids), o.killed, o.stopped) for o in stopped
        ] == sorted(
            [
                ("r1:j1", orphan.pid, 3, False, True),
                ("r2:j2", stubborn.pid, 3, True, True),
            ],
            key=lambda row: row[1],
        )
        assert orphan.wait(5) == -signal.SIGTERM
        assert stubborn.wait(5) == -signal.SIGKILL
        assert _marked(f"{replica}/{gone}/r1:") == _marked(f"{replica}/{gone}/r2:") == []
        assert [process.poll() for process in spared] == [None] * len(spared)
    finally:
        in_our_group = spared[0]
        for process in [orphan, stubborn, *spared]:
            with contextlib.suppress(ProcessLookupError):
                if process is in_our_group:
                    os.kill(process.pid, signal.SIGKILL)  # killpg would hit pytest too
                else:
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        for pid in _marked(replica):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
