"""Per-person flood protection: a leaky bucket per platform user id.

A person who sends far more commands than a human could gets one notice, then
silence until the bucket drains; everyone else is unaffected.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

from aiolimiter import AsyncLimiter

# Unknown senders get buckets too, so the table must not grow without bound.
_MAX_TRACKED = 10_000


class Admission(enum.Enum):
    ADMIT = "admit"
    THROTTLE_WITH_NOTICE = "throttle-with-notice"
    THROTTLE_SILENTLY = "throttle-silently"


class FloodGuard:
    def __init__(self, max_commands: int, per_seconds: float) -> None:
        self._max = max_commands
        self._per = per_seconds
        self._buckets: OrderedDict[str, AsyncLimiter] = OrderedDict()
        self._noticed: set[str] = set()

    async def admit(self, sender: str) -> Admission:
        bucket = self._buckets.get(sender)
        if bucket is None:
            bucket = self._buckets[sender] = AsyncLimiter(self._max, self._per)
            if len(self._buckets) > _MAX_TRACKED:
                evicted, _ = self._buckets.popitem(last=False)
                self._noticed.discard(evicted)
        else:
            self._buckets.move_to_end(sender)
        if bucket.has_capacity():
            # has_capacity() just said yes, so acquire() returns without waiting.
            await bucket.acquire()
            self._noticed.discard(sender)
            return Admission.ADMIT
        if sender in self._noticed:
            return Admission.THROTTLE_SILENTLY
        self._noticed.add(sender)
        return Admission.THROTTLE_WITH_NOTICE

    @property
    def window_seconds(self) -> float:
        """Time for the whole budget to come back."""
        return self._per

    @property
    def refill_seconds(self) -> float:
        """Time for one command's worth of budget to come back."""
        return self._per / self._max
