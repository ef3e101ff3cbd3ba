"""One authorization decision per request: the authorizer decides the command's rule and,
for an action command, the action's roles, approver roles, the requester rule and the
need for approval; the "decided" audit entry records that answer and its rule, and /help
and /run show only what the asker may run."""

from __future__ import annotations

from bot.audit import AuditEntry
from tests.actionkit import Scripts, actions_config, approval_id
from tests.botharness import TestBot, running_bot

# The command rule lets anyone known type /rollback; the action still needs its roles.
OPEN_ROLLBACK = """
[policy.commands.rollback]
roles = ["oncall", "deployer"]
"""


def _open_rollback(scripts: Scripts) -> str:
    text = actions_config(scripts)
    assert OPEN_ROLLBACK in text
    return text.replace(OPEN_ROLLBACK, '\n[policy.commands.rollback]\nroles = ["*"]\n')


async def _entries_of(tb: TestBot, request_id: str) -> list[AuditEntry]:
    return [e for e in await tb.audit() if e.request_id == request_id and e.kind == "command"]


async def test_approving_your_own_request_is_decided_denied_and_never_started(
    scripts: Scripts,
) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        request = approval_id(await tb.exec("/rollback v1.2", as_="dave"))
        reply = await tb.send(f"/approve {request}", as_="dave")
        assert reply is not None and reply.title.startswith("Denied: you requested this")
        entries = await _entries_of(tb, reply.request_id)
        # Not "decided: allowed", "started", then "finished: denied": one decision, before.
        assert [(e.stage, e.decision, e.status, e.rule) for e in entries] == [
            ("decided", "denied", "denied", "approval:requester-may-not-approve")
        ]


async def test_the_started_entry_names_the_action_rule_that_allowed_it(
    scripts: Scripts,
) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        reply = await tb.send("/rollback v1.2", as_="dave")
        assert reply is not None and "Approval needed" in reply.title
        commands = [e for e in await _entries_of(tb, reply.request_id) if e.kind == "command"]
        # A command that changes something: "started" carries the decision, then "finished".
        assert [e.stage for e in commands] == ["started", "finished"]
        assert (commands[0].decision, commands[0].rule) == ("allowed", "actions.rollback.roles")
        request = approval_id(reply.title)
        approved = await tb.send(f"/approve {request}", as_="bob")
        assert approved is not None
        started = next(
            e for e in await _entries_of(tb, approved.request_id) if e.stage == "started"
        )
        assert started.rule == "actions.rollback.approver_roles"


async def test_an_action_the_asker_may_not_run_is_denied_before_it_starts(
    scripts: Scripts,
) -> None:
    async with running_bot(_open_rollback(scripts)) as tb:
        reply = await tb.send("/rollback v1.2", as_="carol")  # a viewer
        assert reply is not None
        assert reply.title == (
            "Denied: action 'rollback' needs role one of 'deployer', 'oncall' (you have: viewer)"
        )
        entries = await _entries_of(tb, reply.request_id)
        assert [(e.stage, e.rule) for e in entries] == [("decided", "actions.rollback.roles")]
        assert scripts.runs() == []


async def test_help_hides_a_command_whose_action_the_asker_may_not_run(
    scripts: Scripts,
) -> None:
    async with running_bot(_open_rollback(scripts)) as tb:
        carols = await tb.exec("/help", as_="carol")
        assert "/rollback" not in carols
        assert "no command /rollback that you may run here" in await tb.exec(
            "/help rollback", as_="carol"
        )
        assert "/rollback" in await tb.exec("/help", as_="dave")  # a deployer may run it
