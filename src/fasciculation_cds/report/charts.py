"""Lab trend charts as inline SVG geometry (no scripts, no network): points over time, the
rule thresholds as dashed lines, and the values that triggered a finding marked.

Everything on a chart is in one unit, the series' axis unit (see `view.axis_unit`); tick labels
keep significant digits like every other number shown."""

from __future__ import annotations

from dataclasses import dataclass

from ..quantity_text import format_significant
from .view import Series, Threshold

WIDTH, HEIGHT = 560, 190
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 30


@dataclass(frozen=True)
class PlottedPoint:
    x: float
    y: float
    label: str
    flagged: bool


@dataclass(frozen=True)
class PlottedLine:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    points: list[PlottedPoint]
    polyline: str
    thresholds: list[PlottedLine]
    y_ticks: list[tuple[float, str]]
    x_labels: list[tuple[float, str]]


def framing_thresholds(series: Series) -> list[Threshold]:
    """The thresholds among the results, and the nearest one on each side of them: the lines
    that say where the results stand. Farther ones (a critical high for a low result) would
    only squeeze the results into a sliver of the chart."""
    values = [p.value for p in series.points]
    low, high = min(values), max(values)
    inside = [t for t in series.thresholds if low < t.value < high]
    below = [t for t in series.thresholds if t.value <= low]
    above = [t for t in series.thresholds if t.value >= high]
    framing = inside + below[-1:] + above[:1]
    return sorted(framing, key=lambda t: t.value)


def plot(series: Series) -> Chart:
    thresholds = framing_thresholds(series)
    values = [p.value for p in series.points] + [t.value for t in thresholds]
    low, high = min(values), max(values)
    span = high - low or abs(high) or 1.0
    low, high = low - 0.1 * span, high + 0.1 * span
    times = [p.when.timestamp() for p in series.points]
    start, end = min(times), max(times)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(t: float) -> float:
        return LEFT + (plot_w / 2 if end == start else (t - start) / (end - start) * plot_w)

    def y_of(v: float) -> float:
        return TOP + (high - v) / (high - low) * plot_h

    points = [PlottedPoint(round(x_of(p.when.timestamp()), 1), round(y_of(p.value), 1),
                           p.shown, p.flagged) for p in series.points]
    ticks = [low + (high - low) * i / 4 for i in range(5)]
    first, last = series.points[0].when, series.points[-1].when
    x_labels: list[tuple[float, str]] = [(float(LEFT), first.date().isoformat())]
    if last != first:
        x_labels.append((LEFT + plot_w, last.date().isoformat()))
    return Chart(
        width=WIDTH, height=HEIGHT, points=points,
        polyline=" ".join(f"{p.x},{p.y}" for p in points),
        thresholds=[PlottedLine(round(y_of(t.value), 1), t.label) for t in thresholds],
        y_ticks=[(round(y_of(v), 1), format_significant(v)) for v in ticks],
        x_labels=x_labels)
