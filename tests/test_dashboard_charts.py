"""The dashboard's chart geometry (service.dashboard.charts) and the history behind it
(service.history), checked against hand-computed numbers."""

from __future__ import annotations

import math
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session

from service.config import load_settings
from service.dashboard import charts, experiment_pages
from service.db import make_engine
from service.history import BUCKETS, History, segment_history, segments_history
from service.identity import new_impression_id
from service.models import Event, Impression, Segment, Variant, VariantStatus
from tests.query_plans import sqlite_reads, statements_sent

NOW = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
PLOT_TOP, PLOT_BOTTOM = charts.TOP, charts.HEIGHT - charts.BOTTOM
PLOT_LEFT, PLOT_RIGHT = charts.LEFT, charts.WIDTH - charts.RIGHT


# --- charts.line_chart -------------------------------------------------------------------------


def _points(segment: str) -> list[tuple[float, float]]:
    return [tuple(map(float, point.split(","))) for point in segment.split()]  # type: ignore[misc]


def test_points_span_the_plot_area() -> None:
    chart = charts.line_chart(
        title="t", labels=["a"], series=[[0.0, 0.5, 1.0]], x_labels=["x0", "x1", "x2"], y_max=1.0
    )
    (line,) = chart.lines
    assert line.label == "a" and line.style == charts.LineStyle(charts.PALETTE[0], "")
    (segment,) = line.segments
    assert _points(segment) == [
        (PLOT_LEFT, PLOT_BOTTOM),
        ((PLOT_LEFT + PLOT_RIGHT) / 2, (PLOT_TOP + PLOT_BOTTOM) / 2),
        (PLOT_RIGHT, PLOT_TOP),
    ]
    assert (chart.left, chart.right, chart.top, chart.bottom) == (
        PLOT_LEFT,
        PLOT_RIGHT,
        PLOT_TOP,
        PLOT_BOTTOM,
    )


def test_nan_leaves_gaps_that_split_a_line() -> None:
    nan = math.nan
    chart = charts.line_chart(
        title="t",
        labels=["a", "b", "c"],
        series=[[0.1, nan, 0.2, 0.3, nan], [nan, nan, nan, nan, nan], [nan, 0.4, nan, nan, 0.5]],
        x_labels=[f"x{i}" for i in range(5)],
        y_max=1.0,
    )
    first, empty, scattered = chart.lines
    assert [len(_points(s)) for s in first.segments] == [1, 2]
    assert empty.segments == []
    assert [len(_points(s)) for s in scattered.segments] == [1, 1]
    step = (PLOT_RIGHT - PLOT_LEFT) / 4
    # The second piece starts at the third x position, not right after the first point.
    assert _points(first.segments[1])[0][0] == pytest.approx(PLOT_LEFT + 2 * step, abs=0.05)
    assert _points(scattered.segments[1])[0][0] == pytest.approx(PLOT_RIGHT, abs=0.05)
    assert [line.style.colour for line in chart.lines] == list(charts.PALETTE[:3])


def test_every_period_and_value_is_written_out_for_the_charts_table() -> None:
    """The drawing is one image to a screen reader: its table, the text alternative, has a row
    for every period (the x axis names only a few) and a cell for every value, "-" in a gap."""
    nan = math.nan
    labels = [f"Mar {day:02d}" for day in range(1, 8)]
    shares = charts.line_chart(
        title="t",
        labels=["#1", "#2"],
        series=[[0.5, nan, 0.12345, 1.0, 0.0, 0.25, 0.005], [0.5, nan] + [0.1] * 5],
        x_labels=labels,
        y_max=1.0,
    )
    assert shares.periods == labels and len(shares.x_ticks) < len(labels)
    first, second = shares.lines
    assert first.values == ["50.00%", "-", "12.35%", "100.00%", "0.00%", "25.00%", "0.50%"]
    assert second.values == ["50.00%", "-"] + ["10.00%"] * 5
    counts = charts.line_chart(
        title="t", labels=["a"], series=[[1234.6, nan]], x_labels=["x", "y"], percent=False
    )
    assert counts.lines[0].values == ["1235", "-"]


def test_y_ticks_from_a_nice_ceiling_of_the_data() -> None:
    chart = charts.line_chart(
        title="t", labels=["a"], series=[[0.01, 0.034, math.nan]], x_labels=["a", "b", "c"]
    )
    assert [tick.label for tick in chart.y_ticks] == ["0%", "1.25%", "2.5%", "3.75%", "5%"]
    positions = [tick.position for tick in chart.y_ticks]
    assert positions[0] == pytest.approx(PLOT_BOTTOM) and positions[-1] == pytest.approx(PLOT_TOP)
    assert positions == sorted(positions, reverse=True)
    # The highest point sits below the top of the axis: 0.034 of 0.05.
    top_point = _points(chart.lines[0].segments[0])[1]
    assert top_point[1] == pytest.approx(
        PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * 0.034 / 0.05, abs=0.05
    )


@pytest.mark.parametrize(
    ("peak", "ceiling"),
    [
        (0.034, 0.05),
        (0.02, 0.02),
        (0.021, 0.025),
        (0.3, 0.5),
        (0.6, 1.0),
        (7.0, 10.0),
        (0.0, 1.0),
    ],
)
def test_the_y_axis_ends_at_a_round_number(peak: float, ceiling: float) -> None:
    chart = charts.line_chart(
        title="t", labels=["a"], series=[[peak, 0.0]], x_labels=["a", "b"], percent=False
    )
    assert chart.y_ticks[-1].label == f"{ceiling:.3g}"
    assert chart.y_ticks[2].label == f"{ceiling / 2:.3g}"


def test_fixed_y_max_for_shares() -> None:
    chart = charts.line_chart(
        title="t", labels=["a"], series=[[0.2, 0.8]], x_labels=["a", "b"], y_max=1.0
    )
    assert [tick.label for tick in chart.y_ticks] == ["0%", "25%", "50%", "75%", "100%"]


def test_x_ticks_thin_out_to_five_and_keep_the_newest_period() -> None:
    labels = [f"t{i}" for i in range(24)]
    chart = charts.line_chart(title="t", labels=["a"], series=[[0.1] * 24], x_labels=labels)
    assert [tick.label for tick in chart.x_ticks] == ["t0", "t6", "t12", "t17", "t23"]
    assert [tick.anchor for tick in chart.x_ticks] == ["start", *["middle"] * 3, "end"]
    assert chart.x_ticks[0].position == pytest.approx(PLOT_LEFT)
    assert chart.x_ticks[-1].position == pytest.approx(PLOT_RIGHT)
    short = charts.line_chart(title="t", labels=["a"], series=[[0.1, 0.2]], x_labels=["a", "b"])
    assert [(t.label, t.position) for t in short.x_ticks] == [("a", PLOT_LEFT), ("b", PLOT_RIGHT)]
    single = charts.line_chart(title="t", labels=["a"], series=[[0.1]], x_labels=["only"])
    assert [(t.label, t.position) for t in single.x_ticks] == [("only", PLOT_LEFT)]


@pytest.mark.parametrize("n", range(1, 25))
def test_every_chart_labels_its_first_and_last_period(n: int) -> None:
    labels = [f"t{i}" for i in range(n)]
    chart = charts.line_chart(title="t", labels=["a"], series=[[0.1] * n], x_labels=labels)
    shown = [tick.label for tick in chart.x_ticks]
    assert shown[0] == "t0" and shown[-1] == f"t{n - 1}"
    assert len(shown) == min(n, charts.X_TICKS) and len(set(shown)) == len(shown)
    positions = [tick.position for tick in chart.x_ticks]
    assert positions == sorted(positions)


def test_labels_and_series_must_pair_up() -> None:
    with pytest.raises(ValueError):
        charts.line_chart(title="t", labels=["a", "b"], series=[[0.1]], x_labels=["x"])


def test_colours_cycle_through_the_palette_then_come_round_dashed() -> None:
    n = len(charts.PALETTE)
    assert [charts.style(i).colour for i in range(n)] == list(charts.PALETTE)
    assert {charts.style(i).dash for i in range(n)} == {""}
    assert len(set(charts.PALETTE)) == n
    # The ninth line has the first one's colour: only its dash tells them apart.
    assert charts.style(n).colour == charts.PALETTE[0] and charts.style(n).dash != ""
    assert len({charts.style(i) for i in range(charts.MAX_LINES)}) == charts.MAX_LINES


def test_a_chart_of_more_lines_than_colours_draws_each_line_and_swatch_differently(
    app: Any,
) -> None:
    """Nine variants served in a segment: the ninth line and its legend swatch had the first's
    colour and looked the same."""
    n = len(charts.PALETTE) + 1
    chart = charts.line_chart(
        title="t",
        labels=[f"#{i}" for i in range(n)],
        series=[[0.1, 0.2]] * n,
        x_labels=["x0", "x1"],
    )
    with app.test_request_context("/dashboard/"):
        html = app.jinja_env.get_template("_charts.html").module.line_chart(chart)
    look = r'stroke="(#[0-9a-f]{6})"[^/]*?(?: stroke-dasharray="([^"]+)")?/>'
    lines = re.findall(r"<polyline [^>]*?" + look, html)
    swatches = re.findall(r'<li><svg class="swatch"[^>]*><line [^>]*?' + look, html)
    assert len(lines) == len(swatches) == n
    assert len(set(lines)) == n and swatches == lines


def test_a_period_between_gaps_is_drawn_as_a_dot(app: Any) -> None:
    """A segment's first period of traffic, or any period with none on either side, is a piece of
    one point, and a polyline of one point draws nothing: the traffic-share chart of a segment
    that had served copy for one minute was its axes and legend over no line at all."""
    nan = math.nan
    chart = charts.line_chart(
        title="t",
        labels=["#10", "#11"],
        series=[[0.4, nan, 0.2, 0.3], [0.6, nan, nan, nan]],
        x_labels=[f"x{i}" for i in range(4)],
        y_max=1.0,
    )
    with app.test_request_context("/dashboard/"):
        html = app.jinja_env.get_template("_charts.html").module.line_chart(chart)
    dots = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="[\d.]+" fill="(#[0-9a-f]{6})"', html)
    first, second = (chart.lines[0].segments[0], chart.lines[1].segments[0])
    assert dots == [
        (*first.split(","), charts.PALETTE[0]),
        (*second.split(","), charts.PALETTE[1]),
    ]
    # A piece of two points or more is still a line, and only that.
    assert re.findall(r'<polyline points="([^"]+)"', html) == [chart.lines[0].segments[1]]


def _report(*rows: tuple[int, str, int]) -> Any:
    return SimpleNamespace(
        variants=[
            SimpleNamespace(variant_id=vid, status=VariantStatus(status), impressions=impressions)
            for vid, status, impressions in rows
        ]
    )


def test_charts_draw_every_served_variant_up_to_the_styles_there_are() -> None:
    report = _report((1, "active", 5), (2, "retired", 9), (3, "pending_review", 0))
    assert experiment_pages._charted(report) == ([1, 2], "")


def test_past_the_styles_there_are_charts_keep_active_copy_then_the_most_served_and_say_so() -> (
    None
):
    extra = 3
    retired = [(100 + i, "retired", 1000 + i) for i in range(charts.MAX_LINES + extra - 2)]
    report = _report(*retired, (1, "active", 1), (2, "paused", 2))
    charted, note = experiment_pages._charted(report)
    assert len(charted) == charts.MAX_LINES
    # The active line stays however little it was served; the paused one and the least served
    # retired ones go. The rest keep the table's order.
    assert ({vid for vid, _, _ in retired} | {1, 2}) - set(charted) == {100, 101, 2}
    assert charted == [vid for vid, _, _ in retired[2:]] + [1]
    assert note == (
        f"The charts show {charts.MAX_LINES} of the {charts.MAX_LINES + extra} variants served "
        "here: the active ones, then the most served."
    )


# --- charts.interval_bar -----------------------------------------------------------------------


def test_interval_bar_is_scaled_to_the_widest_interval() -> None:
    bar = charts.interval_bar(0.01, 0.03, 0.02, 0.03)
    assert (bar.low, bar.high, bar.mean) == pytest.approx((1 / 3, 1.0, 2 / 3))
    smaller = charts.interval_bar(0.0, 0.015, 0.006, 0.03)
    assert (smaller.low, smaller.high, smaller.mean) == pytest.approx((0.0, 0.5, 0.2))


def test_interval_bar_with_no_scale_uses_the_raw_rates() -> None:
    bar = charts.interval_bar(0.2, 0.6, 0.4, 0.0)
    assert (bar.low, bar.high, bar.mean) == pytest.approx((0.2, 0.6, 0.4))


# --- history.History ---------------------------------------------------------------------------


def _history(
    impressions: list[list[int]],
    conversions: list[list[int]],
    earlier: tuple[list[int], list[int]] | None = None,
) -> History:
    n = len(impressions[0])
    return History(
        variant_ids=list(range(1, len(impressions) + 1)),
        starts=[NOW + timedelta(hours=i) for i in range(n)],
        width=timedelta(hours=1),
        impressions=np.array(impressions, dtype=np.int64),
        conversions=np.array(conversions, dtype=np.int64),
        earlier_impressions=np.array(earlier[0] if earlier else [0] * len(impressions)),
        earlier_conversions=np.array(earlier[1] if earlier else [0] * len(impressions)),
    )


def test_traffic_share_sums_to_one_where_there_is_traffic() -> None:
    history = _history([[0, 3, 0, 5], [0, 1, 0, 15]], [[0, 1, 0, 1], [0, 0, 0, 3]])
    share = history.traffic_share()
    assert share.shape == (2, 4)
    assert np.isnan(share[:, 0]).all() and np.isnan(share[:, 2]).all()
    assert share[:, 1] == pytest.approx([0.75, 0.25])
    assert share[:, 3] == pytest.approx([0.25, 0.75])
    assert np.nansum(share, axis=0)[[1, 3]] == pytest.approx([1.0, 1.0])
    assert not history.empty


def test_a_variant_has_no_share_before_it_was_first_shown() -> None:
    # The second line arrived in the third period: no point at 0% before that.
    history = _history([[4, 5, 3, 2], [0, 0, 1, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]])
    share = history.traffic_share()
    assert share[0] == pytest.approx([1.0, 1.0, 0.75, 1.0])
    assert np.isnan(share[1, :2]).all()
    # Once shown, a period without its impressions is a real 0%.
    assert share[1, 2:] == pytest.approx([0.25, 0.0])
    # Shown before the chart begins (older or purged rows): 0% from the first period.
    earlier = _history([[4, 5], [0, 1]], [[0, 0], [0, 0]], earlier=([0, 30], [0, 1]))
    assert earlier.traffic_share()[1] == pytest.approx([0.0, 1 / 6])


def test_cumulative_rate_runs_over_every_bucket_so_far() -> None:
    history = _history([[0, 4, 0, 6], [2, 0, 0, 0]], [[0, 1, 0, 2], [1, 0, 0, 0]])
    rate = history.cumulative_rate()
    assert np.isnan(rate[0, 0])
    assert rate[0, 1:] == pytest.approx([1 / 4, 1 / 4, 3 / 10])
    assert rate[1] == pytest.approx([0.5, 0.5, 0.5, 0.5])


def test_cumulative_rate_starts_from_the_evidence_before_the_chart() -> None:
    history = _history([[0, 4, 0], [0, 0, 0]], [[0, 1, 0], [0, 0, 0]], earlier=([96, 10], [9, 5]))
    rate = history.cumulative_rate()
    assert rate[0] == pytest.approx([9 / 96, 10 / 100, 10 / 100])
    assert rate[1] == pytest.approx([0.5, 0.5, 0.5])


def test_an_all_zero_history_is_empty() -> None:
    history = _history([[0, 0], [0, 0]], [[0, 0], [0, 0]])
    assert history.empty
    assert np.isnan(history.traffic_share()).all()
    assert np.isnan(history.cumulative_rate()).all()


# --- history.segment_history, on the database ---------------------------------------------------


def _add_rows(
    session: Session,
    variant: Variant,
    times: list[datetime],
    converted_at: list[datetime] | None = None,
) -> None:
    """Impressions at `times`; the first len(converted_at) of them convert at those times."""
    converted_at = converted_at or []
    for i, when in enumerate(times):
        impression_id = new_impression_id()
        session.add(
            Impression(
                id=impression_id,
                experiment_id=variant.experiment_id,
                segment_id=variant.segment_id,
                variant_id=variant.id,  # type: ignore[arg-type]
                propensity=0.5,
                policy="thompson",
                created_at=when,
            )
        )
        session.flush()
        if i < len(converted_at):
            session.add(
                Event(
                    impression_id=impression_id,
                    variant_id=variant.id,  # type: ignore[arg-type]
                    type="conversion",
                    created_at=converted_at[i],
                )
            )
    session.commit()


@pytest.fixture
def variants(session: Session, experiment: dict[str, Any]) -> list[Variant]:
    """The experiment's two tea-lovers variants, then one from busy-parents."""
    tea = next(s for s in experiment["segments"] if s["key"] == "tea-lovers")
    busy = next(s for s in experiment["segments"] if s["key"] == "busy-parents")
    ids = [v["id"] for v in tea["variants"]] + [busy["variants"][0]["id"]]
    found = [session.get(Variant, i) for i in ids]
    assert all(v is not None for v in found)
    return found  # type: ignore[return-value]


def _reference(times: list[datetime], starts: list[datetime], width: timedelta) -> list[int]:
    counts = [0] * len(starts)
    for when in times:
        for i, start in enumerate(starts):
            if start <= when < start + width:
                counts[i] += 1
    return counts


def test_no_variants_or_no_rows_is_an_empty_history(
    session: Session, variants: list[Variant]
) -> None:
    nothing = segment_history(session=session, variant_ids=[], now=NOW)
    assert nothing.empty and nothing.impressions.shape == (0, len(nothing.starts))
    quiet = segment_history(session=session, variant_ids=[v.id for v in variants], now=NOW)  # type: ignore[misc]
    assert quiet.empty and quiet.impressions.shape == (3, len(quiet.starts))
    assert len(quiet.starts) >= 2


def test_minute_buckets_for_a_young_segment(session: Session, variants: list[Variant]) -> None:
    a, b, _ = variants
    a_times = [NOW - timedelta(minutes=m, seconds=s) for m, s in [(9, 50), (9, 10), (5, 0), (0, 5)]]
    b_times = [NOW - timedelta(minutes=3, seconds=1), NOW - timedelta(seconds=20)]
    _add_rows(session, a, a_times, converted_at=[NOW - timedelta(minutes=9), NOW])
    _add_rows(session, b, b_times)
    history = segment_history(session=session, variant_ids=[a.id, b.id], now=NOW)  # type: ignore[list-item]

    assert history.width == timedelta(minutes=1)
    assert history.variant_ids == [a.id, b.id]
    # Whole-minute buckets, the last one holding `now`, the first one the oldest impression.
    assert all(start.second == 0 and start.microsecond == 0 for start in history.starts)
    assert history.starts[-1] <= NOW < history.starts[-1] + history.width
    assert history.starts[0] <= min(a_times) < history.starts[0] + history.width
    assert len(history.starts) == 11
    assert all(
        later - earlier == history.width
        for earlier, later in zip(history.starts, history.starts[1:], strict=False)
    )
    assert history.impressions[0].tolist() == _reference(a_times, history.starts, history.width)
    assert history.impressions[1].tolist() == _reference(b_times, history.starts, history.width)
    assert history.impressions.sum() == 6
    assert history.conversions[0].tolist() == _reference(
        [NOW - timedelta(minutes=9), NOW], history.starts, history.width
    )
    assert history.conversions[1].sum() == 0


def test_days_of_history_use_wider_buckets(session: Session, variants: list[Variant]) -> None:
    a, b, _ = variants
    a_times = [NOW - timedelta(hours=h) for h in (60, 50, 49.5, 30, 12, 1, 0.2)]
    b_times = [NOW - timedelta(hours=h) for h in (55, 2)]
    _add_rows(session, a, a_times, converted_at=[NOW - timedelta(hours=59)])
    _add_rows(session, b, b_times)
    history = segment_history(session=session, variant_ids=[a.id, b.id], now=NOW)  # type: ignore[list-item]

    # 60 hours over 24 buckets: the smallest listed width that covers it is three hours.
    assert history.width == timedelta(hours=3)
    assert all(start.hour % 3 == 0 and start.minute == 0 for start in history.starts)
    assert len(history.starts) <= BUCKETS
    assert history.impressions[0].tolist() == _reference(a_times, history.starts, history.width)
    assert history.impressions[1].tolist() == _reference(b_times, history.starts, history.width)
    assert history.impressions.sum() == len(a_times) + len(b_times)
    assert history.conversions.sum() == 1

    share = history.traffic_share()
    busy = history.impressions.sum(axis=0) > 0
    assert np.nansum(share, axis=0)[busy] == pytest.approx(np.ones(busy.sum()))
    assert np.isnan(share[:, ~busy]).all()
    rate = history.cumulative_rate()
    assert rate[0, -1] == pytest.approx(1 / 7)
    assert rate[1, -1] == pytest.approx(0.0)


def test_only_the_variants_asked_for_are_counted(session: Session, variants: list[Variant]) -> None:
    a, b, other = variants
    _add_rows(session, a, [NOW - timedelta(minutes=2)])
    _add_rows(session, other, [NOW - timedelta(hours=200), NOW - timedelta(minutes=1)])
    history = segment_history(session=session, variant_ids=[a.id, b.id], now=NOW)  # type: ignore[list-item]
    # The other segment's old impression does not stretch this chart to weeks.
    assert history.width == timedelta(minutes=1)
    assert history.impressions.sum() == 1 and history.impressions[1].sum() == 0


@pytest.mark.parametrize(
    "age",
    [
        timedelta(minutes=23, seconds=50),
        timedelta(minutes=119, seconds=50),
        timedelta(hours=71, minutes=50),
        timedelta(days=6, hours=23),
        timedelta(minutes=10),
    ],
    ids=["23m50s", "1h59m50s", "71h50m", "6d23h", "10m"],
)
def test_the_oldest_impression_is_on_the_chart(
    session: Session, variants: list[Variant], age: timedelta
) -> None:
    """A history just under 24 bucket widths long, with `now` part-way into its bucket: aligning
    the last bucket's end past `now` must not push the first impression off the front."""
    a = variants[0]
    times = [NOW - age, NOW - age / 2, NOW - timedelta(seconds=1)]
    _add_rows(session, a, times)
    history = segment_history(session=session, variant_ids=[a.id], now=NOW)  # type: ignore[list-item]
    assert len(history.starts) <= BUCKETS
    assert history.starts[0] <= NOW - age, (history.width, history.starts[0], NOW - age)
    assert history.impressions.sum() == len(times)
    assert history.impressions[0].tolist() == _reference(times, history.starts, history.width)


def test_history_older_than_the_widest_buckets_keeps_the_last_24(
    session: Session, variants: list[Variant]
) -> None:
    a = variants[0]
    times = [NOW - timedelta(weeks=40), NOW - timedelta(weeks=3), NOW - timedelta(minutes=1)]
    _add_rows(session, a, times)
    history = segment_history(session=session, variant_ids=[a.id], now=NOW)  # type: ignore[list-item]
    assert history.width == timedelta(weeks=1)
    assert len(history.starts) == BUCKETS
    # Documented: the chart shows at most 24 buckets, so the 40-week-old row is off it...
    assert history.impressions.sum() == 2


def test_evidence_off_the_chart_or_purged_still_counts_in_the_cumulative_rate(
    session: Session, variants: list[Variant]
) -> None:
    """The rows below stand for 103 impressions and 4 conversions by the counters: 100 of them
    (3 converted) purged or older than the chart, one 40 weeks old, converted, and two recent."""
    a = variants[0]
    old, recent = NOW - timedelta(weeks=40), [NOW - timedelta(weeks=3), NOW - timedelta(minutes=1)]
    _add_rows(session, a, [old], converted_at=[old])
    _add_rows(session, a, recent)
    a.impressions, a.conversions = 103, 4
    session.add(a)
    session.commit()
    history = segment_history(session=session, variant_ids=[a.id], now=NOW)  # type: ignore[list-item]
    assert history.impressions.sum() == 2 and history.conversions.sum() == 0
    assert history.earlier_impressions.tolist() == [101]
    assert history.earlier_conversions.tolist() == [4]
    rate = history.cumulative_rate()[0]
    # ...but not off its cumulative rate, which ends at the report's rate.
    assert rate[0] == pytest.approx(4 / 101) and rate[-1] == pytest.approx(4 / 103)


def test_segment_history_defaults_now_to_the_clock(
    session: Session, variants: list[Variant]
) -> None:
    a = variants[0]
    segment = session.get(Segment, a.segment_id)
    assert segment is not None
    _add_rows(session, a, [datetime.now(UTC) - timedelta(minutes=3)])
    before = datetime.now(UTC)
    history = segment_history(session=session, variant_ids=[a.id])  # type: ignore[list-item]
    after = datetime.now(UTC)
    assert history.impressions.sum() == 1
    # It read the clock between the two. Read again only after it, the clock was a minute
    # bucket on where the chart was read in the last milliseconds of a minute.
    assert before < history.starts[-1] + history.width and history.starts[-1] <= after


def test_history_finds_rows_by_variant_and_time_in_one_index(
    sqlite_template: Path, tmp_path: Path
) -> None:
    """With an index on the variant alone, or the time alone, each of these queries read every
    other experiment's rows too. SQLite's plans name the index whatever the tables hold, so the
    plans are read there."""
    path = tmp_path / "plans.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(load_settings({"database_url": f"sqlite:///{path}"}))
    with statements_sent(engine) as sent, Session(engine) as session:
        segment_history(session=session, variant_ids=[1, 2], now=NOW)
    reads = sqlite_reads(engine, sent, "impression|event")
    engine.dispose()
    # The oldest impression, then impressions and conversions per bucket.
    assert len(reads) == 3, reads
    for read in reads:
        assert re.match(
            r"SEARCH (impression|event) USING (COVERING )?INDEX ix_\1_variant_id_created_at "
            r"\(variant_id=\?",
            read,
        ), read


def _same(together: History, alone: History) -> bool:
    return (
        together.variant_ids == alone.variant_ids
        and together.starts == alone.starts
        and together.width == alone.width
        and all(
            np.array_equal(getattr(together, part), getattr(alone, part))
            for part in (
                "impressions",
                "conversions",
                "earlier_impressions",
                "earlier_conversions",
            )
        )
    )


def test_segments_asked_together_get_the_history_each_gets_alone(
    session: Session, variants: list[Variant]
) -> None:
    """The experiment page asks for every segment's at once: five queries (four, and the mark of
    the hours counted for the charts, service.hourly_traffic), where it sent four a segment.
    Segments whose charts share a width share its buckets, each cut to its own: `b`'s start after
    `a`'s, and a conversion of `b`'s before its first impression is no bucket's but earlier
    evidence, as asked alone."""
    a, b, c = variants
    _add_rows(session, a, [NOW - timedelta(hours=23), NOW - timedelta(hours=2)])
    _add_rows(
        session,
        b,
        [NOW - timedelta(hours=13), NOW - timedelta(minutes=5)],
        converted_at=[NOW - timedelta(hours=20), NOW - timedelta(minutes=4)],
    )
    _add_rows(session, c, [NOW - timedelta(days=9), NOW - timedelta(hours=1)], [NOW])
    for variant, counters in ((a, (7, 1)), (b, (2, 2)), (c, (9, 3))):
        variant.impressions, variant.conversions = counters
        session.add(variant)
    session.commit()
    asked = {"a": [a.id], "b": [b.id], "c": [c.id], "none": []}
    engine = session.get_bind()
    with statements_sent(engine) as sent:  # type: ignore[arg-type]
        together = segments_history(session=session, variant_ids=asked, now=NOW)  # type: ignore[arg-type]
    assert len(sent) == 5, sent

    alone = {
        key: segment_history(session=session, variant_ids=ids, now=NOW)  # type: ignore[arg-type]
        for key, ids in asked.items()
    }
    assert together["a"].width == together["b"].width == timedelta(hours=1)
    assert len(together["a"].starts) > len(together["b"].starts)
    assert together["c"].width > together["a"].width
    assert together["b"].earlier_conversions.tolist() == [1]
    for key in asked:
        assert _same(together[key], alone[key]), key
    if engine.dialect.name == "sqlite":
        # Read by the variant and time index, as one segment's are, whatever the grids.
        reads = sqlite_reads(engine, sent, "impression|event")  # type: ignore[arg-type]
        # The oldest impressions, then one search a grid (two widths) of impressions and events.
        assert len(reads) == 1 + 2 * 2, reads
        for read in reads:
            assert re.search(
                r"SEARCH (impression|event) USING (COVERING )?INDEX ix_\1_variant_id_created_at "
                r"\(variant_id=\?",
                read,
            ), read
