"""Human durations as people type them in chat: ``90s``, ``30m``, ``1h30m``, ``7d``, ``0.5s``."""

from __future__ import annotations

import re
from datetime import timedelta

# ASCII digits only: "²" or "٣" is a digit to str.isdigit, and not a duration anyone types.
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.ASCII)
_WHOLE = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$", re.ASCII)
_SECONDS_ONLY = re.compile(r"^\d+$", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_CHARS = 64  # "1w 6d 23h 59m 59s 999ms" fits many times over

MAX_DURATION = timedelta(days=3650)
"""The longest duration anything takes (ten years): longer is a typo, and past about
2.7 million years Python's timedelta overflows; each use has a tighter limit of its own."""


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m``-style text; a bare number means seconds. Raises ValueError, with
    a message fit to show a person, for anything else or anything over MAX_DURATION."""
    stripped = text.strip().lower()
    if len(stripped) > _MAX_CHARS:
        raise ValueError(f"'{text[:20]}…' is not a duration (examples: 90s, 30m, 1h30m, 7d)")
    if _SECONDS_ONLY.match(stripped):
        seconds = float(int(stripped))
    elif _WHOLE.match(stripped):
        seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(stripped))
    else:
        raise ValueError(f"'{text}' is not a duration (examples: 90s, 30m, 1h30m, 7d)")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"'{text}' is longer than {MAX_DURATION.days // 365} years")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Shortest readable form: ``1h 30m``, ``45s``, ``2d 3h``."""
    total = int(delta.total_seconds())
    if total <= 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2])
