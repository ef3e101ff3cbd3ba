"""Denial paths: unknown user, wrong role, wrong channel, argument rules, deny by default,
policy-off expiry. Each denial is one clear line, recorded with the rule that matched."""

from __future__ import annotations

from datetime import timedelta

from bot.kernel.reply import Status
from tests.botharness import BASE_CONFIG, ManualClock, TestBot, running_bot


async def test_unknown_user_gets_one_clear_line_and_is_audited(testbot: TestBot) -> None:
    reply = await testbot.send("/status", as_="mallory")
    assert reply is not None
    assert reply.status is Status.DENIED
    out = await testbot.exec("/whoami", as_="mallory")
    assert out.count("\n") == 0
    assert "I don't know you (console:mallory)" in out
    assert "· request " in out
    record = (await testbot.commands_audited())[-1]
    assert (record.principal, record.decision, record.rule) == (None, "denied", "deny:unknown-user")


async def test_unknown_user_cannot_probe_which_commands_exist(testbot: TestBot) -> None:
    assert "I don't know you" in await testbot.exec("/nosuchcommand", as_="mallory")


async def test_wrong_role_names_the_needed_role(testbot: TestBot) -> None:
    out = await testbot.exec("/policy", as_="carol")
    assert "Denied: /policy needs role one of oncall (you have: viewer)" not in out
    assert "Denied: /policy needs role oncall (you have: viewer)" in out
    assert (await testbot.commands_audited())[-1].rule == "policy.commands.policy"


async def test_wrong_channel_is_denied(testbot: TestBot) -> None:
    out = await testbot.exec("/policy", as_="bob", channel="random")
    assert "Denied: /policy is only allowed in one of #incident, #ops" in out
    assert "Policy mode" in await testbot.exec("/policy", as_="bob", channel="incident")


async def test_switching_policy_needs_an_admin_role(testbot: TestBot) -> None:
    out = await testbot.exec("/policy off 30m", as_="bob")
    assert "Denied: /policy mode=off needs role admin (you have: oncall)" in out
    assert (await testbot.commands_audited())[-1].rule == "builtin:policy.mode->policy.admin_roles"
    assert "STRICT" in await testbot.exec("/policy", as_="bob")


async def test_command_without_a_policy_rule_is_denied_by_default(testbot: TestBot) -> None:
    out = await testbot.exec("/health", as_="alice")
    assert "Denied: no policy rule allows /health (deny by default)" in out


async def test_argument_rule_requires_extra_role() -> None:
    config = BASE_CONFIG + (
        '\n[policy.commands.health]\nroles = ["oncall", "deployer"]\n'
        '[[policy.commands.health.args]]\nname = "service"\npattern = "^payments$"\n'
        'roles = ["admin"]\n'
        '[[services]]\nname = "payments"\nhealth_url = "http://127.0.0.1:9/h"\ntimeout = "1s"\n'
    )
    async with running_bot(config) as tb:
        out = await tb.exec("/health payments", as_="bob")
        assert "Denied: /health service=payments needs role admin (you have: oncall)" in out
        assert (await tb.commands_audited())[-1].rule == "policy.commands.health.args[0]"
        allowed = await tb.exec("/health payments", as_="alice")
        assert "payments" in allowed and "DOWN" in allowed
        assert (await tb.commands_audited())[-1].rule == "policy.commands.health.args[0]"


async def test_policy_off_expires_by_itself_and_the_expiry_is_recorded() -> None:
    clock = ManualClock()
    async with running_bot(clock=clock) as tb:
        assert "OFF until 03:30 UTC" in await tb.exec("/policy off 30m maintenance")
        clock.advance(timedelta(minutes=29))
        assert "OFF until" in await tb.exec("/policy", as_="bob")
        clock.advance(timedelta(minutes=2))
        out = await tb.exec("/policy", as_="bob")
        assert "Policy mode STRICT" in out
        assert "timer" in out
        outcomes = [r.status for r in await tb.audit() if r.kind == "policy"]
        assert outcomes == ["off", "expired"]


async def test_policy_off_from_config_starts_with_a_ttl() -> None:
    clock = ManualClock()
    config = BASE_CONFIG.replace(
        '[policy]\nadmin_roles = ["admin"]',
        '[policy]\nadmin_roles = ["admin"]\nmode = "off"\noff_ttl = "15m"',
    )
    async with running_bot(config, clock=clock) as tb:
        assert "OFF until 03:15 UTC" in await tb.exec("/policy", as_="bob")
        clock.advance(timedelta(minutes=16))
        assert "STRICT" in await tb.exec("/policy", as_="bob")


async def test_a_platform_id_maps_to_the_same_principal(testbot: TestBot) -> None:
    # alice is console:alice and slack:U0ALICE01; a console user named like her slack id
    # is someone else entirely.
    assert "I don't know you" in await testbot.exec("/whoami", as_="U0ALICE01")
