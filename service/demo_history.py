"""A week of synthetic traffic for the demo, so a first `make run` has numbers and charts to show.

It goes through the service's own decision and event code (the real bandit picks every variant),
then moves the rows' timestamps back into the past week. The conversion rates behind it are made
up and fixed per variant; nothing here is used outside the demo.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session, col, select

from service.config import Settings
from service.decisions import decide
from service.events import record_events
from service.models import Event, Impression, Segment, Variant, utcnow
from service.schemas import DecideIn, EventIn
from service.snapshot import SnapshotCache

# Hidden conversion rates, by segment, in the order demo.VARIANTS lists the copy.
DEMO_RATES = {
    "weekend-hikers": (0.040, 0.058, 0.047),
    "trail-racers": (0.050, 0.064, 0.055),
    "value-seekers": (0.045, 0.042, 0.061),
}
# How often the demo's bandit sees fresh counters, in decisions: a server refreshes each second.
_REFRESH_EVERY = 150


def seed_demo_history(
    *,
    session: Session,
    settings: Settings,
    experiment_id: int,
    days: int = 7,
    decisions_per_day: int = 600,
    seed: int = 7,
    now: datetime | None = None,
) -> int:
    """Serve `days * decisions_per_day` decisions spread over the past days; return the count."""
    rng = np.random.default_rng(seed)
    now = now or utcnow()
    rates = _rates_by_variant(session, experiment_id)
    cache = SnapshotCache(
        ttl_seconds=float("inf"), propensity_draws=settings.propensity_samples, rng=seed
    )
    segments = list(DEMO_RATES)
    total = days * decisions_per_day
    # Each decision served, and each converted one's index and delay, in order: their times are
    # given at the end, spread over the days by how many were served.
    shown: list[str] = []
    converted: list[tuple[int, str, timedelta]] = []
    try:
        for i in range(total):
            if i % _REFRESH_EVERY == 0:
                cache.invalidate(experiment_id)
            decision = decide(
                session=lambda: session,
                bind=session.get_bind(),
                cache=cache,
                settings=settings,
                decide_in=DecideIn(experiment=experiment_id, segment=segments[i % len(segments)]),
            )
            shown.append(decision.impression_id)
            if rng.random() < rates[decision.variant_id]:
                record_events(
                    session=session,
                    events=[EventIn(impression_id=decision.impression_id, type="conversion")],
                )
                session.commit()
                converted.append((len(shown) - 1, decision.impression_id, _delay(rng)))
    except KeyboardInterrupt:
        # Ctrl-C during `make run`'s first run: what was served still goes back over the days,
        # only thinner. Left at the second it was served, the demo showed all its traffic there,
        # and no later `init` seeds it again. An event half-written is not kept.
        session.rollback()
        _spread(session, now - timedelta(days=days), timedelta(days=days), shown, converted)
        raise
    _spread(session, now - timedelta(days=days), timedelta(days=days), shown, converted)
    return total


def _spread(
    session: Session,
    start: datetime,
    span: timedelta,
    shown: list[str],
    converted: list[tuple[int, str, timedelta]],
) -> None:
    step = span / max(len(shown), 1)
    end = start + span
    when = [{"row_id": row_id, "when": start + step * i} for i, row_id in enumerate(shown)]
    # No later than the week's end, which is now: a delay after one of the last impressions had
    # stamped its conversion minutes into the future.
    later = [
        {"row_id": row_id, "when": min(start + step * i + delay, end)}
        for i, row_id, delay in converted
    ]
    _backdate(session, Impression.__table__, "id", when)  # type: ignore[attr-defined]
    _backdate(session, Event.__table__, "impression_id", later)  # type: ignore[attr-defined]
    session.commit()


def _rates_by_variant(session: Session, experiment_id: int) -> dict[int, float]:
    rates: dict[int, float] = {}
    for segment in session.exec(select(Segment).where(Segment.experiment_id == experiment_id)):
        variants = session.exec(
            select(Variant).where(Variant.segment_id == segment.id).order_by(col(Variant.id))
        ).all()
        for variant, rate in zip(variants, DEMO_RATES.get(segment.key, ()), strict=False):
            rates[variant.id] = rate  # type: ignore[index]
    return rates


def _delay(rng: np.random.Generator) -> timedelta:
    return timedelta(minutes=float(rng.exponential(20.0)))


def _backdate(session: Session, table: sa.Table, key: str, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    statement = (
        sa.update(table)
        .where(table.c[key] == sa.bindparam("row_id"))
        .values(created_at=sa.bindparam("when", type_=table.c.created_at.type))
    )
    session.connection().execute(statement, rows)
