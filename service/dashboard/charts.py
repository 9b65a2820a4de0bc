"""Server-rendered SVG charts: geometry here, markup in templates/_charts.html.

SVG drawn on the server needs no script, no chart library and no CDN, so the charts work offline,
with JavaScript off, and under a CSP that allows no inline code. Colours are presentation
attributes rather than style attributes for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Colour-blind-safe (Okabe-Ito), in the order variants are listed.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
# SVG stroke-dasharray values, "" a solid line. Each time the palette runs out the colours come
# round again with the next pattern: two lines of one colour could not be told apart, in the
# chart or by its legend.
DASHES = ("", "7 3", "2 2", "9 3 2 3")
# The most lines a chart draws so that no two look alike.
MAX_LINES = len(PALETTE) * len(DASHES)

WIDTH, HEIGHT = 560, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 10, 28
# Labels on the x axis at most; more than this collide at the chart's width.
X_TICKS = 5


@dataclass(frozen=True)
class LineStyle:
    colour: str
    dash: str


def style(index: int) -> LineStyle:
    """The look of the `index`-th line: distinct for every index below MAX_LINES."""
    round_, place = divmod(index, len(PALETTE))
    return LineStyle(colour=PALETTE[place], dash=DASHES[round_ % len(DASHES)])


@dataclass(frozen=True)
class Line:
    label: str
    style: LineStyle
    # SVG polyline point lists; a gap (a bucket with no data) starts a new segment.
    segments: list[str]
    # Its value in each period, written out for the chart's table; "-" in a gap.
    values: list[str]


@dataclass(frozen=True)
class Tick:
    position: float
    label: str
    # SVG text-anchor: labels at the ends are anchored inward, or the chart's edge clips them.
    anchor: str = "middle"


@dataclass(frozen=True)
class LineChart:
    title: str
    lines: list[Line]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    # Every period's label, where x_ticks names a few: the rows of the chart's table, its text
    # alternative, since the drawing is one image to a screen reader.
    periods: list[str]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def line_chart(
    *,
    title: str,
    labels: Sequence[str],
    series: Sequence[Sequence[float]],
    x_labels: Sequence[str],
    y_max: float | None = None,
    percent: bool = True,
) -> LineChart:
    """One line per series over evenly spaced x positions; NaN values leave a gap."""
    finite = [v for values in series for v in values if not math.isnan(v)]
    top_value = y_max if y_max is not None else _nice_ceiling(max(finite, default=0.0))
    n = max((len(values) for values in series), default=0)

    def x(i: int) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (i / max(n - 1, 1))

    def y(value: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - value / top_value)

    lines = []
    for index, (label, values) in enumerate(zip(labels, series, strict=True)):
        segments: list[str] = []
        current: list[str] = []
        for i, value in enumerate(values):
            if math.isnan(value):
                if current:
                    segments.append(" ".join(current))
                current = []
                continue
            current.append(f"{x(i):.1f},{y(value):.1f}")
        if current:
            segments.append(" ".join(current))
        written = [_cell(value, percent) for value in values]
        lines.append(Line(label=label, style=style(index), segments=segments, values=written))

    y_ticks = [
        Tick(y(top_value * f), _format(top_value * f, percent)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    x_ticks = [
        Tick(x(i), x_labels[i], "start" if i == 0 else "end" if i == n - 1 else "middle")
        for i in _spread(n, at_most=X_TICKS)
    ]
    return LineChart(
        title=title, lines=lines, y_ticks=y_ticks, x_ticks=x_ticks, periods=list(x_labels[:n])
    )


@dataclass(frozen=True)
class IntervalBar:
    """A credible interval on a 0..scale axis, as fractions of the bar's width."""

    low: float
    high: float
    mean: float


def interval_bar(low: float, high: float, mean: float, scale: float) -> IntervalBar:
    scale = scale if scale > 0 else 1.0
    return IntervalBar(low=low / scale, high=high / scale, mean=mean / scale)


def _spread(n: int, *, at_most: int) -> list[int]:
    """Up to `at_most` indices into n positions, evenly spread, always the first and the last:
    the newest period is the one a reader looks for."""
    if n <= at_most:
        return list(range(n))
    return sorted({round(k * (n - 1) / (at_most - 1)) for k in range(at_most)})


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


def _cell(value: float, percent: bool) -> str:
    """A value as the chart's table writes it: to the hundredth of a percent, as the variants'
    table writes rates."""
    if math.isnan(value):
        return "-"
    return f"{value * 100:.2f}%" if percent else f"{value:.4g}"


def _format(value: float, percent: bool) -> str:
    if percent:
        return f"{value * 100:.3g}%"
    return f"{value:.3g}"
