"""Stopping the jobs a crashed run of this replica left running (Linux: /proc).

When the bot is killed (``kill -9``, the OOM killer) its next start closes the job it was
running as "interrupted" in the audit log, but the job's script runs on: its own process
group (``start_new_session``), reparented to init, with nobody to stop it at its timeout.
Each job's processes carry ``OPSBOT_JOB=<replica>/<owner>/<request id>`` in their
environment (``bot.features.actions.process``; the owner is the pid and start time of the
bot process that started the job), so at start-up every process marked with this replica
whose owner no longer runs is such an orphan: its process group gets SIGTERM, then SIGKILL
after ``grace``, like a cancelled job. A job of a bot that still runs (a second
``opsbot console`` on the same host) is left alone.

A pid is reused once its process is gone, and a reused pid never carries our marker: the
marker is read again just before each signal, and a group is signalled only while one of
its members still carries it (and is in it). This process's own group is never signalled.
A child that cleared its environment and left the group (``env -i setsid ...``) is not
found; one that only cleared its environment goes with its group.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Collection

import structlog
from msgspec import Struct

from bot.features.actions.process import JOB_VARIABLE, marker_owner, process_identity

log = structlog.get_logger("opsbot.actions")

PROC = "/proc"
# Of each process's environment: ours is first in a job's main process; a child's
# environment (rebuilt by its shell) is small unless someone exports megabytes.
ENVIRON_MAX = 64 * 1024
_POLL_S = 0.05
# After SIGKILL: how long to wait for the kernel to report the processes gone.
_REAP_S = 2.0

_NAME = JOB_VARIABLE.encode() + b"="

Members = list[tuple[int, str]]  # (pid, request id) of the marked processes of a group


class Orphan(Struct, frozen=True):
    """One orphaned process group and what was done to it."""

    request_id: str  # of the job's audit entries ("started", then "finished" interrupted)
    pgid: int
    pids: tuple[int, ...]  # its processes that carried the marker
    killed: bool  # it outlived SIGTERM by ``grace`` and got SIGKILL
    stopped: bool  # none of its marked processes is left (False: see the log)


def stop_orphans(replica: str, *, grace: float, keep: Collection[str] = ()) -> list[Orphan]:
    """Stop the process groups of the jobs of ``replica`` that are still running, except
    those of the request ids in ``keep`` (jobs this run started); blocks up to ``grace``
    seconds and a little more. Call it before this run starts a job."""
    prefix = f"{replica}/"
    groups = _scan(prefix, keep)
    if not groups:
        return []
    found = {pgid: list(members) for pgid, members in groups.items()}
    for pgid, members in groups.items():
        log.warning(
            "actions.orphan_found",
            request_id=members[0][1],
            pgid=pgid,
            pids=[pid for pid, _ in members],
        )
        _signal(pgid, members, prefix, signal.SIGTERM)
    left = _wait(prefix, keep, found, grace)
    killed = set(left)
    for pgid, members in left.items():
        _signal(pgid, members, prefix, signal.SIGKILL)
    if left:
        left = _wait(prefix, keep, found, _REAP_S)
    stopped: list[Orphan] = []
    for pgid, members in sorted(found.items()):
        orphan = Orphan(
            request_id=_request_of(pgid, members),
            pgid=pgid,
            pids=tuple(sorted({pid for pid, _ in members})),
            killed=pgid in killed,
            stopped=pgid not in left,
        )
        if orphan.stopped:
            log.warning(
                "actions.orphan_stopped",
                request_id=orphan.request_id,
                pgid=pgid,
                processes=len(orphan.pids),
                signal="SIGKILL" if orphan.killed else "SIGTERM",
            )
        else:
            log.error("actions.orphan_not_stopped", request_id=orphan.request_id, pgid=pgid)
        stopped.append(orphan)
    return stopped


def job_ended(marker: str) -> bool:
    """Whether the job of ``marker`` (its OPSBOT_JOB value) is known to be over, as far as
    this host's /proc shows: the bot process that started it is gone and none of the
    processes left carries the marker. Only meaningful on a replica of the same
    ``host_identity()``; blocks for one scan of /proc."""
    if _alive(marker_owner(marker)):
        return False  # its bot runs: it releases the slot itself
    try:
        names = os.listdir(PROC)
    except OSError:
        return False  # no /proc: nothing can be shown
    wanted = _NAME + marker.encode()
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{PROC}/{name}/environ", "rb") as environ:
                data = environ.read(ENVIRON_MAX)
        except OSError:
            continue  # gone, or not ours to read (a job runs as the bot's user)
        if wanted in data.split(b"\0"):
            return False
    return True


def _wait(
    prefix: str, keep: Collection[str], found: dict[int, Members], within: float
) -> dict[int, Members]:
    """Up to ``within`` seconds, until no marked process is left; what is left. A group
    that appeared meanwhile joins ``found`` (it is an orphan too)."""
    deadline = time.monotonic() + within
    while True:
        left = _scan(prefix, keep)
        for pgid, members in left.items():
            known = found.setdefault(pgid, [])
            known.extend(m for m in members if m not in known)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(_POLL_S)


def _scan(prefix: str, keep: Collection[str]) -> dict[int, Members]:
    """The marked processes of ``prefix`` by process group, ours left out."""
    own_pid, own_group = os.getpid(), os.getpgrp()
    groups: dict[int, Members] = {}
    try:
        names = os.listdir(PROC)
    except OSError:
        return {}  # no /proc (not Linux): nothing to find
    for name in names:
        if not name.isdigit() or int(name) == own_pid:
            continue
        pid = int(name)
        request_id = _request_id(pid, prefix)
        if request_id is None or request_id in keep:
            continue
        try:
            pgid = os.getpgid(pid)
        except OSError:
            continue  # gone since
        if pgid == own_group or pgid <= 1:
            continue
        groups.setdefault(pgid, []).append((pid, request_id))
    return groups


def _request_id(pid: int, prefix: str) -> str | None:
    """The request id of ``pid``'s marker if it starts with ``prefix``; None if it has
    none, is a zombie (its environment reads empty), is gone or is not ours to read."""
    try:
        with open(f"{PROC}/{pid}/environ", "rb") as environ:
            data = environ.read(ENVIRON_MAX)
    except OSError:
        return None
    for variable in data.split(b"\0"):
        if variable.startswith(_NAME):
            value = variable[len(_NAME) :].decode("utf-8", errors="replace")
            if not value.startswith(prefix):
                return None
            owner, _, request_id = value[len(prefix) :].partition("/")
            # A job whose bot process still runs is that bot's (a second `opsbot console`
            # on the same host, a test's other bot): only an orphan's owner is gone.
            return None if _alive(owner) else request_id
    return None


def _alive(owner: str) -> bool:
    """Whether the process ``owner`` (``<pid>.<start time>``) still runs."""
    pid, _, _ = owner.partition(".")
    if not pid.isdigit():
        return False
    return process_identity(int(pid)) == owner


def _signal(pgid: int, members: Members, prefix: str, sig: signal.Signals) -> None:
    """``sig`` to the group, if one of ``members`` still carries the marker and is in it."""
    if not any(_still(pid, request_id, pgid, prefix) for pid, request_id in members):
        return  # gone (and its pid perhaps reused): not ours any more
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # gone since
    except PermissionError:
        log.warning("actions.orphan_not_signalled", pgid=pgid, signal=sig.name)


def _still(pid: int, request_id: str, pgid: int, prefix: str) -> bool:
    if _request_id(pid, prefix) != request_id:
        return False
    try:
        return os.getpgid(pid) == pgid
    except OSError:
        return False


def _request_of(pgid: int, members: Members) -> str:
    """The group's request id: its leader's (the job's main process), else the first's."""
    leader = next((r for pid, r in members if pid == pgid), None)
    return leader if leader is not None else min(members)[1]
