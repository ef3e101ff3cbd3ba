"""Every built-in command, through the console adapter: a chat message in, the reply out."""

from __future__ import annotations

from bot.kernel.reply import Status
from bot.kernel.version import __version__
from tests.botharness import TestBot


async def test_whoami_shows_principal_roles_and_platform_id(testbot: TestBot) -> None:
    out = await testbot.exec("/whoami", as_="alice")
    assert out.startswith("ℹ️ You are alice")
    assert "admin, oncall" in out  # admin includes oncall
    assert "console:alice" in out
    assert "channel      ops" in out


async def test_whoami_outside_configured_channels_says_so(testbot: TestBot) -> None:
    out = await testbot.exec("/whoami", as_="bob", channel="random")
    assert "console:random (not a configured channel)" in out


async def test_help_lists_only_what_the_asker_may_run(testbot: TestBot) -> None:
    alice = await testbot.exec("/help", as_="alice")
    carol = await testbot.exec("/help", as_="carol")
    for usage in ("/help [command]", "/whoami", "/status", "/version [service]", "/policy"):
        assert usage in alice
    assert "/policy" not in carol  # carol is a viewer
    assert "/version [service]" in carol
    assert "/health" not in alice  # no policy rule grants /health in this config


async def test_help_for_one_command_and_for_a_forbidden_one(testbot: TestBot) -> None:
    out = await testbot.exec("/help policy", as_="alice")
    assert "/policy: Show the policy mode" in out
    assert "Usage: /policy [off <duration> [reason] | strict [reason]]" in out
    hidden = await testbot.exec("/help policy", as_="carol")
    missing = await testbot.exec("/help nosuch", as_="carol")
    # The same words whether it exists or not: help never advertises a denial.
    assert "no command /policy that you may run here" in hidden
    assert "no command /nosuch that you may run here" in missing


async def test_dash_dash_help_shows_usage(testbot: TestBot) -> None:
    out = await testbot.exec("/version --help", as_="bob")
    assert "Usage: /version [service]" in out


async def test_status_reports_version_uptime_adapters_and_policy(testbot: TestBot) -> None:
    reply = await testbot.send("/status", as_="carol")
    assert reply is not None
    assert reply.status is Status.OK
    out = await testbot.exec("/status", as_="carol")
    assert f"opsbot {__version__} up" in out
    assert "console: connected" in out
    assert "policy    strict" in out


async def test_policy_show_off_and_back_to_strict(testbot: TestBot) -> None:
    assert "Policy mode STRICT" in await testbot.exec("/policy", as_="bob")
    out = await testbot.exec("/policy off 30m deploy freeze lifted", as_="alice")
    assert "Policy mode is now OFF until" in out
    assert "30m left" in out
    assert "deploy freeze lifted" in out
    assert "policy    off (until" in await testbot.exec("/status")
    assert "Policy mode is now STRICT" in await testbot.exec("/policy strict done", as_="alice")
    switches = [r for r in await testbot.audit() if r.kind == "policy"]
    assert [r.status for r in switches] == ["off", "strict"]
    assert switches[0].principal == "alice"
    assert "deploy freeze lifted" in switches[0].detail


async def test_policy_off_needs_a_sane_duration(testbot: TestBot) -> None:
    assert "policy off needs a duration" in await testbot.exec("/policy off")
    assert "'soon' is not a duration" in await testbot.exec("/policy off soon")
    assert "limited to 4h" in await testbot.exec("/policy off 5h")
    assert "Policy mode STRICT" in await testbot.exec("/policy")


async def test_version_without_services(testbot: TestBot) -> None:
    assert "No services configured" in await testbot.exec("/version", as_="bob")
    assert "unknown service 'x' (services: none configured)" in await testbot.exec(
        "/version x", as_="bob"
    )
