"""/runbook through the chat pipeline: a real deploy script as the action steps, a real
HTTP service (golem) whose health and version the wait and verify steps read, the real
audit database, approval store and outbox."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app.config import parse_config
from bot.kernel.errors import ConfigError
from bot.kernel.render import render_text
from commands import COMMANDS
from tests.actionkit import approval_id
from tests.botharness import TestBot, running_bot
from tests.features.runbooks.golem import Golem, serve_golem
from tests.features.runbooks.kit import Deploys, make_deploys, runbooks_config
from tests.processes import clean_env, run_opsbot


@pytest.fixture
def deploys(tmp_path: Path) -> Deploys:
    return make_deploys(tmp_path)


@pytest.fixture
async def golem(deploys: Deploys) -> AsyncIterator[Golem]:
    async with serve_golem(deploys.version_file) as running:
        yield running


def request_of(reply: str) -> str:
    match = re.search(r"request\s+([0-9a-f]{12})", reply)
    assert match, reply
    return match.group(1)


def posted_to(tb: TestBot, channel: str) -> list[str]:
    return [render_text(r) for where, r in tb.console.posted if where.channel_id == channel]


async def test_release_runs_each_step_verifies_and_audits_under_one_request_id(
    deploys: Deploys, golem: Golem
) -> None:
    async with running_bot(runbooks_config(deploys, golem.url)) as tb:
        started = await tb.exec("/runbook release v1.2", as_="dave")
        assert "Runbook release tag=v1.2 started (3 steps" in started, started
        assert "1. run deploy tag=v1.2" in started
        request = request_of(started)

        done = await tb.posted("runbook release tag=v1.2 finished", within=15)
        assert "3 steps ok" in done and request in done
        steps = [p for p in tb.all_posted() if " step " in p]
        assert [s.split(":")[0] for s in steps] == [
            "✅ step 1/3",
            "✅ step 2/3",
            "✅ step 3/3",
        ], steps
        assert "verify /version golem reports v1.2" in steps[2]
        assert deploys.runs() == ["v1.2"]
        assert golem.health_asks >= 2  # it waited through golem's restart
        assert posted_to(tb, "incident") == []

        entries = await tb.audit()
        runbook = [e for e in entries if e.kind == "runbook"]
        # Under the request's id, the run and each step their own (a started entry is
        # closed by its own finished one, after a crash too).
        assert [(e.request_id, e.raw_text.split(" ")[0], e.status) for e in runbook] == [
            (f"{request}:runbook", "runbook", "started"),
            (f"{request}:step-1", "1.", "started"),
            (f"{request}:step-1", "1.", "ok"),
            (f"{request}:step-2", "2.", "started"),
            (f"{request}:step-2", "2.", "ok"),
            (f"{request}:step-3", "3.", "started"),
            (f"{request}:step-3", "3.", "ok"),
            (f"{request}:runbook", "runbook", "ok"),
        ]
        assert all(e.principal == "dave" and e.rule == "runbooks.release.roles" for e in runbook)
        job = [e for e in entries if e.kind == "job"]
        assert [e.stage for e in job] == ["started", "finished"]
        assert job[0].request_id.startswith(f"{request}:j")
        assert job[1].status == "ok" and job[1].command == "deploy"

        # Everything of the request, in order: the command, its steps, the job.
        traced = await tb.exec(f"/audit request={request}", as_="bob")
        assert "audit entries of request" in traced, traced
        assert traced.count("runbook") >= 8 and traced.count(" job ") == 2
        assert traced.index("1. run deploy tag=v1.2") < traced.index("2. wait until golem")
        assert "No audit entries" in await tb.exec("/audit request=0000deadbeef", as_="bob")


async def test_failed_verification_stops_and_runs_on_failure(
    deploys: Deploys, golem: Golem
) -> None:
    golem.frozen_version = "v1.1"  # the deploy "works", the service stays on the old tag
    async with running_bot(runbooks_config(deploys, golem.url)) as tb:
        request = request_of(await tb.exec("/runbook release v1.3", as_="dave"))
        failed = await tb.posted("runbook release tag=v1.3 failed", within=15)
        assert "failed at step 3/3 (verify /version golem reports v1.3)" in failed, failed
        assert "golem reports v1.1" in failed and "not v1.3" in failed
        assert "ran 1 on_failure step" in failed
        [page] = posted_to(tb, "incident")
        assert "release of golem to v1.3 failed at step 3" in page
        assert f"(request {request})" in page
        assert deploys.runs() == ["v1.3"]

        runbook = [e for e in await tb.audit() if e.kind == "runbook"]
        final = [(e.raw_text.split(" ")[0], e.status) for e in runbook if e.stage == "finished"]
        assert final == [
            ("1.", "ok"),
            ("2.", "ok"),
            ("3.", "failed"),
            ("on", "ok"),  # "on failure 1. post to incident: …"
            ("runbook", "failed"),
        ]
        [verify] = [e for e in runbook if e.raw_text.startswith("3.") and e.status == "failed"]
        assert "golem reports v1.1" in (verify.error or "")
        assert runbook[-1].detail == "failed at step 3"


async def test_a_failed_step_skips_the_rest(deploys: Deploys, golem: Golem) -> None:
    script = deploys.dir / "deploy.sh"
    script.write_text("#!/bin/sh\necho 'no route to golem' >&2\nexit 4\n")
    async with running_bot(runbooks_config(deploys, golem.url)) as tb:
        await tb.exec("/runbook release v1.4", as_="dave")
        failed = await tb.posted("runbook release tag=v1.4 failed", within=15)
        assert "at step 1/3" in failed and "exit code 4" in failed, failed
        statuses = [
            e.status for e in await tb.audit() if e.kind == "runbook" and e.stage == "finished"
        ]
        assert statuses == ["failed", "skipped", "skipped", "ok", "failed"]
        assert len(posted_to(tb, "incident")) == 1


async def test_verify_a_check(deploys: Deploys, golem: Golem) -> None:
    async with running_bot(runbooks_config(deploys, golem.url)) as tb:
        golem.restart_s = 0  # up
        await tb.exec("/runbook golem-ok", as_="bob")
        await tb.posted("runbook golem-ok finished: 1 step ok")
        golem.restart_s = 3600  # down
        await tb.exec("/runbook golem-ok", as_="bob")
        failed = await tb.posted("runbook golem-ok failed at step 1/1")
        assert "check golem-health is CRITICAL" in failed, failed


async def test_dry_run_shows_the_plan_and_runs_nothing(deploys: Deploys, golem: Golem) -> None:
    async with running_bot(runbooks_config(deploys, golem.url)) as tb:
        plan = await tb.exec("/runbook rollback v1.0 --dry-run", as_="dave")
        assert "Dry run: runbook rollback tag=v1.0" in plan and "nothing was run" in plan
        for line in (
            "1. run rollback tag=v1.0",
            "2. wait until golem is up (within 8s)",
            "3. verify /version golem reports v1.0",
            "on failure 1. post to incident: rollback of golem to v1.0 failed",
        ):
            assert line in plan, plan
        assert "once, for the whole runbook, by another person with role 'oncall'" in plan
        refused = await tb.exec("/runbook rollback latest --dry-run", as_="dave")
        assert "tag 'latest' must match" in refused, refused
        assert deploys.runs() == []
        kinds = {e.kind for e in await tb.audit()}
        assert "job" not in kinds and "runbook" not in kinds and "approval" not in kinds


async def test_high_risk_runbook_needs_one_approval_then_runs_whole_once(
    deploys: Deploys, golem: Golem
) -> None:
    async with running_bot(runbooks_config(deploys, golem.url)) as tb:
        asked = await tb.exec("/runbook rollback v1.0", as_="dave")
        assert "Approval needed: runbook rollback tag=v1.0" in asked, asked
        assert "3. verify /version golem reports v1.0" in asked  # the plan, shown
        approval = approval_id(asked)
        request = request_of(asked)
        assert deploys.runs() == []

        own = await tb.exec(f"/approve {approval}", as_="dave")
        assert "you requested this" in own and own.startswith("⛔")
        not_approver = await tb.exec(f"/approve {approval}", as_="carol")
        assert "need role 'oncall'" in not_approver and not_approver.startswith("⛔")
        assert deploys.runs() == []

        approved = await tb.exec(f"/approve {approval}", as_="bob")
        assert "approved by bob" in approved and "runbook rollback tag=v1.0 is running" in approved
        done = await tb.posted("runbook rollback tag=v1.0 finished", within=15)
        assert request in done
        again = await tb.exec(f"/approve {approval}", as_="alice")
        assert "already approved by bob" in again
        assert deploys.runs() == ["v1.0"]  # once: one approval, the whole runbook

        entries = await tb.audit()
        approvals = [(e.status, e.principal) for e in entries if e.kind == "approval"]
        assert approvals == [("requested", "dave"), ("approved", "bob")]
        runbook = [e for e in entries if e.kind == "runbook"]
        assert all(e.request_id.startswith(f"{request}:") for e in runbook)
        assert all(e.approvers == ("bob",) for e in runbook)
        assert runbook[-1].status == "ok"
        job = [e for e in entries if e.kind == "job"]
        assert job[-1].request_id.startswith(f"{request}:") and job[-1].approvers == ("bob",)
        traced = await tb.exec(f"/audit request={request}", as_="bob")
        assert "approval" in traced and "requested" in traced and "approved" in traced


async def test_runbook_approval_can_be_denied(deploys: Deploys, golem: Golem) -> None:
    async with running_bot(runbooks_config(deploys, golem.url)) as tb:
        approval = approval_id(await tb.exec("/runbook rollback v1.0", as_="dave"))
        denied = await tb.exec(f"/deny {approval} not tonight", as_="bob")
        assert "denied by bob" in denied and "not tonight" in denied
        assert "already denied" in await tb.exec(f"/approve {approval}", as_="alice")
        assert deploys.runs() == []


async def test_who_may_run_a_runbook(deploys: Deploys, golem: Golem) -> None:
    async with running_bot(runbooks_config(deploys, golem.url)) as tb:
        listed = await tb.exec("/runbook", as_="dave")
        assert "/runbook release <tag>" in listed and "/runbook rollback <tag>" in listed
        assert "needs approval" in listed
        unknown = await tb.exec("/runbook nope v1.0", as_="dave")
        assert "no runbook 'nope'" in unknown and "release, rollback" in unknown
        bob_only = await tb.exec("/runbook release v1.0", as_="carol")
        assert bob_only.startswith("⛔")
        assert deploys.runs() == []


async def test_cli_tail_by_request(deploys: Deploys, golem: Golem, tmp_path: Path) -> None:
    data = tmp_path / "data"
    text = runbooks_config(deploys, golem.url, data_dir=data)
    config = tmp_path / "opsbot.toml"
    config.write_text(text)
    async with running_bot(text) as tb:
        request = request_of(await tb.exec("/runbook release v1.5", as_="dave"))
        await tb.posted("runbook release tag=v1.5 finished", within=15)
        await tb.exec("/whoami", as_="dave")  # another request, not shown
    tail = run_opsbot(
        "audit", "tail", "--request", request, "--config", str(config), env=clean_env()
    )
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert lines and all("whoami" not in line for line in lines)
    assert any("/runbook release v1.5" in line for line in lines)
    assert sum("1. run deploy tag=v1.5" in line for line in lines) == 2
    assert sum("deploy.sh v1.5" in line for line in lines) == 2  # the job's two entries
    assert "runbook release tag=v1.5" in lines[-1] and "  ok  " in lines[-1]
    last = run_opsbot(
        "audit", "tail", "--request", request, "-n", "1", "--config", str(config), env=clean_env()
    )
    assert last.stdout.splitlines() == lines[-1:]


async def test_console_one_shot_waits_for_the_runbook(
    deploys: Deploys, golem: Golem, tmp_path: Path
) -> None:
    config = tmp_path / "opsbot.toml"
    config.write_text(runbooks_config(deploys, golem.url, data_dir=tmp_path / "data"))
    # In a thread: golem answers from this test's event loop meanwhile.
    ran = await asyncio.to_thread(
        run_opsbot,
        *("console", "--config", str(config), "--no-http", "--as", "dave"),
        *("-c", "/runbook release v1.6"),
        env=clean_env(),
        timeout=60,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Runbook release tag=v1.6 started" in ran.stdout
    assert "step 3/3: verify /version golem reports v1.6" in ran.stdout
    assert "runbook release tag=v1.6 finished: 3 steps ok" in ran.stdout
    assert deploys.runs() == ["v1.6"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (('action = "deploy"', 'action = "deplo"'), "runbooks[0].steps[0].action: unknown action"),
        (('health = "golem"', 'health = "golm"'), "runbooks[0].steps[1].wait.health: unknown"),
        (('version = "golem"', 'version = "golm"'), "steps[2].verify.version: unknown service"),
        (('channels = ["incident"]', 'channels = ["pager"]'), "on_failure[0].post.channels[0]"),
        (('equals = "{tag}"', 'equals = "{tga}"'), "{tga}, which is not an argument"),
        (('args = { tag = "{tag}" }', 'args = { tg = "{tag}" }'), "has no argument 'tg'"),
        (
            ('approver_roles = ["oncall"]\napproval_ttl', "approval_ttl"),
            "runbooks[1].approver_roles: a step runs a high-risk action",
        ),
        (
            ('verify = { version = "golem", equals = "{tag}" }', 'verify = { check = "nope" }'),
            "verify.check: unknown check 'nope'",
        ),
    ],
)
def test_config_names_what_a_runbook_gets_wrong(
    deploys: Deploys, change: tuple[str, str], problem: str
) -> None:
    text = runbooks_config(deploys, "http://127.0.0.1:9")
    assert change[0] in text
    with pytest.raises(ConfigError) as raised:
        parse_config(text.replace(change[0], change[1], 1), "test", {}, [s.name for s in COMMANDS])
    assert problem in str(raised.value), str(raised.value)


def test_a_runbook_needs_steps(deploys: Deploys) -> None:
    text = runbooks_config(deploys, "http://127.0.0.1:9")
    cut = text.index("[[runbooks.steps]]")
    end = text.index("[[runbooks.on_failure]]")
    with pytest.raises(ConfigError) as raised:
        parse_config(text[:cut] + text[end:], "test", {}, [s.name for s in COMMANDS])
    assert "runbooks.0.steps" in str(raised.value) or "runbooks[0].steps" in str(raised.value)
