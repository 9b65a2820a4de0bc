"""`copybandit purge`: delete old impression and event rows in batches, keeping counters exact.

Each batch is one transaction that deletes rows and adds what it deleted to the variants'
`purged_*` counts, so the counters (and the posteriors read from them) never move, and
`copybandit check` still balances. Events go first; an impression is deleted only once no event
refers to it, so a late conversion keeps its impression until the conversion itself ages out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from service.models import Event, Impression, utcnow

_impression = Impression.__table__  # type: ignore[attr-defined]
_event = Event.__table__  # type: ignore[attr-defined]
_variant = Event.metadata.tables["variant"]
_DURATION = re.compile(r"^(\d{1,6})([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
# Beyond this the cutoff would fall before year 1, which datetime cannot hold.
_MAX_AGE = timedelta(days=36_500)


def parse_age(text: str) -> timedelta:
    """'90d', '12h' or '30m' as a timedelta; ValueError names the format otherwise."""
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"--older-than must look like 90d, 12h or 30m, got {text!r}")
    age = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if age > _MAX_AGE:
        raise ValueError(f"--older-than must be at most 36500d (100 years), got {text!r}")
    return age


@dataclass
class PurgeReport:
    cutoff: datetime
    events: int = 0
    impressions: int = 0


def purge(
    *,
    engine: sa.Engine,
    older_than: timedelta,
    batch_size: int = 5_000,
    now: datetime | None = None,
    progress: Callable[[PurgeReport], None] | None = None,
) -> PurgeReport:
    report = PurgeReport(cutoff=(now or utcnow()) - older_than)
    old_events = (
        sa.select(_event.c.id, _event.c.variant_id)
        .where(_event.c.created_at < report.cutoff)
        .limit(batch_size)
    )
    unreferenced = ~sa.exists().where(_event.c.impression_id == _impression.c.id)
    old_impressions = (
        sa.select(_impression.c.id, _impression.c.variant_id)
        .where(_impression.c.created_at < report.cutoff, unreferenced)
        .limit(batch_size)
    )
    for table, select, counter in (
        (_event, old_events, "purged_conversions"),
        (_impression, old_impressions, "purged_impressions"),
    ):
        while True:
            with engine.begin() as connection:
                rows = connection.execute(select).all()
                if not rows:
                    break
                connection.execute(table.delete().where(table.c.id.in_([r.id for r in rows])))
                per_variant = Counter(r.variant_id for r in rows)
                for variant_id in sorted(per_variant):  # fixed lock order, as everywhere else
                    connection.execute(
                        _variant.update()
                        .where(_variant.c.id == variant_id)
                        .values({counter: _variant.c[counter] + per_variant[variant_id]})
                    )
            if table is _event:
                report.events += len(rows)
            else:
                report.impressions += len(rows)
            if progress is not None:
                progress(report)
    return report
