"""POST /v1/events: conversions, idempotent on event_id and on impression.

A batch is one transaction: the event rows and the counter increments they cause commit together,
so a crash leaves either both or neither, and a retry of the same batch counts nothing twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlmodel import Session, col, select

from service.db import insert_for
from service.models import Event, Impression, Variant
from service.schemas import EventIn, RejectedEvent


@dataclass
class EventsOutcome:
    accepted: int = 0
    duplicate: int = 0
    rejections: list[RejectedEvent] = field(default_factory=list)
    experiments: set[int] = field(default_factory=set)
    segments: set[int] = field(default_factory=set)


def record_events(*, session: Session, events: list[EventIn]) -> EventsOutcome:
    outcome = EventsOutcome()
    wanted = {event.impression_id for event in events}
    known = {
        row.id: row
        for row in session.exec(select(Impression).where(col(Impression.id).in_(wanted)))
    }
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
            }
        )
    if rows:
        inserted = (
            session.execute(
                insert_for(session)(Event)
                .values(rows)
                .on_conflict_do_nothing()
                .returning(col(Event.impression_id))
            )
            .scalars()
            .all()
        )
        outcome.accepted = len(inserted)
        outcome.duplicate += len(rows) - len(inserted)
        per_variant = Counter(known[impression_id].variant_id for impression_id in inserted)
        # Fixed lock order: concurrent batches touching the same variants cannot deadlock.
        for variant_id in sorted(per_variant):
            session.execute(
                sa.update(Variant)
                .where(col(Variant.id) == variant_id)
                .values(conversions=Variant.conversions + per_variant[variant_id])
            )
        outcome.experiments = {known[i].experiment_id for i in inserted}
        outcome.segments = {known[i].segment_id for i in inserted}
    session.commit()
    return outcome
