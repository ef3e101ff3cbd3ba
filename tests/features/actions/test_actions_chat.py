"""/rollback, /run, /approve, /deny, /jobs, /cancel through the chat pipeline, with real
scripts as the actions, the real audit database and the real approval store."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.kernel.message import Location, Message
from tests.actionkit import Scripts, actions_config, approval_id, pid_in, process_alive
from tests.botharness import ManualClock, running_bot
from tests.infra import STATE_REDIS_DOWN
from tests.processes import spawn_console


async def test_rollback_needs_a_second_person_then_runs_exactly_once(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        asked = await tb.exec("/rollback v1.2", as_="dave")
        assert "Approval needed: rollback tag=v1.2" in asked
        assert "/approve" in asked and "expires in" in asked
        assert scripts.runs() == []  # nothing runs on request
        request = approval_id(asked)

        approved = await tb.exec(f"/approve {request}", as_="bob")
        assert "rollback tag=v1.2 finished" in approved, approved
        assert "rolling back to v1.2" in approved
        assert scripts.runs() == ["v1.2"]

        again = await tb.exec(f"/approve {request}", as_="alice")
        assert "already approved by bob" in again and "used once" in again
        assert scripts.runs() == ["v1.2"]

        entries = await tb.audit()
        approvals = [(e.status, e.principal) for e in entries if e.kind == "approval"]
        assert approvals == [("requested", "dave"), ("approved", "bob")]
        job = [e for e in entries if e.kind == "job"]
        assert [e.stage for e in job] == ["started", "finished"]
        assert job[1].status == "ok" and job[1].exit_code == 0
        assert job[1].approvers == ("bob",) and job[1].principal == "dave"
        assert job[1].output_digest and len(job[1].output_digest) == 64
        assert "done" in (job[1].output_excerpt or "")


async def test_requester_and_non_approvers_cannot_approve(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        request = approval_id(await tb.exec("/rollback v1.3", as_="alice"))
        own = await tb.exec(f"/approve {request}", as_="alice")
        assert "you requested this" in own and own.startswith("⛔")
        viewer = await tb.exec(f"/approve {request}", as_="carol")
        assert "need role 'oncall'" in viewer and viewer.startswith("⛔")
        deployer = await tb.exec(f"/approve {request}", as_="dave")
        assert deployer.startswith("⛔")
        assert scripts.runs() == []
        denied_rules = [e.rule for e in await tb.commands_audited() if e.status == "denied"]
        assert denied_rules == [
            "approval:requester-may-not-approve",
            "actions.rollback.approver_roles",
            "actions.rollback.approver_roles",
        ]
        # Still pending: a real approver can use it.
        assert "finished" in await tb.exec(f"/approve {request}", as_="bob")
        assert scripts.runs() == ["v1.3"]


async def test_denied_request_never_runs_and_the_reason_is_recorded(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        request = approval_id(await tb.exec("/rollback v1.4", as_="dave"))
        denied = await tb.exec(f"/deny {request} wrong tag, use v1.5", as_="bob")
        assert "denied by bob" in denied and "wrong tag, use v1.5" in denied
        after = await tb.exec(f"/approve {request}", as_="alice")
        assert "already denied by bob" in after
        assert scripts.runs() == []
        statuses = [(e.status, e.error) for e in await tb.audit() if e.kind == "approval"]
        assert statuses == [("requested", None), ("denied", "wrong tag, use v1.5")]


async def test_approval_expires(scripts: Scripts) -> None:
    clock = ManualClock(datetime.now(UTC))
    async with running_bot(actions_config(scripts), clock=clock) as tb:
        request = approval_id(await tb.exec("/rollback v2.0", as_="dave"))
        clock.advance(timedelta(minutes=11))
        late = await tb.exec(f"/approve {request}", as_="bob")
        assert "expired" in late and "ask dave to request it again" in late
        assert scripts.runs() == []
        assert [e.status for e in await tb.audit() if e.kind == "approval"] == [
            "requested",
            "expired",
        ]


async def test_approval_survives_a_restart(scripts: Scripts, tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_bot(actions_config(scripts), data_dir=data) as tb:
        request = approval_id(await tb.exec("/rollback v3.1", as_="dave"))
    async with running_bot(actions_config(scripts), data_dir=data) as tb:
        approved = await tb.exec(f"/approve {request}", as_="bob")
        assert "rollback tag=v3.1 finished" in approved
        assert scripts.runs() == ["v3.1"]


async def test_bad_arguments_are_refused_before_anything_runs(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        for attempt in ("v1.2;rm", "'v1.2; rm -rf /'", "'$(id)'", "v١.٢", "--force"):
            reply = await tb.exec(f"/rollback {attempt}", as_="dave")
            assert reply.startswith("❓"), (attempt, reply)
            assert "tag" in reply
        assert scripts.runs() == []
        # Nothing was even put up for approval.
        assert [e for e in await tb.audit() if e.kind == "approval"] == []


async def test_dry_run_shows_argv_and_approvers_and_runs_nothing(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        shown = await tb.exec("/rollback v1.2 --dry-run", as_="dave")
        assert "Dry run" in shown and "nothing was run" in shown
        assert f"{scripts.dir}/rollback.sh v1.2" in shown
        assert "working dir" in shown and "role 'oncall'" in shown
        assert scripts.runs() == []
        assert [e for e in await tb.audit() if e.kind in ("approval", "job")] == []


async def test_policy_off_skips_approval_but_not_roles(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        assert "OFF until" in await tb.exec("/policy off 10m maintenance", as_="alice")
        ran = await tb.exec("/rollback v1.6", as_="dave")
        assert "finished" in ran and scripts.runs() == ["v1.6"]
        viewer = await tb.exec("/rollback v1.7", as_="carol")
        assert viewer.startswith("⛔")


async def test_long_job_is_acknowledged_then_reports_progress_and_result(
    scripts: Scripts,
) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        ack = await tb.exec("/run slow-deploy v9.1", as_="bob")
        assert "running as job" in ack and "/cancel" in ack
        job = ack.split("running as job ")[1].split()[0]
        progress = await tb.posted(f"job {job}: slow-deploy tag=v9.1, running")
        assert "step 1" in progress
        result = await tb.posted("finished in")
        assert f"(job {job})" in result and "step 2" in result
        assert scripts.runs() == ["v9.1"]
        listing = await tb.exec("/jobs", as_="carol")
        assert job in listing and "ok" in listing


async def test_lock_group_keeps_two_deploys_apart(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        first = await tb.exec("/run slow-deploy v1.0", as_="bob")
        job = first.split("running as job ")[1].split()[0]
        second = await tb.exec("/run slow-deploy v1.1", as_="alice")
        assert "already running once" in second and job in second
        assert "policy" not in second
        await tb.posted("finished in")
        assert scripts.runs() == ["v1.0"]


async def test_failing_action_reports_exit_code(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        reply = await tb.exec("/run fail", as_="bob")
        assert reply.startswith("❌") and "exit code 3" in reply
        assert "cannot reach the deploy API" in reply
        finished = [e for e in await tb.audit() if e.kind == "job" and e.stage == "finished"]
        assert finished[0].status == "failed" and finished[0].exit_code == 3


async def test_cancel_stops_the_process_group_and_is_audited(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        ack = await tb.exec("/run hang", as_="bob")
        job = ack.split("running as job ")[1].split()[0]
        pid = await pid_in(scripts.dir / "hang.pid")
        denied = await tb.exec(f"/cancel {job}", as_="dave")
        assert denied.startswith("⛔")
        cancelled = await tb.exec(f"/cancel {job}", as_="alice")
        assert "cancelled" in cancelled
        assert not process_alive(pid)
        posted = await tb.posted("was cancelled by alice")
        assert f"(job {job})" in posted
        finished = [e for e in await tb.audit() if e.kind == "job" and e.stage == "finished"]
        assert finished[0].status == "cancelled" and "cancelled by alice" in finished[0].detail
        cancel_cmd = [e for e in await tb.commands_audited() if e.command == "cancel"]
        assert [e.status for e in cancel_cmd] == ["denied", "ok"]


async def test_shutdown_cancels_running_jobs_after_the_grace(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        await tb.exec("/run hang", as_="bob")
        pid = await pid_in(scripts.dir / "hang.pid")
        await tb.bot.jobs.drain()
        assert not process_alive(pid)
        refused = await tb.exec("/run fail", as_="bob")
        assert "shutting down" in refused
        finished = [e for e in await tb.audit() if e.kind == "job" and e.stage == "finished"]
        assert [(e.status, "shutdown" in e.detail) for e in finished] == [("cancelled", True)]


async def test_redelivered_event_runs_the_action_once(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        tb_bot = tb.bot
        message = Message(
            location=Location(platform="console", channel_id="ops"),
            user_id="bob",
            text="/run slow-deploy v4.2",
            event_id="Ev0RETRIED",
            received_at=datetime.now(UTC),
            addressed=True,
        )
        first, second = await asyncio.gather(tb_bot.handle(message), tb_bot.handle(message))
        replies = [r for r in (first, second) if r is not None]
        assert len(replies) == 1
        await tb.posted("finished in")
        assert scripts.runs() == ["v4.2"]
        third = await tb_bot.handle(message)  # a late retry, after the job ended
        assert third is None
        assert scripts.runs() == ["v4.2"]
        statuses = [e.status for e in await tb.commands_audited() if e.command == "run"]
        assert sorted(statuses) == ["duplicate", "duplicate", "ok"]


async def test_sigterm_with_a_job_running_cancels_it_and_records_it(
    scripts: Scripts, tmp_path: Path
) -> None:
    """The real `opsbot console` process: SIGTERM lets the job run out its grace (0.5 s),
    then kills its process group and records it as cancelled before exiting. The command
    was still waiting for its answer (ack_after): the person sees it, then the result."""
    text = actions_config(scripts).replace("[http]\nport = 0", "[http]\nenabled = false")
    text = text.replace('name = "opsbot"', f'name = "opsbot"\ndata_dir = "{tmp_path / "data"}"', 1)
    config = tmp_path / "opsbot.toml"
    config.write_text(text + '\n[console]\nprincipal = "bob"\n')
    proc = await spawn_console(config, stdout=asyncio.subprocess.PIPE)
    pidfile = scripts.dir / "hang.pid"
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"/run hang\n")
        await proc.stdin.drain()
        pid = await pid_in(pidfile)
        assert process_alive(pid)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert not process_alive(pid)
    printed = out.decode()
    assert "hang is running as job" in printed
    assert printed.index("is running as job") < printed.index("was cancelled by shutdown")
    with sqlite3.connect(tmp_path / "data" / "audit.db") as db:
        rows = db.execute(
            "SELECT stage, status, detail FROM audit_log WHERE kind = 'job' ORDER BY seq"
        ).fetchall()
    assert [(stage, status) for stage, status, _ in rows] == [
        ("started", "started"),
        ("finished", "cancelled"),
    ]
    assert "cancelled by shutdown" in rows[1][2]


async def test_approvals_lists_what_waits_and_forgets_what_was_decided(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        assert "No approval requests are waiting" in await tb.exec("/approvals", as_="bob")
        first = approval_id(await tb.exec("/rollback v1.1", as_="dave"))
        second = approval_id(await tb.exec("/rollback v1.2", as_="alice"))
        listing = await tb.exec("/approvals", as_="carol")
        assert "2 approval request(s) waiting" in listing
        assert first in listing and "rollback tag=v1.1" in listing and "dave" in listing
        assert second in listing
        await tb.exec(f"/deny {first}", as_="bob")
        after = await tb.exec("/approvals", as_="carol")
        assert first not in after and second in after
        unknown = await tb.exec("/approve zzzzzz", as_="bob")
        assert "no approval request 'zzzzzz'" in unknown


async def test_a_job_over_its_timeout_is_killed_and_reported(scripts: Scripts) -> None:
    config = actions_config(scripts).replace('timeout = "30s"', 'timeout = "1s"')
    async with running_bot(config) as tb:
        ack = await tb.exec("/run hang", as_="bob")
        job = ack.split("running as job ")[1].split()[0]
        pid = await pid_in(scripts.dir / "hang.pid")
        result = await tb.posted("timed out")
        assert f"(job {job})" in result and "its processes were killed" in result
        assert "tick" in result  # the last output is shown
        assert not process_alive(pid)
        finished = [e for e in await tb.audit() if e.kind == "job" and e.stage == "finished"]
        assert finished[0].status == "timeout" and finished[0].exit_code is None


async def test_the_requester_may_withdraw_but_never_approve(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        request = approval_id(await tb.exec("/rollback v1.8", as_="dave"))
        withdrawn = await tb.exec(f"/deny {request} wrong tag", as_="dave")
        assert "denied by dave" in withdrawn
        assert "already denied by dave" in await tb.exec(f"/approve {request}", as_="bob")
        assert scripts.runs() == []


async def test_configured_secrets_are_masked_in_job_output_and_audit(
    scripts: Scripts, tmp_path: Path
) -> None:
    leak = tmp_path / "leak.sh"
    leak.write_text('#!/bin/sh\necho "redis password: $QPASS"\necho "url $QURL"\n')
    leak.chmod(0o755)
    extra = f"""
[[queues]]
name = "billing"
redis_url = "redis://:qpass-5f3a9e@127.0.0.1:1/0"
stream = "billing:jobs"

[[actions]]
name = "leak"
argv = ["{leak}"]
env = {{ QPASS = "qpass-5f3a9e", QURL = "redis://default:other-77aa@10.0.0.1:6379" }}
risk = "write"
roles = ["oncall"]
"""
    async with running_bot(actions_config(scripts, extra)) as tb:
        reply = await tb.exec("/run leak", as_="bob")
        assert "finished" in reply
        assert "qpass-5f3a9e" not in reply and "other-77aa" not in reply
        assert "redis password: ***" in reply and "redis://default:***@10.0.0.1" in reply
        for entry in await tb.audit():
            assert "qpass-5f3a9e" not in repr(entry) and "other-77aa" not in repr(entry)


async def test_run_alone_lists_the_actions_you_may_run(scripts: Scripts) -> None:
    async with running_bot(actions_config(scripts)) as tb:
        bobs = await tb.exec("/run", as_="bob")
        assert "/run rollback <tag>" in bobs and "needs approval" in bobs
        assert "/run hang" in bobs and "/run fail" in bobs
        daves = await tb.exec("/run", as_="dave")  # deployer: rollback and slow-deploy only
        assert "/run slow-deploy <tag>" in daves and "/run hang" not in daves


async def test_with_its_redis_down_a_replica_starts_no_job_and_says_why(
    scripts: Scripts, tmp_path: Path
) -> None:
    # With Redis configured, other replicas may be running the same action: if they
    # cannot be asked, nothing starts.
    config = actions_config(scripts) + STATE_REDIS_DOWN
    async with running_bot(config) as tb:
        reply = await tb.exec("/run hang", as_="bob")
        assert reply.startswith("❌"), reply
        assert "hang was not started: opsbot cannot reach its Redis" in reply
        assert len(reply.splitlines()) == 1
        assert not (scripts.dir / "hang.pid").exists()
        run = [e for e in await tb.commands_audited() if e.command == "run"]
        assert run[0].status == "error" and "was not started" in (run[0].error or "")
        assert [e for e in await tb.audit() if e.kind == "job"] == []
        listing = await tb.exec("/jobs", as_="bob")
        assert "Other replicas' jobs are not shown: opsbot cannot reach its Redis" in listing
        unknown = await tb.exec("/cancel jzzzz", as_="bob")
        assert "no job 'jzzzz' on this replica, and the others cannot be asked" in unknown
        assert "You are bob" in await tb.exec("/whoami", as_="bob")  # still serving


async def test_with_its_redis_down_a_replica_keeps_the_policy_strict(
    scripts: Scripts, tmp_path: Path
) -> None:
    # The mode every replica shares lives in Redis: unreadable means strict, and a switch
    # that could not reach every replica is refused.
    config = actions_config(scripts) + STATE_REDIS_DOWN
    async with running_bot(config) as tb:
        refused = await tb.exec("/policy off 10m migration", as_="alice")
        assert "policy stays strict: opsbot cannot reach its Redis" in refused
        shown = await tb.exec("/policy", as_="bob")
        assert "Policy mode STRICT" in shown and "Redis unreachable" in shown
        assert "(request " in await tb.exec("/rollback v1.8", as_="dave")  # approval needed
        assert [e for e in await tb.audit() if e.kind == "policy"] == []
