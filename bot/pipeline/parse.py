"""Turn chat text into a command name, positional arguments and options.

Accepted forms: ``/cmd a b``, ``/cmd@botname a``, ``--flag``, ``--key=value``,
``key=value`` (the value may itself contain ``=``, as URLs do), shell-like quoting.
Typographic quotes, which phones and chat clients substitute, count as plain quotes.
"""

from __future__ import annotations

import re
import shlex

from bot.kernel.errors import UsageError
from bot.kernel.message import OptionValue, ParsedCommand

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_SMART_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})
_NEEDS_SHLEX = frozenset("\"'\\")
MAX_TEXT = 4000


def parse(text: str, *, bot_names: frozenset[str], addressed: bool) -> ParsedCommand | None:
    """Parse one message. ``None`` means it is not a command for this bot. Never raises."""
    stripped = text.strip()
    if stripped.startswith("/"):
        stripped = stripped[1:]
    elif not addressed:
        return None
    parts = stripped.split(maxsplit=1)
    if not parts:
        return None
    head, rest = parts[0], (parts[1] if len(parts) > 1 else "")
    name, _, target = head.partition("@")
    if target and target.lower() not in bot_names:
        return None
    name = name.lower()
    if not name:
        return None
    if not _NAME.fullmatch(name):
        return ParsedCommand(name=name[:32], raw_args=rest[:MAX_TEXT])
    if len(rest) > MAX_TEXT:
        return ParsedCommand(name, problem=f"arguments longer than {MAX_TEXT} characters")
    try:
        return _split_arguments(name, rest)
    except UsageError as exc:
        return ParsedCommand(name, raw_args=rest, problem=str(exc))


def split_words(text: str, *, backslash_escapes: bool = True) -> list[str]:
    """The words of ``text`` as the parser splits them (quotes group, typographic quotes
    count as plain ones). ``backslash_escapes=False`` keeps every backslash as typed, for
    arguments that are regular expressions (/silence). Raises UsageError on an unbalanced
    quote."""
    text = text.translate(_SMART_QUOTES)
    if _NEEDS_SHLEX.isdisjoint(text):
        return text.split()
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    if not backslash_escapes:
        lexer.escape = ""
    try:
        return list(lexer)
    except ValueError as exc:
        raise UsageError(str(exc).replace("No closing", "no closing")) from exc


def _split_arguments(name: str, rest: str) -> ParsedCommand:
    tokens = split_words(rest)
    positionals: list[str] = []
    options: dict[str, OptionValue] = {}
    only_positionals = False
    for word in tokens:
        if only_positionals:
            positionals.append(word)
        elif word == "--":
            only_positionals = True
        elif word.startswith("--") and len(word) > 2:
            key, eq, value = word[2:].partition("=")
            _set_option(options, key, value if eq else True)
        elif "=" in word and _KEY.fullmatch(word.partition("=")[0]):
            key, _, value = word.partition("=")
            _set_option(options, key, value)
        else:
            positionals.append(word)
    return ParsedCommand(name, tuple(positionals), options, rest)


def _set_option(options: dict[str, OptionValue], key: str, value: str | bool) -> None:
    if not _KEY.fullmatch(key):
        raise UsageError(f"'{key}' is not a valid option name")
    normalized = key.replace("-", "_").lower()
    if normalized in options:
        raise UsageError(f"option '{key}' given twice")
    options[normalized] = value
