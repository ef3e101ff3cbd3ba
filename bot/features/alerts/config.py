"""Config for inbound alerts: ``[alerts]``, the HTTP endpoints Prometheus Alertmanager (and
anything that speaks the small generic format of docs/alerts.md) posts alerts to.

Kept apart from ``models.py`` like ``heartbeat.py``; ``Config`` includes it. Channel names
are checked against ``[channels.*]`` in ``references.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bot.kernel.settings import Duration, Name

DEFAULT_MAX_BODY_BYTES = 256 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class AlertRoute(Strict):
    """Alerts whose labels carry every ``matchers`` label with exactly that value go to
    ``channels``. Routes are tried in order; the first match wins."""

    matchers: Annotated[dict[str, str], Field(min_length=1)]
    channels: Annotated[list[Name], Field(min_length=1)]


class AlertsSection(Strict):
    # Senders present it as "Authorization: Bearer <token>". None (and no
    # OPSBOT_ALERTS_TOKEN): the endpoints answer 503 "alerts are not configured".
    token: SecretStr | None = None
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=16 * 1024 * 1024)
    # The same alert (fingerprint) with the same status within this window is not posted
    # again: Alertmanager re-sends a group's alerts with every notification.
    dedup_window: Duration = timedelta(minutes=5)
    routes: list[AlertRoute] = []
    # Bounds for a storm (each hit is a clear HTTP answer and opsbot_alert_limits_total):
    # alerts in one delivery (413), deliveries waiting to be processed (429), alerts kept
    # on the board (the oldest are dropped).
    max_alerts_per_payload: int = Field(default=1000, ge=1, le=100_000)
    max_queued_payloads: int = Field(default=1000, ge=1, le=100_000)
    max_board_alerts: int = Field(default=10_000, ge=10, le=1_000_000)
    # Where alerts no route matches go.
    default_channels: list[Name] = []
