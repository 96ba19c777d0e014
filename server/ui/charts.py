"""Line charts as SVG geometry, computed on the server; the template only draws it.

No charting library and no JavaScript: the page stays readable with scripts off and
under a strict Content-Security-Policy (SVG presentation attributes, no inline style).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from server.ui.views import Series

WIDTH: Final = 640
HEIGHT: Final = 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 120, 16, 36
PALETTE: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
MEAN_COLOUR: Final = "#222222"


@dataclass(frozen=True, slots=True)
class Line:
    """One drawn series: its label, colour, SVG points and the position of its legend."""

    label: str
    colour: str
    points: str
    dots: list[tuple[float, float]]
    legend_y: float
    bold: bool


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis tick: where it is drawn and what it reads."""

    position: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the SVG template needs."""

    width: int
    height: int
    left: int
    right: float
    top: int
    bottom: float
    lines: list[Line]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    x_title: str
    y_title: str

    @property
    def empty(self) -> bool:
        """Nothing to draw yet."""
        return not self.lines


def line_chart(
    series: Sequence[Series], *, x_title: str, y_title: str, y_max: float | None = None
) -> Chart:
    """Scale every series into one plot area; ``y_max`` fixes the top (1.0 for Dice)."""
    xs = [x for line in series for x, _ in line.points]
    ys = [y for line in series for _, y in line.points]
    x_low, x_high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_high == x_low:
        x_high = x_low + 1
    top_value = y_max if y_max is not None else max([*ys, 1e-9]) * 1.1
    right, bottom = WIDTH - _RIGHT, HEIGHT - _BOTTOM

    def x_at(value: float) -> float:
        return _LEFT + (value - x_low) / (x_high - x_low) * (right - _LEFT)

    def y_at(value: float) -> float:
        return bottom - min(max(value / top_value, 0.0), 1.0) * (bottom - _TOP)

    lines = []
    for index, item in enumerate(series):
        bold = item.label == "mean"
        colour = MEAN_COLOUR if bold else PALETTE[index % len(PALETTE)]
        dots = [(round(x_at(x), 1), round(y_at(y), 1)) for x, y in item.points]
        lines.append(
            Line(
                label=item.label,
                colour=colour,
                points=" ".join(f"{x},{y}" for x, y in dots),
                dots=dots,
                legend_y=_TOP + 8 + 18 * index,
                bold=bold,
            )
        )
    x_values = sorted({int(x) for x in xs}) if xs else []
    step = max(1, len(x_values) // 10)
    x_ticks = [Tick(x_at(value), str(value)) for value in x_values[::step]]
    y_ticks = [Tick(y_at(top_value * k / 4), f"{top_value * k / 4:.2g}") for k in range(5)]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=_LEFT,
        right=right,
        top=_TOP,
        bottom=bottom,
        lines=lines,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        x_title=x_title,
        y_title=y_title,
    )
