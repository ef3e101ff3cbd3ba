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
    """The request object python-telegram-bot uses for getUpdates only."""

    def __init__(self) -> None:
        super().__init__(connection_pool_size=1)  # what Application.builder() gives getUpdates
        self.failing = False

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        try:
            code, payload = await super().do_request(*args, **kwargs)
        except Exception:
            self.failing = True
            raise
        self.failing = code != HTTPStatus.OK
        return code, payload
