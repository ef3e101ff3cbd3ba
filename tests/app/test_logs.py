"""Log lines: the libraries' own (discord.py, slack-sdk, uvicorn…) in the bot's format."""

from __future__ import annotations

import io
import json
import logging

from bot.app.logs import configure_logging


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
