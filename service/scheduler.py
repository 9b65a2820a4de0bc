"""Periodic jobs that run exactly once per interval, however many processes and hosts share the
database.

Every process with a scheduler ticks often; on each tick it tries to claim the current interval's
slot with one conditional UPDATE on the lease row. The database lets exactly one claimant move the
slot forward; the others see zero rows changed and do nothing. This works the same on SQLite and
PostgreSQL, and a process that dies mid-run costs only that interval. A job that stopped before
it changed anything (it raised NotStarted: the database was away as it began) is run again by the
process holding the slot, at its next tick within the interval.

A slot is stored as the time its interval starts (milliseconds since the epoch), not as its number:
numbers from different interval settings do not compare (after a change from 15 minutes to an hour
the new numbers stayed below the old one for the next 160 years, and nothing ran), times do.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, col

from service.db import database_unavailable, insert_for, rows_changed
from service.models import SchedulerLease, utcnow

log = logging.getLogger(__name__)


def claim(engine: sa.Engine, *, name: str, slot: int, holder: str, ahead_above: int) -> bool:
    """True for exactly one caller per (name, slot), across every process on this database.

    `slot` is the interval's start, in milliseconds. A stored slot later than `ahead_above` (the
    clock's time plus an interval) was claimed when the clock read later: it was set back, or an
    older copybandit claimed by a host's own clock. Waiting for it would stop the job until the
    clock caught up (days, with a badly set clock), so it is taken over, with a warning.
    """
    lease = col(SchedulerLease.slot)
    with Session(engine) as session:
        session.execute(
            insert_for(session)(SchedulerLease)
            .values(name=name, slot=-1, holder=holder)
            .on_conflict_do_nothing()
        )
        ahead = session.execute(
            sa.select(lease, col(SchedulerLease.holder)).where(
                col(SchedulerLease.name) == name, lease > ahead_above
            )
        ).first()
        won = rows_changed(
            session,
            sa.update(SchedulerLease)
            .where(col(SchedulerLease.name) == name, sa.or_(lease < slot, lease > ahead_above))
            .values(slot=slot, holder=holder, claimed_at=utcnow()),
        )
        session.commit()
    if won and ahead is not None:
        log.warning(
            "%s: took over the lease from %s, whose slot starts %.0f s after the clock's next "
            "one; was the clock set back?",
            name,
            ahead[1],
            (ahead[0] - slot) / 1000,
        )
    return won == 1


def database_clock(engine: sa.Engine) -> Callable[[], float]:
    """Seconds since the epoch by the clock every process sharing the database agrees on.

    Hosts' own clocks disagree: with one an interval or more ahead, each took the lease back
    from the other on every tick, and the job ran every minute. PostgreSQL's server has one
    clock; a SQLite file is shared only by processes on one host, which share its clock."""
    if engine.dialect.name != "postgresql":
        return time.time

    def now() -> float:
        with engine.connect() as connection:
            seconds = connection.exec_driver_sql("SELECT extract(epoch FROM clock_timestamp())")
            return float(seconds.scalar_one())

    return now


class NotStarted(Exception):
    """Raised by a job, from the error that stopped it, when it stopped before changing anything:
    its slot is not used up."""


class PeriodicJob:
    """A job and its interval; `tick()` runs it if this process wins the current slot."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        name: str,
        interval_seconds: float,
        job: Callable[[], object],
        clock: Callable[[], float] | None = None,
        slot_log_level: int = logging.INFO,
    ) -> None:
        self.engine = engine
        self.name = name
        self.interval = interval_seconds
        self.job = job
        # A frequent job that logs what it did itself, and most slots does nothing, says at
        # DEBUG that it runs: at INFO, a job every 5 minutes wrote 288 lines a day saying only
        # that, on an idle server.
        self.slot_log_level = slot_log_level
        self.clock = clock or database_clock(engine)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        # The slot this process won and whose job raised NotStarted: no other process can claim
        # it, so this one runs it while the clock is still in it.
        self._not_started: int | None = None

    def tick(self) -> bool:
        """Run the job if this process wins the current slot, or won it and the job did not
        start; True if it ran."""
        try:
            won, slot = self._claim_current_slot()
        except sa.exc.DBAPIError as exc:
            if not database_unavailable(exc):
                raise
            # One line per tick: APScheduler's traceback was 20 lines, every tick in every worker.
            log.warning("%s: database unavailable, slot skipped: %s", self.name, exc.orig)
            return False
        if won:
            log.log(
                self.slot_log_level,
                "%s: running for slot %s as %s",
                self.name,
                _shown(slot),
                self.holder,
            )
        elif slot == self._not_started:
            log.info("%s: running again for slot %s, not started before", self.name, _shown(slot))
        else:
            return False
        self._not_started = None
        try:
            self.job()
        except NotStarted as exc:
            self._not_started = slot
            log.warning(
                "%s: database unavailable, slot %s not started, tried again at the next tick: %s",
                self.name,
                _shown(slot),
                exc,
            )
        except Exception as exc:
            if database_unavailable(exc):
                # As for a claim: the reason is the news. A pass that met it once under way
                # (reading an experiment's segments) logged a traceback; it may have changed
                # segments before, so unlike NotStarted its slot is used up.
                log.warning(
                    "%s: database unavailable, slot %s given up: %s",
                    self.name,
                    _shown(slot),
                    exc.orig,
                )
            else:
                log.exception("%s failed for slot %s", self.name, _shown(slot))
        return True

    def _claim_current_slot(self) -> tuple[bool, int]:
        """Whether this process won the slot the clock is in now, and that slot."""
        now = self.clock()
        slot = int(now // self.interval * self.interval * 1000)
        ahead_above = int((now + self.interval) * 1000)
        won = claim(
            self.engine, name=self.name, slot=slot, holder=self.holder, ahead_above=ahead_above
        )
        return won, slot


def _shown(slot: int) -> str:
    """A slot as the log shows it: its start in UTC, as the operator reads a clock."""
    start = datetime.fromtimestamp(slot / 1000, UTC)
    shown = start.strftime("%Y-%m-%d %H:%M:%S")
    return f"{shown}.{slot % 1000:03d} UTC" if slot % 1000 else f"{shown} UTC"


def start_background(*jobs: PeriodicJob) -> object:
    """An APScheduler thread that ticks each of `jobs` often enough to catch each slot early."""
    from apscheduler.schedulers.background import BackgroundScheduler

    _quiet_apscheduler()
    # Slots are epoch times and ticks an interval, so no zone changes when anything runs; left to
    # APScheduler, it asked tzlocal for the host's, which refuses a POSIX TZ ("UTC+3", "JST-9"),
    # and every server process failed to start.
    scheduler = BackgroundScheduler(daemon=True, timezone=UTC)
    for job in jobs:
        scheduler.add_job(
            job.tick,
            "interval",
            seconds=max(1.0, min(60.0, job.interval / 4)),
            id=job.name,
            max_instances=1,
            coalesce=True,
        )
    scheduler.start()
    return scheduler


def _quiet_apscheduler() -> None:
    """APScheduler logs 'Running job' and 'executed successfully' at INFO: two lines per tick in
    every worker, where tick's own line says when the job ran. Its WARNINGs are about ticks too:
    a tick due while a pass still runs (longer than the tick period, a minute at most) is
    'skipped: maximum number of running instances reached', and one the thread woke late for
    'was missed by'; the next tick claims the slot all the same, but a line a minute through a
    long pass read as lifecycle runs lost. A job that raises is still logged, at ERROR.
    COPYBANDIT_LOG_LEVEL=DEBUG keeps them all."""
    apscheduler = logging.getLogger("apscheduler")
    if apscheduler.getEffectiveLevel() > logging.DEBUG:
        apscheduler.setLevel(logging.ERROR)
