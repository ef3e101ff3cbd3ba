"""Log lines: the libraries' own (discord.py, slack-sdk, uvicorn…) in the bot's format."""

from __future__ import annotations

import io
import json
import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.app.logs import configure_logging, render_json


def test_library_log_lines_come_out_as_json_with_their_logger_and_secrets_masked() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    try:
        configure_logging("info", "json", buffer, secrets=["s3cr3t-token"])
        logging.getLogger("discord.gateway").warning("Shard %s is lagging (s3cr3t-token)", 0)
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError:
            logging.getLogger("discord.client").exception("Ignoring exception in on_message")
        logging.getLogger("discord.http").info("below the threshold: not shown")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("discord.gateway", "warning"),
        ("discord.client", "error"),
    ]
    assert lines[0]["event"] == "Shard 0 is lagging (***)"
    assert "ConnectionResetError: peer went away" in lines[1]["exception"]
    assert all("timestamp" in line for line in lines)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.characters(codec=None, exclude_categories=())),
    number=st.integers(min_value=-(2**70), max_value=2**70),
)
def test_a_json_line_is_ascii_and_says_what_was_logged(text: str, number: int) -> None:
    # Any str can reach a log field (a command name typed in chat), lone surrogates too,
    # and ints past 64 bits: the line is one ASCII line that parses back to the values.
    line = render_json(None, "info", {"event": "command.done", "text": text, "n": number})
    assert line.isascii()
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed == {"event": "command.done", "text": text, "n": number}


def test_an_object_json_cannot_write_is_logged_as_its_repr() -> None:
    line = render_json(None, "info", {"event": "x", "value": {1, 2}, "key": {3: "three"}})
    assert json.loads(line) == {"event": "x", "value": "{1, 2}", "key": {"3": "three"}}
