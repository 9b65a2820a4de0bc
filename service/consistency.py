"""`copybandit check`: recount every variant's counters from the rows they count.

The counters are what the posterior reads; they change only in the transaction that writes the
impression or event rows, so a recount must match exactly, after any crash. A mismatch is a bug
(or a hand edit), and this is how the kill test and an operator find one.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session

from service.models import Event, Impression, Variant

_impression = Impression.__table__  # type: ignore[attr-defined]
_event = Event.__table__  # type: ignore[attr-defined]
_variant = Variant.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Mismatch:
    variant_id: int
    counter: str
    stored: int
    recounted: int


@dataclass(frozen=True)
class CheckReport:
    variants: int
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        return not self.mismatches


def check_counters(*, session: Session) -> CheckReport:
    shown = (
        sa.select(_impression.c.variant_id, sa.func.count().label("n"))
        .group_by(_impression.c.variant_id)
        .subquery()
    )
    converted = (
        sa.select(_event.c.variant_id, sa.func.count().label("n"))
        .group_by(_event.c.variant_id)
        .subquery()
    )
    rows = session.execute(
        sa.select(
            _variant.c.id,
            _variant.c.impressions,
            _variant.c.conversions,
            _variant.c.purged_impressions + sa.func.coalesce(shown.c.n, 0),
            _variant.c.purged_conversions + sa.func.coalesce(converted.c.n, 0),
        )
        .outerjoin(shown, shown.c.variant_id == _variant.c.id)
        .outerjoin(converted, converted.c.variant_id == _variant.c.id)
        .order_by(_variant.c.id)
    ).all()
    mismatches = []
    for variant_id, impressions, conversions, impressions_recount, conversions_recount in rows:
        if impressions != impressions_recount:
            mismatches.append(Mismatch(variant_id, "impressions", impressions, impressions_recount))
        if conversions != conversions_recount:
            mismatches.append(Mismatch(variant_id, "conversions", conversions, conversions_recount))
    return CheckReport(variants=len(rows), mismatches=mismatches)
