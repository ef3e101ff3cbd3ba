"""Telling a conversation that a silence made there ran out: the people who muted an alert
at 3 a.m. learn when it can page them again, and what it would page about now.

A scheduled job (the leader's, every :data:`EVERY`); each end is told once whatever the
number of replicas (:meth:`Silences.take_ended` marks it told in the database first).
"""

from __future__ import annotations

from datetime import timedelta

import structlog

from bot.delivery.outbox import Outbox
from bot.features.alerts.board import AlertBoard
from bot.features.alerts.silences import Silence, Silences
from bot.kernel.reply import Field, Reply, Status

log = structlog.get_logger("opsbot.silences")

JOB_NAME = "silence-ends"
EVERY = timedelta(seconds=20)


class SilenceEnds:
    def __init__(self, silences: Silences, alerts: AlertBoard, outbox: Outbox) -> None:
        self._silences = silences
        self._alerts = alerts
        self._outbox = outbox

    async def tell(self) -> None:
        ended = await self._silences.take_ended()
        if not ended:
            return
        firing = await self._alerts.firing()
        for silence in ended:
            assert silence.notify is not None  # take_ended returns only those
            matching = [a for a in firing if silence.matches(a.labels)]
            if not await self._outbox.post(silence.notify, _notice(silence, len(matching))):
                log.error("silences.end_not_told", silence=silence.id)
                continue
            log.info("silences.end_told", silence=silence.id, firing=len(matching))


def _notice(silence: Silence, firing: int) -> Reply:
    now_firing = (
        f"{firing} alert(s) it muted are firing: they are posted again when next sent"
        if firing
        else "none of the alerts it muted is firing now"
    )
    fields = [Field("matchers", silence.matchers_text), Field("made by", silence.created_by)]
    if silence.reason:
        fields.append(Field("reason", silence.reason))
    return Reply(
        title=f"🔔 Silence {silence.id} ended at {silence.ends_at:%Y-%m-%d %H:%M} UTC",
        status=Status.WARNING if firing else Status.INFO,
        text=now_firing + ".",
        fields=tuple(fields),
    )
