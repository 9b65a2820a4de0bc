"""A segment's traffic and conversions over time, bucketed per variant, for the dashboard charts.

Bucketing is one CASE expression over fixed boundaries rather than a date function, so the same
query runs on SQLite and PostgreSQL and scans each impression once.

Charts of hour-wide buckets or wider (every width from 60 minutes is a whole number of hours,
aligned to 2000-01-01 00:00 UTC, so each bucket is whole UTC hours) read the hours
service.hourly_traffic has counted and the stretch of the hour it has counted since, and count
only the rows from its marks on: their cost is a row per variant and hour plus the last ten
minutes or so of traffic, however much the window holds. Charts of 5-, 15- and 30-minute buckets
(a segment 24 minutes to 12 hours old) read the 5-minute slices it has counted the same way, a row
per variant and slice, from where the slices are whole (before it, after an upgrade or a gap in its
passes, they count rows). One-minute charts, of a segment under 24 minutes old, count every row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, col

from service.hourly_traffic import HOUR, SLICE, Marks, marks
from service.models import Event, HourlyTraffic, Impression, RecentTraffic, Variant, utcnow

BUCKETS = 24
# Bucket widths the chart may use; the smallest that covers the history in BUCKETS steps wins,
# and the chart shows at most BUCKETS of them.
_WIDTHS = [timedelta(minutes=m) for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440, 2880, 10080)]
# The furthest back a chart reaches: rows older than this are in the counters but in no bucket.
REACH = _WIDTHS[-1] * BUCKETS

Key = TypeVar("Key")


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
        """Each variant's share of the bucket's impressions; NaN where a bucket had none, and
        before the variant was first shown: a line written on day 3 had been drawn at 0% on days
        1 and 2, which reads as copy the bandit starved, not copy that did not exist yet."""
        totals = self.impressions.sum(axis=0)
        shown_yet = (self.earlier_impressions[:, None] + self.impressions.cumsum(axis=1)) > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((totals > 0) & shown_yet, self.impressions / totals, np.nan)

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
    return segments_history(session=session, variant_ids={0: variant_ids}, now=now)[0]


def segments_history(
    *, session: Session, variant_ids: Mapping[Key, list[int]], now: datetime | None = None
) -> dict[Key, History]:
    """Each segment's history (`variant_ids`: its variants, by any key) in four queries however
    many segments there are: asked one segment at a time, an experiment page of 20 segments sent
    80. Segments whose charts share a width share its buckets, so each width is counted once."""
    now = now or utcnow()
    everyone = [variant_id for ids in variant_ids.values() for variant_id in ids]
    oldest = _oldest_impressions(session, everyone)
    grids = {
        key: _grid(min((at for v in ids if (at := oldest.get(v)) is not None), default=now), now)
        for key, ids in variant_ids.items()
    }
    # The longest grid of each width holds every shorter one's buckets as its last ones.
    by_width: dict[timedelta, _Grid] = {}
    for grid in grids.values():
        if len(grid.starts) > len(by_width.get(grid.width, _NO_GRID).starts):
            by_width[grid.width] = grid
    ranges = {
        width: (
            [v for key, ids in variant_ids.items() if grids[key].width == width for v in ids],
            grid,
        )
        for width, grid in by_width.items()
    }
    # Read once: hours before them are read from hourly_traffic and recent_traffic, rows from
    # them on are counted. Read again per query, a mark moved in between would count the rows
    # between its two places twice.
    read_any = any(_whole_hours(g) or _sliced(g) for _, g in ranges.values())
    mark = marks(session) if read_any else _NO_MARKS
    impressions = _counts(session, Impression, ranges, mark)
    conversions = _counts(session, Event, ranges, mark)
    for table, counts in _counted_hours(session, ranges, mark).items():
        for variant_id, by_bucket in counts.items():
            (impressions if table == "impressions" else conversions)[variant_id] += by_bucket
    total_impressions, total_conversions = _totals(session, everyone)
    row_of = {variant_id: i for i, variant_id in enumerate(everyone)}
    histories = {}
    for key, ids in variant_ids.items():
        grid = grids[key]
        rows = [row_of[variant_id] for variant_id in ids]
        own_impressions = _own(impressions, ids, grid)
        own_conversions = _own(conversions, ids, grid)
        # Floored: a decision committed between the counts above and the counters' read would
        # otherwise leave a variant -1 impressions before the chart.
        histories[key] = History(
            ids,
            grid.starts,
            grid.width,
            own_impressions,
            own_conversions,
            earlier_impressions=np.maximum(
                total_impressions[rows] - own_impressions.sum(axis=1), 0
            ),
            earlier_conversions=np.maximum(
                total_conversions[rows] - own_conversions.sum(axis=1), 0
            ),
        )
    return histories


@dataclass(frozen=True)
class _Grid:
    starts: list[datetime]
    width: timedelta


_NO_GRID = _Grid([], timedelta(0))
_NO_MARKS = Marks(hours=None, recent=None)


def _grid(oldest: datetime, now: datetime) -> _Grid:
    """The buckets of a chart from `oldest` to `now`. They are aligned to whole widths, so the
    same moment always lands in the same bucket; the last one ends after `now`, which the width
    must leave room for."""
    epoch = datetime(2000, 1, 1, tzinfo=now.tzinfo)

    def end_for(width: timedelta) -> datetime:
        return epoch + ((now - epoch) // width + 1) * width

    width = next((w for w in _WIDTHS if end_for(w) - w * BUCKETS <= oldest), _WIDTHS[-1])
    end = end_for(width)
    # Start at the oldest impression's bucket, so a young segment's chart is not mostly empty.
    count = min(BUCKETS, max(2, -(-(end - oldest) // width)))
    return _Grid([end - width * (count - i) for i in range(count)], width)


def _own(counts: dict[int, np.ndarray], variant_ids: list[int], grid: _Grid) -> np.ndarray:
    """The rows of `variant_ids` in `counts`, cut to the last buckets, which are `grid`'s: rows
    in the earlier buckets of a longer grid of its width are before its chart, as those older
    than a chart's first bucket are."""
    own = np.zeros((len(variant_ids), len(grid.starts)), dtype=np.int64)
    for i, variant_id in enumerate(variant_ids):
        if variant_id in counts:
            own[i] = counts[variant_id][len(counts[variant_id]) - len(grid.starts) :]
    return own


def purged_impressions(*, session: Session, variant_ids: Mapping[Key, list[int]]) -> dict[Key, int]:
    """How many of each segment's variants' impressions (`variant_ids`: its variants, by any
    key) a retention purge deleted, in one query."""
    everyone = [variant_id for ids in variant_ids.values() for variant_id in ids]
    if not everyone:
        return {key: 0 for key in variant_ids}
    query = sa.select(col(Variant.id), col(Variant.purged_impressions))
    purged = {i: n for i, n in session.execute(query.where(col(Variant.id).in_(everyone)))}
    return {key: sum(purged.get(v) or 0 for v in ids) for key, ids in variant_ids.items()}


def _oldest_impressions(session: Session, variant_ids: list[int]) -> dict[int, datetime | None]:
    """Asked per variant, so each answer is the first entry of that variant in
    ix_impression_variant_id_created_at; PostgreSQL answered one min() over the whole list by
    walking the time index through every other experiment's impressions instead."""
    if not variant_ids:
        return {}
    oldest_of_variant = (
        sa.select(sa.func.min(col(Impression.created_at)))
        .where(col(Impression.variant_id) == col(Variant.id))
        .scalar_subquery()
    )
    oldest = sa.select(col(Variant.id), oldest_of_variant).where(col(Variant.id).in_(variant_ids))
    return {variant_id: at for variant_id, at in session.execute(oldest)}


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


def _whole_hours(grid: _Grid) -> bool:
    """Whether each of the grid's buckets is whole UTC hours, which hourly_traffic can add up.
    Asked of the grid rather than its width: a `now` given in another zone aligns it there."""
    return grid.width >= HOUR and all(
        start.timestamp() % HOUR.total_seconds() == 0 for start in grid.starts
    )


def _sliced(grid: _Grid) -> bool:
    """Whether each of the grid's buckets is whole slices of recent_traffic (5, 15 and 30
    minutes wide, aligned to 2000-01-01 UTC as the slices are), and not whole hours."""
    return (
        not _whole_hours(grid)
        and grid.width % SLICE == timedelta(0)
        and all(start.timestamp() % SLICE.total_seconds() == 0 for start in grid.starts)
    )


def _rows_counted(
    grid: _Grid, mark: Marks, created: sa.orm.Mapped[datetime]
) -> sa.ColumnElement[bool]:
    """Which of a grid's rows are counted: from its start, or the marks where hourly_traffic and
    recent_traffic hold the rows before them; for a grid of slices, those before where the
    slices are whole too."""
    start = grid.starts[0]
    if _whole_hours(grid) and mark.counted_before is not None:
        return created >= max(start, mark.counted_before)
    sliced_from = mark.sliced_from
    if not _sliced(grid) or sliced_from is None or mark.recent is None:
        return created >= start
    if start >= sliced_from:
        return created >= max(start, mark.recent)
    return (created >= start) & ((created < sliced_from) | (created >= mark.recent))


def _counted_hours(
    session: Session,
    ranges: Mapping[timedelta, tuple[list[int], _Grid]],
    mark: Marks,
) -> dict[str, dict[int, np.ndarray]]:
    """hourly_traffic's and recent_traffic's impressions and conversions per variant and
    bucket, for the grids of whole hours from their start up to the marks, and for those of
    slices from their start or where the slices are whole up to the recent mark, in one query."""
    hourly: list[sa.ColumnElement[bool]] = []
    recent: list[sa.ColumnElement[bool]] = []
    grids = []
    hours_at, recent_at = col(HourlyTraffic.hour), col(RecentTraffic.start)
    for ids, grid in ranges.values():
        start = grid.starts[0]
        if not ids:
            continue
        if _whole_hours(grid) and mark.counted_before is not None:
            if mark.hours is not None and start < mark.hours:
                hourly.append(col(HourlyTraffic.variant_id).in_(ids) & (hours_at >= start))
            if mark.recent is not None and max(start, mark.hours or start) < mark.recent:
                recent.append(
                    col(RecentTraffic.variant_id).in_(ids)
                    & (recent_at >= max(start, mark.hours or start))
                )
        elif _sliced(grid) and (sliced_from := mark.sliced_from) is not None:
            if max(start, sliced_from) < (mark.recent or sliced_from):
                recent.append(
                    col(RecentTraffic.variant_id).in_(ids) & (recent_at >= max(start, sliced_from))
                )
        else:
            continue
        grids.append((ids, grid))
    found: dict[str, dict[int, np.ndarray]] = {"impressions": {}, "conversions": {}}
    if not hourly and not recent:
        return found
    parts: list[sa.Select[int, datetime, int, int]] = []
    for table, at, wanted, before in (
        (HourlyTraffic, hours_at, hourly, mark.hours),
        (RecentTraffic, recent_at, recent, mark.recent),
    ):
        if not wanted or before is None:
            continue
        parts.append(
            sa.select(
                col(table.variant_id).label("variant_id"),
                at.label("at"),
                col(table.impressions).label("impressions"),
                col(table.conversions).label("conversions"),
            ).where(sa.or_(*wanted), at < before)
        )
    counted = sa.union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    variant_id = counted.c.variant_id
    by_grid = _bucket_of(counted.c.at, variant_id, grids).label("bucket")
    rows = session.execute(
        sa.select(
            variant_id,
            by_grid,
            sa.func.sum(counted.c.impressions),
            sa.func.sum(counted.c.conversions),
        ).group_by(variant_id, by_grid)
    )
    length = {v: len(grid.starts) for ids, grid in grids for v in ids}
    for found_id, index, shown, converted in rows:
        for part, count in (("impressions", shown), ("conversions", converted)):
            counts = found[part].setdefault(found_id, np.zeros(length[found_id], dtype=np.int64))
            counts[index] += count
    return found


def _bucket_of(
    moment: sa.ColumnElement[datetime] | sa.orm.Mapped[datetime],
    variant_id: sa.ColumnElement[int] | sa.orm.Mapped[int],
    grids: list[tuple[list[int], _Grid]],
) -> sa.ColumnElement[int]:
    """The index of the bucket `moment` falls in, on its variant's grid; past the last bucket's
    end (a host's clock ahead) it is the last bucket's."""

    def bucket(grid: _Grid) -> sa.ColumnElement[int]:
        return sa.case(
            *((moment < start + grid.width, index) for index, start in enumerate(grid.starts)),
            else_=len(grid.starts) - 1,
        )

    # One grid (one segment, or segments of one width) is read as it always was: by the time
    # alone, so SQLite and PostgreSQL search the variant and time index as before.
    if len(grids) == 1:
        return bucket(grids[0][1])
    return sa.case(*((variant_id.in_(ids), bucket(grid)) for ids, grid in grids))


def _counts(
    session: Session,
    table: type[Impression] | type[Event],
    ranges: Mapping[timedelta, tuple[list[int], _Grid]],
    mark: Marks,
) -> dict[int, np.ndarray]:
    """Rows per variant and bucket, for the variants of each width on that width's grid, from
    where each grid's rows are counted (_rows_counted); every variant asked for is in it."""
    grids = [(ids, grid) for ids, grid in ranges.values() if ids]
    if not grids:
        return {}
    variant_id, created = col(table.variant_id), col(table.created_at)

    by_grid = _bucket_of(created, variant_id, grids).label("bucket")
    rows = session.execute(
        sa.select(variant_id, by_grid, sa.func.count())
        .where(
            sa.or_(
                *(variant_id.in_(ids) & _rows_counted(grid, mark, created) for ids, grid in grids)
            )
        )
        .group_by(variant_id, by_grid)
    )
    counts = {v: np.zeros(len(grid.starts), dtype=np.int64) for ids, grid in grids for v in ids}
    for found, index, count in rows:
        counts[found][index] += count
    return counts
