"""Running a prepared action: one process group we can always stop, output we can bound.

The process starts in a session (and process group) of its own, never through a shell,
with nothing of the bot's environment, stdin, or open files. Stopping it, whether for the
timeout, ``cancel()`` or the awaiting task being cancelled, signals the whole group, so a
script's children go with it; when the main process exits, whatever it left behind in its
group is killed too. Output (stdout and stderr merged) is redacted as it arrives, hashed,
and only its last ``output_limit`` bytes are kept, so a process printing gigabytes costs
a bounded amount of memory.

A job's processes carry ``OPSBOT_JOB=<replica>/<owner>/<request id>`` in their environment
(the replica and request id of the job's "started" audit entry, and the pid and start time
of the bot process that started it; ``ActionProcess(job=...)``),
first, so that it is within the first bytes of ``/proc/<pid>/environ``, and inherited by
the script's children unless one clears its environment. It is how a job's process group
is found again after the bot was killed (``kill -9``, OOM) and the job orphaned:
``bot.features.actions.orphans`` stops them at the next start. A pid or group id noted
somewhere would not do: once the process is gone the number is reused, and a reused pid
never carries our marker. It overrides an OPSBOT_JOB of the action's own ``env``.

A job's process also ends at its time limit when the bot is gone (killed, stopped): it runs
under coreutils ``timeout(1)`` (``timeout -k <kill_grace> <timeout + kill_grace + 2s>``),
which stays the group's leader, signals the whole group (TERM, then KILL) and otherwise
passes the command's exit status on. The bot, when alive, stops the job first (its own
limit is ``timeout``); the watchdog is why a job's slot shared with other replicas can be
trusted free after :func:`hard_limit` even if nobody is left to stop the job.

Why ``loop.subprocess_exec`` with our own protocol rather than
``asyncio.create_subprocess_exec``: on Python 3.11 ``Process.wait()`` only returns once
every holder of the output pipe has closed it, so a backgrounded grandchild (``sleep 1000
&``) would make it hang. The protocol hears of the exit itself (``process_exited``), which
lets us kill the leftovers and stop reading after a short drain.
"""

from __future__ import annotations

import asyncio
import codecs
import enum
import hashlib
import os
import shutil
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from msgspec import Struct

from bot.audit.redact import Redactor
from bot.kernel.errors import DependencyError, InternalError

if TYPE_CHECKING:
    from bot.features.actions.config import ActionConfig
    from bot.features.actions.prepared import PreparedAction

log = structlog.get_logger("opsbot.actions")

# An unfinished line longer than this is passed on in pieces: a process that never
# prints a newline must not make us hold megabytes.
MAX_LINE_CHARS = 64 * 1024
# The end of an over-long line kept back when it is cut, so that a secret still arriving
# is not split in two (a half secret escapes masking); longer if a known secret is.
_HOLD_BACK_CHARS = 256
# After the main process exits: how long its output pipe may stay open (held by a
# process that left its group) before we stop reading.
_DRAIN_S = 1.0
# After SIGKILL: how long to wait for the kernel to report the exit. Only a process stuck
# in the kernel (a hung NFS mount) takes longer; we stop waiting rather than hang.
_REAP_S = 5.0

_EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()

# The environment variable that marks a job's processes (see the module docstring).
JOB_VARIABLE = "OPSBOT_JOB"

# How much later than the bot's own limit the watchdog steps in: a bot on a busy event
# loop must still be the one that stops the job (it reports TIMEOUT, not exit code 124).
WATCHDOG_MARGIN = timedelta(seconds=2)
# Where timeout(1) is looked for: the standard places, not whatever PATH the bot was given.
_WATCHDOG_PATH = "/usr/bin:/bin:/usr/local/bin"


def hard_limit(action: ActionConfig) -> timedelta:
    """How long after it started a job's process group may still live, whoever is left to
    stop it: the watchdog's TERM after ``timeout + kill_grace + margin``, its KILL
    ``kill_grace`` later."""
    return action.timeout + 2 * action.kill_grace + WATCHDOG_MARGIN


def watchdog() -> str | None:
    """The path of timeout(1), None where there is none (a job then depends on the bot
    to stop it at its time limit)."""
    return shutil.which("timeout", path=_WATCHDOG_PATH)


def _watched(argv: Sequence[str], action: ActionConfig) -> list[str]:
    program = watchdog()
    if program is None:
        log.error(
            "actions.no_watchdog",
            hint="coreutils timeout(1) not found: a job outlives a killed bot until stopped",
        )
        return list(argv)
    grace = action.kill_grace.total_seconds()
    limit = (action.timeout + action.kill_grace + WATCHDOG_MARGIN).total_seconds()
    # Options end at "--"; after the duration, the command's own arguments are its own.
    return [program, "-k", f"{grace:.3f}s", "--", f"{limit:.3f}s", *argv]


def job_marker(replica: str, request_id: str) -> str:
    """The value of OPSBOT_JOB for the job of ``request_id`` run by ``replica`` from this
    process: ``<replica>/<owner>/<request id>``, where the owner is this process's pid and
    start time. Replica ids and owners have no "/"."""
    return f"{replica}/{process_identity(os.getpid())}/{request_id}"


def process_identity(pid: int) -> str:
    """``<pid>.<start time in clock ticks since boot>``: unlike a pid, never reused (one
    can only check that the process that started a job is still alive through it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[-1].split()
        return f"{pid}.{int(fields[19])}"  # field 22 of the whole line: starttime
    except (OSError, ValueError, IndexError):
        return f"{pid}.0"


def host_identity() -> str:
    """Which processes this one can see in /proc: the host name, the boot and the pid
    namespace. Two replicas with the same identity see each other's jobs (one host, or one
    container); a pid or start time is only meaningful to a replica of the same identity."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            parts.append(boot.read().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("no-proc")  # not Linux: no other replica can check our jobs
    return "/".join(parts)


def marker_owner(marker: str) -> str:
    """The owner (``<pid>.<start time>``) in an OPSBOT_JOB value."""
    return marker.split("/")[1] if marker.count("/") >= 2 else ""


class RunStatus(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class RunResult(Struct, frozen=True):
    """How a run ended.

    ``exit_code`` is the process's own exit status when it ended by itself (``OK``: 0;
    ``FAILED``: non-zero, negative ``-N`` when a signal N we did not send killed it, as
    asyncio reports it, e.g. -9 from the OOM killer). It is None for ``TIMEOUT`` and
    ``CANCELLED`` (we stopped it; its status then only echoes our signal) and when the
    process never started.

    ``output_tail`` is the last ``output_limit`` bytes of the redacted output (it may begin
    in the middle of a line); ``output_digest`` is the sha256 of all of it, redacted,
    UTF-8 encoded; ``output_bytes`` counts what the process wrote, before redaction.
    """

    status: RunStatus
    exit_code: int | None
    duration_s: float
    output_tail: str
    output_bytes: int
    output_digest: str
    truncated: bool


class ActionProcess:
    """One run of a prepared action. ``run()`` once; ``cancel()`` and ``tail()`` any time.

    ``on_output`` gets each redacted output line (without its newline) as it arrives; a
    line longer than MAX_LINE_CHARS arrives in pieces. It is called from the event loop
    while output is read: keep it quick. If it raises, the error is logged and it is not
    called again: a progress display must not stop a deploy half-way.

    Secrets of ``secret_env`` shorter than 4 characters are not masked, as ``Redactor``
    does for every secret: masking each "42" or "abc" in the output would garble it, and
    a value that short protects nothing. ``run()`` logs a warning naming such variables.

    ``job``: the value of OPSBOT_JOB (``job_marker()``) the process gets, if it is a job's.
    """

    def __init__(
        self,
        prepared: PreparedAction,
        redactor: Redactor,
        *,
        on_output: Callable[[str], None] | None = None,
        job: str | None = None,
    ) -> None:
        self._prepared = prepared
        self._job = job
        action = prepared.action
        secrets = [s.get_secret_value() for s in action.secret_env.values()]
        # Ours first: the action's own secrets must go before the patterns see the text.
        own = Redactor(secrets) if secrets else None

        def redact(text: str) -> str:
            return redactor.text(own.text(text) if own is not None else text)

        self._output = _Output(
            redact, limit=action.output_limit, on_output=on_output, secrets=secrets
        )
        self._started = False
        self._cancel_requested = False
        self._stop: asyncio.Future[None] | None = None
        self._pid: int | None = None
        self._spawned_at: float | None = None

    @property
    def pid(self) -> int | None:
        """The main process's id (also its process group's), once started."""
        return self._pid

    @property
    def spawned_at(self) -> float | None:
        """When (event loop time) the process was started; None before."""
        return self._spawned_at

    def cancel(self) -> None:
        """Ask the run to stop: SIGTERM to the group, SIGKILL after ``kill_grace``.
        ``run()`` then returns CANCELLED; before ``run()`` nothing will start."""
        self._cancel_requested = True
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` redacted output lines so far (for progress updates)."""
        return self._output.last_lines(lines)

    async def run(self) -> RunResult:
        """Start the process, collect its output, and wait for it, its timeout, or
        ``cancel()``. Raises DependencyError if the executable cannot be started. If the
        task awaiting this is cancelled, the process group is killed and the
        CancelledError propagates."""
        if self._started:
            raise InternalError("an ActionProcess runs once")
        self._started = True
        prepared = self._prepared
        action = prepared.action
        loop = asyncio.get_running_loop()
        if self._cancel_requested:
            return RunResult(RunStatus.CANCELLED, None, 0.0, "", 0, _EMPTY_DIGEST, False)
        self._stop = loop.create_future()
        short = sorted(k for k, v in action.secret_env.items() if 0 < len(v.get_secret_value()) < 4)
        if short:
            log.warning("actions.short_secrets_not_masked", action=action.name, env=short)

        # A job runs under the watchdog; a lone process (tests, previews) does not need one.
        argv = prepared.argv if self._job is None else _watched(prepared.argv, action)
        began = loop.time()
        try:
            child = await _Child.start(
                argv, prepared.working_dir, _marked(prepared.env, self._job), self._output
            )
        except OSError as exc:
            raise DependencyError(
                f"action {action.name}", _start_failure(prepared.argv[0], exc), exc
            ) from exc
        self._pid = child.pid
        # After the spawn returned: never earlier than the watchdog's clock started.
        self._spawned_at = loop.time()
        try:
            stopped = await child.supervise(
                time_limit=action.timeout.total_seconds(),
                kill_grace=action.kill_grace.total_seconds(),
                stop=self._stop,
            )
            returncode = await child.finish()
        except BaseException:
            child.kill()
            raise
        duration = loop.time() - began
        if child.failure is not None:
            raise InternalError(
                f"the output of action {action.name} could not be processed", child.failure
            )
        if stopped is not None:
            status, exit_code = stopped, None
        else:
            status = RunStatus.OK if returncode == 0 else RunStatus.FAILED
            exit_code = returncode
        output = self._output
        return RunResult(
            status=status,
            exit_code=exit_code,
            duration_s=duration,
            output_tail=output.tail_text(),
            output_bytes=output.raw_bytes,
            output_digest=output.digest(),
            truncated=output.truncated,
        )


class Captured(Struct, frozen=True):
    """What a short helper command (a ``values_from`` lister) printed, unredacted."""

    status: RunStatus  # OK, FAILED or TIMEOUT
    exit_code: int | None
    output: str  # the last ``max_bytes`` of it
    truncated: bool  # it printed more than ``max_bytes``


async def capture(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    time_limit: float,
    kill_grace: float,
    max_bytes: int,
) -> Captured:
    """Run ``argv`` (argv[0] a path) like an action (own process group, SIGTERM then
    SIGKILL after ``time_limit`` seconds) and return its output. OSError if it cannot be
    started. (A limit rather than ``asyncio.timeout``: running out of time is a result
    here, and the group must be stopped, not just the waiting.)"""
    output = _Output(None, limit=max_bytes, on_output=None, secrets=())
    child = await _Child.start(argv, cwd, env, output)
    try:
        stopped = await child.supervise(time_limit=time_limit, kill_grace=kill_grace, stop=None)
        returncode = await child.finish()
    except BaseException:
        child.kill()
        raise
    if child.failure is not None:
        raise InternalError(f"the output of {argv[0]} could not be processed", child.failure)
    if stopped is not None:
        return Captured(stopped, None, output.tail_text(), output.truncated)
    status = RunStatus.OK if returncode == 0 else RunStatus.FAILED
    return Captured(status, returncode, output.tail_text(), output.truncated)


def _marked(env: Mapping[str, str], job: str | None) -> Mapping[str, str]:
    if job is None:
        return env
    # First: a bounded read of /proc/<pid>/environ finds it.
    marked = {JOB_VARIABLE: job}
    marked.update((name, value) for name, value in env.items() if name != JOB_VARIABLE)
    return marked


def _start_failure(program: str, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename == program and Path(program).exists():
        # execve reports a missing "#!" interpreter as the script itself being missing.
        reason += " (the interpreter on its #! line?)"
    where = f" ({exc.filename})" if exc.filename and exc.filename != program else ""
    return f"could not start {program}: {reason}{where}"


class _Child:
    """A started process and its group, through to reaping and closing the pipes."""

    def __init__(self, transport: asyncio.SubprocessTransport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.pid: int = transport.get_pid()

    @classmethod
    async def start(
        cls, argv: Sequence[str], cwd: Path, env: Mapping[str, str], output: _Output
    ) -> _Child:
        loop = asyncio.get_running_loop()
        protocol = _Protocol(output, loop)
        transport, _ = await loop.subprocess_exec(
            lambda: protocol,
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own session, so its own process group: the unit we signal.
            start_new_session=True,
        )
        return cls(transport, protocol)

    @property
    def failure(self) -> BaseException | None:
        return self._protocol.failure

    async def supervise(
        self, *, time_limit: float, kill_grace: float, stop: asyncio.Future[None] | None
    ) -> RunStatus | None:
        """Wait for the exit, the timeout or ``stop``; None if the process exited by
        itself, else TIMEOUT or CANCELLED after SIGTERM and up to ``kill_grace``."""
        exited = self._protocol.exited
        waits: set[asyncio.Future[None]] = {exited} if stop is None else {exited, stop}
        await asyncio.wait(waits, timeout=time_limit, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            return None
        status = RunStatus.CANCELLED if stop is not None and stop.done() else RunStatus.TIMEOUT
        self._signal(signal.SIGTERM)
        await asyncio.wait({exited}, timeout=kill_grace)
        return status

    async def finish(self) -> int | None:
        """Kill what is left of the group, reap, drain the output; the return code."""
        # The main process if it ignored SIGTERM; otherwise whatever it left running.
        self._signal(signal.SIGKILL)
        exited = self._protocol.exited
        if not exited.done():
            await asyncio.wait({exited}, timeout=_REAP_S)
            if not exited.done():
                log.error("actions.process_would_not_die", pid=self.pid)
        # A process that left the group (setsid) may still hold the pipe open.
        await asyncio.wait({self._protocol.eof}, timeout=_DRAIN_S)
        returncode = self._transport.get_returncode()
        self._close()
        return returncode

    def kill(self) -> None:
        """At once, without awaiting: the awaiting task is being cancelled."""
        self._signal(signal.SIGKILL)
        self._close()

    def _close(self) -> None:
        self._transport.close()
        self._protocol.output.close()

    def _signal(self, sig: signal.Signals) -> None:
        # The group id is the pid (start_new_session). The kernel does not hand out a pid
        # still in use as a group id, so this reaches our group or nothing, except in
        # the instant after the last member is reaped.
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the group is already gone
        except PermissionError:
            log.warning("actions.group_not_signalled", pid=self.pid, signal=sig.name)


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, output: _Output, loop: asyncio.AbstractEventLoop) -> None:
        self.output = output
        self.exited: asyncio.Future[None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.failure: BaseException | None = None

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if self.failure is not None or isinstance(data, str):
            return
        try:
            self.output.feed(data)
        except Exception as exc:
            # A bug of ours must not leave the pipe unread (the process would block on
            # a full pipe); run() reports it when the process is done.
            self.failure = exc

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class _Output:
    """Output as it arrives: decoded, cut into lines or bounded pieces, redacted, hashed,
    and the last ``limit`` bytes kept."""

    def __init__(
        self,
        redact: Callable[[str], str] | None,
        *,
        limit: int,
        on_output: Callable[[str], None] | None,
        secrets: Sequence[str],
    ) -> None:
        self._redact = redact
        self._limit = limit
        self._on_output = on_output
        self._secrets = [s for s in secrets if len(s) >= 4]
        self._hold_back = max([_HOLD_BACK_CHARS, *(len(s) for s in self._secrets)])
        # Incremental: a UTF-8 character split between two reads still decodes.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._sha = hashlib.sha256()
        self._kept: deque[tuple[str, int]] = deque()
        self._kept_bytes = 0
        self._redacted_bytes = 0
        self._closed = False
        self.raw_bytes = 0

    def feed(self, data: bytes) -> None:
        if self._closed:
            return
        self.raw_bytes += len(data)
        self._pending += self._decoder.decode(data)
        self._split(final=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending += self._decoder.decode(b"", final=True)
        self._split(final=True)

    def _split(self, *, final: bool) -> None:
        """Pass on the whole lines of ``_pending`` (and everything if ``final``), cutting
        lines longer than MAX_LINE_CHARS into pieces; keep the rest for the next read.

        Runs of lines go on together: redacting them at once costs one pass instead of
        one per line, and also catches a secret spanning lines (a PEM key)."""
        text = self._pending
        size = len(text)
        done = start = 0
        while size - start > MAX_LINE_CHARS:
            newline = text.rfind("\n", start, start + MAX_LINE_CHARS + 1)
            if newline >= 0:
                start = newline + 1
                continue
            # The line at ``start`` is too long to hold whole. Unless it is finished, keep
            # enough of its end unsent that a secret still arriving is not cut in two.
            finished = final or text.find("\n", start + MAX_LINE_CHARS) >= 0
            if not finished and size - start <= MAX_LINE_CHARS + self._hold_back:
                break
            cut = self._cut_long_line(text, start)
            self._emit(text[done:cut])
            done = start = cut
        start = size if final else max(start, text.rfind("\n", start) + 1)
        if start > done:
            self._emit(text[done:start])
        self._pending = text[start:]

    def _cut_long_line(self, text: str, start: int) -> int:
        """Where to cut the over-long line at ``start``: at most MAX_LINE_CHARS on."""
        limit = start + MAX_LINE_CHARS
        # Tokens rarely contain blanks: cutting after one keeps a token whole.
        low = start + MAX_LINE_CHARS // 2
        blank = max(text.rfind(" ", low, limit), text.rfind("\t", low, limit))
        cut = blank + 1 if blank >= 0 else limit
        for secret in self._secrets:
            # A known secret across the cut: cut before it instead.
            at = text.find(secret, max(start, cut - len(secret) + 1), cut + len(secret) - 1)
            if start < at < cut:
                cut = at
        return cut

    def _emit(self, text: str) -> None:
        shown = self._redact(text) if self._redact is not None else text
        data = shown.encode()
        self._sha.update(data)
        self._redacted_bytes += len(data)
        self._kept.append((shown, len(data)))
        self._kept_bytes += len(data)
        while self._kept_bytes - self._kept[0][1] >= self._limit:
            self._kept_bytes -= self._kept.popleft()[1]
        if self._on_output is not None:
            lines = shown.split("\n")
            if lines[-1] == "":
                lines.pop()
            try:
                for line in lines:
                    self._on_output(line.removesuffix("\r"))
            except Exception:
                log.exception("actions.on_output_failed")
                self._on_output = None

    @property
    def truncated(self) -> bool:
        return self._redacted_bytes > self._limit

    def digest(self) -> str:
        return self._sha.hexdigest()

    def tail_text(self) -> str:
        text = "".join(shown for shown, _ in self._kept)
        if self._kept_bytes <= self._limit:
            return text
        # "ignore" drops only the bytes of a character cut in two at the start.
        return text.encode()[-self._limit :].decode("utf-8", errors="ignore")

    def last_lines(self, count: int) -> list[str]:
        if count <= 0:
            return []
        pieces: list[str] = []
        newlines = 0
        for shown, _ in reversed(self._kept):
            pieces.append(shown)
            newlines += shown.count("\n")
            if newlines > count:
                break
        lines = "".join(reversed(pieces)).split("\n")
        if lines[-1] == "":
            lines.pop()
        return [line.removesuffix("\r") for line in lines[-count:]]
