"""Secrets out of audit records and replies: known secret values and token shapes become ***.

Also what no database or chat platform can take: a lone UTF-16 surrogate (any Python str
may carry one: ``"\\ud800"``) and NUL become their escapes (``\\ud800``, ``\\x00``), so every
text that leaves through here can be stored, hashed and posted.

Runs on every command, so the common case (nothing to hide) is one regex search per
string. A pattern with a group named ``secret`` hides only that group, so
``password=hunter2`` keeps saying which thing was hidden.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from msgspec.structs import replace

from bot.kernel.errors import ConfigError
from bot.kernel.regex import LinearRegex, RegexError, compile_linear
from bot.kernel.reply import Field, Reply, Table
from bot.kernel.text import storable

MASK = "***"
_UNCHANGED = ""  # memo value meaning "the string needs no masking" (a real result is never "")
_MEMO_SIZE = 4096
_MEMO_MAX_CHARS = 512

# Shapes of credentials that must never be echoed back, whoever typed them. Each comes
# with substrings one of which any match contains: checking those first keeps the common
# case (nothing to hide) under a microsecond per string.
BUILTIN_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("xox",), r"xox[abposre]-[0-9A-Za-z-]{10,}"),  # Slack bot/user tokens
    (("xapp-",), r"xapp-\d-[0-9A-Za-z-]{10,}"),  # Slack app-level (Socket Mode) tokens
    ((":",), r"\b\d{6,12}:[A-Za-z0-9_-]{35}\b"),  # Telegram bot tokens
    ((".",), r"\b[MNO][A-Za-z\d_-]{23,25}\.[A-Za-z\d_-]{6}\.[A-Za-z\d_-]{27,}"),  # Discord
    (("_",), r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub tokens
    (("AKIA",), r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
    (
        ("-----BEGIN",),
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    ),
    (("earer", "EARER"), r"(?i:\bbearer)\s+(?P<secret>[A-Za-z0-9._~+/=-]{8,})"),
    # The password in a URL, with or without a user name (redis://:password@host).
    (("://",), r"://[^/\s:@]*:(?P<secret>[^@\s/]+)@"),
    (
        ("=", ":"),
        r"(?i:\b(?:password|passwd|pwd|secret|token|api[_-]?key))\s*[=:]\s*"
        r"(?P<secret>[^\s&\"',;]+)",
    ),
)


class Redactor:
    def __init__(self, secrets: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        # Short values would mask half the alphabet; they are not secrets worth the name.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._rules: list[tuple[tuple[str, ...], re.Pattern[str]]] = []
        # Configured patterns run on RE2 (linear time); the built-in shapes are ours.
        self._configured: list[LinearRegex] = []
        # Chat text repeats (the same commands, titles and field values), and redaction is
        # a pure function of the string: remembered results save the regex scans, which
        # showed per command (bench/audit.py).
        self._seen: dict[str, str] = {}
        for needles, pattern in BUILTIN_PATTERNS:
            self._rules.append((needles, re.compile(pattern)))
        for pattern in patterns:
            try:
                self._configured.append(compile_linear(pattern))
            except RegexError as exc:
                raise ConfigError("audit.redact_patterns", [f"{pattern!r}: {exc}"]) from exc

    @classmethod
    def for_config(
        cls, database_url: str | None, patterns: Iterable[str], secrets: Iterable[str] = ()
    ) -> Redactor:
        return cls([*secrets_in_url(database_url), *secrets], patterns)

    def text(self, value: str) -> str:
        if not value:
            return value
        known = self._seen.get(value)
        if known is not None:
            # The same object back when nothing changed: reply() tells changes by identity.
            return value if known is _UNCHANGED else known
        redacted = self._redact(value)
        if len(value) <= _MEMO_MAX_CHARS:
            if len(self._seen) >= _MEMO_SIZE:
                self._seen.clear()
            self._seen[value] = _UNCHANGED if redacted is value else redacted
        return redacted

    def _redact(self, value: str) -> str:
        value = storable(value)
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        for needles, pattern in self._rules:
            if needles:
                for needle in needles:
                    if needle in value:
                        break
                else:
                    continue
            if pattern.search(value) is not None:
                value = pattern.sub(_mask, value)
        for regex in self._configured:
            if regex.search(value):
                value = regex.sub(_mask_whole, value)
        return value

    def optional(self, value: str | None) -> str | None:
        return None if value is None else self.text(value)

    def value(self, value: Any) -> Any:
        """Strings anywhere inside JSON-like data."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def reply(self, reply: Reply, request_id: str | None = None) -> Reply:
        """``reply`` with secrets masked (and ``request_id`` set, when given); the same
        object when there is nothing to change, as is nearly always the case."""
        text = self.text
        title, body, code = text(reply.title), text(reply.text), self.optional(reply.code)
        fields = reply.fields
        if any(text(f.value) is not f.value for f in fields):
            fields = tuple(Field(f.name, text(f.value)) for f in fields)
        table = reply.table
        if table is not None and any(text(c) is not c for row in table.rows for c in row):
            table = Table(table.columns, tuple(tuple(text(c) for c in row) for row in table.rows))
        changed = (
            title is not reply.title
            or body is not reply.text
            or code is not reply.code
            or fields is not reply.fields
            or table is not reply.table
        )
        if not changed:
            if request_id is None or request_id == reply.request_id:
                return reply
            return reply.with_request_id(request_id)
        return replace(
            reply,
            title=title,
            text=body,
            fields=fields,
            table=table,
            code=code,
            request_id=reply.request_id if request_id is None else request_id,
        )


def secrets_in_url(url: str | None) -> list[str]:
    if not url:
        return []
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password] if password else []


def _mask_whole(_: object) -> str:
    return MASK


def _mask(match: re.Match[str]) -> str:
    if match.re.groupindex.get("secret") is None or match.group("secret") is None:
        return MASK
    start, end = match.span("secret")
    offset = match.start()
    whole = match.group(0)
    return whole[: start - offset] + MASK + whole[end - offset :]
