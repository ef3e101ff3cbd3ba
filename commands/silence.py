"""/silence <matchers...> <duration> [reason...]: mute the alerts whose labels match, for a
while (audited, kind "silence"); see docs/alerts.md#silences."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta

import structlog
from msgspec import Struct
from pydantic import Field as ModelField

from bot.audit.trail import AuditTrail
from bot.features.alerts.board import AlertBoard
from bot.features.alerts.silences import MAX_MATCHERS, Matcher, MatcherError, Silence, Silences
from bot.kernel.clock import Clock
from bot.kernel.command import Args, CommandSpec, Request, Risk
from bot.kernel.durations import format_duration, parse_duration
from bot.kernel.errors import UsageError
from bot.kernel.info import BotInfo
from bot.kernel.reply import Field, Reply, Status
from bot.pipeline.parse import parse, split_words

USAGE = (
    "/silence <label(=|!=|=~|!~)value>... <duration> [reason] | "
    "/silence <alert id> <duration> [reason] | /silence group:<alert id> <duration> [reason]"
)
GROUP_PREFIX = "group:"
# An alert's id as /alerts and the alert messages show it (short_id of its fingerprint).
_ALERT_ID = re.compile(r"[0-9a-f]{6}")

log = structlog.get_logger("opsbot.silences")


class SilenceArgs(Args):
    # Only for binding; run() reads the words again as typed (see _typed_words).
    matchers: tuple[str, ...] = ModelField(
        default=(),
        description="matchers, duration, reason: alertname=DiskFull severity=~crit.* 2h swap",
    )
    named: dict[str, str | bool] | str | bool = ModelField(default_factory=dict)


class SilenceDeps(Struct, frozen=True):
    """The silences, the alerts they would mute, the audit trail, the bot's name, the
    clock (is a silence already in force long enough?)."""

    silences: Silences
    alerts: AlertBoard
    audit: AuditTrail
    info: BotInfo
    clock: Clock


async def run(request: Request, _: SilenceArgs, deps: SilenceDeps) -> Reply:
    words = _typed_words(request, deps)
    scoped = await _alert_scope(words[0], deps) if words else None
    if scoped is None:
        matchers, length, reason = _read(words)
    else:
        matchers = scoped
        length, reason = _duration_and_reason(words[1:])
        muting = await deps.silences.muting(_labels_of(matchers))
        if muting is not None and muting.ends_at >= deps.clock.now() + length:
            # A second press of the same button: nothing to add, nothing others need read.
            return Reply(
                title=f"Already silenced by {muting.created_by} until "
                f"{muting.ends_at:%Y-%m-%d %H:%M} UTC (silence {muting.id})",
                status=Status.INFO,
                private=True,
            )
    try:
        silence = await deps.silences.draft(
            matchers,
            duration=length,
            reason=reason,
            created_by=request.principal.name,
            notify=request.message.location,
        )
    except ValueError as exc:
        raise UsageError(str(exc), USAGE) from exc
    # Recorded before it takes effect, like /heartbeat pause: a silence loosens the watch.
    # Matchers and reason are free text: redacted like the command's own entry.
    redactor = deps.audit.redactor
    await deps.audit.record_event(
        request,
        kind="silence",
        command="silence",
        args=redactor.value(
            {
                "silence": silence.id,
                "matchers": silence.matchers_text,
                "duration": format_duration(length),
                "reason": silence.reason,
            }
        ),
        status="created",
        detail=redactor.text(
            f"silence {silence.id} ({silence.matchers_text}) until {silence.ends_at.isoformat()}"
        ),
    )
    await deps.silences.create(silence)
    muted = await _muted_now(deps, silence)
    fields = [
        Field("matchers", silence.matchers_text),
        Field("until", _until(silence.ends_at, silence.created_at)),
        Field("mutes now", "unknown" if muted is None else f"{muted} firing alert(s)"),
    ]
    if silence.reason:
        fields.append(Field("reason", silence.reason))
    return Reply(
        title=f"Silence {silence.id} created by {silence.created_by}",
        status=Status.OK,
        text=f"/unsilence {silence.id} ends it early; /silences lists them. "
        "This conversation is told when it ends.",
        fields=tuple(fields),
        outcome=f"🔕 silenced by {silence.created_by} until "
        f"{silence.ends_at:%Y-%m-%d %H:%M} UTC (silence {silence.id})",
    )


async def _alert_scope(first: str, deps: SilenceDeps) -> list[Matcher] | None:
    """``<alert id>``: matchers for exactly that alert (every label of it, as
    Alertmanager's "silence this alert" does); ``group:<alert id>``: for its group (the
    labels its group's firing alerts share). None when ``first`` is a matcher."""
    whole_group = first.startswith(GROUP_PREFIX)
    alert_id = first.removeprefix(GROUP_PREFIX).lower()
    if not _ALERT_ID.fullmatch(alert_id):
        if whole_group:
            raise UsageError(f"'{alert_id}' is not an alert id; /alerts lists them", USAGE)
        return None
    alert = await deps.alerts.find(alert_id)
    if alert is None:
        raise UsageError(f"no firing alert '{alert_id}'; it resolved, or /alerts lists them")
    labels: Mapping[str, str] = alert.labels
    if whole_group:
        members = await deps.alerts.in_group(alert.group_key) or [alert]
        labels = {
            k: v for k, v in alert.labels.items() if all(m.labels.get(k) == v for m in members)
        }
    matchers = _equal_matchers(labels)
    if not matchers:
        raise UsageError(f"the alerts of group {alert.id} share no label to silence them by")
    return matchers


def _equal_matchers(labels: Mapping[str, str]) -> list[Matcher]:
    """``label=value`` for each label, alertname first; labels that cannot be a matcher
    (not a label name: a generic sender's) are left out, and at most MAX_MATCHERS."""
    ordered = sorted(labels.items(), key=lambda kv: (kv[0] != "alertname", kv[0]))
    matchers: list[Matcher] = []
    for name, value in ordered:
        try:
            matchers.append(Matcher(name, "=", value))
        except MatcherError:
            continue
        if len(matchers) == MAX_MATCHERS:
            break
    return matchers


def _labels_of(matchers: list[Matcher]) -> dict[str, str]:
    return {m.name: m.value for m in matchers}


def _typed_words(request: Request, deps: SilenceDeps) -> list[str]:
    """The arguments as typed. The parser reads ``label=value`` as an option, which would
    lose the case of label names and the order of the words, and takes backslashes as
    escapes, which would spoil regexes: so the message text is split again here."""
    parsed = parse(
        request.message.text,
        bot_names=frozenset({deps.info.name}),
        addressed=request.message.addressed,
    )
    if parsed is None:  # cannot happen: the pipeline parsed the same text to get here
        return []
    try:
        return split_words(parsed.raw_args, backslash_escapes=False)
    except UsageError as exc:
        raise UsageError(exc.reason, USAGE) from exc


def _read(words: list[str]) -> tuple[list[Matcher], timedelta, str]:
    """Leading words with an operator are matchers, the next word is the duration, the
    rest is the reason."""
    matchers: list[Matcher] = []
    rest = list(words)
    while rest and ("=" in rest[0] or "!~" in rest[0]):
        try:
            matchers.append(Matcher.parse(rest.pop(0)))
        except ValueError as exc:
            raise UsageError(str(exc), USAGE) from exc
    if not matchers:
        raise UsageError("a silence needs at least one matcher, e.g. alertname=DiskFull", USAGE)
    length, reason = _duration_and_reason(rest)
    return matchers, length, reason


def _duration_and_reason(rest: list[str]) -> tuple[timedelta, str]:
    if not rest:
        raise UsageError("give a duration after the matchers, e.g. 2h", USAGE)
    try:
        length = parse_duration(rest[0])
    except ValueError as exc:
        raise UsageError(str(exc), USAGE) from exc
    return length, " ".join(rest[1:])


async def _muted_now(deps: SilenceDeps, silence: Silence) -> int | None:
    """How many of the alerts firing now the silence mutes; None if that cannot be told."""
    try:
        firing = await deps.alerts.firing()
    except Exception:
        log.exception("silences.firing_unknown", silence=silence.id)
        return None
    return sum(1 for alert in firing if silence.matches(alert.labels))


def _until(moment: datetime, now: datetime) -> str:
    """``2026-11-23 05:00 UTC (in 2h)``."""
    left = moment - now
    # Whole minutes past 90 s: "in 1h 59m" right after "2h" reads like a bug.
    seconds = left.total_seconds()
    rounded = timedelta(minutes=round(seconds / 60)) if seconds > 90 else left
    return f"{moment:%Y-%m-%d %H:%M} UTC (in {format_duration(rounded)})"


SPEC = CommandSpec(
    name="silence",
    summary="Mute the alerts matching label matchers for a while",
    usage=USAGE,
    args_model=SilenceArgs,
    run=run,
    needs=SilenceDeps,
    rest_words="matchers",
    extra_options="named",
    risk=Risk.WRITE,
)
