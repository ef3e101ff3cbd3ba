"""Human durations as people type them in chat: ``90s``, ``30m``, ``1h30m``, ``7d``, ``0.5s``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse ``1h30m``-style text; a bare number means seconds. Raises ValueError."""
    stripped = text.strip().lower()
    if stripped.isdigit():
        return timedelta(seconds=int(stripped))
    if not _WHOLE.match(stripped):
        raise ValueError(f"'{text}' is not a duration (examples: 90s, 30m, 1h30m, 7d)")
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(stripped))
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
