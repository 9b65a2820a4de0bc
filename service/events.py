"""POST /v1/events: conversions, idempotent on event_id and on impression.

A batch is one transaction: the event rows and the counter increments they cause commit together,
so a crash leaves either both or neither, and a retry of the same batch counts nothing twice.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlmodel import Session

from service.models import UtcDateTime, Variant, utcnow
from service.schemas import EventIn, RejectedEvent
from service.sqlite_writers import writer_turn


@dataclass
class EventsOutcome:
    accepted: int = 0
    duplicate: int = 0
    rejections: list[RejectedEvent] = field(default_factory=list)
    segments: set[int] = field(default_factory=set)


# A batch travels as one parameter (a JSON text on SQLite, one array per column on PostgreSQL) and
# the database unpacks it, looks up each impression's variant and writes the rows in one statement.
# A parameter set per row cost SQLAlchemy and the driver microseconds of Python for every row, and
# a separate lookup a second pass: a batch of 1,000 ran at a fifth of a raw executemany that way.
# ON CONFLICT stays the one duplicate check, so concurrent batches cannot both count an event; what
# the statement wrote is learnt afterwards (_write_sqlite, _write_postgresql). Only two keys make a
# duplicate, the impression's conversion and the event_id: with no target, a row any other unique
# key refused (on PostgreSQL, an id sequence behind the table's ids) was skipped too, and answered
# as a duplicate, its conversion lost. Such a row now fails the batch. The column type binds the
# time, so SQLite stores SQLAlchemy's text format (sqlite3 alone appended "+00:00").
_CREATED_AT = sa.bindparam("created_at", type_=UtcDateTime)
_RECORD_EVENTS = {
    # `WHERE true`: SQLite's parser needs it to tell the upsert's ON CONFLICT from a join's ON.
    "sqlite": sa.text(
        "INSERT INTO event (event_id, impression_id, variant_id, type, value, created_at)"
        " SELECT json_extract(batch.value, '$[0]'), impression.id, impression.variant_id,"
        " json_extract(batch.value, '$[2]'), json_extract(batch.value, '$[3]'), :created_at"
        " FROM json_each(:rows) AS batch"
        " JOIN impression ON impression.id = json_extract(batch.value, '$[1]')"
        " WHERE true ON CONFLICT (impression_id, type) DO NOTHING"
        " ON CONFLICT (event_id) DO NOTHING"
    ).bindparams(_CREATED_AT),
    # PostgreSQL takes one conflict target, not both: naming the impression's and leaving out
    # stored event_ids with a WHERE, the batches that share event_ids with those running beside
    # them failed on each other's (test_concurrency's reused event_ids, past 4 reruns). So no
    # target here, and _sort_out_the_rest makes sure each row skipped is a duplicate.
    "postgresql": sa.text(
        "INSERT INTO event (event_id, impression_id, variant_id, type, value, created_at)"
        " SELECT batch.event_id, impression.id, impression.variant_id, batch.type, batch.value,"
        " :created_at"
        " FROM unnest(CAST(:event_ids AS text[]), CAST(:impression_ids AS text[]),"
        " CAST(:types AS text[]), CAST(:values AS float8[]))"
        " AS batch(event_id, impression_id, type, value)"
        " JOIN impression ON impression.id = batch.impression_id"
        # Rows go in in the order of the key they meet on: two batches naming the same
        # impressions in different orders each waited for a row the other had written first.
        " ORDER BY impression.id"
        " ON CONFLICT DO NOTHING RETURNING impression_id, variant_id"
    ).bindparams(_CREATED_AT),
}
# SQLite: the rows one INSERT wrote are an id span (see _write_sqlite); their variants' counters go
# up in one statement, which names the segments it touched.
_COUNT_SPAN = sa.text(
    "UPDATE variant SET conversions = conversions + written.n"
    " FROM (SELECT variant_id, count(*) AS n FROM event WHERE id BETWEEN :first AND :last"
    " GROUP BY variant_id) AS written"
    " WHERE variant.id = written.variant_id RETURNING segment_id"
)
_SPAN_IMPRESSIONS = sa.text("SELECT impression_id FROM event WHERE id BETWEEN :first AND :last")
_KNOWN_IMPRESSIONS = sa.text("SELECT id FROM impression WHERE id IN :ids").bindparams(
    sa.bindparam("ids", expanding=True)
)
# Every event is a conversion (schemas.EventIn), one per impression.
_CONVERTED_IMPRESSIONS = sa.text(
    "SELECT impression_id FROM event WHERE impression_id IN :ids"
).bindparams(sa.bindparam("ids", expanding=True))
_STORED_EVENT_IDS = sa.text("SELECT event_id FROM event WHERE event_id IN :ids").bindparams(
    sa.bindparam("ids", expanding=True)
)
_variant = Variant.__table__  # type: ignore[attr-defined]
# PostgreSQL: the counters from RETURNING's rows, one UPDATE per variant in a fixed order, once
# every row of the batch is in.
_COUNT_CONVERSIONS = (
    sa.update(_variant)
    .where(_variant.c.id == sa.bindparam("variant"))
    .values(conversions=_variant.c.conversions + sa.bindparam("converted"))
)
_SEGMENTS_OF = sa.select(_variant.c.segment_id).where(
    _variant.c.id.in_(sa.bindparam("ids", expanding=True))
)

# PostgreSQL: a batch that deadlocked runs again holding the slot of each impression and event_id
# it names, locked in slot order to the end of its transaction, and its counters go up last, in
# variant order. A row carries two keys, and no one order of rows sorts both: batches in impression
# order that paired each other's event_ids with other impressions each waited for a row the other
# had written first (eight clients here: 84 deadlocks in 320 batches, 4 of them past their
# retries, answered 503). Only a rerun takes slots: a batch of hundreds shares a slot with nearly
# any other, so batches that always took them were written one at a time (four clients sending
# 1,000 events a batch: 32,000-34,000 events/s, against 56,000-60,000 without), to spare the
# clients who reuse event_ids across impressions a retry. Slots, not a lock a key: an advisory
# lock takes an entry of the server's shared lock table, sized at max_locks_per_transaction (64)
# a connection, and a batch of 1,000 would take 2,000.
_LOCK_SLOTS = 64
# The two-key form: its locks never meet the one-key ones of service.cli and service.migrate.
_EVENT_SLOTS_LOCK = 7_243_903
_TAKE_SLOTS = sa.text(
    "SELECT pg_advisory_xact_lock(:namespace, slot) FROM unnest(CAST(:slots AS int[])) AS slot"
)

_Row = tuple[str | None, str, str, float | None]
_Indexed = tuple[int, EventIn]


def record_events(*, session: Session, events: list[EventIn]) -> EventsOutcome:
    retries = _RETRIES
    take_slots = False
    while True:
        try:
            return _record_events(session, events, take_slots=take_slots)
        except (sa.exc.IntegrityError, sa.exc.OperationalError) as exc:
            # PostgreSQL: `copybandit purge` deleted an impression after the INSERT's join saw it,
            # and the event's foreign key failed. Once more, the join no longer sees it, and the
            # event is refused as an unknown impression instead of failing the batch with a 500.
            # Or the batch deadlocked (with another batch, or with purge deleting a row it waits
            # for): it runs again behind the other, taking slots (see _LOCK_SLOTS), so it can meet
            # only a batch on its first run, and that one, if chosen to fail, reruns with slots.
            state = getattr(exc.orig, "sqlstate", None)
            if retries == 0 or state not in _RUN_AGAIN:
                raise
            retries -= 1
            take_slots = take_slots or state == _DEADLOCK_DETECTED
            session.rollback()


# Two were too few when each rerun could deadlock as the first had: 4 batches in 320 answered 503.
_RETRIES = 4
_FOREIGN_KEY_VIOLATION = "23503"
_DEADLOCK_DETECTED = "40P01"
_RUN_AGAIN = {_FOREIGN_KEY_VIOLATION, _DEADLOCK_DETECTED}


def _record_events(session: Session, events: list[EventIn], *, take_slots: bool) -> EventsOutcome:
    outcome = EventsOutcome()
    connection = session.connection()
    postgresql = connection.dialect.name == "postgresql"
    write = _write_postgresql if postgresql else _write_sqlite
    # PostgreSQL's conversions per variant, counted once both writes are in: counted after each,
    # a batch held the first write's variants while the second waited, out of id order.
    converted: Counter[int] = Counter()
    with writer_turn(connection.engine, connection.connection.driver_connection):
        if postgresql and take_slots:
            _take_slots(connection, events)
        # Events are judged as if sent one by one, in order. The first write takes every event
        # that shares no impression or event_id with an earlier one; most batches are only that.
        rows, positions, repeats = _first_of_each(events)
        write(connection, outcome, rows, positions, converted)
        if repeats:
            # A repeat is judged against what is stored now, the first write included: a repeat
            # of a refused event (an unknown impression, a conversion stored before) is not taken
            # for a duplicate of something that was never counted.
            rows, positions = _settle_repeats(connection, outcome, repeats)
            write(connection, outcome, rows, positions, converted)
        if converted:
            _count_conversions(connection, outcome, converted)
        session.commit()
    outcome.rejections.sort(key=lambda rejection: rejection.index)  # repeats' come last
    return outcome


def _take_slots(connection: sa.Connection, events: list[EventIn]) -> None:
    """Wait for the batches that name a key in a slot of this one's (see _LOCK_SLOTS).

    A single event needs none: it waits for another's row holding no row of its own."""
    if len(events) < 2:
        return
    keys = {event["impression_id"] for event in events}
    keys.update(event_id for event in events if (event_id := event.get("event_id")))
    slots = sorted({zlib.crc32(key.encode()) % _LOCK_SLOTS for key in keys})
    connection.execute(_TAKE_SLOTS, {"namespace": _EVENT_SLOTS_LOCK, "slots": slots})


def _row(event: EventIn) -> _Row:
    return (event.get("event_id"), event["impression_id"], event["type"], event.get("value"))


def _first_of_each(events: list[EventIn]) -> tuple[list[_Row], list[int], list[_Indexed]]:
    """The events that share no impression or event_id with an earlier one, with their
    positions; and the rest."""
    rows = list(map(_row, events))
    keyed = [row[0] for row in rows if row[0] is not None]
    if len({row[1] for row in rows}) == len(rows) and len(set(keyed)) == len(keyed):
        return rows, list(range(len(rows))), []  # no repeats: most batches
    rows = []
    positions: list[int] = []
    repeats: list[_Indexed] = []
    seen_impressions: set[str] = set()
    seen_event_ids: set[str] = set()
    for index, event in enumerate(events):
        impression_id, event_id = event["impression_id"], event.get("event_id")
        repeat = impression_id in seen_impressions or event_id in seen_event_ids
        # A repeat's keys are taken too: an event after it that shares one must wait for it.
        seen_impressions.add(impression_id)
        if event_id is not None:
            seen_event_ids.add(event_id)
        if repeat:
            repeats.append((index, event))
            continue
        rows.append(_row(event))
        positions.append(index)
    return rows, positions, repeats


def _settle_repeats(
    connection: sa.Connection, outcome: EventsOutcome, repeats: list[_Indexed]
) -> tuple[list[_Row], list[int]]:
    """Refuse or count as duplicates the repeats that the stored rows decide, in one lookup of
    each kind; return the rest, in order, each new to the batch, for one more write.

    Judged in Python, not in a write per round: a batch that repeated one unknown impression a
    thousand times took a thousand rounds, holding SQLite's write lock for 0.2 s a batch."""
    impression_ids = list({event["impression_id"] for _, event in repeats})
    event_ids = list({event["event_id"] for _, event in repeats if event.get("event_id")})
    known = set(connection.execute(_KNOWN_IMPRESSIONS, {"ids": impression_ids}).scalars())
    converted = set(connection.execute(_CONVERTED_IMPRESSIONS, {"ids": impression_ids}).scalars())
    stored = (
        set(connection.execute(_STORED_EVENT_IDS, {"ids": event_ids}).scalars())
        if event_ids
        else set()
    )
    rows: list[_Row] = []
    positions: list[int] = []
    for index, event in repeats:
        impression_id, event_id = event["impression_id"], event.get("event_id")
        if impression_id not in known:
            outcome.rejections.append(
                RejectedEvent(index=index, field="impression_id", reason="unknown impression")
            )
        elif impression_id in converted or event_id in stored:
            outcome.duplicate += 1
        else:
            converted.add(impression_id)
            if event_id is not None:
                stored.add(event_id)
            rows.append(_row(event))
            positions.append(index)
    return rows, positions


def _write_sqlite(
    connection: sa.Connection,
    outcome: EventsOutcome,
    rows: list[_Row],
    positions: list[int],
    converted: Counter[int],
) -> None:
    """Write the rows and count them at once: SQLite's write lock is the batch's alone, so no
    order of taking rows can deadlock (`converted` is PostgreSQL's)."""
    if not rows:
        return
    result = connection.execute(
        _RECORD_EVENTS["sqlite"], {"rows": json.dumps(rows), "created_at": utcnow()}
    )
    written = result.rowcount
    outcome.accepted += written
    if written == 0:
        _sort_out_the_rest(connection, outcome, rows, positions, inserted=set())
        return
    # SQLite numbers a new row one past the table's largest id, and the statement held the only
    # write lock, so the rows it wrote are the last `written` ids. Read back that way, not through
    # RETURNING, which cost 0.8 µs an event (a tenth of a batch's time) on SQLite.
    span = {"first": result.lastrowid - written + 1, "last": result.lastrowid}
    if written < len(rows):
        inserted = set(connection.execute(_SPAN_IMPRESSIONS, span).scalars())
        _sort_out_the_rest(connection, outcome, rows, positions, inserted)
    outcome.segments.update(connection.execute(_COUNT_SPAN, span).scalars())


def _write_postgresql(
    connection: sa.Connection,
    outcome: EventsOutcome,
    rows: list[_Row],
    positions: list[int],
    converted: Counter[int],
) -> None:
    """Write the rows; add what they convert, per variant, to `converted`."""
    if not rows:
        return
    result = connection.execute(
        _RECORD_EVENTS["postgresql"],
        {
            "event_ids": [row[0] for row in rows],
            "impression_ids": [row[1] for row in rows],
            "types": [row[2] for row in rows],
            "values": [row[3] for row in rows],
            "created_at": utcnow(),
        },
    )
    # The driver's own tuples: a thousand SQLAlchemy rows around them cost a tenth of a batch.
    inserted: dict[str, int] = dict(result.cursor.fetchall())
    result.close()
    outcome.accepted += len(inserted)
    if len(inserted) < len(rows):
        _sort_out_the_rest(connection, outcome, rows, positions, set(inserted))
    converted.update(inserted.values())


def _count_conversions(
    connection: sa.Connection, outcome: EventsOutcome, converted: Counter[int]
) -> None:
    variant_ids = sorted(converted)
    # Fixed lock order: concurrent batches touching the same variants cannot deadlock.
    connection.execute(
        _COUNT_CONVERSIONS, [{"variant": v, "converted": converted[v]} for v in variant_ids]
    )
    outcome.segments.update(connection.execute(_SEGMENTS_OF, {"ids": variant_ids}).scalars())


def _sort_out_the_rest(
    connection: sa.Connection,
    outcome: EventsOutcome,
    rows: list[_Row],
    positions: list[int],
    inserted: set[str],
) -> None:
    """Rows the INSERT skipped: their impression is unknown, or they were recorded before."""
    skipped = [
        (row, index) for row, index in zip(rows, positions, strict=True) if row[1] not in inserted
    ]
    impression_ids = [row[1] for row, _ in skipped]
    known = set(connection.execute(_KNOWN_IMPRESSIONS, {"ids": impression_ids}).scalars())
    if connection.dialect.name == "postgresql":
        _all_duplicates(connection, [row for row, _ in skipped if row[1] in known])
    for row, index in skipped:
        if row[1] in known:
            outcome.duplicate += 1
        else:
            outcome.rejections.append(
                RejectedEvent(index=index, field="impression_id", reason="unknown impression")
            )


class NotADuplicate(Exception):
    """A row the INSERT skipped broke a unique key that makes no duplicate."""


def _all_duplicates(connection: sa.Connection, skipped: list[_Row]) -> None:
    """PostgreSQL's INSERT names no conflict target (see _RECORD_EVENTS): each row it skipped on a
    known impression must meet a stored row by the impression's conversion or by event_id."""
    if not skipped:
        return
    impression_ids = [row[1] for row in skipped]
    event_ids = [row[0] for row in skipped if row[0] is not None]
    converted = set(connection.execute(_CONVERTED_IMPRESSIONS, {"ids": impression_ids}).scalars())
    stored = (
        set(connection.execute(_STORED_EVENT_IDS, {"ids": event_ids}).scalars())
        if event_ids
        else set()
    )
    for event_id, impression_id, _, _ in skipped:
        if impression_id not in converted and event_id not in stored:
            raise NotADuplicate(
                f"the event on impression {impression_id} broke a unique key of the event table"
                " other than its conversion's and its event_id's (is the id sequence behind?)"
            )
