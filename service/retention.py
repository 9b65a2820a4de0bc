"""`copybandit purge`: delete old impression and event rows in batches, keeping counters exact.

Each batch is one transaction that deletes rows and adds what it deleted to the variants'
`purged_*` counts, so the counters (and the posteriors read from them) never move, and
`copybandit check` still balances. Events go first; an impression is deleted only once no event
refers to it, so a late conversion keeps its impression until the conversion itself ages out.
Sticky assignments go last, once unused for longer than the age: they hold hashed user ids, and
no counter counts them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from service.models import ASSIGNMENT_USE_NOTED_EVERY, Assignment, Event, Impression, utcnow

_impression = Impression.__table__  # type: ignore[attr-defined]
_event = Event.__table__  # type: ignore[attr-defined]
_variant = Event.metadata.tables["variant"]
_assignment = Assignment.__table__  # type: ignore[attr-defined]
# ASCII digits, as many as given: a long number is too old an age, not a different form.
_DURATION = re.compile(r"^([0-9]+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
# Beyond this the cutoff would fall before year 1, which datetime cannot hold.
_MAX_AGE = timedelta(days=36_500)


def parse_age(text: str) -> timedelta:
    """'90d', '12h' or '30m' as a timedelta; a ValueError says what is wrong otherwise (the CLI
    puts the option's name before it)."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"must look like 90d, 12h or 30m, got {text!r}")
    digits, unit = match.groups()
    significant = digits.lstrip("0")
    if not significant:
        raise ValueError(f"must be more than 0, like 90d, 12h or 30m, got {text!r}")
    # Compared as a count of units, never built: timedelta overflows (a traceback) past 10 digits
    # of days, and int() refuses 4,300 digits. Past 9 digits the age is over 100 years in any unit.
    if len(significant) > 9 or int(significant) > _MAX_AGE // timedelta(**{_UNITS[unit]: 1}):
        raise ValueError(f"must be at most 36500d (100 years), got {text!r}")
    return timedelta(**{_UNITS[unit]: int(significant)})


@dataclass
class PurgeReport:
    cutoff: datetime
    events: int = 0
    impressions: int = 0
    assignments: int = 0


def purge(
    *,
    engine: sa.Engine,
    older_than: timedelta,
    batch_size: int = 5_000,
    now: datetime | None = None,
    progress: Callable[[PurgeReport], None] | None = None,
) -> PurgeReport:
    report = PurgeReport(cutoff=(now or utcnow()) - older_than)
    unreferenced = ~sa.exists().where(_event.c.impression_id == _impression.c.id)
    for table, counter, keep_if in (
        (_event, "purged_conversions", sa.true()),
        (_impression, "purged_impressions", unreferenced),
    ):
        old = sa.select(table.c.id).where(table.c.created_at < report.cutoff, keep_if)
        while True:
            try:
                deleted = _purge_batch(engine, table, counter, old.limit(batch_size))
            except sa.exc.IntegrityError:
                # PostgreSQL: a conversion for one of these impressions committed after the
                # DELETE looked; nothing of this batch was kept, and the next one passes it by.
                continue
            if deleted is None:
                break
            if table is _event:
                report.events += deleted
            else:
                report.impressions += deleted
            if progress is not None:
                progress(report)
    # A decision notes an assignment's use only once the noted time is this much older, so one
    # noted before the cutoff by less than that may have been used since.
    unused = _assignment.c.last_used_at < report.cutoff - ASSIGNMENT_USE_NOTED_EVERY
    while deleted := _purge_assignments(engine, unused, batch_size):
        report.assignments += deleted
        if progress is not None:
            progress(report)
    return report


def _purge_batch(
    engine: sa.Engine, table: sa.Table, counter: str, batch: sa.Select[tuple[int]]
) -> int | None:
    """Delete one batch and count it; None when nothing was left to delete."""
    with engine.begin() as connection:
        # One statement chooses the batch and deletes it. A SELECT of the ids and then DELETEs
        # naming them, 900 bound ids a statement, took a year's backlog of 1.52M impressions
        # 50-54 s on PostgreSQL (26-31 s SQLite); this takes 38-43 s (18-21 s). What it returns
        # is what it removed: a purge running beside this one may have deleted some of the same
        # rows already, and must not count them twice.
        deleted = connection.execute(
            table.delete()
            .where(table.c.id.in_(batch.scalar_subquery()))
            .returning(table.c.variant_id)
        ).scalars()
        per_variant = Counter(deleted)
        if not per_variant:
            # Another purge took this batch first, or nothing is left.
            return 0 if connection.execute(sa.select(batch.exists())).scalar() else None
        for variant_id in sorted(per_variant):  # fixed lock order, as everywhere else
            connection.execute(
                _variant.update()
                .where(_variant.c.id == variant_id)
                .values({counter: _variant.c[counter] + per_variant[variant_id]})
            )
    return per_variant.total()


def _purge_assignments(engine: sa.Engine, unused: sa.ColumnElement[bool], batch_size: int) -> int:
    """Delete one batch of unused assignments; how many went. The DELETE checks `unused` again:
    a decision may have noted a use since the batch was chosen."""
    key = sa.tuple_(_assignment.c.experiment_id, _assignment.c.segment_id, _assignment.c.user_hash)
    batch = sa.select(*key.clauses).where(unused).limit(batch_size)
    with engine.begin() as connection:
        return connection.execute(_assignment.delete().where(key.in_(batch), unused)).rowcount
