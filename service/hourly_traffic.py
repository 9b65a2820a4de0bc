"""Each variant's impressions and conversions per whole past hour, counted once into
hourly_traffic, so that the dashboard's charts of hour-wide buckets or wider cost a row per variant
and hour instead of a row per impression (service.history).

Every impression and event row created before the mark (hourly_traffic_mark.counted_before) is
counted in hourly_traffic, and none after it; a chart reads the hours before the mark and counts the
rows from the mark on. The mark moves one hour at a time, in the transaction that stores that
hour, and only from the value it was read at: a pass that dies half-way leaves the hour uncounted
and the mark where it was, and of two passes at once (two servers on one PostgreSQL, or a server
and `copybandit lifecycle --once`) the second finds the mark moved and counts nothing.

An hour is counted once it ended LAG ago by the database's clock: a row's created_at is its host's
clock when the request began, and it is committed later (see LAG). A row committed later still,
into an hour already counted, is in no bucket: the charts then show it in the evidence before
them, as they do rows a purge deleted, so their cumulative rate still ends at the report's.

The hour not due yet is counted too, into recent_traffic, so that a chart does not count up to
an hour and ten minutes of rows live (1.8 M at 450 decisions a second, 0.9 s of SQL on PostgreSQL):
once the hours are up to date, a pass counts the rows from where the last one stopped up to the
last 5-minute boundary LAG before its clock, as one row per variant and 5-minute slice (SLICE,
aligned to whole hours, as service.history's buckets are), keyed by where it starts, and moves a
mark of its own, 'recent_traffic', the same way. Such a row lies within one slice, so it falls in
one bucket of any chart of whole hours or of whole slices. A chart of whole hours reads the hours
before the hourly mark, the recent rows from it up to the recent mark, and counts the rows from
there: at most LAG and INTERVAL of them. The slices go on from the recent mark across the hours
counted meanwhile, and are kept KEPT (14 hours) behind the hourly mark, so that a chart of 5-, 15-
or 30-minute buckets (a segment under 12 hours old, whose chart reaches 12 hours back) reads them
too, from where they are whole: the mark 'recent_slices' says where, moved to where a pass starts
afresh (the first after the upgrade, whose recent rows each span a pass's stretch; one after the
recent mark fell over CATCH_UP behind). Stored rows never change, so a chart that read the marks
before a pass moved them adds up rows counted before them only, as it did; a pass deletes only
recent rows KEPT before the hourly mark as it found it, which no chart that read the marks before
it reads (Marks.sliced_from).

Purges (service.retention) leave hourly_traffic and recent_traffic as they are: an hour counted
before its rows were purged keeps its counts, and the charts show that traffic as long as they
reach back to it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col

from service.db import insert_for, rows_changed
from service.models import (
    Event,
    HourlyTraffic,
    HourlyTrafficMark,
    Impression,
    RecentTraffic,
    utcnow,
)

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
# How long after an hour ends it is counted. A web request waits at most about 10 s for a lock
# (service.db.LOCK_WAIT_SECONDS, 2 s more for SQLite's writer turn) and gunicorn ends one busy
# for 30 s, so a row is committed well under a minute after its host stamped it; hosts' clocks
# under NTP agree to within a second. Five minutes leaves room for a host a few minutes off, and
# costs only the rows the charts count live: at most this and the job's interval.
LAG = timedelta(minutes=5)
# How often servers count the hours that came due; any process sharing the database may run it.
INTERVAL = timedelta(minutes=5)
# A pass stops starting hours after this long; the next one carries on where it stopped. One hour
# is one transaction, so a backlog (the first pass after the upgrade, a long outage) is counted
# in chunks of one hour each, its progress in the log, and no pass holds a server for minutes.
PASS_BUDGET = timedelta(seconds=30)
# Hours older than this before the clock are never counted: no chart reaches them
# (service.history.REACH is 24 weeks), and a page's own clock may be a little behind.
COUNTED_BACK = timedelta(weeks=25)
# recent_traffic is counted in slices of this width, aligned to whole hours (so to 2000-01-01,
# where service.history's buckets start), so a chart of buckets a multiple of it wide (5, 15 and
# 30 minutes: a segment under 12 hours old) adds slices up rather than counting rows.
SLICE = timedelta(minutes=5)
# How long recent rows are kept behind the hourly mark: the widest chart read from slices
# reaches 12 hours back (30 minutes x 24), and a page's clock may be a little behind.
KEPT = timedelta(hours=14)
# A recent mark further behind than this (the job away, or idle traffic) is not caught up slice
# by slice in one pass: it starts afresh, and the slices are known complete only from there.
CATCH_UP = timedelta(hours=2)
_MARK = "hourly_traffic"
_RECENT = "recent_traffic"
# Where recent_traffic's rows are whole slices from, up to the recent mark; the rows before it
# (counted before the upgrade, or before a gap) may each span several slices.
_SLICES = "recent_slices"


@dataclass
class CountReport:
    hours: int = 0
    impressions: int = 0
    conversions: int = 0
    # Every row before it counted, when the pass ended; None while none has been.
    counted_before: datetime | None = None
    # The pass stopped at its budget with hours still to count.
    unfinished: bool = False
    # Where recent_traffic's counts end, when the pass ended; None while none have been.
    recent_before: datetime | None = None


@dataclass(frozen=True)
class Marks:
    """Rows created before `hours` are in hourly_traffic; those from `hours` on and before
    `recent` are in recent_traffic; the rest are in neither. None: nothing counted yet. The rows
    from `slices` on and before `recent` are in recent_traffic's rows that start from `slices`
    on, each within one SLICE; those before `slices` may span more."""

    hours: datetime | None
    recent: datetime | None
    slices: datetime | None = None

    @property
    def counted_before(self) -> datetime | None:
        """Every row before it is in one of the two tables."""
        return max((m for m in (self.hours, self.recent) if m is not None), default=None)

    @property
    def sliced_from(self) -> datetime | None:
        """Where recent_traffic's rows are whole slices from, up to `recent`, as a chart that read
        these marks may still read them; None where there are none. A pass deletes the rows KEPT
        before the hourly mark it started from, which one pass after this read may have moved
        an hour on."""
        if self.slices is None or self.recent is None:
            return None
        start = self.slices if self.hours is None else max(self.slices, self.hours - KEPT + HOUR)
        return start if start < self.recent else None


def marks(session: Session) -> Marks:
    """The marks, in one statement: read apart, a pass could move them in between."""
    found = dict(
        session.execute(
            sa.select(col(HourlyTrafficMark.name), col(HourlyTrafficMark.counted_before)).where(
                col(HourlyTrafficMark.name).in_([_MARK, _RECENT, _SLICES])
            )
        ).all()
    )
    return Marks(hours=found.get(_MARK), recent=found.get(_RECENT), slices=found.get(_SLICES))


def counted_before(session: Session) -> datetime | None:
    """The hourly mark: rows created before it are in hourly_traffic, the rest are not."""
    return marks(session).hours


def count_hours(
    *,
    engine: sa.Engine,
    now: datetime | None = None,
    budget: timedelta = PASS_BUDGET,
    clock: Callable[[], float] = time.monotonic,
) -> CountReport:
    """Count every whole hour that ended LAG before `now` (the database's clock when None) and
    is not counted yet, oldest first, one transaction an hour, until `budget` is spent."""
    report = CountReport()
    started = clock()
    with Session(engine) as session:
        session.execute(
            insert_for(session)(HourlyTrafficMark)
            .values([{"name": name, "counted_before": None} for name in (_MARK, _RECENT, _SLICES)])
            .on_conflict_do_nothing()
        )
        session.commit()
        due = (now or _database_now(session)) - LAG
        due_before = _floor_hour(due)
        kept_from = counted_before(session)
        while True:
            mark = counted_before(session)
            hour = _next_hour_with_rows(session, mark, due_before)
            session.rollback()  # ends the reads: each hour is counted and stored in its own
            if hour is None:
                report.counted_before = mark
                break
            if clock() - started > budget.total_seconds():
                report.unfinished = True
                report.counted_before = mark
                break
            counted = _count_hour(session, mark, hour, kept_from)
            if counted is not None:
                report.hours += 1
                report.impressions += counted[0]
                report.conversions += counted[1]
        if not report.unfinished:
            report.recent_before = _count_recent(session, due)
    if report.hours or report.unfinished:
        log.info(
            "hourly traffic: counted %d hour%s (%d impressions, %d conversions), every row before "
            "%s now in; %s; %.2f s",
            report.hours,
            "" if report.hours == 1 else "s",
            report.impressions,
            report.conversions,
            _shown(report.counted_before),
            "more to count, the next pass goes on" if report.unfinished else "up to date",
            clock() - started,
        )
    return report


def _count_hour(
    session: Session, mark: datetime | None, hour: datetime, kept_from: datetime | None
) -> tuple[int, int] | None:
    """Count `hour`'s rows, then store them and move the mark past it, in one transaction, if the
    mark is still at `mark`, deleting the recent rows before `kept_from`; (impressions,
    conversions), or None where another pass moved it first.

    The rows are counted before the claim, not under it: on SQLite the claim takes the database's
    write lock, and every decision waits for it (up to its 10 s, then a 503) while a busy hour's
    rows are counted. A due hour's rows are all committed (LAG), so the counts are as good read
    before the claim; two passes at once both count, and only the one whose claim lands stores."""
    end = hour + HOUR
    counts = impressions, conversions = _counts(session, hour, end)
    if not _claim_and_store(session, _MARK, mark, end, HourlyTraffic, "hour", {hour: counts}):
        return None
    if kept_from is not None:
        session.execute(sa.delete(RecentTraffic).where(col(RecentTraffic.start) < kept_from - KEPT))
    session.commit()
    return impressions.total(), conversions.total()


def _count_recent(session: Session, due: datetime) -> datetime | None:
    """Count the rows from the recent mark up to the last SLICE boundary before `due` into
    recent_traffic, a row per variant and slice, and move the recent mark there, as _count_hour
    counts an hour: counted first, stored only where the mark is still where it was read. Where
    the recent mark is then; called once every hour before `due`'s is counted.

    A mark missing or over CATCH_UP behind starts afresh from the hourly mark or the start of
    `due`'s hour, whichever is later (the hours before are counted), and the slices are known
    whole from there only (the mark 'recent_slices'); else the slices go on from the mark,
    across the hours counted meanwhile, which the charts of whole hours then read from
    hourly_traffic."""
    found = marks(session)
    until = _floor_slice(due)
    if found.recent is not None and found.slices is not None and found.recent >= until - CATCH_UP:
        start, sliced_from = found.recent, found.slices
    else:
        start = max(m for m in (found.hours, found.recent, _floor_hour(due)) if m is not None)
        sliced_from = start
    if start >= until:
        session.rollback()
        return found.recent
    slices = _counts_by_slice(session, _slice_starts(start, until), until)
    if not slices:
        # Not moved past a stretch found empty: rows written into it later (the demo's) are
        # counted by the next pass, as _next_hour_with_rows leaves empty hours for them.
        return found.recent
    if not _claim_and_store(session, _RECENT, found.recent, until, RecentTraffic, "start", slices):
        moved = marks(session).recent
        session.rollback()
        return moved
    if sliced_from != found.slices:
        session.execute(
            sa.update(HourlyTrafficMark)
            .where(col(HourlyTrafficMark.name) == _SLICES)
            .values(counted_before=sliced_from)
        )
    session.commit()
    log.debug(
        "recent traffic: counted %d impressions, %d conversions from %s to %s",
        sum(i.total() for i, _ in slices.values()),
        sum(c.total() for _, c in slices.values()),
        start.isoformat(),
        until.isoformat(),
    )
    return until


def _slice_starts(start: datetime, until: datetime) -> list[datetime]:
    """`start`, then each SLICE boundary after it and before `until`."""
    starts = [start]
    while (following := starts[-1] + SLICE - _into_slice(starts[-1])) < until:
        starts.append(following)
    return starts


def _into_slice(moment: datetime) -> timedelta:
    """How far into its SLICE `moment` is (a whole number of minutes, dividing the hour)."""
    moment = moment.astimezone(UTC)
    return timedelta(
        minutes=moment.minute % (SLICE // timedelta(minutes=1)),
        seconds=moment.second,
        microseconds=moment.microsecond,
    )


def _floor_slice(moment: datetime) -> datetime:
    return moment.astimezone(UTC) - _into_slice(moment)


def _counts(session: Session, start: datetime, end: datetime) -> tuple[Counter[int], Counter[int]]:
    """Impressions and conversions per variant created from `start` to before `end`."""
    counts = _per_variant(session, Impression, start, end), _per_variant(session, Event, start, end)
    # Ends the read's transaction: on SQLite the claim that follows must begin its own.
    session.rollback()
    return counts


def _counts_by_slice(
    session: Session, starts: list[datetime], until: datetime
) -> dict[datetime, tuple[Counter[int], Counter[int]]]:
    """Impressions and conversions per variant in each slice from `starts` (ascending, the last
    ending at `until`), for the slices that hold any."""
    found: dict[datetime, tuple[Counter[int], Counter[int]]] = {}
    tables: tuple[type[Impression] | type[Event], ...] = (Impression, Event)
    for part, table in enumerate(tables):
        for variant_id, index, count in _per_variant_and_slice(session, table, starts, until):
            found.setdefault(starts[index], (Counter(), Counter()))[part][variant_id] += count
    # Ends the read's transaction: on SQLite the claim that follows must begin its own.
    session.rollback()
    return found


def _per_variant_and_slice(
    session: Session,
    table: type[Impression] | type[Event],
    starts: list[datetime],
    until: datetime,
) -> list[tuple[int, int, int]]:
    """(variant id, index of its slice in `starts`, rows) for each that holds any: one grouped
    query, not one a slice (an idle server's pass reads up to CATCH_UP of empty slices again)."""
    created = col(table.created_at)
    ends = [*starts[1:], until]

    def index_in(first: int, past: int) -> sa.ColumnElement[int]:
        # Halving the slices at each step: a row meets 5 comparisons of 24 slices, not 12 on
        # average (2 M rows over 24 slices on PostgreSQL: 0.40 s, against 0.55 s one by one in a
        # flat CASE and 0.35 s in a query a slice).
        if past - first == 1:
            return sa.literal(first, sa.Integer)
        middle = (first + past) // 2
        return sa.case(
            (created < ends[middle - 1], index_in(first, middle)), else_=index_in(middle, past)
        )

    in_slice = index_in(0, len(ends)).label("slice")
    rows = session.execute(
        sa.select(col(table.variant_id), in_slice, sa.func.count())
        .where(created >= starts[0], created < until)
        .group_by(col(table.variant_id), in_slice)
    )
    return [(variant_id, index, count) for variant_id, index, count in rows]


def _claim_and_store(
    session: Session,
    name: str,
    read: datetime | None,
    to: datetime,
    table: type[HourlyTraffic] | type[RecentTraffic],
    key: str,
    counts: dict[datetime, tuple[Counter[int], Counter[int]]],
) -> bool:
    """Move the mark `name` from `read`, where it was read, to `to`, and insert each of `counts`
    (impressions, conversions per variant, by the moment they start from) into `table`, that
    moment in column `key`, uncommitted; False, rolled back, where another pass moved the mark
    first."""
    at_mark = (
        col(HourlyTrafficMark.counted_before).is_(None)
        if read is None
        else col(HourlyTrafficMark.counted_before) == read
    )
    claimed = rows_changed(
        session,
        sa.update(HourlyTrafficMark)
        .where(col(HourlyTrafficMark.name) == name, at_mark)
        .values(counted_before=to),
    )
    if claimed != 1:
        session.rollback()
        return False
    rows = [
        {
            "variant_id": variant_id,
            key: at,
            "impressions": impressions[variant_id],
            "conversions": conversions[variant_id],
        }
        for at, (impressions, conversions) in counts.items()
        for variant_id in sorted(impressions | conversions)
    ]
    if rows:
        session.execute(sa.insert(table), rows)
    return True


def _per_variant(
    session: Session, table: type[Impression] | type[Event], start: datetime, end: datetime
) -> Counter[int]:
    created = col(table.created_at)
    found = session.execute(
        sa.select(col(table.variant_id), sa.func.count())
        .where(created >= start, created < end)
        .group_by(col(table.variant_id))
    )
    return Counter({variant_id: count for variant_id, count in found})


def _next_hour_with_rows(
    session: Session, mark: datetime | None, due_before: datetime
) -> datetime | None:
    """The first hour from `mark` on that holds an impression or event and is due; None if
    there is none. Empty hours are stepped over without a transaction each, and the mark stays
    before the first row it has not counted: it never passes an hour nothing was counted in, so
    rows written into the past of an empty database (the demo's week of traffic) are counted."""
    since = due_before - COUNTED_BACK if mark is None else max(mark, due_before - COUNTED_BACK)
    firsts = [
        session.execute(
            sa.select(sa.func.min(col(table.created_at))).where(col(table.created_at) >= since)
        ).scalar()
        for table in (Impression, Event)
    ]
    found = [first for first in firsts if first is not None]
    if not found:
        return None
    hour = _floor_hour(min(found))
    return hour if hour < due_before else None


def _floor_hour(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def _database_now(session: Session) -> datetime:
    """The clock every process sharing the database agrees on (as the scheduler's slots are):
    PostgreSQL's server's; a SQLite file is shared only on one host."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    seconds = session.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
    return datetime.fromtimestamp(float(seconds), UTC)


def _shown(moment: datetime | None) -> str:
    return "none" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")
