"""`copybandit purge`: delete old impression and event rows in batches, keeping counters exact.

Each batch is one transaction that deletes up to `batch_size` impressions together with their
conversions and adds what it deleted to the variants' `purged_*` counts, so the counters (and the
posteriors read from them) never move, and `copybandit check` still balances. An impression goes
only once it and every event referring to it are older than the cutoff: a late conversion keeps
its impression, and a conversion stamped before the cutoff (another host's clock) waits for its
younger impression. The event row is what makes a replayed conversion a duplicate, so at no point,
not even in a purge stopped half-way, is an impression left without its conversion; a replay
after both went names an unknown impression and is refused. Sticky assignments go last, once
unused for longer than the age: they hold hashed user ids, and no counter counts them.
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
    while True:
        try:
            deleted = _purge_batch(engine, report.cutoff, batch_size)
        except sa.exc.IntegrityError:
            # PostgreSQL: a conversion for one of these impressions committed after the
            # DELETE looked; nothing of this batch was kept, and the next one passes it by.
            continue
        if deleted is None:
            break
        report.events += deleted[0]
        report.impressions += deleted[1]
        if progress is not None:
            progress(report)
    # A decision notes an assignment's use only once the noted time is this much older, so one
    # noted before the cutoff by less than that may have been used since.
    unused = _assignment.c.last_used_at < report.cutoff - ASSIGNMENT_USE_NOTED_EVERY
    while deleted_assignments := _purge_assignments(engine, unused, batch_size):
        report.assignments += deleted_assignments
        if progress is not None:
            progress(report)
    return report


def _purge_batch(engine: sa.Engine, cutoff: datetime, batch_size: int) -> tuple[int, int] | None:
    """Delete one batch of old impressions with their events and count them; (events,
    impressions), or None when nothing was left to delete.

    An impression and its conversion go in the same transaction: the event row is what makes a
    replayed conversion a duplicate, and deleted on its own (events were once purged in batches
    of their own first) the impression took the replay as new and counted it again."""
    # The oldest `batch_size` impressions whose events, if any, are old too.
    batch = _oldest_old_impressions(cutoff, batch_size, without_events_since=cutoff)
    # Once their events are gone, the same impressions are the first old ones with no event at
    # all. Asked that way, a conversion that committed since the first statement looked keeps
    # its impression (and one still in flight fails the foreign key: the batch is rolled back).
    eventless = _oldest_old_impressions(cutoff, batch_size, without_events_since=None)
    with engine.begin() as connection:
        # Each statement chooses its rows and deletes them. A SELECT of the ids and then DELETEs
        # naming them, 900 bound ids a statement, took a year's backlog of 1.52M impressions
        # 50-54 s on PostgreSQL (26-31 s SQLite); one statement a table, 38-43 s (18-21 s).
        # Choosing the batch twice, once per table, costs about a third more (45K impressions
        # with 4.5K events: SQLite 0.28 s before, 0.40 s now; PostgreSQL 0.75 s, 1.0 s). What
        # they return is what they removed: a purge running beside this one may have deleted
        # some of the same rows already, and must not count them twice.
        events = _deleted_per_variant(connection, _event.c.impression_id, batch)
        impressions = _deleted_per_variant(connection, _impression.c.id, eventless)
        if not impressions and not events:
            # Another purge took this batch first, or nothing is left.
            return (0, 0) if connection.execute(sa.select(batch.exists())).scalar() else None
        for variant_id in sorted(events | impressions):  # fixed lock order, as everywhere else
            connection.execute(
                _variant.update()
                .where(_variant.c.id == variant_id)
                .values(
                    purged_conversions=_variant.c.purged_conversions + events[variant_id],
                    purged_impressions=_variant.c.purged_impressions + impressions[variant_id],
                )
            )
    return events.total(), impressions.total()


def _oldest_old_impressions(
    cutoff: datetime, batch_size: int, *, without_events_since: datetime | None
) -> sa.Select[tuple[int]]:
    """Ids of the oldest `batch_size` impressions from before `cutoff` that no event refers to,
    counting only events from `without_events_since` on (None: any event).

    Ordered in full, ties on the time broken by id, so that a batch's two statements name the
    same ones, and chosen along the index on created_at, which a scan in id order would read to
    the end of the table in the last batch, holding SQLite's write lock."""
    referring = _event.alias("referring")
    refers = referring.c.impression_id == _impression.c.id
    if without_events_since is not None:
        refers = refers & (referring.c.created_at >= without_events_since)
    return (
        sa.select(_impression.c.id)
        .where(_impression.c.created_at < cutoff, ~sa.exists().where(refers))
        .order_by(_impression.c.created_at, _impression.c.id)
        .limit(batch_size)
    )


def _deleted_per_variant(
    connection: sa.Connection, chosen_by: sa.Column[int], impressions: sa.Select[tuple[int]]
) -> Counter[int]:
    """Delete the rows of `chosen_by`'s table whose `chosen_by` is among `impressions`; how many
    went, per variant."""
    table = chosen_by.table
    deleted = connection.execute(
        table.delete()
        .where(chosen_by.in_(impressions.scalar_subquery()))
        .returning(table.c.variant_id)
    )
    return Counter(deleted.scalars())


def _purge_assignments(engine: sa.Engine, unused: sa.ColumnElement[bool], batch_size: int) -> int:
    """Delete one batch of unused assignments; how many went. The DELETE checks `unused` again:
    a decision may have noted a use since the batch was chosen."""
    key = sa.tuple_(_assignment.c.experiment_id, _assignment.c.segment_id, _assignment.c.user_hash)
    batch = sa.select(*key.clauses).where(unused).limit(batch_size)
    with engine.begin() as connection:
        return connection.execute(_assignment.delete().where(key.in_(batch), unused)).rowcount
