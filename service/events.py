"""POST /v1/events: conversions, idempotent on event_id and on impression.

A batch is one transaction: the event rows and the counter increments they cause commit together,
so a crash leaves either both or neither, and a retry of the same batch counts nothing twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from service.models import Event, Impression, Variant, utcnow
from service.schemas import EventIn, RejectedEvent


@dataclass
class EventsOutcome:
    accepted: int = 0
    duplicate: int = 0
    rejections: list[RejectedEvent] = field(default_factory=list)
    experiments: set[int] = field(default_factory=set)
    segments: set[int] = field(default_factory=set)


_impression = Impression.__table__  # type: ignore[attr-defined]
_event = Event.__table__  # type: ignore[attr-defined]
_variant = Variant.__table__  # type: ignore[attr-defined]
# Built once and run with parameter lists: SQLAlchemy compiles each exactly once (a `.values(rows)`
# statement with a thousand rows would be compiled anew on every batch), and the driver's
# statement cache and psycopg's prepared statements are reused.
_KNOWN_IMPRESSIONS = sa.select(
    _impression.c.id,
    _impression.c.variant_id,
    _impression.c.experiment_id,
    _impression.c.segment_id,
).where(_impression.c.id.in_(sa.bindparam("ids", expanding=True)))
_RECORD_EVENTS = {
    dialect: insert(_event).on_conflict_do_nothing().returning(_event.c.impression_id)
    for dialect, insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_COUNT_CONVERSIONS = (
    sa.update(_variant)
    .where(_variant.c.id == sa.bindparam("variant"))
    .values(conversions=_variant.c.conversions + sa.bindparam("converted"))
)


def record_events(*, session: Session, events: list[EventIn]) -> EventsOutcome:
    outcome = EventsOutcome()
    connection = session.connection()
    known = {
        row.id: row
        for row in connection.execute(
            _KNOWN_IMPRESSIONS, {"ids": list({event.impression_id for event in events})}
        )
    }
    now = utcnow()
    rows: list[dict[str, object]] = []
    seen_impressions: set[str] = set()
    seen_event_ids: set[str] = set()
    for index, event in enumerate(events):
        impression = known.get(event.impression_id)
        if impression is None:
            outcome.rejections.append(
                RejectedEvent(index=index, field="impression_id", reason="unknown impression")
            )
            continue
        # Repeats inside one batch are duplicates, exactly as they would be across batches.
        if event.impression_id in seen_impressions or event.event_id in seen_event_ids:
            outcome.duplicate += 1
            continue
        seen_impressions.add(event.impression_id)
        if event.event_id is not None:
            seen_event_ids.add(event.event_id)
        rows.append(
            {
                "event_id": event.event_id,
                "impression_id": event.impression_id,
                "variant_id": impression.variant_id,
                "type": event.type,
                "value": event.value,
                "created_at": now,
            }
        )
    if rows:
        inserted = connection.execute(_RECORD_EVENTS[connection.dialect.name], rows).scalars().all()
        outcome.accepted = len(inserted)
        outcome.duplicate += len(rows) - len(inserted)
        per_variant = Counter(known[impression_id].variant_id for impression_id in inserted)
        if per_variant:
            # Fixed lock order: concurrent batches touching the same variants cannot deadlock.
            connection.execute(
                _COUNT_CONVERSIONS,
                [
                    {"variant": variant_id, "converted": per_variant[variant_id]}
                    for variant_id in sorted(per_variant)
                ],
            )
        outcome.experiments = {known[i].experiment_id for i in inserted}
        outcome.segments = {known[i].segment_id for i in inserted}
    session.commit()
    return outcome
