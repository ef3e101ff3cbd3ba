"""The action runner with real processes: the scripts in tests/scripts, no mocks.

Argument checks must refuse before anything runs (a lister that touches a marker file
proves it), the argv must carry each value as one whole element, the process gets only
the environment it is given, and a timeout, cancel() or a cancelled task stops the whole
process group, background children included.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import stat
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.audit.redact import Redactor
from bot.features.actions.arguments import DEFAULT_PATH, prepare, show_value, usage
from bot.features.actions.config import ActionConfig
from bot.features.actions.prepared import PreparedAction
from bot.features.actions.process import ActionProcess, RunResult, RunStatus
from bot.kernel.errors import DependencyError, UsageError

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
TAG = r"v\d+\.\d+(\.\d+)?"


def action(**fields: Any) -> ActionConfig:
    config: dict[str, Any] = {
        "name": "rollback",
        "argv": ["./echo_args.sh"],
        "roles": ["ops"],
        "timeout": 10,
        "kill_grace": 0.5,
    }
    config.update(fields)
    return ActionConfig.model_validate(config)


async def prepared(
    config: ActionConfig, *words: str, base_dir: Path = SCRIPTS, **named: str
) -> PreparedAction:
    return await prepare(config, words, named, base_dir=base_dir)


async def run(
    config: ActionConfig, *words: str, redactor: Redactor | None = None, **named: str
) -> RunResult:
    ready = await prepared(config, *words, **named)
    return await ActionProcess(ready, redactor or Redactor()).run()


def argv_lines(output: str) -> list[str]:
    return [line[4:] for line in output.splitlines() if line.startswith("arg:")]


def env_of(output: str) -> dict[str, str]:
    pairs = (line[4:].partition("=") for line in output.splitlines() if line.startswith("env:"))
    return {name: value for name, _, value in pairs}


def pids_in(output: str, word: str) -> list[int]:
    return [int(line.split()[1]) for line in output.splitlines() if line.startswith(word + " ")]


def gone(pid: int) -> bool:
    """No such process, or only a zombie (a container's init may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def wait_gone(pid: int, within: float = 3.0) -> bool:
    for _ in range(int(within / 0.05)):
        if gone(pid):
            return True
        await asyncio.sleep(0.05)
    return gone(pid)


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Pids a test saw; whatever survives a failing test is killed, not left for 300 s."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- refusals


@pytest.fixture
def guarded(tmp_path: Path) -> tuple[ActionConfig, Path]:
    """A rollback whose tag is also checked by a lister that leaves a marker when run."""
    marker = tmp_path / "ran"
    config = action(
        args=[{"name": "tag", "pattern": TAG, "values_from": ["./lister.sh"]}],
        argv=["./echo_args.sh", "{tag}"],
        env={"MARKER": str(marker)},
    )
    return config, marker


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("v1.2; rm -rf /", r"tag 'v1.2; rm -rf /' must match v\d+\.\d+(\.\d+)?"),
        ("$(id)", "tag '$(id)' must match"),
        ("`id`", "tag '`id`' must match"),
        ("v1.2\nv1.3", r"tag 'v1.2\nv1.3' contains a control or invisible character (\n"),
        ("v1.2\x00", r"contains a control or invisible character (\x00 at position 5)"),
        ("v1.2\u202e", r"(\u202e at position 5)"),  # right-to-left override
        ("v1\u00a0.2", r"(\xa0 at position 3)"),  # no-break space
        ("v١.٢", "tag 'v١.٢' must match"),  # Arabic-Indic digits: \d is ASCII only
        ("ｖ1.2", "tag 'ｖ1.2' must match"),  # fullwidth v
        ("v1.２", "must match"),  # fullwidth digit
        ("v1." + "1" * 200, "is too long: 203 characters, at most 128"),
        ("--force", "tag '--force' must not start with '-'"),
        ("", "tag '' must match"),
    ],
)
async def test_injection_attempts_are_refused_before_anything_runs(
    guarded: tuple[ActionConfig, Path], value: str, says: str
) -> None:
    config, marker = guarded
    with pytest.raises(UsageError) as caught:
        await prepared(config, value)
    reason = caught.value.reason
    assert says in reason
    assert "\n" not in reason and "\x00" not in reason
    assert len(reason) < 200  # a long value is cut short
    assert not marker.exists()  # not even the lister ran


async def test_option_injection_is_refused_even_when_the_pattern_matches(tmp_path: Path) -> None:
    config = action(args=[{"name": "branch", "pattern": r"[\w./-]+"}])
    with pytest.raises(UsageError, match="must not start with '-'"):
        await prepared(config, "--upload-pack=touch /tmp/x")
    ready = await prepared(config, "feature/x-1")
    assert ready.values == {"branch": "feature/x-1"}


async def test_a_leading_dash_passes_when_the_pattern_or_choices_say_so() -> None:
    config = action(
        args=[
            {"name": "offset", "pattern": r"-?[0-9]+"},
            {"name": "mode", "choices": ["--dry-run", "--apply"]},
        ]
    )
    ready = await prepared(config, "-5", "--dry-run")
    assert ready.values == {"offset": "-5", "mode": "--dry-run"}


async def test_a_long_value_is_shown_cut_short_and_escaped() -> None:
    shown = show_value("a\n" * 100)
    assert "\n" not in shown
    assert shown.endswith("… (200 characters)")
    assert len(shown) < 100


async def test_choices_are_exact() -> None:
    config = action(args=[{"name": "env", "choices": ["staging", "production"]}])
    for value in ("Staging", "staging ", "prod"):
        with pytest.raises(UsageError) as caught:
            await prepared(config, value)
        assert caught.value.reason == (f"env {value!r} must be one of: staging, production")
    assert (await prepared(config, env="production")).values == {"env": "production"}


async def test_integers_are_ascii_within_range_and_normalised() -> None:
    config = action(
        args=[{"name": "replicas", "kind": "integer", "min": 1, "max": 10}],
        argv=["./echo_args.sh", "--replicas={replicas}"],
    )
    ready = await prepared(config, "007")
    assert ready.values == {"replicas": "7"}
    assert ready.argv[1:] == ("--replicas=7",)
    for value in ("0", "11", "-1", "1e1", "+5", "٣", "３", " 3", "3.0", "", "ten"):
        with pytest.raises(UsageError) as caught:
            await prepared(config, value)
        assert caught.value.reason.endswith("must be an integer from 1 to 10"), value


async def test_an_integer_argument_takes_a_number_as_its_default() -> None:
    # As TOML gives it: `default = 10`, a number, not the string "10".
    config = action(
        args=[{"name": "count", "kind": "integer", "max": 50, "required": False, "default": 10}],
        argv=["./echo_args.sh", "--count={count}"],
    )
    assert (await prepared(config)).argv[1:] == ("--count=10",)
    with pytest.raises(ValueError, match="default 99 is outside min/max"):
        action(args=[{"name": "count", "kind": "integer", "max": 50, "default": 99}])
    with pytest.raises(ValueError, match="default 'ten' is not a whole number"):
        action(args=[{"name": "count", "kind": "integer", "default": "ten"}])


async def test_integers_are_not_negative_unless_min_says_so() -> None:
    unset = action(args=[{"name": "count", "kind": "integer"}])
    with pytest.raises(UsageError, match="must be an integer of at least 0"):
        await prepared(unset, "-3")
    signed = action(args=[{"name": "delta", "kind": "integer", "min": -5, "max": 5}])
    assert (await prepared(signed, "-05")).values == {"delta": "-5"}


async def test_missing_unknown_duplicate_and_extra_arguments() -> None:
    config = action(
        args=[
            {"name": "tag", "pattern": TAG, "description": "the release to go back to"},
            {"name": "env", "choices": ["staging", "production"], "default": "staging"},
        ]
    )
    with pytest.raises(UsageError) as caught:
        await prepared(config)
    assert caught.value.reason == (
        "missing argument tag (the release to go back to): rollback <tag> [env=staging]"
    )
    with pytest.raises(UsageError) as caught:
        await prepared(config, "v1.2", colour="red")
    assert caught.value.reason == "unknown argument 'colour': rollback takes tag, [env]"
    with pytest.raises(UsageError) as caught:
        await prepared(config, "v1.2", tag="v1.3")
    assert caught.value.reason == "tag is given twice: as a word and as tag=…"
    with pytest.raises(UsageError) as caught:
        await prepared(config, "v1.2", "staging", "now")
    assert caught.value.reason == (
        "too many arguments: 'now' is one more than rollback takes (tag, [env])"
    )
    ready = await prepared(config, tag="v1.2")
    assert ready.values == {"tag": "v1.2", "env": "staging"}  # default filled in
    assert list(ready.values) == ["tag", "env"]
    assert ready.describe() == "rollback tag=v1.2 env=staging"
    assert usage(config) == "rollback <tag> [env=staging]"


async def test_an_absent_optional_argument_drops_its_argv_element() -> None:
    config = action(
        args=[{"name": "note", "pattern": "[a-z]+", "required": False}],
        argv=["./echo_args.sh", "--note={note}", "always"],
    )
    assert (await prepared(config)).argv[1:] == ("always",)
    assert (await prepared(config, "hi")).argv[1:] == ("--note=hi", "always")


# ---------------------------------------------------------------------------- argv, env


async def test_each_value_lands_as_one_whole_argv_element_substituted_once() -> None:
    config = action(
        args=[
            {"name": "tag", "pattern": TAG},
            {"name": "message", "pattern": r"[A-Za-z0-9 ;$(){}.]+"},
        ],
        argv=["./echo_args.sh", "--tag={tag}", "{message}", "{0}{} {message}!", "{tag}"],
    )
    ready = await prepared(config, "v1.2", "hello world; $(id) {tag}")
    result = await ActionProcess(ready, Redactor()).run()
    assert result.status is RunStatus.OK, result.output_tail
    assert argv_lines(result.output_tail) == [
        "[--tag=v1.2]",
        "[hello world; $(id) {tag}]",  # one element, spaces and all, not re-substituted
        "[{0}{} hello world; $(id) {tag}!]",  # other braces stay as written (no str.format)
        "[v1.2]",
    ]
    assert ready.argv[0] == str(SCRIPTS / "echo_args.sh")


async def test_the_environment_is_only_what_the_action_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSBOT_TEST_LEAK", "should not be seen")
    config = action(env={"DEPLOY_ENV": "staging"}, secret_env={"DEPLOY_TOKEN": "s3cr3t-tok"})
    result = await run(config)
    assert env_of(result.output_tail) == {
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "DEPLOY_ENV": "staging",
        "DEPLOY_TOKEN": "***",  # it got the value; the output shows it masked
    }
    ready = await prepared(config)
    assert ready.env["DEPLOY_TOKEN"] == "s3cr3t-tok"
    assert "s3cr3t-tok" not in repr(ready)


async def test_env_may_set_path_and_lang() -> None:
    config = action(env={"PATH": "/usr/bin:/bin", "LANG": "en_GB.UTF-8"})
    ready = await prepared(config)
    assert ready.env == {"PATH": "/usr/bin:/bin", "LANG": "en_GB.UTF-8"}


async def test_working_dir_is_resolved_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "deploy").mkdir()
    config = action(argv=[str(SCRIPTS / "echo_args.sh")], working_dir="deploy")
    ready = await prepared(config, base_dir=tmp_path)
    assert ready.working_dir == tmp_path / "deploy"
    result = await ActionProcess(ready, Redactor()).run()
    assert env_of(result.output_tail)["PATH"] == DEFAULT_PATH
    assert (await prepared(action(argv=["true"]), base_dir=tmp_path)).working_dir == tmp_path


async def test_a_bare_program_name_is_looked_up_on_the_action_path() -> None:
    ready = await prepared(action(argv=["true"]))
    assert ready.argv[0] == shutil.which("true", path=DEFAULT_PATH)
    assert ready.argv[0].startswith("/")


@pytest.mark.parametrize(
    ("argv0", "says"),
    [
        ("./no_such_script.sh", "no_such_script.sh does not exist"),
        ("no-such-program-xyz", "'no-such-program-xyz' is not found on PATH"),
        ("./plain.txt", "plain.txt is not executable"),
        ("./sub", "sub is not a file"),
    ],
)
async def test_a_missing_or_unrunnable_executable_is_a_dependency_error(
    tmp_path: Path, argv0: str, says: str
) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("#!/bin/sh\necho hi\n")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    (tmp_path / "sub").mkdir()
    with pytest.raises(DependencyError) as caught:
        await prepared(action(argv=[argv0]), base_dir=tmp_path)
    assert caught.value.dependency == "action rollback"
    assert says in str(caught.value)


async def test_a_missing_working_dir_is_a_dependency_error(tmp_path: Path) -> None:
    with pytest.raises(DependencyError, match=r"working directory .*nowhere does not exist"):
        await prepared(action(working_dir="nowhere"), base_dir=tmp_path)


async def test_an_executable_gone_by_run_time_is_a_dependency_error(tmp_path: Path) -> None:
    script = tmp_path / "deploy.sh"
    shutil.copy(SCRIPTS / "echo_args.sh", script)
    ready = await prepared(action(argv=["./deploy.sh"]), base_dir=tmp_path)
    script.unlink()
    with pytest.raises(DependencyError, match=r"could not start .*deploy\.sh"):
        await ActionProcess(ready, Redactor()).run()


# ---------------------------------------------------------------------------- values_from


def listed_action(marker: Path, **arg: Any) -> ActionConfig:
    return action(
        args=[{"name": "tag", "pattern": TAG, "values_from": ["./lister.sh"], **arg}],
        argv=["./echo_args.sh", "{tag}"],
        env={"MARKER": str(marker)},
    )


async def test_values_from_allows_only_listed_values(tmp_path: Path) -> None:
    config = listed_action(tmp_path / "ran")
    assert (await prepared(config, "v1.3")).values == {"tag": "v1.3"}  # padding stripped
    with pytest.raises(UsageError) as caught:
        await prepared(config, "v9.9")
    assert caught.value.reason == (
        "tag 'v9.9' is not one of the values listed by `./lister.sh` (latest: v1.3, v1.2, v1.1)"
    )
    assert (tmp_path / "ran").exists()  # the lister ran in the action's environment


async def test_a_failing_lister_is_a_dependency_error() -> None:
    config = action(args=[{"name": "tag", "pattern": TAG, "values_from": ["./fail.sh", "x"]}])
    with pytest.raises(DependencyError) as caught:
        await prepared(config, "v1.2")
    assert caught.value.dependency == "allowed values of tag"
    assert str(caught.value) == (
        "allowed values of tag: `./fail.sh x` exited with 3: 'release v0.0 not found'"
    )


async def test_a_slow_lister_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    config = action(
        args=[
            {"name": "tag", "pattern": TAG, "values_from": ["./lister.sh"], "values_timeout": 0.3}
        ],
        env={"LISTER_DELAY": "30"},
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(DependencyError, match=r"`./lister.sh` did not finish within 0.3s"):
        await prepared(config, "v1.2")
    assert loop.time() - began < 3


async def test_a_missing_lister_is_a_dependency_error() -> None:
    config = action(args=[{"name": "tag", "pattern": TAG, "values_from": ["no-such-lister"]}])
    with pytest.raises(DependencyError, match="allowed values of tag: 'no-such-lister' is not"):
        await prepared(config, "v1.2")


# ---------------------------------------------------------------------------- running


async def test_success_and_failure() -> None:
    ok = await run(action(argv=["./echo_args.sh", "a"]))
    assert (ok.status, ok.exit_code) == (RunStatus.OK, 0)
    assert ok.output_tail.startswith("arg:[a]\n")
    assert ok.output_bytes == len(ok.output_tail.encode())
    assert not ok.truncated
    failed = await run(action(argv=["./fail.sh"]))
    assert (failed.status, failed.exit_code) == (RunStatus.FAILED, 3)
    assert failed.output_tail == "rolling back\nrelease v0.0 not found\n"  # stderr merged
    assert failed.output_digest == hashlib.sha256(failed.output_tail.encode()).hexdigest()


async def test_timeout_kills_the_whole_group(reap: list[int]) -> None:
    config = action(argv=["./hang.sh"], timeout=0.5, kill_grace=0.3)
    result = await run(config)
    reap.extend(pids_in(result.output_tail, "child"))
    assert (result.status, result.exit_code) == (RunStatus.TIMEOUT, None)
    assert 0.5 <= result.duration_s < 2
    assert reap and await wait_gone(reap[0])


async def test_sigkill_follows_when_sigterm_is_ignored(reap: list[int]) -> None:
    config = action(argv=["./hang.sh", "stubborn"], timeout=0.3, kill_grace=0.4)
    result = await run(config)
    reap.extend(pids_in(result.output_tail, "child") + pids_in(result.output_tail, "main"))
    assert result.status is RunStatus.TIMEOUT
    assert result.duration_s >= 0.3 + 0.4  # it sat out the grace period
    assert all([await wait_gone(pid) for pid in reap])


async def test_cancel_stops_the_group(reap: list[int]) -> None:
    started = asyncio.Event()
    lines: list[str] = []

    def seen(line: str) -> None:
        lines.append(line)
        if line.startswith("main "):
            started.set()

    ready = await prepared(action(argv=["./hang.sh"], kill_grace=2))
    process = ActionProcess(ready, Redactor(), on_output=seen)
    task = asyncio.create_task(process.run())
    await asyncio.wait_for(started.wait(), 5)
    reap.extend(pids_in("\n".join(lines), "child"))
    assert process.pid == pids_in("\n".join(lines), "main")[0]
    assert process.tail(1) == lines[-1:]
    process.cancel()
    result = await asyncio.wait_for(task, 5)
    assert (result.status, result.exit_code) == (RunStatus.CANCELLED, None)
    assert result.duration_s < 2  # SIGTERM was enough; no need to wait out the grace
    assert await wait_gone(reap[0]) and await wait_gone(process.pid)


async def test_cancel_before_run_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    process = ActionProcess(await prepared(action(env={"MARKER": str(marker)})), Redactor())
    process.cancel()
    result = await process.run()
    assert (result.status, result.output_bytes, process.pid) == (RunStatus.CANCELLED, 0, None)
    assert not marker.exists()


async def test_a_cancelled_task_kills_the_group_and_reraises(reap: list[int]) -> None:
    started = asyncio.Event()
    lines: list[str] = []

    def seen(line: str) -> None:
        lines.append(line)
        if line.startswith("main "):
            started.set()

    ready = await prepared(action(argv=["./hang.sh", "stubborn"], kill_grace=30))
    process = ActionProcess(ready, Redactor(), on_output=seen)
    task = asyncio.create_task(process.run())
    await asyncio.wait_for(started.wait(), 5)
    reap.extend(pids_in("\n".join(lines), "child") + pids_in("\n".join(lines), "main"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # SIGKILL at once, not after the 30 s grace.
    assert all([await wait_gone(pid, within=2) for pid in reap])


async def test_children_left_behind_are_killed_when_the_main_process_exits(
    reap: list[int],
) -> None:
    result = await run(action(argv=["./leave_child.sh"]))
    reap.extend(pids_in(result.output_tail, "child"))
    assert result.status is RunStatus.OK
    assert result.duration_s < 1
    assert await wait_gone(reap[0])


async def test_a_child_that_left_the_group_cannot_hold_the_run_open(reap: list[int]) -> None:
    result = await run(action(argv=["./leave_child.sh", "escape"]))
    escaped = pids_in(result.output_tail, "escaped")
    reap.extend(escaped)
    assert result.status is RunStatus.OK
    assert result.output_tail.endswith("main done\n")
    assert result.duration_s < 3  # a short drain, not the escaped child's 300 s
    assert escaped and not gone(escaped[0])  # out of our reach, as setsid meant it to be


# ---------------------------------------------------------------------------- output


async def test_output_is_bounded_and_the_digest_covers_all_of_it() -> None:
    size = 20_000_000
    line = b"all work and no play 0123456789\n"
    expected = (line * (size // len(line) + 1))[:size]
    config = action(argv=["./flood.sh", "lines", str(size)], output_limit=64_000)
    tracemalloc.start()
    try:
        result = await run(config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status is RunStatus.OK
    assert result.output_bytes == size
    assert result.truncated
    assert result.output_tail.encode() == expected[-64_000:]
    assert result.output_digest == hashlib.sha256(expected).hexdigest()
    assert peak < 5_000_000  # a fraction of the 20 MB printed


async def test_a_line_without_newlines_is_taken_in_pieces() -> None:
    size = 5_000_000
    lengths: list[int] = []  # not the pieces themselves: they would be the 5 MB measured
    ready = await prepared(action(argv=["./flood.sh", "long", str(size)], output_limit=1_000))
    process = ActionProcess(ready, Redactor(), on_output=lambda piece: lengths.append(len(piece)))
    tracemalloc.start()
    try:
        result = await process.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.output_bytes, result.truncated) == (size, True)
    assert result.output_tail == "x" * 1_000
    assert result.output_digest == hashlib.sha256(b"x" * size).hexdigest()
    assert max(lengths) <= 64 * 1024
    assert sum(lengths) == size
    assert peak < 3_000_000


async def test_secrets_are_masked_in_tail_lines_and_digest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = action(
        argv=["./secret.sh"], env={"PIN": "42"}, secret_env={"DEPLOY_TOKEN": "tok-3f9a1c77"}
    )
    lines: list[str] = []
    process = ActionProcess(await prepared(config), Redactor(), on_output=lines.append)
    result = await process.run()
    expected = (
        "starting deploy\n"
        "token is ***, really\n"
        "slack ***\n"
        "pin 42\n"  # not a secret: shown
        "done\n"
    )
    assert result.output_tail == expected
    assert result.output_digest == hashlib.sha256(expected.encode()).hexdigest()
    assert lines == expected.splitlines()
    assert process.tail(3) == ["slack ***", "pin 42", "done"]
    assert process.tail(100) == expected.splitlines()
    assert result.output_bytes > len(expected)  # the raw output was longer


@pytest.mark.parametrize("mode", ["across", "late"])
async def test_a_secret_in_an_over_long_line_is_not_cut_in_two(mode: str) -> None:
    secret = "tok-3f9a1c77-0b1e"
    config = action(argv=["./long_secret.sh", mode], secret_env={"DEPLOY_TOKEN": secret})
    pieces: list[str] = []
    ready = await prepared(config)
    result = await ActionProcess(ready, Redactor(), on_output=pieces.append).run()
    head = "x" * (65530 if mode == "across" else 65533)
    expected = head + "***" + "y" * 50000 + "\n"
    assert result.output_digest == hashlib.sha256(expected.encode()).hexdigest()
    assert "".join(pieces) == expected[:-1]
    assert len(pieces) > 1


async def test_a_failing_output_callback_does_not_stop_the_run() -> None:
    calls: list[str] = []

    def broken(line: str) -> None:
        calls.append(line)
        raise RuntimeError("progress display bug")

    ready = await prepared(action(argv=["./fail.sh"]))
    result = await ActionProcess(ready, Redactor(), on_output=broken).run()
    assert (result.status, result.exit_code) == (RunStatus.FAILED, 3)
    assert calls == ["rolling back"]  # not called again after it failed
    assert result.output_tail == "rolling back\nrelease v0.0 not found\n"


async def test_the_shared_redactors_secrets_apply_too() -> None:
    config = action(argv=["./secret.sh"], secret_env={"DEPLOY_TOKEN": "db-pass-123"})
    result = await run(config, redactor=Redactor(["starting"]))
    assert result.output_tail.startswith("*** deploy\ntoken is ***, really\n")


async def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    script = tmp_path / "bytes.py"
    script.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "sys.stdout.buffer.write(b'caf\\xc3\\xa9 \\xff\\xfe ok\\n')\n"
    )
    script.chmod(0o755)
    result = await run(action(argv=[str(script)]))
    assert result.output_tail == "café \ufffd\ufffd ok\n"
    assert result.output_bytes == 12


def test_a_secret_too_short_to_redact_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="PIN: shorter than 4 characters"):
        action(argv=["./secret.sh"], secret_env={"PIN": "42"})
