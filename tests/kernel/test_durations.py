"""Durations as people type them: any string is a duration or one ValueError that a
person can read, never another exception, never longer than MAX_DURATION."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.kernel.durations import MAX_DURATION, parse_duration

DURATION_LIKE = st.lists(
    st.one_of(
        st.sampled_from([*"0123456789.smhdw ", "ms", "²", "٣", "\ud800", "e9", "-"]),
        st.characters(),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(DURATION_LIKE, st.integers(min_value=0).map(lambda n: f"{n}d")))
def test_any_string_is_a_bounded_duration_or_a_readable_value_error(text: str) -> None:
    try:
        parsed = parse_duration(text)
    except ValueError as exc:
        message = str(exc)
    else:
        assert timedelta(0) <= parsed <= MAX_DURATION
        return
    assert "is not a duration" in message or "is longer than" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("99999999999d", "'99999999999d' is longer than 10 years"),
        ("²", "'²' is not a duration"),
        ("1" * 400 + "s", "is not a duration"),
    ],
)
def test_what_used_to_overflow_or_leak_python_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)
