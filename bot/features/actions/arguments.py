"""From what a person typed to the exact argv, directory and environment an action runs
with, refusing anything the action's argument schema does not allow before anything runs.

Every value is checked, in this order, before any ``values_from`` lister is started:

- printable characters only: no NUL, newline, tab, other control or invisible (format,
  bidi-override, non-ASCII space) characters;
- at most ``max_length`` characters;
- no leading "-" (a program would read it as an option, e.g. "--force") unless it is one
  of the ``choices`` or the ``pattern`` itself begins with a literal "-" (``-?[0-9]+``,
  ``^\\-x``); integers may be negative only when ``min`` is below zero;
- ``kind = "integer"``: ASCII digits with an optional "-", from ``min`` (0 when unset)
  to ``max``, and normalised ("007" becomes "7") before the checks below;
- ``pattern``: compiled with ``re.ASCII`` and matched in full, so ``\\d`` is 0-9 only and
  not Arabic-Indic or fullwidth digits; ``choices``: compared exactly;
- ``values_from``: the value is one of the lines the lister prints.

Refusals are UsageErrors whose reason names the argument and the rule; values are shown
quoted, escaped and cut short (``show_value``), so they cannot forge chat lines. Faults
of the configuration or the machine (a missing executable, a lister that fails) are
DependencyErrors: the person asking cannot fix them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.audit.redact import Redactor
from bot.features.actions.config import ActionConfig, ArgSchema
from bot.features.actions.prepared import PreparedAction
from bot.features.actions.process import RunStatus, capture
from bot.kernel.errors import DependencyError, InternalError, UsageError
from bot.kernel.regex import LinearRegex, RegexError, compile_linear

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_LANG = "C.UTF-8"

_SHOWN_CHARS = 40
# The same shape as the config's: "{name}" inside an argv element.
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# [0-9], not \d: ASCII digits only, whatever the flags.
_INTEGER = re.compile(r"-?[0-9]+")
_LISTED_SHOWN = 3
_LISTER_MAX_BYTES = 1024 * 1024
# A lister only reads; it gets little time to wind down after SIGTERM.
_LISTER_GRACE_S = 1.0
_CHOICES_SHOWN = 20


def show_value(value: str) -> str:
    """``value`` quoted for a reply: control and invisible characters escaped (a newline
    in it cannot start a forged chat line), long values cut to 40 characters."""
    if len(value) <= _SHOWN_CHARS:
        return repr(value)
    return f"{value[:_SHOWN_CHARS]!r}… ({len(value)} characters)"


def usage(action: ActionConfig) -> str:
    """``rollback <tag> [env=staging]``: the words an action takes, for usage lines."""
    words = [action.name]
    for arg in action.args:
        if arg.default is not None:
            words.append(f"[{arg.name}={arg.default}]")
        elif arg.required:
            words.append(f"<{arg.name}>")
        else:
            words.append(f"[{arg.name}]")
    return " ".join(words)


async def prepare(
    action: ActionConfig,
    positionals: Sequence[str],
    named: Mapping[str, str],
    *,
    base_dir: Path,
) -> PreparedAction:
    """Check the arguments and build what runs. ``base_dir``: the config file's directory,
    which a relative ``working_dir`` is resolved against.

    UsageError for arguments the schema refuses; DependencyError when the executable or
    the working directory is missing, or a ``values_from`` lister fails."""
    given = _bind(action, positionals, named)
    values: dict[str, str] = {}
    for arg in action.args:
        if arg.name in given:
            values[arg.name] = _check(arg, given[arg.name])
        elif arg.default is not None:
            try:
                values[arg.name] = _check(arg, arg.default)
            except UsageError as exc:
                raise InternalError(
                    f"action {action.name}: the default of {arg.name} is refused: {exc.reason}"
                ) from exc
        elif arg.required:
            about = f" ({arg.description})" if arg.description else ""
            raise UsageError(f"missing argument {arg.name}{about}: {usage(action)}")

    env = _environment(action)
    working_dir = _absolute(base_dir) / (action.working_dir or "")
    program = action.argv[0]
    try:
        executable = await asyncio.to_thread(_executable, program, working_dir, env["PATH"])
    except _NotRunnable as exc:
        raise DependencyError(f"action {action.name}", exc.reason) from None

    # Only now, with every cheap check passed: a lister is a process of its own.
    for arg in action.args:
        if arg.values_from and arg.name in values:
            await _check_listed(action, arg, values[arg.name], working_dir, env)

    argv = [executable]
    for template in action.argv[1:]:
        names = _PLACEHOLDER.findall(template)
        if any(name not in values for name in names):
            continue
        # One pass over the template: a value is never itself searched for placeholders,
        # and braces that are not placeholders stay as they are.
        argv.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], template))
    return PreparedAction(
        action=action,
        values=values,
        argv=tuple(argv),
        working_dir=working_dir,
        env=env,
    )


def _bind(
    action: ActionConfig, positionals: Sequence[str], named: Mapping[str, str]
) -> dict[str, str]:
    args = action.args
    if len(positionals) > len(args):
        extra = show_value(positionals[len(args)])
        raise UsageError(
            f"too many arguments: {extra} is one more than {action.name} takes ({_takes(action)})"
        )
    given = {arg.name: value for arg, value in zip(args, positionals, strict=False)}
    declared = {arg.name for arg in args}
    for key, value in named.items():
        if key not in declared:
            raise UsageError(
                f"unknown argument {show_value(key)}: {action.name} takes {_takes(action)}"
            )
        if key in given:
            raise UsageError(f"{key} is given twice: as a word and as {key}=…")
        given[key] = value
    return given


def _takes(action: ActionConfig) -> str:
    if not action.args:
        return "no arguments"
    return ", ".join(
        arg.name if arg.required and arg.default is None else f"[{arg.name}]" for arg in action.args
    )


def _check(arg: ArgSchema, value: str) -> str:
    """``value`` if ``arg`` allows it (an integer normalised); UsageError if not."""
    name = arg.name
    for position, char in enumerate(value, start=1):
        if not char.isprintable():
            raise UsageError(
                f"{name} {show_value(value)} contains a control or invisible character "
                f"({repr(char)[1:-1]} at position {position})"
            )
    if len(value) > arg.max_length:
        raise UsageError(
            f"{name} {show_value(value)} is too long: {len(value)} characters, "
            f"at most {arg.max_length}"
        )
    if arg.kind == "integer":
        value = _integer(arg, value)
    elif value.startswith("-") and not _dash_allowed(arg, value):
        raise UsageError(
            f"{name} {show_value(value)} must not start with '-' "
            "(the program would read it as an option)"
        )
    if arg.pattern is not None and not _compiled(arg).fullmatch(value):
        raise UsageError(f"{name} {show_value(value)} must match {arg.pattern}")
    if arg.choices and value not in arg.choices:
        listed = ", ".join(arg.choices[:_CHOICES_SHOWN])
        more = ", …" if len(arg.choices) > _CHOICES_SHOWN else ""
        raise UsageError(f"{name} {show_value(value)} must be one of: {listed}{more}")
    return value


def _integer(arg: ArgSchema, value: str) -> str:
    low = arg.min if arg.min is not None else 0
    if _INTEGER.fullmatch(value):
        number = int(value)
        if number >= low and (arg.max is None or number <= arg.max):
            return str(number)
    if arg.max is None:
        rule = f"an integer of at least {low}"
    else:
        rule = f"an integer from {low} to {arg.max}"
    raise UsageError(f"{arg.name} {show_value(value)} must be {rule}")


def _dash_allowed(arg: ArgSchema, value: str) -> bool:
    if value in arg.choices:
        return True
    pattern = (arg.pattern or "").removeprefix("^")
    return pattern.startswith(("-", "\\-"))


def _compiled(arg: ArgSchema) -> LinearRegex:
    assert arg.pattern is not None
    try:
        # RE2 (linear time, cached); its \d, \w and \s are ASCII-only, as re.ASCII was.
        return compile_linear(arg.pattern)
    except RegexError as exc:  # checked when the config was loaded: not expected here
        raise InternalError(
            f"argument {arg.name}: pattern {arg.pattern!r} cannot be used: {exc}", exc
        ) from exc


def _environment(action: ActionConfig) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "LANG": DEFAULT_LANG}
    env.update(action.env)
    env.update({name: secret.get_secret_value() for name, secret in action.secret_env.items()})
    return env


def _absolute(path: Path) -> Path:
    return path if path.is_absolute() else path.absolute()


class _NotRunnable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _executable(program: str, working_dir: Path, search_path: str) -> str:
    """The absolute path ``program`` runs as. Blocking (stat calls): run in a thread."""
    if not working_dir.is_dir():
        raise _NotRunnable(f"working directory {working_dir} does not exist")
    if "/" in program:
        path = working_dir / program  # an absolute program stays as it is
        if not path.exists():
            raise _NotRunnable(f"{path} does not exist")
        if not path.is_file():
            raise _NotRunnable(f"{path} is not a file")
        if not os.access(path, os.X_OK):
            raise _NotRunnable(f"{path} is not executable")
        return str(path)
    # A relative PATH entry ("", ".") would be searched from the bot's own directory.
    dirs = [d for d in search_path.split(os.pathsep) if os.path.isabs(d)]
    found = shutil.which(program, path=os.pathsep.join(dirs)) if dirs else None
    if found is None:
        raise _NotRunnable(f"{program!r} is not found on PATH {search_path}")
    return found


async def _check_listed(
    action: ActionConfig, arg: ArgSchema, value: str, working_dir: Path, env: dict[str, str]
) -> None:
    dependency = f"allowed values of {arg.name}"
    command = "`" + " ".join(arg.values_from) + "`"
    try:
        program = await asyncio.to_thread(_executable, arg.values_from[0], working_dir, env["PATH"])
    except _NotRunnable as exc:
        raise DependencyError(dependency, exc.reason) from None
    timeout = arg.values_timeout.total_seconds()
    try:
        listed = await capture(
            [program, *arg.values_from[1:]],
            cwd=working_dir,
            env=env,
            time_limit=timeout,
            kill_grace=min(action.kill_grace.total_seconds(), _LISTER_GRACE_S),
            max_bytes=_LISTER_MAX_BYTES,
        )
    except OSError as exc:
        raise DependencyError(
            dependency, f"{command} could not start: {exc.strerror or exc}", exc
        ) from exc
    if listed.status is RunStatus.TIMEOUT:
        raise DependencyError(dependency, f"{command} did not finish within {timeout:g}s")
    if listed.status is not RunStatus.OK:
        code = listed.exit_code or 0
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        last = next((line for line in reversed(listed.output.splitlines()) if line.strip()), "")
        secrets = [s.get_secret_value() for s in action.secret_env.values()]
        said = f": {show_value(Redactor(secrets).text(last.strip()))}" if last else ""
        raise DependencyError(dependency, f"{command} {how}{said}")
    if listed.truncated:
        raise DependencyError(
            dependency, f"{command} printed more than {_LISTER_MAX_BYTES // 1024} KiB"
        )
    allowed = [line.strip() for line in listed.output.splitlines() if line.strip()]
    if value in allowed:
        return
    if allowed:
        latest = ", ".join(_plain(v) for v in reversed(allowed[-_LISTED_SHOWN:]))
        known = f"latest: {latest}"
    else:
        known = "it listed none"
    raise UsageError(
        f"{arg.name} {show_value(value)} is not one of the values listed by {command} ({known})"
    )


def _plain(value: str) -> str:
    return value if value.isprintable() and len(value) <= _SHOWN_CHARS else show_value(value)
