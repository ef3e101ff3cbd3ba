"""Read, override and validate the config file; every problem names its key path."""

from __future__ import annotations

import copy
import difflib
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from bot.app.config.env import ENV_VARS, apply_overrides, unused_tokens
from bot.app.config.models import Config
from bot.app.config.references import reference_problems
from bot.kernel.errors import ConfigError

DEFAULT_SOURCE = "<built-in default config>"
_log = structlog.get_logger("opsbot.config")


def load_config(
    path: Path | None, env: Mapping[str, str], command_names: Collection[str]
) -> tuple[Config, str]:
    """Load ``path`` (or the built-in default when None); returns the config and its source."""
    if path is None:
        # Here, not at the top: importlib.resources brings tempfile, shutil, bz2 and lzma
        # (~5 ms of every start-up), and a bot with a config file never needs it.
        from importlib import resources

        source = DEFAULT_SOURCE
        text = resources.files("bot.app.config").joinpath("default.toml").read_text("utf-8")
    else:
        source = str(path)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    return parse_config(text, source, env, command_names), source


def parse_config(
    text: str, source: str, env: Mapping[str, str], command_names: Collection[str]
) -> Config:
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from exc
    for name in unused_tokens(raw, env):
        section = ENV_VARS[name][0][0]  # type: ignore[index]
        _log.warning(
            "config.token_without_section",
            variable=name,
            hint=f"{name} is set but the config has no [{section}] section: "
            f"{section.capitalize()} stays off (add [{section}] to turn it on)",
        )
    apply_overrides(raw, env)
    try:
        config = Config.model_validate(raw, context={"env": env})
    except ValidationError as exc:
        # Every problem in one run: the cross-references too, checked on the config
        # with the bad values left out (their own errors are already in the list).
        problems = _describe(exc)
        rest = _without_errors(raw, exc, env)
        if rest is not None:
            problems += [p for p in reference_problems(rest, command_names) if p not in problems]
        raise ConfigError(source, problems) from exc
    problems = reference_problems(config, command_names)
    if problems:
        raise ConfigError(source, problems)
    return config


_PRUNE_PASSES = 8


def _without_errors(
    raw: dict[str, Any], error: ValidationError, env: Mapping[str, str]
) -> Config | None:
    """The config validated with every value that failed taken out (its parent, when a
    required key then goes missing); None when it still does not validate."""
    pruned = copy.deepcopy(raw)
    for _ in range(_PRUNE_PASSES):
        for item in error.errors(include_url=False):
            _remove(pruned, [p for p in item["loc"] if not str(p).startswith("function-")])
        try:
            return Config.model_validate(pruned, context={"env": env})
        except ValidationError as again:
            error = again
    return None


def _remove(raw: Any, loc: list[int | str]) -> None:
    """Delete the value at ``loc``; a missing key takes out the item that needs it."""
    if not loc:
        return
    *parents, last = loc
    node = raw
    for part in parents:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    in_dict = isinstance(node, dict) and last in node
    in_list = isinstance(node, list) and isinstance(last, int) and last < len(node)
    if in_dict or in_list:
        del node[last]
    elif parents:
        _remove(raw, parents)  # "required key is missing": the parent cannot stand


# Keys whose values are secrets: a problem with one never echoes the value (a key one
# character short is still most of a key).
_SECRET_KEYS = frozenset(
    {
        "key",
        "token",
        "bot_token",
        "app_token",
        "signing_secret",
        "webhook_secret",
        "secret_env",
        "database_url",
        "redis_url",
        "headers",  # a header's value may be a credential
        "password",
    }
)


def _describe(error: ValidationError) -> list[str]:
    lines: list[str] = []
    for item in error.errors(include_url=False):
        loc = item["loc"]
        path = _path(loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key{_suggest(loc)}")
        elif item["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            value = item.get("input")
            plain = (
                isinstance(value, str | int | float)
                and str(value) not in message
                and not _SECRET_KEYS.intersection(str(part) for part in loc)
            )
            shown = f" (got {value!r})" if plain else ""
            lines.append(f"{path}: {message}{shown}")
    return lines


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-after", "function-before")):
            continue
        else:
            path += f".{part}" if path else part
    return path


def _suggest(loc: tuple[int | str, ...]) -> str:
    """Nearest valid key for a misspelt one, found by walking the models along ``loc``."""
    model: type[BaseModel] | None = Config
    in_container = False  # the next part is a dict key or list index, not a field
    for part in loc[:-1]:
        if in_container or isinstance(part, int):
            in_container = False
            continue
        field = model.model_fields.get(str(part)) if model else None
        if field is None:
            return ""
        model = _model_of(field.annotation)
        in_container = getattr(field.annotation, "__origin__", None) in (dict, list)
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        inner = getattr(candidate, "__args__", ())
        for arg in inner:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None
