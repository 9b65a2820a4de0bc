"""A segment's traffic and conversions over time, bucketed per variant, for the dashboard charts.

Bucketing is one CASE expression over fixed boundaries rather than a date function, so the same
query runs on SQLite and PostgreSQL and scans each impression once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, col

from service.models import Event, Impression, Variant, utcnow

BUCKETS = 24
# Bucket widths the chart may use; the smallest that covers the history in BUCKETS steps wins,
# and the chart shows at most BUCKETS of them.
_WIDTHS = [timedelta(minutes=m) for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440, 2880, 10080)]
# The furthest back a chart reaches: rows older than this are in the counters but in no bucket.
REACH = _WIDTHS[-1] * BUCKETS


@dataclass(frozen=True)
class History:
    """Counts per variant and bucket.

    variant_ids : list, shape (n_variants,)
    starts : list of datetime, shape (n_buckets,), each bucket's first instant
    impressions, conversions : ndarray, shape (n_variants, n_buckets)
    earlier_impressions, earlier_conversions : ndarray, shape (n_variants,)
        Evidence from before the first bucket: rows older than the chart reaches and rows a purge
        deleted, both of which the variant's counters still hold.
    """

    variant_ids: list[int]
    starts: list[datetime]
    width: timedelta
    impressions: np.ndarray
    conversions: np.ndarray
    earlier_impressions: np.ndarray
    earlier_conversions: np.ndarray

    @property
    def empty(self) -> bool:
        return not self.impressions.any()

    def traffic_share(self) -> np.ndarray:
        """Each variant's share of the bucket's impressions; NaN where a bucket had none."""
        totals = self.impressions.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, self.impressions / totals, np.nan)

    def cumulative_rate(self) -> np.ndarray:
        """All conversions over all impressions up to the end of each bucket, those from before the
        chart included, so the last point is the variant's rate in the report; NaN before any."""
        shown = self.earlier_impressions[:, None] + self.impressions.cumsum(axis=1)
        converted = self.earlier_conversions[:, None] + self.conversions.cumsum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(shown > 0, converted / shown, np.nan)


def segment_history(
    *, session: Session, variant_ids: list[int], now: datetime | None = None
) -> History:
    now = now or utcnow()
    first = _oldest_impression(session, variant_ids)
    # Buckets are aligned to whole widths, so the same moment always lands in the same bucket;
    # the last one ends after `now`, which the width must leave room for.
    epoch = datetime(2000, 1, 1, tzinfo=now.tzinfo)

    def end_for(width: timedelta) -> datetime:
        return epoch + ((now - epoch) // width + 1) * width

    oldest = first if first is not None else now
    width = next((w for w in _WIDTHS if end_for(w) - w * BUCKETS <= oldest), _WIDTHS[-1])
    end = end_for(width)
    # Start at the oldest impression's bucket, so a young segment's chart is not mostly empty.
    count = min(BUCKETS, max(2, -(-(end - oldest) // width)))
    starts = [end - width * (count - i) for i in range(count)]
    impressions = _counts(session, Impression, variant_ids, starts, width)
    conversions = _counts(session, Event, variant_ids, starts, width)
    total_impressions, total_conversions = _totals(session, variant_ids)
    # Floored: a decision committed between the counts above and the counters' read would
    # otherwise leave a variant -1 impressions before the chart.
    return History(
        variant_ids,
        starts,
        width,
        impressions,
        conversions,
        earlier_impressions=np.maximum(total_impressions - impressions.sum(axis=1), 0),
        earlier_conversions=np.maximum(total_conversions - conversions.sum(axis=1), 0),
    )


def purged_impressions(*, session: Session, variant_ids: list[int]) -> int:
    """How many of these variants' impressions a retention purge deleted."""
    if not variant_ids:
        return 0
    total = sa.select(sa.func.coalesce(sa.func.sum(col(Variant.purged_impressions)), 0)).where(
        col(Variant.id).in_(variant_ids)
    )
    return int(session.execute(total).scalar_one())


def _oldest_impression(session: Session, variant_ids: list[int]) -> datetime | None:
    """Asked per variant, so each answer is the first entry of that variant in
    ix_impression_variant_id_created_at; PostgreSQL answered one min() over the whole list by
    walking the time index through every other experiment's impressions instead."""
    if not variant_ids:
        return None
    oldest_of_variant = (
        sa.select(sa.func.min(col(Impression.created_at)))
        .where(col(Impression.variant_id) == col(Variant.id))
        .scalar_subquery()
    )
    oldest = sa.select(sa.func.min(oldest_of_variant)).where(col(Variant.id).in_(variant_ids))
    return session.execute(oldest).scalar_one()


def _totals(session: Session, variant_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each variant's counters, in `variant_ids` order: every impression and conversion it has
    had, purged ones included, which no count of rows can recover."""
    impressions = np.zeros(len(variant_ids), dtype=np.int64)
    conversions = np.zeros(len(variant_ids), dtype=np.int64)
    if not variant_ids:
        return impressions, conversions
    row_of = {variant_id: i for i, variant_id in enumerate(variant_ids)}
    rows = session.execute(
        sa.select(col(Variant.id), col(Variant.impressions), col(Variant.conversions)).where(
            col(Variant.id).in_(variant_ids)
        )
    )
    for variant_id, shown, converted in rows:
        impressions[row_of[variant_id]] = shown
        conversions[row_of[variant_id]] = converted
    return impressions, conversions


def _counts(
    session: Session,
    table: type[Impression] | type[Event],
    variant_ids: list[int],
    starts: list[datetime],
    width: timedelta,
) -> np.ndarray:
    counts = np.zeros((len(variant_ids), len(starts)), dtype=np.int64)
    if not variant_ids:
        return counts
    created = col(table.created_at)
    bucket = sa.case(
        *((created < start + width, index) for index, start in enumerate(starts)),
        else_=len(starts) - 1,
    ).label("bucket")
    rows = session.execute(
        sa.select(col(table.variant_id), bucket, sa.func.count())
        .where(col(table.variant_id).in_(variant_ids), created >= starts[0])
        .group_by(col(table.variant_id), bucket)
    )
    row_of = {variant_id: i for i, variant_id in enumerate(variant_ids)}
    for variant_id, index, count in rows:
        counts[row_of[variant_id], index] += count
    return counts
