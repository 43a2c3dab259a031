"""A small SVG canvas for the report's charts: scales, ticks, lines, markers and text.

Charts are drawn as SVG text rather than through a plotting library: a figure takes
milliseconds instead of half a second, prints sharply on A4, is byte-for-byte the same
for the same data, and carries its text (labels, site names) as escaped XML.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

FONT = "DejaVu Sans, Arial, Helvetica, sans-serif"
INK = "#212b32"
GRID = "#d8dde0"
AXIS = "#425563"


def fmt(value: float) -> str:
    """A coordinate with two decimals and no trailing zeros: short, stable output."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def nice_ticks(low: float, high: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range must be finite, got {low!r} to {high!r}")
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks: list[float] = []
    value = first
    while value <= high + step * 1e-9 or len(ticks) < 2:
        ticks.append(float(f"{value:.12g}"))
        value += step
    if ticks[-1] < high - 1e-12:
        ticks.append(float(f"{ticks[-1] + step:.12g}"))
    return ticks


def tick_label(value: float, ticks: Sequence[float], suffix: str = "") -> str:
    """Tick text with as many decimals as the step needs (0.25 -> 2, 5 -> 0)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9:
        decimals += 1
    text = f"{value:.{decimals}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return text.replace("-", "\u2212") + suffix


@dataclass(frozen=True)
class Scale:
    """Linear map from data values to canvas coordinates."""

    domain: tuple[float, float]
    extent: tuple[float, float]

    def __call__(self, value: float) -> float:
        d0, d1 = self.domain
        r0, r1 = self.extent
        if d1 == d0:
            return (r0 + r1) / 2
        return r0 + (value - d0) / (d1 - d0) * (r1 - r0)


@dataclass
class Canvas:
    """An SVG drawing with a title and description for screen readers."""

    width: float
    height: float
    title: str
    description: str = ""
    parts: list[str] = field(default_factory=list)

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str = AXIS,
             width: float = 1.0, dash: str | None = None) -> None:
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(
            f'<line x1="{fmt(x1)}" y1="{fmt(y1)}" x2="{fmt(x2)}" y2="{fmt(y2)}" '
            f'stroke="{stroke}" stroke-width="{fmt(width)}"{extra}/>'
        )

    def polyline(self, points: Sequence[tuple[float, float | None]], stroke: str,
                 width: float = 1.5, dash: str | None = None) -> None:
        """A line through the points; a point whose y is None breaks the line there."""
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        run: list[str] = []
        for x, y in [*points, (0.0, None)]:
            if y is None or not math.isfinite(y):
                if len(run) > 1:
                    self.parts.append(
                        f'<polyline points="{" ".join(run)}" fill="none" stroke="{stroke}" '
                        f'stroke-width="{fmt(width)}" stroke-linejoin="round"{extra}/>'
                    )
                elif run:
                    cx, cy = run[0].split(",")
                    self.parts.append(f'<circle cx="{cx}" cy="{cy}" r="{fmt(width)}" '
                                      f'fill="{stroke}"/>')
                run = []
            else:
                run.append(f"{fmt(x)},{fmt(y)}")

    def circle(self, x: float, y: float, r: float, fill: str, stroke: str | None = None,
               stroke_width: float = 1.2) -> None:
        outline = f' stroke="{stroke}" stroke-width="{fmt(stroke_width)}"' if stroke else ""
        self.parts.append(f'<circle cx="{fmt(x)}" cy="{fmt(y)}" r="{fmt(r)}" '
                          f'fill="{fill}"{outline}/>')

    def diamond(self, x: float, y: float, r: float, fill: str) -> None:
        points = f"{fmt(x)},{fmt(y - r)} {fmt(x + r)},{fmt(y)} {fmt(x)},{fmt(y + r)} " \
                 f"{fmt(x - r)},{fmt(y)}"
        self.parts.append(f'<polygon points="{points}" fill="{fill}"/>')

    def rect(self, x: float, y: float, width: float, height: float, fill: str) -> None:
        self.parts.append(f'<rect x="{fmt(x)}" y="{fmt(y)}" width="{fmt(width)}" '
                          f'height="{fmt(height)}" fill="{fill}"/>')

    def text(self, x: float, y: float, text: str, size: float = 11, anchor: str = "start",
             fill: str = INK, weight: str = "normal", rotate: bool = False) -> None:
        """Text at (x, y) on its baseline; the string is escaped, never interpreted."""
        turn = f' transform="rotate(-90 {fmt(x)} {fmt(y)})"' if rotate else ""
        bold = ' font-weight="bold"' if weight == "bold" else ""
        self.parts.append(
            f'<text x="{fmt(x)}" y="{fmt(y)}" font-size="{fmt(size)}" '
            f'text-anchor="{anchor}" fill="{fill}"{bold}{turn}>{escape(text)}</text>'
        )

    def x_axis(self, scale: Scale, ticks: Sequence[float], y: float, top: float,
               labels: Sequence[str], grid: bool = True) -> None:
        """Tick labels under the plot at `y`, with light vertical grid lines up to `top`."""
        for value, label in zip(ticks, labels, strict=True):
            x = scale(value)
            if grid:
                self.line(x, top, x, y, stroke=GRID, width=0.8)
            self.text(x, y + 13, label, size=10, anchor="middle", fill=AXIS)
        self.line(scale(ticks[0]), y, scale(ticks[-1]), y, stroke=AXIS, width=0.8)

    def y_axis(self, scale: Scale, ticks: Sequence[float], x: float, right: float,
               labels: Sequence[str]) -> None:
        """Tick labels left of `x`, with light horizontal grid lines across to `right`."""
        for value, label in zip(ticks, labels, strict=True):
            y = scale(value)
            self.line(x, y, right, y, stroke=GRID, width=0.8)
            self.text(x - 4, y + 3.5, label, size=10, anchor="end", fill=AXIS)

    def to_svg(self) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{fmt(self.width)}" '
            f'height="{fmt(self.height)}" viewBox="0 0 {fmt(self.width)} {fmt(self.height)}" '
            f'role="img" font-family={quoteattr(FONT)}>'
            f"<title>{escape(self.title)}</title>"
        )
        desc = f"<desc>{escape(self.description)}</desc>" if self.description else ""
        background = f'<rect width="{fmt(self.width)}" height="{fmt(self.height)}" fill="#fff"/>'
        return head + desc + background + "".join(self.parts) + "</svg>"

    def data_uri(self) -> str:
        """The drawing as a data URI for an <img>, so pages need no other file."""
        payload = base64.b64encode(self.to_svg().encode("utf-8")).decode("ascii")
        return "data:image/svg+xml;base64," + payload


def clip_label(text: str, limit: int) -> str:
    """Shorten long labels with an ellipsis so they fit the space left for them."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def wrap(text: str, limit: int) -> list[str]:
    """Break text into lines of at most `limit` characters at spaces (SVG text does not
    wrap itself); a word longer than the limit gets a line of its own."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > limit:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines
