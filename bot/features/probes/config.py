"""Config of the probes feature: the services /health and /version ask."""

from __future__ import annotations

import enum
from datetime import timedelta

from bot.kernel.settings import Duration, HttpUrl, Name, Strict


class ResponseShape(enum.StrEnum):
    AUTO = "auto"
    HTTP = "http"
    JSON = "json"


class Service(Strict):
    name: Name
    health_url: HttpUrl
    version_url: HttpUrl | None = None
    timeout: Duration = timedelta(seconds=3)
    shape: ResponseShape = ResponseShape.AUTO
