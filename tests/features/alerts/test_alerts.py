"""Inbound alerts over real HTTP: Alertmanager's webhook and the generic format, routed to
console channels; dedup, grouping, resolution; refusals (400, 401, 413, 503); /alerts and
/ack in chat, the ack audited."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app.cli import EXIT_CONFIG, main
from bot.app.config import parse_config
from bot.kernel.render import render_text
from commands import COMMANDS
from tests.botharness import BASE_CONFIG, TestBot, running_bot

TOKEN = "s3cret-alerts-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

ALERTS = f"""
[alerts]
token = "{TOKEN}"
max_body_bytes = 2048
default_channels = ["ops"]

[[alerts.routes]]
matchers = {{ severity = "critical" }}
channels = ["incident"]

[policy.commands.alerts]
roles = ["oncall"]
[policy.commands.ack]
roles = ["oncall"]
"""


def am_alert(
    name: str,
    *,
    status: str = "firing",
    severity: str = "warning",
    fp: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": f"{name} is bad"},
        "startsAt": "2026-11-23T02:55:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fp or f"fp-{name}",
    }


def webhook(*alerts: dict[str, Any], group: str = '{}:{alertname="X"}') -> dict[str, Any]:
    statuses = {a["status"] for a in alerts}
    label_sets = [a["labels"] for a in alerts]
    common = {k: v for k, v in label_sets[0].items() if all(s.get(k) == v for s in label_sets[1:])}
    return {
        "version": "4",
        "groupKey": group,
        "truncatedAlerts": 0,
        "status": "firing" if "firing" in statuses else "resolved",
        "receiver": "opsbot",
        "groupLabels": {},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


@contextlib.asynccontextmanager
async def alerting_bot(
    config: str = BASE_CONFIG + ALERTS,
) -> AsyncIterator[tuple[TestBot, httpx.AsyncClient]]:
    async with running_bot(config, serve_http=True) as tb:
        assert tb.bot.http_server is not None
        base = f"http://127.0.0.1:{tb.bot.http_server.bound_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            yield tb, client


async def settled(tb: TestBot) -> list[tuple[str, str]]:
    """(channel, rendered text) of everything posted, once the inbox and the outbox are
    empty."""
    await tb.bot.alert_intake.drained()
    assert await tb.bot.outbox.drain(5.0)
    return [(d.channel_id, render_text(r)) for d, r in tb.console.posted]


async def test_firing_alert_is_posted_to_the_routed_channel_once() -> None:
    async with alerting_bot() as (tb, client):
        critical = webhook(am_alert("DiskFull", severity="critical"), group="g-disk")
        warning = webhook(am_alert("HighLatency", service="api"), group="g-lat")
        first = await client.post("/alerts/alertmanager", json=critical, headers=AUTH)
        assert (first.status_code, first.json()) == (202, {"accepted": 1})
        await tb.posted("DiskFull")
        assert (
            await client.post("/alerts/alertmanager", json=warning, headers=AUTH)
        ).status_code == 202
        await tb.posted("HighLatency")
        # Alertmanager re-sends the group: accepted, not posted again.
        again = await client.post("/alerts/alertmanager", json=critical, headers=AUTH)
        assert (again.status_code, again.json()) == (202, {"accepted": 1})
        posted = await settled(tb)
    assert len(posted) == 2, posted
    (disk_channel, disk), (lat_channel, lat) = posted
    assert disk_channel == "incident"
    assert disk.startswith("❌ FIRING (1): DiskFull")
    assert "[critical] DiskFull: DiskFull is bad (id " in disk
    assert lat_channel == "ops"
    assert lat.startswith("⚠️ FIRING (1): HighLatency")
    assert "service=api" in lat


async def test_grouped_alerts_are_one_message_and_resolution_is_posted() -> None:
    async with alerting_bot() as (tb, client):
        a = am_alert("PodCrash", pod="web-1", fp="fa")
        b = am_alert("PodCrash", pod="web-2", fp="fb")
        await client.post("/alerts/alertmanager", json=webhook(a, b, group="g1"), headers=AUTH)
        await tb.posted("FIRING (2)")
        listing = await tb.exec("/alerts", as_="bob")
        resolved_a = {**a, "status": "resolved"}
        reply = await client.post(
            "/alerts/alertmanager", json=webhook(resolved_a, b, group="g1"), headers=AUTH
        )
        assert reply.status_code == 202
        resolved = await tb.posted("RESOLVED (1)")
        after = await tb.exec("/alerts", as_="bob")
        posted = await settled(tb)
    assert len(posted) == 2, posted  # one grouped firing message, one resolution
    firing = posted[0][1]
    assert firing.count("• [warning] PodCrash") == 2
    assert "2 alert(s) firing, 0 acknowledged" in listing
    assert resolved.startswith("✅ RESOLVED (1): PodCrash")
    assert "still firing: PodCrash" in resolved
    assert "1 alert(s) firing" in after


async def test_ack_marks_the_alert_and_is_audited() -> None:
    async with alerting_bot() as (tb, client):
        await client.post(
            "/alerts/alertmanager", json=webhook(am_alert("DiskFull"), group="g"), headers=AUTH
        )
        await tb.posted("DiskFull")
        alert = (await tb.bot.alert_board.firing())[0]
        assert "/ack" in await tb.exec("/alerts", as_="bob")
        denied = await tb.exec(f"/ack {alert.id}", as_="carol")
        acked = await tb.exec(f"/ack {alert.id}", as_="bob")
        twice = await tb.exec(f"/ack {alert.id}", as_="alice")
        unknown = await tb.exec("/ack zzzzzz", as_="bob")
        listing = await tb.exec("/alerts", as_="bob")
        entries = [e for e in await tb.audit() if e.kind == "alert"]
    assert denied.startswith("⛔")
    assert f"Alert {alert.id} (DiskFull) acknowledged by bob" in acked
    assert "already acknowledged by bob" in twice
    assert "no firing alert 'zzzzzz'" in unknown
    assert "1 alert(s) firing, 1 acknowledged" in listing
    row = next(line for line in listing.splitlines() if line.startswith(alert.id))
    assert row.split()[1:3] == ["DiskFull", "warning"] and row.split()[-2:] == ["bob", "-"]
    assert len(entries) == 1
    assert (entries[0].principal, entries[0].status, entries[0].args["alert"]) == (
        "bob",
        "acked",
        alert.id,
    )


async def test_generic_format() -> None:
    async with alerting_bot() as (tb, client):
        body = {
            "alerts": [
                {"name": "BackupFailed", "severity": "critical", "summary": "nightly backup"},
                {
                    "name": "CertExpiry",
                    "summary": "cert expires in 5 days",
                    "labels": {"host": "a"},
                },
            ]
        }
        reply = await client.post("/alerts", json=body, headers=AUTH)
        assert (reply.status_code, reply.json()) == (202, {"accepted": 2})
        await tb.posted("BackupFailed")
        await tb.posted("CertExpiry")
        again = await client.post("/alerts", json=body, headers=AUTH)
        assert again.status_code == 202
        done = {"alerts": [{"name": "BackupFailed", "severity": "critical", "status": "resolved"}]}
        assert (await client.post("/alerts", json=done, headers=AUTH)).status_code == 202
        await tb.posted("RESOLVED (1): BackupFailed")
        posted = await settled(tb)
        listing = await tb.exec("/alerts", as_="bob")
    channels = [(channel, text.splitlines()[0]) for channel, text in posted]
    assert channels == [
        ("incident", "❌ FIRING (1): BackupFailed"),
        ("ops", "⚠️ FIRING (1): CertExpiry"),
        ("incident", "✅ RESOLVED (1): BackupFailed"),
    ]
    assert "1 alert(s) firing" in listing and "CertExpiry" in listing


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (
            "/alerts/alertmanager",
            {**webhook(am_alert("X")), "alerts": [{"status": "firing"}]},
            "alerts[0].labels: field required",
        ),
        ("/alerts/alertmanager", {"version": "4"}, "groupKey: field required"),
        ("/alerts", {"alerts": [{"name": "X", "status": "burning"}]}, "alerts[0].status:"),
        ("/alerts", [1, 2], "(body): "),
    ],
)
async def test_malformed_payload_is_400_naming_the_field(
    path: str, body: Any, expected: str
) -> None:
    async with alerting_bot() as (tb, client):
        reply = await client.post(path, json=body, headers=AUTH)
        not_json = await client.post(path, content=b"{nope", headers=AUTH)
        posted = await settled(tb)
    assert reply.status_code == 400
    assert reply.json()["error"].startswith(expected), reply.json()
    assert "\n" not in reply.json()["error"]
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    assert posted == []


async def test_unauthenticated_and_oversized_are_refused() -> None:
    payload = webhook(am_alert("X"))
    async with alerting_bot() as (tb, client):
        none = await client.post("/alerts/alertmanager", json=payload)
        wrong = await client.post(
            "/alerts/alertmanager", json=payload, headers={"Authorization": "Bearer nope"}
        )
        basic = await client.post("/alerts", json={"alerts": []}, headers={"Authorization": TOKEN})
        big = {"alerts": [{"name": "X", "summary": "x" * 4000}]}
        oversized = await client.post("/alerts", json=big, headers=AUTH)

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for _ in range(10):
                yield b" " * 500

        streamed = await client.post("/alerts", content=chunks(), headers=AUTH)
        posted = await settled(tb)
    assert (none.status_code, wrong.status_code, basic.status_code) == (401, 401, 401)
    assert none.headers["www-authenticate"] == "Bearer"
    assert oversized.status_code == 413 and streamed.status_code == 413
    assert posted == []


async def test_without_a_token_the_endpoints_answer_503() -> None:
    config = BASE_CONFIG + ALERTS.replace(f'token = "{TOKEN}"\n', "")
    async with alerting_bot(config) as (_, client):
        am = await client.post("/alerts/alertmanager", json=webhook(am_alert("X")), headers=AUTH)
        generic = await client.post("/alerts", json={"alerts": []}, headers=AUTH)
    async with alerting_bot(BASE_CONFIG) as (_, client):
        absent = await client.post("/alerts", json={"alerts": []}, headers=AUTH)
    for reply in (am, generic, absent):
        assert (reply.status_code, reply.json()) == (503, {"error": "alerts are not configured"})


def test_unknown_alert_channels_are_reference_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "opsbot.toml"
    path.write_text(
        BASE_CONFIG
        + ALERTS.replace('["incident"]', '["incidnt"]').replace(
            'default_channels = ["ops"]', 'default_channels = ["opz"]'
        )
    )
    assert main(["check-config", str(path)]) == EXIT_CONFIG
    output = capsys.readouterr().err
    assert "alerts.routes[0].channels[0]: unknown channel 'incidnt'" in output
    assert "alerts.default_channels[0]: unknown channel 'opz'" in output


def test_token_comes_from_the_environment() -> None:
    env = {"OPSBOT_ALERTS_TOKEN": "from-env"}
    config = parse_config(BASE_CONFIG, "test", env, [c.name for c in COMMANDS])
    assert config.alerts is not None and config.alerts.token is not None
    assert config.alerts.token.get_secret_value() == "from-env"


async def test_a_silenced_alert_is_listed_but_neither_it_nor_its_resolution_is_posted() -> None:
    rules = '\n[policy.commands.silence]\nroles = ["oncall"]\n'
    async with alerting_bot(BASE_CONFIG + ALERTS + rules) as (tb, client):
        reply = await tb.exec('/silence alertname=~"Disk.*" env!=dev 2h disk swap', as_="bob")
        assert reply.startswith("✅"), reply
        disk = am_alert("DiskFull", env="prod", fp="f-disk")
        dev = am_alert("DiskSlow", env="dev", fp="f-dev")
        await client.post("/alerts/alertmanager", json=webhook(disk, dev, group="g"), headers=AUTH)
        await tb.posted("DiskSlow")
        listing = await tb.exec("/alerts", as_="bob")
        resolved = {**disk, "status": "resolved"}
        await client.post("/alerts/alertmanager", json=webhook(resolved, group="g"), headers=AUTH)
        posted = await settled(tb)
        metrics = tb.bot.metrics.render().decode()
    assert 'opsbot_alert_events_total{event="silenced",source="inbound",status="firing"} 1.0' in (
        metrics
    )
    assert 'opsbot_alert_events_total{event="posted",source="inbound",status="firing"} 1.0' in (
        metrics
    )
    assert len(posted) == 1, posted
    assert "DiskSlow" in posted[0][1] and "DiskFull" not in posted[0][1]
    assert "2 alert(s) firing, 0 acknowledged, 1 silenced" in listing
    row = next(line for line in listing.splitlines() if "DiskFull" in line)
    assert re.search(r"silenced \([a-z0-9]{6}\)$", row.rstrip()), row


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,  # nested deeper than any real payload
        b'{"alerts": [{"labels": {"n": ' + b"9" * 5000 + b"}}]}",  # a 5,000-digit number
        b'{"alerts": [{"labels": {"alertname": "\\ud800"}, "status": "firing"}]}',  # lone
        b'{"alerts": [{"labels": {"alertname": "\xff\xfe"}}]}',  # not UTF-8
    ],
    ids=["deep", "huge-number", "lone-surrogate", "not-utf8"],
)
async def test_a_malformed_body_with_a_valid_token_is_400_not_500(body: bytes) -> None:
    roomy = ALERTS.replace("max_body_bytes = 2048", "max_body_bytes = 65536")
    async with alerting_bot(BASE_CONFIG + roomy) as (tb, client):
        for path in ("/alerts/alertmanager", "/alerts"):
            reply = await client.post(path, content=body, headers=AUTH)
            assert reply.status_code == 400, (path, reply.text)
            assert reply.json()["error"].startswith("the body is not valid JSON: ")
        assert await settled(tb) == []
