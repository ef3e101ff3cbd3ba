"""Answers reach the person they are for: a job approved from another platform reports to
the requester's conversation (fast or slow), the approver is told where it went; refusals
are private wherever the platform allows it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.actionkit import Scripts, actions_config, make_scripts
from tests.adapters.test_adapters_together import _discord, _slack
from tests.botharness import TestBot, running_bot
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.slack_server import FakeSlack

SLACK_OPS = "C0OPS0001"
SLACK_DAVE, SLACK_CAROL = "U0DAVE001", "U0CAROL01"
DISCORD_BOB, DISCORD_CAROL = "100000000000000002", "100000000000000003"
EPHEMERAL = 64


def slow_approval(scripts: Scripts) -> str:
    """``slow-rollback``: needs approval and runs longer than ``jobs.ack_after`` (0.5 s)."""
    return f"""
[[actions]]
name = "slow-rollback"
argv = ["{scripts.dir}/slow.sh", "{{tag}}"]
env = {{ MARKER = "{scripts.marker}" }}
risk = "high"
roles = ["oncall", "deployer"]
approver_roles = ["oncall"]
timeout = "10s"
kill_grace = "0.5s"
[[actions.args]]
name = "tag"
pattern = '^v\\d+\\.\\d+$'
"""


@contextlib.asynccontextmanager
async def slack_and_discord(
    tmp_path: Path,
) -> AsyncIterator[tuple[TestBot, FakeSlack, FakeDiscord]]:
    scripts = make_scripts(tmp_path)
    async with FakeSlack() as slack, FakeDiscord() as discord:
        config = (
            actions_config(scripts) + slow_approval(scripts) + slack.config() + discord.config()
        )
        async with asyncio.timeout(60), running_bot(config, adapters=[_slack, _discord]) as tb:
            yield tb, slack, discord


async def request_on_slack(slack: FakeSlack, text: str) -> str:
    """dave asks in #ops on Slack; the approval request's id."""
    await slack.send("slash_commands", slack.slash_command("/ops", text, user=SLACK_DAVE))
    asked = await slack.wait_for(lambda: slack.find_response("Approval needed"))
    assert not asked.ephemeral
    return asked.all_text().split("(request ", 1)[1].split(")", 1)[0]


async def approve_on_discord(discord: FakeDiscord, request: str) -> str:
    """bob approves on Discord with the slash command; what Discord shows him."""
    interaction = await discord.slash("approve", {"id": request}, user=DISCORD_BOB)
    path = f"/webhooks/{interaction['application_id']}/{interaction['token']}"
    answer = await discord.wait_call("POST", path)
    assert not answer.body.get("flags", 0) & EPHEMERAL
    return answer.text


def slack_posts(slack: FakeSlack, contains: str) -> list[str]:
    return [
        m.all_text()
        for m in slack.messages.values()
        if m.channel == SLACK_OPS and m.via == "chat.postMessage" and contains in m.all_text()
    ]


async def test_a_fast_job_approved_on_discord_reports_to_the_requester_on_slack(
    tmp_path: Path,
) -> None:
    async with slack_and_discord(tmp_path) as (_, slack, discord):
        request = await request_on_slack(slack, "rollback v1.2")
        told = await approve_on_discord(discord, request)
        # The approver: a short confirmation saying where the result went.
        assert told.startswith(f"✅ ✅ approved by bob: request {request}")
        assert "The result goes to dave, where they asked (Slack)" in told
        assert "rolling back" not in told
        # The requester's conversation: that it was approved, then the result itself.
        result = await slack.wait_for(lambda: slack_posts(slack, "finished") or None)
        assert "rolling back to v1.2" in result[0]
        assert slack_posts(slack, f"Request {request} (rollback tag=v1.2) approved by bob")
        await asyncio.sleep(0.3)
        # Nothing about the result went to the approver's channel.
        assert not [c for c in discord.calls_to("POST") if "rolling back" in c.text]


async def test_a_slow_job_approved_on_discord_reports_progress_and_result_to_slack(
    tmp_path: Path,
) -> None:
    async with slack_and_discord(tmp_path) as (_, slack, discord):
        request = await request_on_slack(slack, "run slow-rollback v1.3")
        told = await approve_on_discord(discord, request)
        assert "The result goes to dave, where they asked (Slack)" in told
        assert "follow here" not in told  # the old answer promised what never came
        result = await slack.wait_for(lambda: slack_posts(slack, "finished") or None, within=15)
        assert "step 2" in result[0]
        await asyncio.sleep(0.3)
        assert not [c for c in discord.calls_to("POST") if "finished" in c.text]


async def test_refusals_are_private_on_slack_mentions_and_discord_commands(
    tmp_path: Path,
) -> None:
    async with slack_and_discord(tmp_path) as (_, slack, discord):
        # carol (a viewer) may not roll back: a mention in #ops is refused to her alone.
        mention = slack.mention("rollback v1.2", user=SLACK_CAROL)
        await slack.send("events_api", mention)
        refused = await slack.wait_for(lambda: slack.calls_of("chat.postEphemeral") or None)
        assert refused[0].params["user"] == SLACK_CAROL
        assert refused[0].params["channel"] == SLACK_OPS
        assert refused[0].params["thread_ts"] == mention["event"]["ts"]
        await asyncio.sleep(0.2)
        assert not slack_posts(slack, "needs role")

        # The same on Discord's slash command: the public "thinking…" goes, the answer is
        # ephemeral.
        interaction = await discord.slash("rollback", {"tag": "v1.2"}, user=DISCORD_CAROL)
        path = f"/webhooks/{interaction['application_id']}/{interaction['token']}"
        answer = await discord.wait_call("POST", path)
        assert answer.body["flags"] & EPHEMERAL and "needs role" in answer.text
        assert discord.calls_to("DELETE", f"{path}/messages/@original")
