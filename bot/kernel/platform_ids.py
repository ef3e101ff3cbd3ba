"""Shapes of platform-qualified ids (``slack:U024BE7LH``), checked at start-up.

A malformed id in an allow-list silently matches nobody (errbot#775), so the
config refuses it instead.
"""

from __future__ import annotations

import re

PLATFORMS = ("console", "discord", "slack", "telegram")

_USER = {
    "console": (re.compile(r"[A-Za-z0-9_.-]{1,64}"), "letters, digits, '_', '.', '-'"),
    "slack": (re.compile(r"[UW][A-Z0-9]{2,20}"), "U or W followed by uppercase letters/digits"),
    "telegram": (re.compile(r"[1-9][0-9]{0,15}"), "a positive integer user id"),
    "discord": (re.compile(r"[0-9]{15,21}"), "a numeric snowflake of 15-21 digits"),
}
_CHANNEL = {
    "console": (re.compile(r"[A-Za-z0-9_.-]{1,64}"), "letters, digits, '_', '.', '-'"),
    "slack": (re.compile(r"[CGD][A-Z0-9]{2,20}"), "C, G or D followed by uppercase letters/digits"),
    "telegram": (re.compile(r"-?[1-9][0-9]{0,15}"), "an integer chat id (groups are negative)"),
    "discord": (re.compile(r"[0-9]{15,21}"), "a numeric snowflake of 15-21 digits"),
}


def check_user_id(value: str) -> str:
    return _check(value, _USER, "user")


def check_channel_id(value: str) -> str:
    return _check(value, _CHANNEL, "channel")


def _check(value: str, shapes: dict[str, tuple[re.Pattern[str], str]], what: str) -> str:
    platform, sep, native = value.partition(":")
    if not sep:
        raise ValueError(f"'{value}' lacks a platform prefix (e.g. slack:{_example(what)})")
    if platform not in shapes:
        raise ValueError(f"unknown platform '{platform}' (expected one of {', '.join(PLATFORMS)})")
    pattern, shape = shapes[platform]
    if not pattern.fullmatch(native):
        raise ValueError(f"'{value}' is not a valid {platform} {what} id (expected {shape})")
    return value


def _example(what: str) -> str:
    return "U024BE7LH" if what == "user" else "C024BE91L"
