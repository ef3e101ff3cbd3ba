"""PTB's AIORateLimiter, with the outbox's lease checked before every request it sends.

The limiter sleeps out a 429 (``RetryAfter``) and sends again by itself, and holds every
other request while it sleeps. A replica frozen during that sleep must not send, on
waking, a message another replica has taken over and posted: so each attempt, the first
and each retry, calls :func:`~bot.kernel.adapter.check_post_attempt` right before the
request goes out (a no-op for anything but an outbox delivery, e.g. an answer to a command).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from telegram._utils.types import JSONDict
from telegram.ext import AIORateLimiter

from bot.kernel.adapter import check_post_attempt


class LeaseCheckingRateLimiter(AIORateLimiter):
    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | JSONDict | list[JSONDict]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> bool | JSONDict | list[JSONDict]:
        async def attempt(*a: Any, **kw: Any) -> bool | JSONDict | list[JSONDict]:
            check_post_attempt()
            return await callback(*a, **kw)

        return await super().process_request(attempt, args, kwargs, endpoint, data, rate_limit_args)
