"""The witness as the running bot keeps it: a file appended while it runs and at stop, and
posts to chat channels, where the platform keeps the history."""

from __future__ import annotations

import json
from pathlib import Path

from bot.audit.witness import read_points
from tests.botharness import BASE_CONFIG, running_bot


async def test_the_head_is_witnessed_to_the_file_and_posted_to_channels(tmp_path: Path) -> None:
    witness = tmp_path / "witness.jsonl"
    config = BASE_CONFIG + (
        f"\n[audit]\nwitness_path = {json.dumps(str(witness))}\n"
        'witness_every = "1h"\nwitness_channels = ["incident"]\n'
    )
    async with running_bot(config) as tb:
        assert "You are alice" in await tb.exec("/whoami")
        await tb.bot.audit.store.flush()
        await tb.bot.witness.post()
        seq, digest = await tb.bot.audit.store.head()
        posted = await tb.posted("audit chain head")
        assert f"audit chain head: seq {seq}, hash {digest}" in posted
        await tb.bot.witness.post()  # the head has not moved: nothing new to say
        assert sum("audit chain head" in text for text in tb.all_posted()) == 1
        assert tb.console.posted[-1][0].channel_id == "incident"
    points, problems = read_points(witness)
    assert problems == []
    assert max(points) == seq  # written at stop: the last head the bot saw
