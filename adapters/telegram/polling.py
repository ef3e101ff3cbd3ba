"""getUpdates on a connection of its own, which tells the adapter whether the last poll
got through.

python-telegram-bot retries a failing getUpdates by itself, with back-off, and its updater
keeps running meanwhile: without this, an adapter cut off from the Bot API looked
connected to /ready, /status and ``opsbot_adapter_connected``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from telegram.request import HTTPXRequest


class PollRequest(HTTPXRequest):
    """The request object python-telegram-bot uses for getUpdates only. ``failure``: why
    the last getUpdates failed (it may hold the token: scrub it), None once one succeeds."""

    def __init__(self) -> None:
        super().__init__(connection_pool_size=1)  # what Application.builder() gives getUpdates
        self.failure: str | None = None

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        try:
            code, payload = await super().do_request(*args, **kwargs)
        except Exception as exc:  # PTB's NetworkError or TimedOut, raised again as it is
            self.failure = str(exc) or type(exc).__name__
            raise
        self.failure = None if code == HTTPStatus.OK else _http_failure(code)
        return code, payload


def _http_failure(code: int) -> str:
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"
