"""The scheduler facade: the bot's timed background jobs, on an APScheduler 3
``AsyncIOScheduler`` in the bot's event loop (model: python-telegram-bot's
``ext/_jobqueue.py``). Nothing else imports APScheduler.

* Jobs are added by name, before or after ``start()``; each is an ``async`` function that
  takes no arguments. APScheduler decides *when*; every run is an asyncio task this facade
  tracks, so ``stop()`` can await it (and cancel it after ``shutdown_grace``): no job is
  left behind.
* Every failure of a job ends in one place, :meth:`Scheduler._run`: one log line with the
  job's name. A job that raises runs again at its next time; the scheduler never stops.
* A job never runs twice at once: a run due while the previous one still runs is skipped.
* Times come from the bot's :class:`~bot.kernel.clock.Clock`: the first run, and the run after a
  pause, are computed from ``clock.now()`` (so tests decide them with a manual clock);
  APScheduler then wakes up at those instants by the real time. In production both are
  the system clock.
* Schedules: :class:`Every` (an interval, its grid starting one interval after
  ``start()``) or :class:`Cron` (a standard 5-field crontab line, in UTC).
* A job added with :meth:`Scheduler.add_catching_up` (heartbeats) runs each slot of its
  schedule once across replicas: a scheduled run first claims its slot, fenced
  (``Leadership.claim_slot``: the lease and its token checked and the slot recorded in one
  step), and does nothing if it was claimed already. A slot that came while no replica
  led (a leader killed just before it, a Redis outage) is run late, once: a replica that
  becomes leader runs the job's latest slot if it is not older than ``misfire_grace`` and
  a slot was claimed before it but not this one. The function gets the :class:`Slot`
  (``late`` set), so the post can say so. A claim is made before the work: a leader that
  dies between the two loses the slot rather than posting it twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from msgspec import Struct

from bot.cluster.leader import Leadership, LostLeadership, SoleLeader
from bot.cluster.pauses import SharedPauses
from bot.kernel.clock import Clock
from bot.kernel.durations import format_duration
from bot.kernel.errors import DependencyError
from bot.kernel.failures import report_failure

log = structlog.get_logger("opsbot.scheduler")

JobFunc = Callable[[], Awaitable[object]]


class Slot(Struct, frozen=True):
    """The time of the schedule a run is for; ``late``: run after a hand-over or an
    outage, not at that time."""

    at: datetime
    late: bool = False


# What add_catching_up() takes: the run's slot, None when a person asked for the run.
SlotFunc = Callable[[Slot | None], Awaitable[object]]


class Every(Struct, frozen=True):
    interval: timedelta

    def describe(self) -> str:
        return f"every {format_duration(self.interval)}"


class Cron(Struct, frozen=True):
    """A 5-field crontab line (minute hour day-of-month month day-of-week), in UTC, with
    crontab's meaning: day of week 0 or 7 is Sunday, and a line that restricts both day
    fields runs when either matches."""

    expr: str

    def describe(self) -> str:
        return f"cron {self.expr} (UTC)"


Schedule = Every | Cron


class JobView(Struct, frozen=True):
    """A job as ``/heartbeat`` shows it."""

    name: str
    schedule: Schedule
    next_run: datetime | None  # None before start() and after stop()
    paused_until: datetime | None  # None unless a pause is still in force
    running: bool


class _Job(Struct, eq=False):
    name: str
    func: SlotFunc
    schedule: Schedule
    catch_up: bool = False
    trigger: Any = None  # the APScheduler trigger, made at start()
    paused_until: datetime | None = None
    task: asyncio.Task[None] | None = None


class Scheduler:
    def __init__(
        self,
        clock: Clock,
        *,
        shutdown_grace: timedelta = timedelta(seconds=10),
        misfire_grace: timedelta = timedelta(minutes=5),
        leadership: Leadership | None = None,
        shared_pauses: SharedPauses | None = None,
    ) -> None:
        """No I/O and no event loop needed: APScheduler is created in ``start()``.

        ``leadership``: scheduled runs happen only on the leader, after its fencing token
        is checked, so several replicas post one heartbeat (``run_now``, asked for by a
        person on this replica, runs here regardless). ``shared_pauses``: with several
        replicas, where a pause asked for on one reaches the leader."""
        self._clock = clock
        self._leadership: Leadership = leadership or SoleLeader()
        self._shared_pauses = shared_pauses
        self._grace = shutdown_grace.total_seconds()
        self._misfire_grace = max(1, int(misfire_grace.total_seconds()))
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._aps: Any = None  # AsyncIOScheduler while started, when scheduling
        self._started = False
        self._leadership.on_change(self._leadership_changed)
        # False in a console: jobs run when a person asks (run_now), never on their own.
        self._scheduling = True

    # ------------------------------------------------------------------ jobs

    def add(self, name: str, func: JobFunc, schedule: Schedule) -> None:
        async def run(_: Slot | None) -> object:
            return await func()

        self._add(_Job(name, run, schedule))

    def add_catching_up(self, name: str, func: SlotFunc, schedule: Schedule) -> None:
        """Like :meth:`add`, for a job whose every slot must run once across replicas,
        late rather than never (see the module docstring)."""
        self._add(_Job(name, func, schedule, catch_up=True))

    def _add(self, job: _Job) -> None:
        if job.name in self._jobs:
            raise ValueError(f"a job named '{job.name}' is already scheduled")
        self._jobs[job.name] = job
        if self._aps is not None and self._scheduling:
            self._schedule(job)

    @property
    def names(self) -> list[str]:
        return list(self._jobs)

    def jobs(self) -> list[JobView]:
        return [self._view(job) for job in self._jobs.values()]

    def job(self, name: str) -> JobView:
        return self._view(self._get(name))

    def next_run(self, name: str) -> datetime | None:
        """When APScheduler will run the job next; None while the scheduler is stopped."""
        self._get(name)
        if self._aps is None:
            return None
        scheduled = self._aps.get_job(name)
        when: datetime | None = getattr(scheduled, "next_run_time", None)
        return when

    def paused_until(self, name: str) -> datetime | None:
        until = self._get(name).paused_until
        return until if until is not None and until > self._clock.now() else None

    def pause(self, name: str, until: datetime) -> datetime | None:
        """Skip the job's runs before ``until``; returns its next run (the first time its
        schedule gives at or after ``until``). A later pause replaces an earlier one, so a
        short pause also ends a long one."""
        job = self._get(name)
        job.paused_until = until
        if self._aps is None or job.trigger is None:
            return None  # start() takes the pause into account; on demand: no schedule
        when = next_fire_time(job.trigger, until)
        self._aps.modify_job(name, next_run_time=when)
        log.info("scheduler.paused", job=name, until=until.isoformat(), next_run=_iso(when))
        return when

    async def pause_everywhere(self, name: str, until: datetime) -> datetime | None:
        """:meth:`pause` here, and on every replica and process sharing the state
        (DependencyError when they cannot be told, before anything is paused); returns the
        job's next run here."""
        if self._shared_pauses is not None:
            await self._shared_pauses.pause(name, until, self._clock.now())
        return self.pause(name, until)

    async def paused_until_everywhere(self, name: str) -> datetime | None:
        """The end of the pause in force for the job on any replica (this one's if the
        others cannot be asked)."""
        here = self.paused_until(name)
        if self._shared_pauses is None:
            return here
        try:
            shared = await self._shared_pauses.until(name)
        except DependencyError:
            return here
        if shared is None or shared <= self._clock.now():
            return here
        return shared if here is None else max(here, shared)

    def run_now(self, name: str) -> asyncio.Task[None]:
        """Run the job at once, outside its schedule (which stays as it is). Returns the
        tracked task; the one already running when the job is running now."""
        job = self._get(name)
        if not self._started:
            raise RuntimeError("the scheduler is not running")
        # Runs in the caller's context: its log lines carry the request that asked.
        return self._launch(job, contextvars.copy_context())

    async def confirm_leadership(self) -> None:
        """In a scheduled run, check the fence again (raises LostLeadership, which ends the
        run quietly): a job calls it right before it posts, so a leader that stalled
        between the start of its run and the post cannot post after losing the lease."""
        if _FENCED.get():
            await self._leadership.check_fence()

    async def join(self) -> None:
        """Wait until no job is running."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # ------------------------------------------------------------------ life cycle

    @property
    def scheduling(self) -> bool:
        """Whether jobs run on their schedules (False: only when asked, in a console)."""
        return self._scheduling

    async def start(self, *, scheduling: bool = True) -> None:
        """Start running jobs on their schedules; ``scheduling=False``: only when asked
        (``run_now``), as a console next to a running bot must never do the bot's
        scheduled work."""
        if self._started:
            raise RuntimeError("the scheduler is already started")
        self._started = True
        self._scheduling = scheduling
        if not scheduling:
            # Nothing runs on a schedule: APScheduler is not even loaded (a console's
            # start-up is shorter by its import).
            log.info("scheduler.on_demand", jobs=len(self._jobs))
            return
        from apscheduler.schedulers.asyncio import (  # type: ignore[import-untyped]
            AsyncIOScheduler,
        )

        aps = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={
                # One run for all the runs a stalled loop missed, and none that is
                # later than this (the next one is scheduled anyway).
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": self._misfire_grace,
            },
        )
        aps.start()  # binds to the running loop
        self._aps = aps
        for job in self._jobs.values():
            self._schedule(job)
        log.info("scheduler.started", jobs=len(self._jobs))
        if self._leadership.is_leader:  # it led before the scheduler ran
            self._leadership_changed(True)

    async def stop(self) -> None:
        """Stop scheduling, then wait for the running jobs (cancelled after the grace)."""
        aps, self._aps = self._aps, None
        self._started = False
        if aps is not None and aps.running:
            # AsyncIOScheduler.shutdown() only schedules the shutdown on the loop.
            aps.shutdown(wait=False)
            for _ in range(100):
                if not aps.running:
                    break
                await asyncio.sleep(0)
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning(
                "scheduler.jobs_cancelled",
                jobs=sorted(task.get_name() for task in pending),
                grace_s=self._grace,
            )

    # ------------------------------------------------------------------ internals

    def _get(self, name: str) -> _Job:
        job = self._jobs.get(name)
        if job is None:
            raise KeyError(name)
        return job

    def _view(self, job: _Job) -> JobView:
        return JobView(
            name=job.name,
            schedule=job.schedule,
            next_run=self.next_run(job.name),
            paused_until=self.paused_until(job.name),
            running=job.task is not None and not job.task.done(),
        )

    def _schedule(self, job: _Job) -> None:
        now = self._clock.now()
        job.trigger = make_trigger(job.schedule, now)
        first = next_fire_time(job.trigger, max(now, job.paused_until or now))
        self._aps.add_job(
            self._fire,
            trigger=job.trigger,
            args=(job.name,),
            id=job.name,
            name=job.name,
            next_run_time=first,
            replace_existing=True,
        )

    async def _fire(self, name: str) -> None:
        """What APScheduler runs: starts the job as a tracked task and returns at once."""
        job = self._jobs.get(name)
        if job is None or self._aps is None:
            return  # stopping
        if job.task is not None and not job.task.done():
            log.warning("scheduler.run_skipped", job=name, reason="the previous run still runs")
            return
        if not self._leadership.is_leader:
            log.debug("scheduler.not_leader", job=name)
            return
        if await self._paused_elsewhere(name):
            return
        slot = None
        if job.catch_up:
            at = latest_slot(job, _wall_now(), self._misfire_grace)
            slot = None if at is None else Slot(at)
        # A fresh context: APScheduler's timer callback may carry whichever request last
        # touched the scheduler (a /heartbeat pause), and this run is not part of it.
        self._launch(job, contextvars.Context(), fenced=True, slot=slot)

    def _leadership_changed(self, leading: bool) -> None:
        """On becoming leader: run, late, the slots no replica ran (module docstring)."""
        if not leading or self._aps is None or not self._scheduling:
            return
        for job in self._jobs.values():
            if not job.catch_up:
                continue
            at = latest_slot(job, _wall_now(), self._misfire_grace)
            if at is None or (job.paused_until is not None and job.paused_until > at):
                continue
            task = asyncio.create_task(self._catch_up(job, Slot(at, late=True)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, job: _Job, slot: Slot) -> None:
        if await self._paused_elsewhere(job.name):
            return
        if job.task is not None and not job.task.done():
            return  # a run started meanwhile (its own slot is the latest)
        self._launch(job, contextvars.Context(), fenced=True, slot=slot)

    async def _paused_elsewhere(self, name: str) -> bool:
        """A pause asked for on another replica (this one's own moved the schedule)."""
        if self._shared_pauses is None:
            return False
        try:
            until = await self._shared_pauses.until(name)
        except DependencyError as exc:
            # A heartbeat is a dead man's switch: when in doubt, it goes out.
            log.warning("scheduler.pause_unknown", job=name, error=str(exc))
            return False
        if until is None or until <= self._clock.now():
            return False
        log.info("scheduler.run_skipped", job=name, reason="paused", until=until.isoformat())
        return True

    def _launch(
        self,
        job: _Job,
        context: contextvars.Context,
        *,
        fenced: bool = False,
        slot: Slot | None = None,
    ) -> asyncio.Task[None]:
        if job.task is not None and not job.task.done():
            return job.task
        task = asyncio.create_task(
            self._run(job, fenced, slot), name=f"job:{job.name}", context=context
        )
        job.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, job: _Job, fenced: bool = False, slot: Slot | None = None) -> None:
        """The one sink for every job failure: logged with the job's name, never raised
        into APScheduler (the job keeps its schedule)."""
        with structlog.contextvars.bound_contextvars(job=job.name):
            try:
                if fenced:
                    # A stalled old leader learns here that another replica took over.
                    if slot is not None and not await self._claim(job, slot):
                        return
                    await self._leadership.check_fence()
                    _FENCED.set(True)  # this task's own context
                await job.func(slot)
            except LostLeadership as exc:
                log.warning("scheduler.not_leader_any_more", job=job.name, reason=str(exc))
            except asyncio.CancelledError:
                log.warning("scheduler.job_cancelled", job=job.name)
                raise
            except Exception as exc:
                report_failure("scheduler.job", exc, job=job.name)

    async def _claim(self, job: _Job, slot: Slot) -> bool:
        """Claim ``slot`` for this run; False (logged) when it ran already."""
        won = await self._leadership.claim_slot(
            f"opsbot:schedule:{job.name}:last",
            round(slot.at.timestamp() * 1000),
            only_after_a_claim=slot.late,
        )
        if won and slot.late:
            log.warning("scheduler.slot_run_late", slot=slot.at.isoformat())
        elif not won and not slot.late:
            log.info("scheduler.slot_already_run", slot=slot.at.isoformat())
        return bool(won)


def _wall_now() -> datetime:
    # Not the Clock: slots are the times APScheduler fires at, by the wall clock.
    return datetime.now(UTC)


def latest_slot(job: _Job, now: datetime, within_s: int) -> datetime | None:
    """The last time ``job``'s schedule gave at or before ``now``, if within ``within_s``
    seconds of it."""
    earliest = now - timedelta(seconds=within_s)
    if isinstance(job.schedule, Every):
        # The grid is counted from the epoch (make_trigger), before this process started.
        step = job.schedule.interval
        at = _EPOCH + ((now - _EPOCH) // step) * step
        return at if at >= earliest else None
    found = None
    when = next_fire_time(job.trigger, earliest)
    while when is not None and when <= now:
        found = when
        when = next_fire_time(job.trigger, when + timedelta(microseconds=1))
    return found


# Set in a scheduled (leader-only) run's task; run_now() runs anywhere and is not fenced.
_FENCED: contextvars.ContextVar[bool] = contextvars.ContextVar("opsbot_fenced_run", default=False)


# ---------------------------------------------------------------------- triggers


def make_trigger(schedule: Schedule, now: datetime) -> Any:
    """The APScheduler trigger for ``schedule``. An interval's grid is counted from the Unix
    epoch, not from this process's start: every replica has the same grid, so a new leader
    runs a 30-minute heartbeat at :00 and :30 like the old one, not two posts close
    together after a handover."""
    if isinstance(schedule, Every):
        from apscheduler.triggers.interval import (  # type: ignore[import-untyped]
            IntervalTrigger,
        )

        seconds = schedule.interval.total_seconds()
        return IntervalTrigger(
            seconds=seconds, start_date=grid_after(now, schedule.interval), timezone=UTC
        )
    return crontab_trigger(schedule.expr)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def grid_after(now: datetime, interval: timedelta) -> datetime:
    """The first multiple of ``interval`` since the Unix epoch after ``now``."""
    steps = (now - _EPOCH) // interval + 1
    return _EPOCH + steps * interval


def next_fire_time(trigger: Any, at_or_after: datetime) -> datetime | None:
    """The first time ``trigger`` fires at or after ``at_or_after``; None if it never does."""
    when: datetime | None = trigger.get_next_fire_time(None, at_or_after)
    return when


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_trigger(expr: str) -> Any:
    """A trigger for a crontab line, with crontab's meaning. APScheduler 3's own
    ``CronTrigger.from_crontab`` counts day of week from Monday = 0 (its docs warn about
    it: issue 286) and requires both day fields to match; this maps the day of week to
    names and, like cron, runs when either restricted day field matches."""
    from apscheduler.triggers.combining import OrTrigger  # type: ignore[import-untyped]
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"a crontab line has 5 fields (minute hour day month weekday), not {len(fields)}"
        )
    minute, hour, day, month, weekday = fields
    weekdays = _weekdays(weekday)

    def cron(day: str, day_of_week: str) -> Any:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            timezone=UTC,
        )

    try:
        if day.startswith("*") or weekday.startswith("*"):
            return cron(day, weekdays)
        return OrTrigger([cron(day, "*"), cron("*", weekdays)])
    except ValueError as exc:
        raise ValueError(str(exc).replace("Error validating expression", "invalid field")) from exc


def _weekdays(field: str) -> str:
    """crontab's day of week (0-7, Sunday 0 or 7, or sun-sat) as APScheduler day names."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, slash, step_text = part.partition("/")
        if slash and (not step_text.isdigit() or int(step_text) == 0):
            raise ValueError(f"invalid day-of-week step in '{part}'")
        step = int(step_text) if slash else 1
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            first, _, last = span.partition("-")
            low, high = _day(first, part), _day(last, part)
        else:
            low = _day(span, part)
            high = 6 if slash else low  # "1/2": from Monday to the end of the week
        if low > high:
            raise ValueError(f"day-of-week range '{part}' runs backwards")
        days.update(d % 7 for d in range(low, high + 1, step))
    return ",".join(_DAYS[d] for d in sorted(days))


def _day(text: str, part: str) -> int:
    lowered = text.lower()
    if lowered in _DAYS:
        return _DAYS.index(lowered)
    if re.fullmatch(r"[0-7]", text):
        return int(text)
    raise ValueError(f"invalid day of week '{text}' in '{part}' (0-7 or sun-sat)")


# A fixed start keeps the check deterministic: the same line always gets the same answer.
_CHECK_FROM = datetime(2026, 1, 1, tzinfo=UTC)


def check_crontab(expr: str, minimum: timedelta) -> str:
    """Validate a crontab line: it parses, it fires at all, and two runs are never closer
    than ``minimum`` (looked for in its first 500 runs, within about a year). Returns the
    line with its whitespace normalised; raises ValueError with a readable reason."""
    normalised = " ".join(expr.split())
    trigger = crontab_trigger(normalised)
    previous: datetime | None = trigger.get_next_fire_time(None, _CHECK_FROM)
    if previous is None:
        raise ValueError(f"'{normalised}' never fires")
    horizon = previous + timedelta(days=400)
    for _ in range(500):
        following: datetime | None = trigger.get_next_fire_time(previous, previous)
        if following is None or following > horizon:
            break
        if following - previous < minimum:
            raise ValueError(
                f"'{normalised}' runs {format_duration(following - previous)} apart "
                f"(e.g. {previous:%H:%M} and {following:%H:%M} UTC); runs must be at "
                f"least {format_duration(minimum)} apart"
            )
        previous = following
    return normalised


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()
