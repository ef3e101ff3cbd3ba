"""Regular expressions that someone else wrote (the config, a silence typed in chat): RE2.

Python's ``re`` backtracks: ``(a+)+$`` against 29 ``a``s and a ``b`` takes seconds, doubling
with each character, and holds the event loop all that time. RE2 matches in time linear in
the input, whatever the pattern; it is what Alertmanager (Go's regexp) uses, so a silence
typed in chat means what it would mean there. What RE2 does not have (backreferences,
lookaround) is refused when the pattern is given, with the reason.

Our own fixed patterns (the parser's, the built-in redaction shapes) stay on ``re``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import re2  # type: ignore[import-untyped]

MAX_PATTERN = 1000  # characters: patterns are typed by people, and compiled programs cost memory
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the error comes back as an exception; no stderr noise
_OPTIONS.max_mem = 8 << 20  # bytes of compiled program per pattern (RE2's default is 8 MiB)


class RegexError(ValueError):
    """A pattern that cannot be used; the message says why, in one line."""


class LinearRegex:
    """A compiled RE2 pattern. Text with lone surrogates (any Python str may hold them) is
    matched with each one as U+FFFD: RE2 reads UTF-8, and a surrogate has none."""

    __slots__ = ("_regex", "pattern")

    def __init__(self, pattern: str, regex: Any) -> None:
        self.pattern = pattern
        self._regex = regex

    def fullmatch(self, text: str) -> bool:
        try:
            return self._regex.fullmatch(text) is not None
        except UnicodeEncodeError:
            return self._regex.fullmatch(_utf8(text)) is not None

    def search(self, text: str) -> bool:
        try:
            return self._regex.search(text) is not None
        except UnicodeEncodeError:
            return self._regex.search(_utf8(text)) is not None

    def sub(self, replacement: Callable[[Any], str], text: str) -> str:
        try:
            return str(self._regex.sub(replacement, text))
        except UnicodeEncodeError:
            return str(self._regex.sub(replacement, _utf8(text)))


@functools.lru_cache(maxsize=1024)
def compile_linear(pattern: str) -> LinearRegex:
    """``pattern`` compiled with RE2. Raises :class:`RegexError` saying why it cannot be."""
    if len(pattern) > MAX_PATTERN:
        raise RegexError(f"a pattern may be at most {MAX_PATTERN} characters, not {len(pattern)}")
    try:
        regex = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"invalid regular expression (RE2 syntax): {reason}") from None
    except UnicodeEncodeError:
        raise RegexError("invalid regular expression: it holds a lone surrogate") from None
    return LinearRegex(pattern, regex)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")
