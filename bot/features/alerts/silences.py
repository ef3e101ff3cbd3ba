"""Silences, as in Prometheus Alertmanager: label matchers and an end time; a firing alert
whose labels satisfy every matcher of an active silence is not posted.

Matchers use Alertmanager's operators and semantics: ``=`` and ``!=`` compare exactly,
``=~`` and ``!~`` are regular expressions that must match the whole value, and a label
the alert lacks counts as the empty string. A silence needs at least one matcher that
does not match the empty string, so one silence can never mute every alert.

Silences live in the state database (``silences``), so every replica sees the same ones.
:class:`Silences` keeps the active ones in memory for the alert path, re-read at most
every :data:`REFRESH_S` seconds (at once after this replica changes one), so checking an
alert costs no query while another replica's ``/silence`` takes effect within seconds.
When the database is down the last list read is used and the log says so.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

import orjson
import structlog
from msgspec import Struct

from bot.kernel.clock import Clock
from bot.kernel.durations import format_duration
from bot.kernel.errors import DependencyError, InternalError
from bot.kernel.lazy import lazy_import
from bot.kernel.message import Location
from bot.kernel.regex import LinearRegex, RegexError, compile_linear
from bot.storage.database import StateDatabase

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import RowMapping

    from bot.storage import state_schema as tables
else:
    sa = lazy_import("sqlalchemy")
    tables = lazy_import("bot.storage.state_schema")

log = structlog.get_logger("opsbot.silences")

Op = Literal["=", "!=", "=~", "!~"]
OPS: tuple[Op, ...] = ("=", "!=", "=~", "!~")

MIN_DURATION = timedelta(minutes=1)
# Alertmanager allows any length; a month-long silence is already one nobody remembers.
MAX_DURATION = timedelta(days=30)
MAX_REASON = 500  # characters
MAX_MATCHERS = 20
MAX_VALUE = 1000  # characters of one matcher's value (a regex is run on every alert)
REFRESH_S = 2.0  # how stale the alert path's list of active silences may be
# An end is told at most this long after it: a bot down for a week does not announce
# last week's silences when it comes back.
TELL_WITHIN = timedelta(hours=6)
TELL_BATCH = 50  # ends told per run: a burst of ends is told over the next runs

_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Longest operators first: "a=~b" is a regex matcher, not "a" = "~b".
_MATCHER = re.compile(r"\s*([^=!~\s]*)\s*(=~|!~|!=|=)(.*)", re.DOTALL)
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
# No 0/o, 1/l/i: the id is read off a phone and typed at 3 a.m. (as approval ids).
_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_ID_LENGTH = 6


class MatcherError(ValueError):
    """A matcher that cannot be used; the message names it, ``reason`` says why."""

    def __init__(self, text: str, reason: str) -> None:
        shown = text if len(text) <= 80 else text[:79] + "…"
        super().__init__(f"matcher '{shown}': {reason}")
        self.reason = reason


# A dataclass: the compiled regex is cached on the instance, outside equality and repr.
@dataclass(frozen=True, slots=True)
class Matcher:
    """``name op value``. Raises :class:`MatcherError` when the name, operator or regex
    is invalid; a regex is compiled once, here."""

    name: str
    op: Op
    value: str
    _regex: LinearRegex | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _LABEL.fullmatch(self.name):
            raise MatcherError(
                str(self),
                f"'{self.name}' is not a label name (letters, digits and _, not starting "
                "with a digit)",
            )
        if self.op not in OPS:
            raise MatcherError(str(self), f"unknown operator '{self.op}'")
        if len(self.value) > MAX_VALUE:
            raise MatcherError(self.name, f"value longer than {MAX_VALUE} characters")
        if self.op in ("=~", "!~"):
            try:
                # RE2, as in Alertmanager: linear time whatever was typed.
                regex = compile_linear(self.value)
            except RegexError as exc:
                raise MatcherError(str(self), str(exc)) from exc
            object.__setattr__(self, "_regex", regex)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """``alertname=DiskFull``, ``severity!=info``, ``instance=~"web-\\d+"``,
        ``env!~dev|test``; the value may be double-quoted (``\\"`` and ``\\\\`` escape inside
        the quotes; other backslashes are kept for the regex). Raises MatcherError."""
        found = _MATCHER.fullmatch(text)
        if found is None:
            raise MatcherError(
                text, "not a matcher (label=value, label!=value, label=~regex or label!~regex)"
            )
        name, op, value = found.group(1), cast(Op, found.group(2)), found.group(3).strip()
        if not name:
            raise MatcherError(text, f"no label name before '{op}'")
        if value.startswith('"'):
            value = _unquote(value, text)
        try:
            return cls(name, op, value)
        except MatcherError as exc:  # named as typed, not as re-quoted
            raise MatcherError(text, exc.reason) from exc.__cause__

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self._regex is not None
        found = self._regex.fullmatch(value)
        return found if self.op == "=~" else not found

    @property
    def matches_empty(self) -> bool:
        """True when an alert without this label satisfies it (``env!=prod``, ``x=~.*``)."""
        return self.matches({})

    def __str__(self) -> str:
        # Alertmanager's quoting (Go's %q for these three): parse() reads it back.
        quoted = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{quoted}"'


def _unquote(value: str, text: str) -> str:
    out: list[str] = []
    i = 1
    while i < len(value):
        char = value[i]
        if char == '"':
            if i != len(value) - 1:
                raise MatcherError(text, "text after the closing quote")
            return "".join(out)
        if char == "\\" and i + 1 < len(value) and value[i + 1] in _ESCAPES:
            out.append(_ESCAPES[value[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    raise MatcherError(text, "no closing quote")


def format_matchers(matchers: Sequence[Matcher]) -> str:
    """``alertname="DiskFull" severity=~"crit.*"``: each parses back to the same matcher."""
    return " ".join(str(m) for m in matchers)


class Silence(Struct, frozen=True):
    id: str
    matchers: tuple[Matcher, ...]
    reason: str
    created_by: str
    created_at: datetime
    ends_at: datetime
    ended_by: str | None = None  # who ended it early (/unsilence)
    ended_at: datetime | None = None
    notify: Location | None = None  # where it was made: told there when it ends

    def active_at(self, now: datetime) -> bool:
        return self.ended_at is None and now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when the labels satisfy every matcher (whether or not it is active)."""
        return all(m.matches(labels) for m in self.matchers)

    @property
    def matchers_text(self) -> str:
        return format_matchers(self.matchers)


def check_silence(matchers: Sequence[Matcher], duration: timedelta, reason: str) -> None:
    """The limits a new silence must keep; raises ValueError saying which it breaks."""
    if not matchers:
        raise ValueError("a silence needs at least one matcher, e.g. alertname=DiskFull")
    if len(matchers) > MAX_MATCHERS:
        raise ValueError(f"a silence has at most {MAX_MATCHERS} matchers")
    if all(m.matches_empty for m in matchers):
        # Alertmanager's rule: such a silence would also mute every alert lacking the labels.
        verb = "matches" if len(matchers) == 1 else "all match"
        raise ValueError(
            f"{format_matchers(matchers)} {verb} the empty value (alerts without the label), "
            "so the silence would mute almost every alert; add a matcher that needs a value, "
            "e.g. alertname=DiskFull"
        )
    if duration < MIN_DURATION:
        raise ValueError(f"a silence lasts at least {format_duration(MIN_DURATION)}")
    if duration > MAX_DURATION:
        raise ValueError(f"a silence lasts at most {format_duration(MAX_DURATION)}")
    if len(reason) > MAX_REASON:
        raise ValueError(f"the reason is longer than {MAX_REASON} characters")


def new_silence_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


class SilenceStore:
    """The ``silences`` table. Ending one is a conditional UPDATE: of two people ending
    the same silence on two replicas, exactly one does."""

    def __init__(self, database: StateDatabase) -> None:
        self._db = database

    async def add(self, silence: Silence) -> None:
        """Insert ``silence``; InternalError if its id is taken (draw ids with
        :meth:`Silences.draft`, which picks a free one)."""
        try:
            async with self._db.transaction() as conn:
                await conn.execute(tables.silences.insert().values(**_row(silence)))
        except DependencyError as exc:
            if isinstance(exc.__cause__, sa.exc.IntegrityError):
                raise InternalError(f"silence id {silence.id} is already taken", exc) from exc
            raise

    async def get(self, silence_id: str) -> Silence | None:
        async with self._db.transaction() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(tables.silences).where(tables.silences.c.id == silence_id)
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _silence(row)

    async def end(self, silence_id: str, *, by: str, now: datetime) -> Silence | None:
        """End an active silence now; None when it is unknown, already ended or expired
        (the caller reads it again to say which)."""
        async with self._db.transaction() as conn:
            result = await conn.execute(
                tables.silences.update()
                .where(
                    tables.silences.c.id == silence_id,
                    tables.silences.c.ended_at.is_(None),
                    tables.silences.c.ends_at > now,
                )
                .values(ended_by=by, ended_at=now)
            )
            if result.rowcount != 1:
                return None
            row = (
                (
                    await conn.execute(
                        sa.select(tables.silences).where(tables.silences.c.id == silence_id)
                    )
                )
                .mappings()
                .one()
            )
        return _silence(row)

    async def ended_untold(self, now: datetime, *, since: datetime) -> list[Silence]:
        """Silences that ran out between ``since`` and ``now`` with somewhere to tell and
        nobody told yet, the earliest end first (at most :data:`TELL_BATCH`)."""
        async with self._db.transaction() as conn:
            rows = (
                (
                    await conn.execute(
                        sa.select(tables.silences)
                        .where(
                            tables.silences.c.ended_at.is_(None),
                            tables.silences.c.told_at.is_(None),
                            tables.silences.c.notify_channel.is_not(None),
                            tables.silences.c.ends_at <= now,
                            tables.silences.c.ends_at > since,
                        )
                        .order_by(tables.silences.c.ends_at, tables.silences.c.id)
                        .limit(TELL_BATCH)
                    )
                )
                .mappings()
                .all()
            )
        return [_silence(row) for row in rows]

    async def mark_told(self, silence_id: str, now: datetime) -> bool:
        """Mark the end told; False when another replica did first."""
        async with self._db.transaction() as conn:
            result = await conn.execute(
                tables.silences.update()
                .where(tables.silences.c.id == silence_id, tables.silences.c.told_at.is_(None))
                .values(told_at=now)
            )
        return result.rowcount == 1

    async def active(self, now: datetime) -> list[Silence]:
        """The silences in force at ``now``, newest first."""
        async with self._db.transaction() as conn:
            rows = (
                (
                    await conn.execute(
                        sa.select(tables.silences)
                        .where(
                            tables.silences.c.ended_at.is_(None), tables.silences.c.ends_at > now
                        )
                        .order_by(tables.silences.c.created_at.desc(), tables.silences.c.id)
                    )
                )
                .mappings()
                .all()
            )
        return [_silence(row) for row in rows]


class Silences:
    """The bot's silences: created and ended in chat, consulted for every alert."""

    def __init__(self, store: SilenceStore, *, clock: Clock, refresh: float = REFRESH_S) -> None:
        self._store = store
        self._clock = clock
        self._refresh = refresh
        self._known: list[Silence] = []  # the active silences, as last read or written
        self._read_at: float | None = None  # monotonic; None: read again at next use
        self._changes = 0  # made here; a read that overlaps one is not kept
        self._lock = asyncio.Lock()

    async def muting(self, labels: Mapping[str, str]) -> Silence | None:
        """The active silence muting an alert with these labels (of several, the one that
        ends last), or None. Never raises: with the database down it answers from the
        last list it read."""
        known = await self._current()
        now = self._clock.now()
        hits = [s for s in known if s.active_at(now) and s.matches(labels)]
        return max(hits, key=lambda s: s.ends_at, default=None)

    async def active(self) -> list[Silence]:
        """The active silences, newest first, read from the database (every replica's)."""
        return await self._load()

    async def get(self, silence_id: str) -> Silence | None:
        return await self._store.get(_normalize(silence_id))

    async def draft(
        self,
        matchers: Sequence[Matcher],
        *,
        duration: timedelta,
        reason: str,
        created_by: str,
        notify: Location | None = None,
    ) -> Silence:
        """A new silence with a free id, checked against the limits (ValueError), not in
        force until :meth:`create`: audit it in between. ``notify``: the conversation to
        tell when it runs out."""
        reason = " ".join(reason.split())
        check_silence(matchers, duration, reason)
        now = self._clock.now()
        for _ in range(5):
            silence_id = new_silence_id()
            if await self._store.get(silence_id) is None:
                return Silence(
                    id=silence_id,
                    matchers=tuple(matchers),
                    reason=reason,
                    created_by=created_by,
                    created_at=now,
                    ends_at=now + duration,
                    notify=notify,
                )
        raise InternalError("could not draw a free silence id in 5 tries")

    async def create(self, silence: Silence) -> Silence:
        """Put a :meth:`draft` in force."""
        await self._store.add(silence)
        self._changed()
        self._known = [silence, *(s for s in self._known if s.id != silence.id)]
        log.info("silences.created", silence=silence.id, matchers=silence.matchers_text)
        return silence

    async def end(self, silence_id: str, *, by: str) -> Silence | None:
        """End an active silence; None when it is unknown, already ended or expired."""
        ended = await self._store.end(_normalize(silence_id), by=by, now=self._clock.now())
        if ended is not None:
            self._changed()
            self._known = [s for s in self._known if s.id != ended.id]
            log.info("silences.ended", silence=ended.id, by=by)
        return ended

    async def take_ended(self) -> list[Silence]:
        """The silences that ran out (not ended early) and whose end nobody told yet,
        each now marked told: of several replicas asking at once, one gets each."""
        now = self._clock.now()
        taken = []
        for silence in await self._store.ended_untold(now, since=now - TELL_WITHIN):
            if await self._store.mark_told(silence.id, now):
                taken.append(silence)
        return taken

    async def _current(self) -> list[Silence]:
        if self._fresh():
            return self._known
        async with self._lock:
            if self._fresh():  # another alert's check read them while this one waited
                return self._known
            try:
                await self._load()
            except Exception as exc:
                # Not on every alert: the next attempt waits for the refresh interval.
                self._read_at = self._clock.monotonic()
                if isinstance(exc, DependencyError):
                    log.warning(
                        "silences.unreachable", error=str(exc), using_known=len(self._known)
                    )
                else:
                    log.exception("silences.read_failed", using_known=len(self._known))
        return self._known

    def _fresh(self) -> bool:
        return self._read_at is not None and self._clock.monotonic() - self._read_at < self._refresh

    async def _load(self) -> list[Silence]:
        changes = self._changes
        active = await self._store.active(self._clock.now())
        if changes == self._changes:
            self._known = active
            self._read_at = self._clock.monotonic()
        # else: a silence was created or ended here while this read ran; the list it
        # returned may predate that, so the cache keeps the change and is read again.
        return active

    def _changed(self) -> None:
        self._changes += 1
        self._read_at = None


def _normalize(silence_id: str) -> str:
    return silence_id.strip().lower()


def _row(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "matchers": orjson.dumps([[m.name, m.op, m.value] for m in silence.matchers]).decode(),
        "reason": silence.reason,
        "created_by": silence.created_by,
        "created_at": silence.created_at,
        "ends_at": silence.ends_at,
        "ended_by": silence.ended_by,
        "ended_at": silence.ended_at,
        "notify_platform": silence.notify.platform if silence.notify else None,
        "notify_workspace": silence.notify.workspace if silence.notify else None,
        "notify_channel": silence.notify.channel_id if silence.notify else None,
        "notify_thread": silence.notify.thread_id if silence.notify else None,
    }


def _silence(row: RowMapping) -> Silence:
    return Silence(
        id=row["id"],
        matchers=tuple(
            Matcher(name, op, value) for name, op, value in orjson.loads(row["matchers"])
        ),
        reason=row["reason"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        ends_at=row["ends_at"],
        ended_by=row["ended_by"],
        ended_at=row["ended_at"],
        notify=(
            Location(
                platform=row["notify_platform"] or "",
                channel_id=row["notify_channel"],
                thread_id=row["notify_thread"],
                workspace=row["notify_workspace"] or "",
            )
            if row["notify_channel"] is not None
            else None
        ),
    )
