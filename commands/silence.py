"""/silence <matchers...> <duration> [reason...]: mute the alerts whose labels match, for a
while (audited, kind "silence"); see docs/alerts.md#silences."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from pydantic import Field as ModelField

from bot.audit.trail import AuditTrail
from bot.features.alerts.board import AlertBoard
from bot.features.alerts.silences import Matcher, Silence, Silences
from bot.kernel.command import Args, CommandSpec, Request, Risk
from bot.kernel.durations import format_duration, parse_duration
from bot.kernel.errors import UsageError
from bot.kernel.info import BotInfo
from bot.kernel.reply import Field, Reply, Status
from bot.pipeline.parse import parse, split_words

USAGE = "/silence <label(=|!=|=~|!~)value>... <duration> [reason]"

log = structlog.get_logger("opsbot.silences")


class SilenceArgs(Args):
    # Only for binding; run() reads the words again as typed (see _typed_words).
    matchers: tuple[str, ...] = ModelField(
        default=(),
        description="matchers, duration, reason: alertname=DiskFull severity=~crit.* 2h swap",
    )
    named: dict[str, str | bool] | str | bool = ModelField(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SilenceDeps:
    """The silences, the alerts they would mute, the audit trail, the bot's name."""

    silences: Silences
    alerts: AlertBoard
    audit: AuditTrail
    info: BotInfo


async def run(request: Request, _: SilenceArgs, deps: SilenceDeps) -> Reply:
    matchers, length, reason = _read(_typed_words(request, deps))
    try:
        silence = await deps.silences.draft(
            matchers, duration=length, reason=reason, created_by=request.principal.name
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
        text=f"/unsilence {silence.id} ends it early; /silences lists them.",
        fields=tuple(fields),
    )


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
    if not rest:
        raise UsageError("give a duration after the matchers, e.g. 2h", USAGE)
    try:
        length = parse_duration(rest.pop(0))
    except ValueError as exc:
        raise UsageError(str(exc), USAGE) from exc
    return matchers, length, " ".join(rest)


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
