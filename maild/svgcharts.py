"""Small static charts as inline SVG: (stacked) bars and lines, with a title, axes and a legend.

Drawn here rather than by a JavaScript library so a report page needs no script and no
network when it is opened, and nothing third-party is embedded in it. Every mark carries
its series, label and value as data attributes, so a test can check what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2f6db5", "#e08a1e", "#c23b3b", "#3a9d5d", "#7b5bb5", "#8c8c8c")
WIDTH, HEIGHT = 600, 330
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 36, 100


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def nice_max(value: float) -> float:
    """The top of the y axis: four whole ticks of 1, 2, 3 or 5 times a power of ten (counts
    are whole numbers, so a tick is never less than 1)."""
    if value <= 4:
        return 4.0
    power = 10.0 ** math.floor(math.log10(value / 4))
    return 4 * next(step * power for step in (1, 2, 3, 5, 10) if 4 * step * power >= value)


def _frame(title: str, y_label: str, top: float, labels: Sequence[str], series: Sequence[Series]) -> list[str]:
    """Title, y grid with ticks, x labels and legend: what every chart shares."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [f'<text class="title" x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15" '
             f'font-weight="bold">{escape(title)}</text>',
             f'<text class="axis-label" transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" '
             f'text-anchor="middle" font-size="11">{escape(y_label)}</text>']
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{value:g}</text>')
    step = max(1, math.ceil(len(labels) / 16))  # at most 16 x labels, so they stay legible
    for i, label in enumerate(labels):
        if i % step == 0:
            x = _slot_x(i, len(labels))
            parts.append(f'<text class="x-label" transform="translate({x:.1f} {HEIGHT - BOTTOM + 12}) rotate(35)" '
                         f'font-size="10">{escape(_short(label))}</text>')
    for i, s in enumerate(series):
        x = LEFT + i * 130
        parts.append(f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{x + 14}" y="{HEIGHT - 5}" font-size="11">{escape(s.name)}</text>')
    return parts


def _short(label: str) -> str:
    return label if len(label) <= 24 else label[:23] + "\u2026"


def _slot_x(i: int, count: int) -> float:
    """The centre of the i-th of ``count`` equal slots across the plot."""
    width = (WIDTH - LEFT - RIGHT) / max(count, 1)
    return LEFT + width * (i + 0.5)


def _svg(kind: str, parts: list[str], title: str) -> str:
    return (f'<svg class="chart {kind}" role="img" aria-label="{_attr(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif">{"".join(parts)}</svg>')


def _empty(kind: str, title: str) -> str:
    parts = [f'<text class="title" x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15" '
             f'font-weight="bold">{escape(title)}</text>',
             f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="13" '
             'fill="#888">no data in this period</text>']
    return _svg(kind, parts, title)


def bars(title: str, labels: Sequence[str], series: Sequence[Series], y_label: str) -> str:
    """A bar per label; several series are stacked in the order given."""
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    if not labels or not any(totals):
        return _empty("bars", title)
    top = nice_max(max(totals))
    plot_h = HEIGHT - TOP - BOTTOM
    width = (WIDTH - LEFT - RIGHT) / len(labels) * 0.7
    parts = _frame(title, y_label, top, labels, series)
    for i, label in enumerate(labels):
        base = float(TOP + plot_h)
        for n, s in enumerate(series):
            h = plot_h * s.values[i] / top
            if h <= 0:
                continue
            base -= h
            parts.append(f'<rect class="bar" data-series="{_attr(s.name)}" data-label="{_attr(label)}" '
                         f'data-value="{s.values[i]:g}" x="{_slot_x(i, len(labels)) - width / 2:.1f}" '
                         f'y="{base:.1f}" width="{width:.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE[n % len(PALETTE)]}"><title>{escape(label)}: {escape(s.name)} '
                         f'{s.values[i]:g}</title></rect>')
    return _svg("bars", parts, title)


def lines(title: str, labels: Sequence[str], series: Sequence[Series], y_label: str) -> str:
    """One line per series over the labels (e.g. days), with a dot on every point."""
    if not labels or not any(v for s in series for v in s.values):
        return _empty("lines", title)
    top = nice_max(max(v for s in series for v in s.values))
    plot_h = HEIGHT - TOP - BOTTOM
    parts = _frame(title, y_label, top, labels, series)
    for n, s in enumerate(series):
        colour = PALETTE[n % len(PALETTE)]
        points = [(_slot_x(i, len(labels)), TOP + plot_h - plot_h * v / top) for i, v in enumerate(s.values)]
        parts.append(f'<polyline class="line" data-series="{_attr(s.name)}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
        parts += [f'<circle class="point" data-series="{_attr(s.name)}" data-label="{_attr(labels[i])}" '
                  f'data-value="{s.values[i]:g}" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>'
                  for i, (x, y) in enumerate(points)]
    return _svg("lines", parts, title)
