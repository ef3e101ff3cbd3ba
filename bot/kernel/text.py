"""Text that can leave the process: any Python str may hold a lone UTF-16 surrogate
(``"\\ud800"``) or NUL, which no database, chat platform or strict stream takes."""

from __future__ import annotations


def storable(value: str) -> str:
    """``value`` with lone surrogates and NUL escaped; ``value`` itself when it has none
    (nearly always: one C-speed check)."""
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
