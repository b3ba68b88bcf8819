"""Small charts drawn on the server as inline SVG: stacked bars and lines.

No JavaScript and nothing fetched by the browser: the page is complete as served, looks like
the admin in light and dark mode (colours are the admin's CSS variables and the dashboard's
tone classes), and every bar carries a tooltip (`<title>`) and, where given, a link to the
admin list behind it.
"""
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH = 480  # viewBox units; the chart is scaled to its box, about as many pixels
WIDE = 1000
HEIGHT = 160
LEFT = 50  # room for the y axis labels
RIGHT = 8
TOP = 10
BOTTOM = 22  # room for the x axis labels
MAX_BAR = 40


@dataclass(frozen=True)
class ChartSeries:
    key: str
    label: str
    values: Sequence[float | None]
    tone: str  # a CSS class: tone-ok, tone-bad, tone-warn, tone-wait, tone-muted, tone-a...
    hrefs: Sequence[str] | None = None  # one link per bucket (bars, points)
    href: str = ""  # the whole series (when there is no link per bucket)


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # not reached


# Round tops for a duration axis, in seconds: its half is round too.
DURATION_TOPS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 4 * 3600,
                 6 * 3600, 12 * 3600, 24 * 3600)


def nice_duration_ceiling(seconds: float) -> float:
    """The smallest round duration at or above `seconds` (a day beyond that: whole days)."""
    for top in DURATION_TOPS:
        if seconds <= top:
            return float(top)
    return float(math.ceil(seconds / 86400) * 86400)


def _count(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


def seconds_text(value: float) -> str:
    """A duration for a person: 850 ms, 12.5 s, 4.2 min, 1.5 h."""
    if value == 0:
        return "0"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


class _Canvas:
    def __init__(self, buckets: int, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.width, self.height = width, height
        self.plot_w = width - LEFT - RIGHT
        self.plot_h = height - TOP - BOTTOM
        self.slot = self.plot_w / max(buckets, 1)
        self.parts: list[str] = []

    def x(self, index: float) -> float:
        return LEFT + index * self.slot

    def y(self, value: float, top: float) -> float:
        return TOP + self.plot_h * (1 - value / top)

    def frame(self, top: float, ticks: Sequence[str], fmt: Callable[[float], str],
              now_index: float | None, centred: bool = False) -> None:
        for fraction in (0.0, 0.5, 1.0):
            y = self.y(top * fraction, top)
            self.parts.append(f'<line class="grid" x1="{LEFT}" x2="{self.width - RIGHT}" '
                              f'y1="{y:.1f}" y2="{y:.1f}"/>')
            self.parts.append(f'<text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" '
                              f'text-anchor="end">{escape(fmt(top * fraction))}</text>')
        for index, tick in enumerate(ticks):
            if tick:
                x = self.x(index + 0.5 if centred else index)
                self.parts.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" '
                                  f'y1="{TOP + self.plot_h}" y2="{TOP + self.plot_h + 4}"/>')
                self.parts.append(f'<text class="axis" x="{x:.1f}" y="{self.height - 6}" '
                                  f'text-anchor="middle">{escape(tick)}</text>')
        if now_index is not None:
            x = self.x(now_index)
            self.parts.append(f'<line class="now" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                              f'y2="{TOP + self.plot_h}"><title>now</title></line>')

    def svg(self, caption: str, empty: bool) -> SafeString:
        if empty:
            self.parts.append(f'<text class="empty" x="{LEFT + self.plot_w / 2:.1f}" '
                              f'y="{TOP + self.plot_h / 2:.1f}" text-anchor="middle">'
                              "nothing in these 24 hours</text>")
        body = "".join(self.parts)
        return mark_safe(  # noqa: S308  (every text above is escaped)
            f'<svg class="chart" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{escape(caption)}">'
            f"<title>{escape(caption)}</title>{body}</svg>"
        )


def _link(href: str, inner: str) -> str:
    return f'<a href="{escape(href)}">{inner}</a>' if href else inner


def stacked_bars(
    *, labels: Sequence[str], ticks: Sequence[str], series: Sequence[ChartSeries],
    caption: str, now_index: float | None = None, width: int = WIDTH,
    categories: bool = False,
) -> SafeString:
    """One bar per bucket, its series stacked in order. `labels` name the buckets in tooltips;
    `ticks` are the x axis labels ('' for none), at the buckets' starts (times) or centred
    under them (`categories`, such as days)."""
    canvas = _Canvas(len(labels), width)
    stacks = [sum(s.values[i] or 0 for s in series) for i in range(len(labels))]
    top = nice_ceiling(max(stacks, default=0))
    canvas.frame(top, ticks, _count, now_index, centred=categories)
    base = [0.0] * len(labels)
    # At least a unit wide: a lone minute among 1,440 stays visible (overlapping a neighbour).
    bar_w = min(max(canvas.slot * 0.8 if canvas.slot >= 2 else canvas.slot, 1.0), MAX_BAR)
    for s in series:
        bars: list[str] = []
        for i, value in enumerate(s.values):
            if not value:
                continue
            y_top = canvas.y(base[i] + value, top)
            height = canvas.y(base[i], top) - y_top
            base[i] += value
            rect = (f'<rect x="{canvas.x(i) + (canvas.slot - bar_w) / 2:.2f}" y="{y_top:.2f}" '
                    f'width="{bar_w:.2f}" height="{max(height, 0.5):.2f}">'
                    f"<title>{escape(labels[i])} · {escape(s.label)}: {_count(value)}</title>"
                    "</rect>")
            bars.append(_link(s.hrefs[i], rect) if s.hrefs else rect)
        if bars:
            canvas.parts.append(_link(s.href if not s.hrefs else "",
                                      f'<g class="bars {escape(s.tone)}" '
                                      f'data-series="{escape(s.key)}">{"".join(bars)}</g>'))
    return canvas.svg(caption, empty=not any(stacks))


def lines(
    *, labels: Sequence[str], ticks: Sequence[str], series: Sequence[ChartSeries],
    caption: str, fmt: Callable[[float], str] = seconds_text, now_index: float | None = None,
    ceiling: Callable[[float], float] = nice_duration_ceiling,
) -> SafeString:
    """A line per series through the buckets that have a value, a dot (with tooltip) on each."""
    canvas = _Canvas(len(labels))
    known = [v for s in series for v in s.values if v is not None]
    top = ceiling(max(known, default=0))
    canvas.frame(top, ticks, fmt, now_index)
    for s in series:
        points = [(canvas.x(i + 0.5), canvas.y(v, top), i, v)
                  for i, v in enumerate(s.values) if v is not None]
        if not points:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        dots = "".join(
            _link(s.hrefs[i] if s.hrefs else "",
                  f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3">'
                  f"<title>{escape(labels[i])} · {escape(s.label)}: {escape(fmt(v))}</title>"
                  "</circle>")
            for x, y, i, v in points
        )
        canvas.parts.append(f'<g class="line {escape(s.tone)}" data-series="{escape(s.key)}">'
                            f'<polyline points="{path}"/>{dots}</g>')
    return canvas.svg(caption, empty=not known)
