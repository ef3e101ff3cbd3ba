"""Bad configs are refused with messages naming the key path and the reason, through
the same entry point an operator uses: ``opsbot check-config FILE``."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import structlog
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.app.cli import EXIT_CONFIG, main
from bot.app.config import ENV_VARS, read_environment
from bot.app.logs import configure_logging
from tests.botharness import BASE_CONFIG

ROOT = Path(__file__).resolve().parents[2]


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "opsbot.toml"
    path.write_text(text)
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("[console]\nchanel = 'x'\n", "console.chanel: unknown key; did you mean 'channel'?"),
        (
            "[roles.extra]\nincludez = []\n",
            "roles.extra.includez: unknown key; did you mean 'includes'?",
        ),
        ("[flood]\nmax_commands = 'many'\n", "flood.max_commands: Input should be a valid integer"),
        (
            "[identities.eve]\nids = ['slack:abc']\n",
            "identities.eve.ids[0]: 'slack:abc' is not a valid slack user id",
        ),
        (
            "[identities.eve]\nids = ['console:eve', 'slak:U123']\n",
            "identities.eve.ids[1]: unknown platform 'slak'",
        ),
        (
            "[identities.eve]\nids = ['U123']\n",
            "identities.eve.ids[0]: 'U123' lacks a platform prefix",
        ),
        (
            "[identities.eve]\nids = ['telegram:-5']\n",
            "identities.eve.ids[0]: 'telegram:-5' is not a valid telegram user id",
        ),
        (
            "[channels.ops2]\nids = ['discord:12']\n",
            "channels.ops2.ids[0]: 'discord:12' is not a valid discord channel id",
        ),
        (
            "[identities.eve]\nids = ['console:eve']\nroles = ['root']\n",
            "identities.eve.roles[0]: unknown role 'root'",
        ),
        (
            "[identities.eve]\nids = ['console:alice']\n",
            "identities.eve.ids[0]: 'console:alice' already belongs to 'alice'",
        ),
        (
            "[channels.war_room]\nids = ['console:ops']\n",
            "channels.war_room.ids[0]: 'console:ops' is already in channel 'ops'",
        ),
        (
            "[[services]]\nname = 'a'\nhealth_url = 'http://x/h'\n"
            "[[services]]\nname = 'a'\nhealth_url = 'http://y/h'\n",
            "services[1].name: duplicate service name 'a'",
        ),
        (
            "[[services]]\nname = 'a'\nhealth_url = 'ftp://x'\n",
            "services[0].health_url: 'ftp://x' is not an http",
        ),
        (
            "[[services]]\nname = 'a'\nhealth_url = 'http://x/'\ntimeout = 'soon'\n",
            "services[0].timeout: 'soon' is not a duration",
        ),
        (
            "[policy.commands.rollbak]\nroles = ['admin']\n",
            "policy.commands.rollbak: unknown command",
        ),
        (
            "[policy.commands.health]\nroles = ['admin']\nchannels = ['nowhere']\n",
            "policy.commands.health.channels[0]: unknown channel 'nowhere'",
        ),
        (
            "[policy.commands.health]\nroles = ['admin']\n"
            "[[policy.commands.health.args]]\nname = 'service'\npattern = '('\nroles = ['admin']\n",
            "policy.commands.health.args[0].pattern: invalid regular expression",
        ),
        (
            "[policy.commands.health]\nroles = ['admin']\n"
            "[[policy.commands.health.args]]\nname = 'service'\npattern = '(a)\\1'\n"
            "roles = ['admin']\n",
            "policy.commands.health.args[0].pattern: invalid regular expression (RE2 syntax): "
            "invalid escape sequence",
        ),
        (
            "[roles.a]\nincludes = ['b']\n[roles.b]\nincludes = ['a']\n",
            "roles.a.includes: role includes itself",
        ),
        ("[console]\nprincipal = 'zed'\n", "console.principal: unknown identity 'zed'"),
    ],
)
def test_each_bad_key_is_named_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet: str, expected: str
) -> None:
    code, output = check(tmp_path, _merge(BASE_CONFIG, snippet), capsys)
    assert code == EXIT_CONFIG
    assert expected in output


def test_policy_off_needs_a_ttl_within_the_maximum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE_CONFIG.replace("[policy]\n", '[policy]\nmode = "off"\n')
    code, output = check(tmp_path, text, capsys)
    assert code == EXIT_CONFIG
    assert "policy: off_ttl is required when mode is 'off'" in output
    text = BASE_CONFIG.replace("[policy]\n", '[policy]\nmode = "off"\noff_ttl = "9h"\n')
    assert "off_ttl is longer than max_off_ttl" in check(tmp_path, text, capsys)[1]


def test_all_problems_are_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = check(tmp_path, "bogus = 1\n[bot]\nname = 'Bad Name'\n", capsys)
    assert code == EXIT_CONFIG
    assert "3 problem(s)" in output
    assert "bogus: unknown key" in output
    assert "bot.name: String should match pattern" in output
    # The cross-references in the same run, not in a second one after the fix:
    assert "policy.admin_roles[0]: unknown role 'admin'" in output


def test_broken_toml_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = check(tmp_path, "[bot\n", capsys)
    assert code == EXIT_CONFIG and "not valid TOML" in output and "line 1" in output
    assert main(["check-config", str(tmp_path / "nope.toml")]) == EXIT_CONFIG
    assert "cannot read the file" in capsys.readouterr().err


def test_shipped_configs_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "examples" / "opsbot.toml")]) == 0
    assert "examples/opsbot.toml: ok (3 identities" in capsys.readouterr().out


def test_env_example_lists_exactly_the_variables_the_code_reads() -> None:
    listed = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    }
    assert listed == set(ENV_VARS)
    assert read_environment({"OPSBOT_HTTP_PORT": "9", "HOME": "/root", "OPSBOT_LOG_LEVEL": ""}) == {
        "OPSBOT_HTTP_PORT": "9"
    }


def test_environment_overrides_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSBOT_HTTP_PORT", "not-a-port")
    # docker-compose.yml sets it: the replicas' shared state, [state] redis_url.
    monkeypatch.setenv("OPSBOT_REDIS_URL", "http://not-redis:6379/0")
    code, output = check(tmp_path, BASE_CONFIG, capsys)
    assert code == EXIT_CONFIG
    assert "http.port: Input should be a valid integer" in output
    assert "state.redis_url: " in output


def test_secret_values_are_masked_in_log_lines() -> None:
    buffer = io.StringIO()
    configure_logging("info", "json", buffer, secrets=["xoxb-very-secret-token"])
    structlog.get_logger("t").info("calling", url="https://x/?token=xoxb-very-secret-token")
    line = json.loads(buffer.getvalue())
    assert line["url"] == "https://x/?token=***"


def _merge(base: str, snippet: str) -> str:
    """Append a snippet; tables it defines that the base has already are merged in."""
    return base + "\n" + snippet


def test_audit_key_problems_name_their_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff" * 40)
    text = BASE_CONFIG + (f"\n[audit]\nkey = 'too short'\nkey_file = {json.dumps(str(short))}\n")
    code, output = check(tmp_path, text, capsys)
    assert code == EXIT_CONFIG
    assert "audit.key: an audit key must be at least 32 characters" in output
    assert "too short" not in output  # a secret is never echoed
    assert "audit.key_file: an audit key must be at least 32" in output
    text = BASE_CONFIG + f"\n[audit]\nkey_file = {json.dumps(str(binary))}\n"
    assert f"{binary} is not an audit key: not ASCII text" in check(tmp_path, text, capsys)[1]
    good = tmp_path / "good.key"
    good.write_text("a" * 64 + "\n")
    text = BASE_CONFIG + f"\n[audit]\nkey = '{'b' * 40}'\nkey_file = {json.dumps(str(good))}\n"
    assert (
        "set audit.key (OPSBOT_AUDIT_KEY) or audit.key_file, not both"
        in (check(tmp_path, text, capsys)[1])
    )
    text = BASE_CONFIG + "\n[audit]\nwitness_channels = ['nowhere']\n"
    assert (
        "audit.witness_channels[0]: unknown channel 'nowhere'" in check(tmp_path, text, capsys)[1]
    )


EXAMPLE = tomllib.loads((ROOT / "examples" / "opsbot.toml").read_text())


def _leaves(node: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(node, list) and node:
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]
    return [path]


LEAVES = _leaves(EXAMPLE)
HOSTILE = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["36500d", "1e308", "9" * 40, "-1s", "²s", "0", "", "true", "*", "(a+)+$"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(path=st.sampled_from(LEAVES), value=HOSTILE, unknown=st.booleans())
def test_any_mutation_of_the_example_config_is_exit_78_with_key_paths_or_ok(
    path: tuple[str | int, ...], value: object, unknown: bool
) -> None:
    config = copy.deepcopy(EXAMPLE)
    node: Any = config
    for part in path[:-1]:
        node = node[part]
    if unknown and isinstance(node, dict):
        node["surplus_key"] = value
    else:
        node[path[-1]] = value
    with tempfile.TemporaryDirectory() as directory:
        file = Path(directory) / "opsbot.toml"
        file.write_text(tomli_w.dumps(config))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check-config", str(file)])
    text = out.getvalue() + err.getvalue()
    assert "Traceback" not in text
    assert code in (0, EXIT_CONFIG), text
    if code == EXIT_CONFIG:
        problems = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        assert problems, text
        assert all(": " in line for line in problems), text


def test_a_console_channel_in_no_channel_group_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = BASE_CONFIG + '\n[console]\nchannel = "nowhere"\n'
    code, output = check(tmp_path, text, capsys)
    assert code == EXIT_CONFIG
    assert "console.channel: 'nowhere' is in no [channels] group" in output


def test_a_platform_token_alone_turns_nothing_on_and_says_so() -> None:
    from bot.app.config import parse_config
    from commands import COMMANDS

    names = [spec.name for spec in COMMANDS]
    env = {"OPSBOT_SLACK_BOT_TOKEN": "xoxb-stray", "OPSBOT_TELEGRAM_TOKEN": "123:abc"}
    with structlog.testing.capture_logs() as logs:
        config = parse_config(BASE_CONFIG, "t", env, names)
    assert config.slack is None and config.telegram is None
    warned = [e["variable"] for e in logs if e["event"] == "config.token_without_section"]
    assert warned == ["OPSBOT_SLACK_BOT_TOKEN", "OPSBOT_TELEGRAM_TOKEN"]
    with_section = parse_config(BASE_CONFIG + "[slack]\n", "t", env, names)
    assert with_section.slack is not None
    assert with_section.slack.bot_token is not None
    assert with_section.slack.bot_token.get_secret_value() == "xoxb-stray"
