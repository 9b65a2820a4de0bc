"""service.hourly_traffic: whole past hours, and the stretch of the hour since, counted once, and
the charts read from them exactly what they counted from the rows."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from service import history, hourly_traffic
from service.history import History, segments_history
from service.hourly_traffic import (
    HOUR,
    KEPT,
    LAG,
    Marks,
    count_hours,
    counted_before,
    marks,
)
from service.identity import new_impression_id
from service.models import (
    Event,
    HourlyTraffic,
    HourlyTrafficMark,
    Impression,
    RecentTraffic,
    Variant,
)
from service.retention import purge

NOW = datetime(2026, 3, 2, 12, 17, 30, tzinfo=UTC)
# Where a pass at NOW counts recent traffic up to: LAG before it, down to a slice's start.
DUE = datetime(2026, 3, 2, 12, 10, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@pytest.fixture
def variants(session: Session, experiment: dict[str, Any]) -> list[Variant]:
    """The experiment's two tea-lovers variants, then the two of busy-parents."""
    ids = [v["id"] for s in experiment["segments"] for v in s["variants"]]
    return list(session.exec(select(Variant).where(col(Variant.id).in_(ids)).order_by(Variant.id)))


@pytest.fixture
def engine(session: Session) -> Iterator[sa.Engine]:
    yield session.get_bind()  # type: ignore[misc]


def _impression(variant: Variant, impression_id: str, shown: datetime) -> Impression:
    return Impression(
        id=impression_id,
        experiment_id=variant.experiment_id,
        segment_id=variant.segment_id,
        variant_id=variant.id,  # type: ignore[arg-type]
        propensity=0.5,
        policy="thompson",
        created_at=shown,
    )


def _store(session: Session, rows: list[tuple[Variant, datetime, datetime | None]]) -> None:
    """Impressions (variant, shown at, converted at or None), with the variants' counters."""
    impressions, events = [], []
    for variant, shown, converted in rows:
        impression_id = new_impression_id()
        impressions.append(_impression(variant, impression_id, shown))
        if converted is not None:
            events.append(
                Event(
                    impression_id=impression_id,
                    variant_id=variant.id,  # type: ignore[arg-type]
                    type="conversion",
                    created_at=converted,
                )
            )
    session.add_all(impressions)
    session.flush()
    session.add_all(events)
    for variant in {variant.id: variant for variant, _, _ in rows}.values():
        variant.impressions += sum(1 for v, _, _ in rows if v.id == variant.id)
        variant.conversions += sum(1 for v, _, c in rows if v.id == variant.id and c is not None)
        session.add(variant)
    session.commit()


def _random_rows(
    rng: np.random.Generator, variants: list[Variant], span: timedelta, n: int
) -> list[tuple[Variant, datetime, datetime | None]]:
    """`n` impressions over the `span` before NOW, a few a little after it (a host's clock
    ahead), a fifth of them converted from a second to two days later, a few converted
    *before* they were shown (another host's clock)."""
    rows: list[tuple[Variant, datetime, datetime | None]] = []
    for _ in range(n):
        variant = variants[int(rng.integers(len(variants)))]
        shown = NOW - span * float(rng.random()) + timedelta(minutes=float(rng.uniform(-1, 3)))
        converted = None
        if rng.random() < 0.2:
            delay = timedelta(seconds=float(rng.exponential(3600 * rng.choice([0.01, 1, 24]))))
            converted = shown + delay if rng.random() < 0.9 else shown - delay / 100
        rows.append((variant, shown, converted))
    return rows


def _same(got: History, expected: History) -> bool:
    return (
        got.variant_ids == expected.variant_ids
        and got.starts == expected.starts
        and got.width == expected.width
        and all(
            np.array_equal(getattr(got, part), getattr(expected, part))
            for part in ("impressions", "conversions", "earlier_impressions", "earlier_conversions")
        )
    )


def _histories(session: Session, variants: list[Variant], now: datetime) -> dict[str, History]:
    """Three segments' at once (the page asks for every segment's), so grids of one width and
    of several are read; a variant is in one segment only, as on the page."""
    ids = [v.id for v in variants]
    asked = {"tea": ids[:2], "busy": ids[2:3], "one": ids[3:]}
    session.rollback()
    return segments_history(session=session, variant_ids=asked, now=now)  # type: ignore[arg-type]


def _from_rows(session: Session, ids: dict[str, list[int]], now: datetime) -> dict[str, History]:
    """The histories counted from the rows alone, as before any pass."""
    session.rollback()
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(history, "marks", lambda _: Marks(hours=None, recent=None))
        return segments_history(session=session, variant_ids=ids, now=now)


def _stored(
    engine: sa.Engine, table: type[HourlyTraffic] | type[RecentTraffic], at: Any
) -> list[tuple[Any, ...]]:
    """`table`'s rows, (variant, `at`, impressions, conversions), in variant and `at` order."""
    with Session(engine) as session:
        return [
            tuple(row)
            for row in session.execute(
                sa.select(col(table.variant_id), at, col(table.impressions))
                .add_columns(col(table.conversions))
                .order_by(col(table.variant_id), at)
            )
        ]


def _stored_hours(engine: sa.Engine) -> list[tuple[Any, ...]]:
    return _stored(engine, HourlyTraffic, col(HourlyTraffic.hour))


def _stored_recent(engine: sa.Engine) -> list[tuple[Any, ...]]:
    return _stored(engine, RecentTraffic, col(RecentTraffic.start))


def _rows_before_the_mark(engine: sa.Engine) -> tuple[int, int]:
    """Impression and event rows created before the mark, counted from the rows."""
    with Session(engine) as session:
        mark = counted_before(session)
        assert mark is not None
        return tuple(  # type: ignore[return-value]
            session.execute(
                sa.select(sa.func.count()).select_from(table).where(col(table.created_at) < mark)
            ).scalar_one()
            for table in (Impression, Event)
        )


def _totals(engine: sa.Engine) -> tuple[int, int]:
    with Session(engine) as session:
        found = session.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(col(HourlyTraffic.impressions)), 0),
                sa.func.coalesce(sa.func.sum(col(HourlyTraffic.conversions)), 0),
            )
        ).one()
    return int(found[0]), int(found[1])


@pytest.mark.parametrize(
    ("seed", "span"),
    [
        (1, timedelta(hours=5)),
        (6, timedelta(minutes=40)),
        (7, timedelta(hours=11)),
        (2, timedelta(hours=30)),
        (3, timedelta(days=6)),
        (4, timedelta(days=40)),
        (5, timedelta(days=200)),
    ],
    ids=["5h", "40m", "11h", "30h", "6d", "40d", "200d"],
)
def test_charts_read_from_counted_hours_are_the_charts_counted_from_rows(
    session: Session, engine: sa.Engine, variants: list[Variant], seed: int, span: timedelta
) -> None:
    """Whatever the mark's place: before every row, part-way, or up to the last due hour, and
    whatever the charts' now, every history is the one counted from the rows alone."""
    rng = np.random.default_rng(seed)
    # And a busy last hour, which the passes near NOW count a stretch at a time.
    _store(session, _random_rows(rng, variants, span, 400) + _random_rows(rng, variants, HOUR, 60))
    # Charts seen from now, from a little later, and from a day later.
    nows = [NOW, NOW + timedelta(minutes=47), NOW + timedelta(days=1, minutes=5)]
    from_rows = {now: _histories(session, variants, now) for now in nows}

    counted, recent = 0, set()
    # The marks move in steps: hours up to part of the span, then up to the last due hour, the
    # recent mark a few minutes at a time within the hour after it, then into the next hour.
    steps = [NOW - span / 2, NOW - span / 7, NOW - timedelta(minutes=9), NOW - timedelta(minutes=2)]
    for counted_at in [*steps, NOW, NOW + timedelta(minutes=50), NOW + timedelta(days=30)]:
        counted += count_hours(engine=engine, now=counted_at).hours
        recent |= set(_stored_recent(engine))
        for now in nows:
            read = _histories(session, variants, now)
            for key, expected in from_rows[now].items():
                assert _same(read[key], expected), (counted_at, now, key)
    # Not vacuous: the hours were counted, and every row is in them; recent stretches too.
    assert counted > 0 and recent
    assert _totals(engine) == _rows_before_the_mark(engine)


def test_hours_counted_before_a_purge_keep_their_counts(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    """The charts show the traffic of hours counted before their rows were purged, and their
    cumulative rate still ends at the report's rate: what is before the chart is the counters
    less what its buckets hold."""
    a = variants[0]
    old = [NOW - timedelta(days=d, minutes=m) for d in (9, 8, 7) for m in (0, 10)]
    _store(
        session, [(a, t, t + timedelta(minutes=1) if i == 0 else None) for i, t in enumerate(old)]
    )
    _store(session, [(a, NOW - timedelta(days=1), None), (a, NOW - timedelta(hours=2), None)])
    before = _histories(session, variants, NOW)["tea"]
    count_hours(engine=engine, now=NOW)

    report = purge(engine=engine, older_than=timedelta(days=5), now=NOW)
    assert (report.impressions, report.events) == (6, 1)
    after = _histories(session, variants, NOW)["tea"]

    # The chart starts at the oldest impression left, so the purged week is before it...
    assert after.starts[0] > min(old)
    assert after.impressions[0].sum() == 2
    # ...and counts in the evidence before it, from the counters, as a purge's rows always did.
    assert after.earlier_impressions[0] == 6 and after.earlier_conversions[0] == 1
    rate = after.cumulative_rate()[0]
    assert rate[-1] == pytest.approx(1 / 8) == before.cumulative_rate()[0][-1]

    # A chart that reaches back to the purged hours (a sibling's older rows) still draws them.
    b = variants[1]
    _store(session, [(b, NOW - timedelta(days=10), None)])
    count_hours(engine=engine, now=NOW)
    both = _histories(session, variants, NOW)["tea"]
    assert both.impressions[0].sum() == 8 and both.conversions[0].sum() == 1
    assert both.earlier_impressions[0] == 0 and both.earlier_conversions[0] == 0


def test_counting_again_counts_nothing(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    _store(session, _random_rows(np.random.default_rng(7), variants, timedelta(days=3), 200))
    first = count_hours(engine=engine, now=NOW)
    stored = _stored_hours(engine)
    again = count_hours(engine=engine, now=NOW)
    assert first.hours > 0 and again.hours == 0
    assert _stored_hours(engine) == stored
    assert again.counted_before == first.counted_before == counted_before(session)


def test_an_hour_is_counted_only_once_it_ended_the_lag_ago(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    """A row committed a little after its host stamped it, or stamped by a host whose clock is
    behind, still lands in an hour not yet counted."""
    hour = datetime(2026, 3, 2, 11, tzinfo=UTC)
    _store(session, [(variants[0], hour + timedelta(minutes=30), None)])
    assert count_hours(engine=engine, now=hour + timedelta(hours=1) + LAG / 2).hours == 0
    assert counted_before(session) is None
    _store(session, [(variants[0], hour + timedelta(minutes=59), None)])
    assert count_hours(engine=engine, now=hour + timedelta(hours=1) + LAG).hours == 1
    assert _totals(engine) == (2, 0)


def test_the_mark_does_not_pass_hours_it_found_empty(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    """The demo's week of traffic is written now and then moved into the past: had a server's
    pass over the empty database moved the mark to the present, none of it was charted."""
    assert count_hours(engine=engine, now=NOW).counted_before is None
    _store(session, [(variants[0], NOW - timedelta(days=6), NOW - timedelta(days=5))])
    count_hours(engine=engine, now=NOW)
    assert _totals(engine) == (1, 1)
    assert counted_before(session) == datetime(2026, 2, 25, 12, tzinfo=UTC) + timedelta(hours=1)


def test_a_pass_that_dies_half_way_through_an_hour_counts_none_of_it(
    session: Session, engine: sa.Engine, variants: list[Variant], monkeypatch: pytest.MonkeyPatch
) -> None:
    _store(session, _random_rows(np.random.default_rng(8), variants, timedelta(hours=20), 100))
    per_variant = hourly_traffic._per_variant
    counted: list[object] = []

    def dies_at_the_third_hours_events(session: Session, table: Any, *args: Any) -> Any:
        if table is Event and len(counted) == 2:
            raise RuntimeError("killed")
        if table is Event:
            counted.append(args)
        return per_variant(session, table, *args)

    monkeypatch.setattr(hourly_traffic, "_per_variant", dies_at_the_third_hours_events)
    with pytest.raises(RuntimeError, match="killed"):
        count_hours(engine=engine, now=NOW)
    # The two hours before it are counted, the mark just past them; of the third, nothing.
    hours = sorted({row[1] for row in _stored_hours(engine)})
    session.rollback()
    assert len(hours) == 2 and counted_before(session) == hours[-1] + timedelta(hours=1)
    monkeypatch.undo()

    count_hours(engine=engine, now=NOW + timedelta(days=1))
    assert _totals(engine) == _rows_before_the_mark(engine)


def test_an_hour_is_counted_before_the_mark_is_claimed_so_no_writer_waits_on_the_count(
    session: Session, engine: sa.Engine, variants: list[Variant], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite the claim takes the database's write lock: counted under it, a busy hour's
    rows held every decision's write back for as long as the count took."""
    _store(session, _random_rows(np.random.default_rng(11), variants, timedelta(hours=3), 50))
    per_variant = hourly_traffic._per_variant
    writes_waited: list[bool] = []

    def a_writer_meanwhile(counting: Session, table: Any, *args: Any) -> Any:
        found = per_variant(counting, table, *args)
        with engine.connect() as other:
            sqlite = other.dialect.name == "sqlite"
            # Each only for this write: the connection goes back to the pool.
            if sqlite:
                patience = other.exec_driver_sql("PRAGMA busy_timeout").scalar()
                other.exec_driver_sql("PRAGMA busy_timeout = 0")
            else:
                other.exec_driver_sql("SET LOCAL lock_timeout = '100ms'")
            try:
                other.exec_driver_sql("UPDATE hourly_traffic_mark SET name = name")
                writes_waited.append(False)
            except sa.exc.OperationalError:
                writes_waited.append(True)
            finally:
                other.rollback()
                if sqlite:
                    other.exec_driver_sql(f"PRAGMA busy_timeout = {patience}")
        return found

    monkeypatch.setattr(hourly_traffic, "_per_variant", a_writer_meanwhile)
    assert count_hours(engine=engine, now=NOW).hours > 0
    assert writes_waited and not any(writes_waited)
    assert _totals(engine) == _rows_before_the_mark(engine)


def test_a_pass_that_finds_the_hour_counted_meanwhile_counts_nothing(
    session: Session, engine: sa.Engine, variants: list[Variant], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers' passes at once: the second read the mark before the first moved it."""
    _store(session, _random_rows(np.random.default_rng(9), variants, timedelta(hours=6), 100))
    next_hour = hourly_traffic._next_hour_with_rows
    raced: list[object] = []

    def another_pass_counts_first(*args: Any) -> Any:
        found = next_hour(*args)
        if not raced:
            raced.append(found)
            assert count_hours(engine=engine, now=NOW).hours > 0
        return found

    monkeypatch.setattr(hourly_traffic, "_next_hour_with_rows", another_pass_counts_first)
    late = count_hours(engine=engine, now=NOW)
    assert late.hours == 0
    assert _totals(engine) == _rows_before_the_mark(engine)


def test_passes_running_together_count_each_row_once(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    _store(session, _random_rows(np.random.default_rng(10), variants, timedelta(days=2), 300))
    errors: list[BaseException] = []

    def one_pass() -> None:
        try:
            count_hours(engine=engine, now=NOW)
        except BaseException as exc:
            errors.append(exc)

    passes = [threading.Thread(target=one_pass) for _ in range(4)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join()
    assert errors == []
    assert _totals(engine) == _rows_before_the_mark(engine)


def test_a_pass_stops_at_its_budget_and_the_next_goes_on(
    session: Session,
    engine: sa.Engine,
    variants: list[Variant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _store(session, _random_rows(np.random.default_rng(11), variants, timedelta(days=2), 200))
    # A second passes between each look at the clock: the pass starts at 0 and counts an hour
    # after looking at 1 and at 2, then stops at 3, past its 2.5 s.
    ticks = iter(range(1000))
    caplog.set_level("INFO", logger="service.hourly_traffic")
    first = count_hours(
        engine=engine, now=NOW, budget=timedelta(seconds=2.5), clock=lambda: float(next(ticks))
    )
    assert first.unfinished and first.hours == 2
    assert "more to count, the next pass goes on" in caplog.text
    rest = count_hours(engine=engine, now=NOW)
    assert not rest.unfinished and rest.hours > 0
    assert "up to date" in caplog.text


def test_a_server_counts_the_hours_on_its_own_schedule(
    app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in the lifecycle's pass, whose interval may be a day: the charts count live the rows
    of every hour not yet counted."""
    import service

    passes: list[dict[str, Any]] = []
    monkeypatch.setattr(hourly_traffic, "count_hours", lambda **kwargs: passes.append(kwargs))
    app = service.create_app({**app_config, "scheduler": "on"})
    scheduler = app.extensions["copybandit.scheduler"]
    try:
        ticked = scheduler.get_job("hourly_traffic").func.__self__
        assert ticked.interval == hourly_traffic.INTERVAL.total_seconds()
        ticked.job()
    finally:
        scheduler.shutdown()
        app.extensions["copybandit.engine"].dispose()
    assert [kwargs["engine"] for kwargs in passes] == [app.extensions["copybandit.engine"]]


def test_an_idle_server_logs_nothing_for_the_hours_it_has_nothing_to_count(
    app_config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Each slot's 'hourly_traffic: running for slot ...' line was at INFO: every 5 minutes,
    288 lines a day on a server with no traffic at all, where the lifecycle's pass, every 15,
    writes two. The pass's own line says when it counted something."""
    import service

    app = service.create_app({**app_config, "scheduler": "on"})
    scheduler = app.extensions["copybandit.scheduler"]
    try:
        ticked = scheduler.get_job("hourly_traffic").func.__self__
        with caplog.at_level(logging.INFO):
            assert ticked.tick() is True
    finally:
        scheduler.shutdown()
        app.extensions["copybandit.engine"].dispose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []


def test_a_chart_counts_live_only_the_rows_since_the_last_pass(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    """The hourly mark trails the clock by up to an hour and ten minutes, and the charts counted
    every row after it on each view (1.8 M rows, 0.87 s on PostgreSQL). A pass counts the hour's
    rows up to LAG ago too: deleted once counted, the chart still shows every one of them."""
    a = variants[0]
    recent = [NOW - timedelta(minutes=m) for m in (16, 12, 7, 6, 4, 1)]
    _store(session, [(a, t, t + timedelta(seconds=30) if t < NOW - LAG else None) for t in recent])
    # Its late conversion keeps it from the purge below, and the chart a day wide.
    _store(session, [(a, NOW - timedelta(days=1), NOW - timedelta(minutes=1))])
    before = _histories(session, variants, NOW)["tea"]
    count_hours(engine=engine, now=NOW)
    session.rollback()
    found = marks(session)
    # The hours counted end with the last that had rows; the slices since, up to LAG ago.
    assert found.hours == datetime(2026, 3, 1, 13, tzinfo=UTC)
    assert found.recent == DUE
    assert _stored_recent(engine) == [
        (a.id, datetime(2026, 3, 2, 12, tzinfo=UTC), 1, 1),
        (a.id, datetime(2026, 3, 2, 12, 5, tzinfo=UTC), 1, 1),
    ]

    # The rows counted are no longer read: purged, their counts still are in the buckets.
    report = purge(engine=engine, older_than=NOW - DUE, now=NOW)
    assert (report.impressions, report.events) == (2, 2)
    after = _histories(session, variants, NOW)["tea"]
    assert _same(after, before)
    assert after.impressions[0].sum() == 7 and after.earlier_impressions[0] == 0


def test_a_chart_of_slices_counts_live_only_the_rows_since_the_last_pass(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    """A segment under 12 hours old has a chart of 5-, 15- or 30-minute buckets, which counted
    every row in its window: up to 43 M at 1,000 decisions a second. It adds up the slices the
    passes counted, and counts the rows since the last: purged, the rows counted are still in
    the buckets."""
    b = variants[2]
    shown = [NOW - timedelta(minutes=m) for m in range(0, 6 * 60, 2)]
    _store(session, [(b, t, t + timedelta(seconds=30) if t.minute % 3 else None) for t in shown])
    # Its late conversion keeps the oldest from the purge below, and the chart 6 hours wide.
    _store(session, [(b, NOW - timedelta(hours=6), NOW - timedelta(minutes=1))])
    ids = {"busy": [b.id]}
    before = _from_rows(session, ids, NOW)["busy"]
    assert before.width == 30 * MINUTE
    for minutes in range(-6 * 60 - 10, 5, 5):
        count_hours(engine=engine, now=NOW + timedelta(minutes=minutes))
    session.rollback()
    assert marks(session).slices == datetime(2026, 3, 2, 6, tzinfo=UTC)
    report = purge(engine=engine, older_than=NOW - DUE, now=NOW)
    assert report.impressions == len([t for t in shown if t < DUE]) > 100
    after = segments_history(session=session, variant_ids=ids, now=NOW)["busy"]
    assert _same(after, before)
    assert after.earlier_impressions[0] == 0


def test_recent_rows_from_before_the_slices_are_not_read_as_slices(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    """Counted by the release before (or before a gap), a recent row spans any stretch of its
    hour: a chart of slices counts the rows up to where the slices are whole from instead."""
    b = variants[2]
    _store(session, [(b, NOW - timedelta(minutes=m), None) for m in range(0, 3 * 60, 2)])
    ids = {"busy": [b.id]}
    count_hours(engine=engine, now=NOW - timedelta(minutes=3))
    # As the release before left them: the hour's stretch in one row, no mark of slices.
    with Session(engine) as writing:
        hour = datetime(2026, 3, 2, 12, tzinfo=UTC)
        this_hour = col(RecentTraffic.start) >= hour
        shown = writing.execute(
            sa.select(sa.func.sum(col(RecentTraffic.impressions))).where(this_hour)
        ).scalar_one()
        writing.execute(sa.delete(RecentTraffic).where(this_hour))
        writing.add(RecentTraffic(variant_id=b.id, start=hour, impressions=shown, conversions=0))
        writing.execute(
            sa.update(HourlyTrafficMark)
            .where(col(HourlyTrafficMark.name) == "recent_slices")
            .values(counted_before=None)
        )
        writing.commit()
    count_hours(engine=engine, now=NOW + timedelta(minutes=10))
    session.rollback()
    found = marks(session)
    assert found.slices == DUE - timedelta(minutes=5) and found.recent == DUE + 10 * MINUTE
    for now in (NOW, NOW + timedelta(minutes=10)):
        assert _same(
            segments_history(session=session, variant_ids=ids, now=now)["busy"],
            _from_rows(session, ids, now)["busy"],
        )


def test_the_recent_mark_does_not_pass_a_stretch_it_found_empty(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    count_hours(engine=engine, now=NOW)
    assert marks(session).recent is None
    session.rollback()
    _store(session, [(variants[0], NOW - timedelta(minutes=15), None)])
    count_hours(engine=engine, now=NOW)
    session.rollback()
    assert marks(session).recent == DUE
    assert _stored_recent(engine) == [(variants[0].id, datetime(2026, 3, 2, 12, tzinfo=UTC), 1, 0)]


def test_recent_slices_are_kept_for_the_charts_of_slices_and_go_after_that(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    """A chart reads the marks, then the counts: charts of slices reach 12 hours back, and a
    pass deletes the slices KEPT before the hourly mark it started from, so none a chart reads
    is gone; the slices go on across the hours counted, so they stay whole."""
    a, b, c = variants[0], variants[2], variants[3]
    _store(session, [(a, NOW - timedelta(minutes=m), None) for m in range(0, 24 * 60, 7)])
    # Segments 11 h 40 and 3 h old at NOW: charts of 30- and 15-minute buckets.
    _store(session, [(b, NOW - timedelta(minutes=m), None) for m in range(0, 700, 3)])
    _store(session, [(c, NOW - timedelta(minutes=m), None) for m in range(0, 180, 2)])
    ids = {"tea": [a.id], "busy": [b.id], "one": [c.id]}
    at_now = _from_rows(session, ids, NOW)
    assert [at_now[k].width for k in ids] == [3 * HOUR, 30 * MINUTE, 15 * MINUTE]
    seen: set[datetime] = set()
    for step, minutes in enumerate(range(-18 * 60, 60, 5)):
        count_hours(engine=engine, now=NOW + timedelta(minutes=minutes))
        session.rollback()
        found = marks(session)
        assert found.hours is not None
        starts = {start for _, start, _, _ in _stored_recent(engine)}
        # Deleted KEPT before the hourly mark as the pass found it, an hour before this one.
        assert min(starts) >= found.hours - KEPT - HOUR, minutes
        seen |= starts
        if step % 12 == 0 or minutes >= 0:
            for at in (NOW, NOW + timedelta(minutes=minutes)):
                read = segments_history(session=session, variant_ids=ids, now=at)
                expected = at_now if at == NOW else _from_rows(session, ids, at)
                assert all(_same(read[k], expected[k]) for k in ids), (minutes, at)
    # Not vacuous: one slice after another, the oldest deleted, whole from the first pass on.
    assert len(seen) > 150 and min(seen) < min(starts)
    assert found.slices == datetime(2026, 3, 1, 18, tzinfo=UTC)
    # And kept long enough that the oldest chart of slices reads slices only.
    assert found.sliced_from is not None and found.sliced_from <= at_now["busy"].starts[0]


def test_a_pass_that_counts_two_hours_keeps_the_recent_rows_a_chart_read_the_marks_for(
    session: Session, engine: sa.Engine, variants: list[Variant], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the job was away over an hour, its pass counts two hours at once while a chart is
    between its read of the marks and its read of the counts. Recent rows deleted an hour
    behind each hour counted, the second hour took the first's: the chart lost 10 of 27."""
    a = variants[0]
    hour = datetime(2026, 3, 2, 13, tzinfo=UTC)
    _store(session, [(a, NOW - timedelta(days=2), None)])
    _store(session, [(a, hour + timedelta(minutes=m), None) for m in range(0, 50, 5)])
    count_hours(engine=engine, now=hour + timedelta(minutes=55))
    assert len(_stored_recent(engine)) == 10
    _store(session, [(a, hour + timedelta(minutes=m), None) for m in range(50, 130, 5)])
    now = hour + timedelta(hours=2, minutes=10)
    from_rows = _histories(session, variants, now)["tea"]
    counted_hours = history._counted_hours
    passes: list[int] = []

    def a_pass_between_the_reads(*args: Any) -> Any:
        passes.append(count_hours(engine=engine, now=now).hours)
        return counted_hours(*args)

    monkeypatch.setattr(history, "_counted_hours", a_pass_between_the_reads)
    assert _same(_histories(session, variants, now)["tea"], from_rows)
    assert passes == [2]
    # The next pass that counts an hour keeps them, for the charts of slices (KEPT).
    monkeypatch.undo()
    count_hours(engine=engine, now=now + HOUR)
    assert min(start for _, start, _, _ in _stored_recent(engine)) == hour
    assert _same(_histories(session, variants, now)["tea"], from_rows)


def test_a_recent_count_is_made_before_its_mark_is_claimed_and_stored_once(
    session: Session, engine: sa.Engine, variants: list[Variant], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As an hour's: no writer waits on the count, and of two passes at once one stores."""
    _store(session, [(variants[0], NOW - timedelta(minutes=m), None) for m in (6, 9, 16)])
    count_hours(engine=engine, now=NOW - timedelta(minutes=5))
    session.rollback()
    per_variant_and_slice = hourly_traffic._per_variant_and_slice
    raced: list[bool] = []

    def another_pass_meanwhile(counting: Session, table: Any, *args: Any) -> Any:
        found = per_variant_and_slice(counting, table, *args)
        if table is Event and not raced:
            raced.append(True)
            # Were the mark claimed already, this would wait for it (SQLite: a locked error).
            assert count_hours(engine=engine, now=NOW).recent_before == DUE
        return found

    monkeypatch.setattr(hourly_traffic, "_per_variant_and_slice", another_pass_meanwhile)
    assert count_hours(engine=engine, now=NOW).recent_before == DUE
    assert raced
    assert [row[2] for row in _stored_recent(engine)] == [1, 1]


def test_an_idle_servers_pass_reads_its_slices_in_one_query_a_table(
    session: Session, engine: sa.Engine, variants: list[Variant]
) -> None:
    """The recent mark stays before a stretch found empty, so each pass of an idle server read
    up to CATCH_UP of slices again, two statements a slice: 46 statements every 5 minutes."""
    _store(session, [(variants[0], NOW - timedelta(minutes=16), None)])
    count_hours(engine=engine, now=NOW)
    statements: list[str] = []

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", counted)
    try:
        report = count_hours(engine=engine, now=NOW + hourly_traffic.CATCH_UP - 10 * MINUTE)
    finally:
        sa.event.remove(engine, "before_cursor_execute", counted)
    assert report.hours == 1 and report.recent_before == DUE
    grouped = [s for s in statements if "GROUP BY" in s]
    assert len(grouped) == 4, grouped


def _expected(rows: list[tuple[int, datetime]], read: History) -> tuple[np.ndarray, np.ndarray]:
    """`rows` (variant, created at) per variant and bucket of `read`'s grid, counted one by one in
    Python, from its first bucket on (later than its end: the last bucket's), and those before."""
    end = read.starts[-1] + read.width
    in_buckets = np.zeros((len(read.variant_ids), len(read.starts)), dtype=np.int64)
    before = np.zeros(len(read.variant_ids), dtype=np.int64)
    for variant_id, at in rows:
        if variant_id not in read.variant_ids:
            continue
        row = read.variant_ids.index(variant_id)
        if at < read.starts[0]:
            before[row] += 1
            continue
        bucket = next(
            (i for i, start in enumerate(read.starts) if start <= at < start + read.width),
            len(read.starts) - 1,
        )
        assert at < end or bucket == len(read.starts) - 1
        in_buckets[row, bucket] += 1
    return in_buckets, before


def _arrivals(
    rng: np.random.Generator, start: datetime
) -> list[tuple[datetime, str, int, datetime]]:
    """(committed at, "impression" or "conversion", variant's index, created at), in the order
    they commit: impressions of the four variants, first shown 30 h, 30 h, 5 h and 20 minutes
    before `start` and up to 10 h after it, stamped by hosts up to 2 minutes apart and committed
    up to a minute later; a third of them converted, minutes to hours after."""
    first_shown = [timedelta(hours=30), timedelta(hours=30), timedelta(hours=5), 20 * MINUTE]
    arrivals = []
    for index, since in enumerate(first_shown):
        for _ in range(int(rng.integers(60, 120))):
            shown = start - since + (since + timedelta(hours=10)) * float(rng.random())
            skew = timedelta(minutes=float(rng.uniform(-2, 2)))
            committed = shown + timedelta(seconds=float(rng.uniform(0, 60)))
            arrivals.append((committed, "impression", index, shown + skew))
            if rng.random() < 0.3:
                converted = shown + timedelta(minutes=float(rng.exponential(40)))
                arrivals.append((converted + MINUTE, "conversion", index, converted + skew))
    return sorted(arrivals, key=lambda arrival: arrival[0])


def _commit(
    session: Session,
    variants: list[Variant],
    arrived: list[tuple[datetime, str, int, datetime]],
    unconverted: dict[int, list[str]],
) -> list[tuple[str, int, datetime]]:
    """Store what `arrived`, with the variants' counters: a conversion converts the variant's
    oldest impression not yet converted (one of its own if there is none). (impression or
    conversion, variant, created at) of each row stored."""
    stored = []
    for _, kind, index, at in arrived:
        variant = variants[index]
        if kind == "impression" or not unconverted[index]:
            impression_id = new_impression_id()
            session.add(_impression(variant, impression_id, at))
            unconverted[index].append(impression_id)
            variant.impressions += 1
            stored.append(("impression", variant.id, at))
        if kind == "conversion":
            session.flush()
            session.add(
                Event(
                    impression_id=unconverted[index].pop(0),
                    variant_id=variant.id,  # type: ignore[arg-type]
                    type="conversion",
                    created_at=at,
                )
            )
            variant.conversions += 1
            stored.append(("conversion", variant.id, at))
    session.commit()
    return stored  # type: ignore[return-value]


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_every_charts_buckets_hold_the_rows_committed_so_far_whatever_the_passes(
    session: Session, engine: sa.Engine, variants: list[Variant], seed: int
) -> None:
    """Rows come in as the clock goes on (_arrivals); passes run at any minute (hh:00 to hh:07
    included), after gaps longer than CATCH_UP, twice at once, or stop at their budget; charts
    are read at any moment, by a page whose clock is a few minutes off. Each bucket of each
    chart (minutes, slices, hours, as a segment grows) holds exactly the rows of its span,
    counted one by one in Python, and the buckets and the evidence before them add up to the
    variant's counters. The other tests compare the charts with charts counted from the rows by
    the same code; this one with Python's own count."""
    rng = np.random.default_rng(seed)
    start = NOW - timedelta(hours=9, minutes=float(rng.uniform(0, 60)))
    arrivals = _arrivals(rng, start)
    stored: dict[str, list[tuple[int, datetime]]] = {"impression": [], "conversion": []}
    unconverted: dict[int, list[str]] = {index: [] for index in range(len(variants))}
    ids = [v.id for v in variants]
    asked = {"tea": ids[:2], "busy": ids[2:3], "one": ids[3:]}
    clock = start - timedelta(hours=31)
    passes, widths = 0, set()
    while clock < start + timedelta(hours=10):
        clock += MINUTE * int(rng.choice([1, 2, 3, 7, 11, 17, 29, 61, 150]))
        arrived = [arrival for arrival in arrivals if arrival[0] <= clock]
        arrivals = arrivals[len(arrived) :]
        for kind, variant_id, at in _commit(session, variants, arrived, unconverted):
            stored[kind].append((variant_id, at))
        if clock < start - HOUR:
            continue
        # Most passes on time, some at the top of the hour, some run twice or cut short.
        at = clock
        if rng.random() < 0.3:
            at = at.replace(minute=int(rng.integers(0, 8)), second=int(rng.integers(0, 60)))
        if rng.random() < 0.2:
            # A second between each look at the clock: one hour counted, then stopped.
            ticks = itertools.count().__next__
            count_hours(engine=engine, now=at, budget=timedelta(seconds=1.5), clock=ticks)
        else:
            count_hours(engine=engine, now=at)
        if rng.random() < 0.2:
            count_hours(engine=engine, now=at)
        passes += 1
        seen = clock + timedelta(minutes=float(rng.uniform(-3, 3)))
        read = _histories(session, variants, seen)
        counters = {v.id: (v.impressions, v.conversions) for v in variants}
        for key, variant_ids in asked.items():
            got = read[key]
            widths.add(got.width)
            impressions, before = _expected(stored["impression"], got)
            conversions, converted_before = _expected(stored["conversion"], got)
            context = (seed, clock, seen, key, got.width)
            assert np.array_equal(got.impressions, impressions), context
            assert np.array_equal(got.conversions, conversions), context
            assert got.earlier_impressions.tolist() == before.tolist(), context
            assert got.earlier_conversions.tolist() == converted_before.tolist(), context
            added_up = zip(
                got.earlier_impressions + got.impressions.sum(axis=1),
                got.earlier_conversions + got.conversions.sum(axis=1),
                strict=True,
            )
            assert list(added_up) == [counters[v] for v in variant_ids], context
    # Not vacuous: hours and slices were counted, and the charts were of every kind.
    assert passes > 10 and _stored_hours(engine) and _stored_recent(engine)
    assert {MINUTE, HOUR, 3 * HOUR} <= widths
    assert widths & {5 * MINUTE, 15 * MINUTE, 30 * MINUTE}
