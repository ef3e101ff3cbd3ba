"""Floods leave one audit entry per sender per window, with a count, not one per message.

A stranger, or a script gone wrong, can send messages as fast as they can type; each one
turned away (throttled silently, or from a sender the config does not know) would
otherwise be an audit row, so the database would grow as fast as they type. The first
message of a window is recorded as any other; the ones after it within ``window`` seconds
are only counted, and their count is recorded as one entry when the window closes (the
sender's next recorded message, a later message from anyone after the window, eviction,
or the bot stopping).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from msgspec import Struct

from bot.kernel.message import Location

WINDOW_S = 60.0
_MAX_SENDERS = 10_000  # senders being counted at once; the oldest window closes first


class Quieted(Struct):
    """Messages of one sender, of one kind, counted instead of recorded."""

    sender: str  # platform:user id
    kind: str  # the status they would have been recorded with: "throttled" or "denied"
    location: Location  # where the first of them came from
    user_id: str
    opened: float  # monotonic time the window opened
    first_at: datetime | None = None  # the first counted message
    last_at: datetime | None = None
    count: int = 0


class QuietLedger:
    def __init__(self, window_s: float = WINDOW_S, max_senders: int = _MAX_SENDERS) -> None:
        self._window = window_s
        self._max = max_senders
        self._open: OrderedDict[tuple[str, str], Quieted] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._open)

    def count_or_open(
        self, kind: str, sender: str, location: Location, user_id: str, at: datetime, now: float
    ) -> tuple[bool, list[Quieted]]:
        """(whether this message is only counted, windows now closed and to be recorded)."""
        closed = self.expired(now)
        key = (sender, kind)
        window = self._open.get(key)
        if window is not None and now - window.opened < self._window:
            window.count += 1
            window.first_at = window.first_at or at
            window.last_at = at
            return True, closed
        if window is not None:
            del self._open[key]
            if window.count:
                closed.append(window)
        self._open[key] = Quieted(sender, kind, location, user_id, now)
        while len(self._open) > self._max:
            _, evicted = self._open.popitem(last=False)
            if evicted.count:
                closed.append(evicted)
        return False, closed

    def expired(self, now: float) -> list[Quieted]:
        """Windows older than ``window`` (removed): those with a count are returned."""
        closed: list[Quieted] = []
        while self._open:
            key, window = next(iter(self._open.items()))
            if now - window.opened < self._window:
                break
            del self._open[key]
            if window.count:
                closed.append(window)
        return closed

    def close_all(self) -> list[Quieted]:
        closed = [w for w in self._open.values() if w.count]
        self._open.clear()
        return closed
