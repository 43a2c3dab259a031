"""The report's charts as self-contained SVG data URIs, each with its alt text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from reports.svg import AXIS, Canvas, Scale, clip_label, nice_ticks, tick_label, wrap

OBSERVED = "#d5281b"
COUNTERFACTUAL = "#005eb8"
COMPARISON = "#768692"
MODEL_COLOURS = {"PACS": "#005eb8", "MCP": "#009639", "care-home": "#ed8b00"}
MODEL_ORDER = ("PACS", "MCP", "care-home")
MODEL_NAMES = {"PACS": "Primary and acute care systems (PACS)",
               "MCP": "Multispecialty community providers (MCP)",
               "care-home": "Enhanced health in care homes"}
PUBLISHED = "published"
PUBLISHED_NAME = "For reference: published estimates (diamonds)"
REFERENCE_GREY = "#aeb7bd"
WIDTH = 680.0
NOTE_CHARS = 130  # characters of 9px note text that fit across the chart


@dataclass(frozen=True)
class Figure:
    """An image for a page: its source (a data URI) and the text read out in its place."""

    src: str
    alt: str


@dataclass(frozen=True)
class SeriesPanel:
    """One outcome's monthly rates per 1,000; None where a value is not published."""

    title: str
    months: Sequence[date]
    observed: Sequence[float | None]
    counterfactual: Sequence[float | None]
    comparison: Sequence[float | None]


@dataclass(frozen=True)
class Interval:
    """A labelled estimate with its confidence interval (one row of a forest plot)."""

    label: str
    estimate: float
    low: float
    high: float
    group: str = ""


def _axis_title(canvas: Canvas, text: str, centre: float, y: float) -> None:
    """An axis title centred under its axis, moved in so that it stays on the canvas."""
    half = 3.1 * len(text)  # about half the width of 10px text
    x = min(max(centre, half + 8), canvas.width - half - 8)
    canvas.text(x, y, text, size=10, anchor="middle")


def _decimal_year(month: date) -> float:
    return month.year + (month.month - 1) / 12


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _legend(canvas: Canvas, x: float, y: float, entries: Sequence[tuple[str, str, str]]) -> None:
    """Entries of (kind, colour, label) in one row; kind is line, dash, dot or ring."""
    for kind, colour, label in entries:
        if kind in ("line", "dash"):
            canvas.line(x, y - 4, x + 18, y - 4, stroke=colour, width=2,
                        dash="5 3" if kind == "dash" else None)
        elif kind == "ring":
            canvas.circle(x + 9, y - 4, 3.5, fill="#fff", stroke=colour)
        else:
            canvas.circle(x + 9, y - 4, 3.5, fill=colour)
        canvas.text(x + 23, y, label, size=10)
        x += 23 + 6.2 * len(label) + 18


def observed_vs_counterfactual(panels: Sequence[SeriesPanel], go_live: date,
                               site_name: str) -> Figure:
    """Small multiples, one per outcome: the site observed, its modelled counterfactual
    and its comparators, so a board sees where the lines part after go-live."""
    ncols = 2 if len(panels) > 1 else 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    cell_w, cell_h, legend_h = WIDTH / ncols, 158.0, 30.0
    canvas = Canvas(WIDTH, nrows * cell_h + legend_h,
                    title=f"Observed and expected monthly rates for {site_name}")
    live = _decimal_year(go_live)
    for index, panel in enumerate(panels):
        left = (index % ncols) * cell_w + 44
        top = (index // ncols) * cell_h + 22
        right, bottom = left + cell_w - 58, top + cell_h - 50
        xs = [_decimal_year(m) for m in panel.months]
        values = _finite([*panel.observed, *panel.counterfactual, *panel.comparison])
        if not xs or not values:
            canvas.text(left, top, f"{panel.title}: no published values", size=10)
            continue
        y_ticks = nice_ticks(min(values), max(values), 4)
        x_scale = Scale((min(xs), max(xs)), (left, right))
        y_scale = Scale((y_ticks[0], y_ticks[-1]), (bottom, top))
        canvas.text(left - 40, top - 8, panel.title, size=11, weight="bold")
        canvas.y_axis(y_scale, y_ticks, left, right, [tick_label(t, y_ticks) for t in y_ticks])
        canvas.line(left, bottom, right, bottom, stroke=AXIS, width=0.8)
        if index >= len(panels) - ncols:  # years under the bottom row only: shared axis
            years = list(range(math.ceil(min(xs)), math.floor(max(xs)) + 1))
            canvas.x_axis(x_scale, years, bottom, top, [str(y) for y in years], grid=False)
        canvas.line(x_scale(live), top, x_scale(live), bottom, stroke=AXIS, width=1,
                    dash="2 2")
        for series, colour, width, dash in (
            (panel.comparison, COMPARISON, 1.2, None),
            (panel.counterfactual, COUNTERFACTUAL, 1.4, "5 3"),
            (panel.observed, OBSERVED, 1.5, None),
        ):
            points = [(x_scale(x), None if v is None else y_scale(v))
                      for x, v in zip(xs, series, strict=True)]
            canvas.polyline(points, stroke=colour, width=width, dash=dash)
    _legend(canvas, 10, nrows * cell_h + 18, [
        ("line", OBSERVED, "Site observed"),
        ("dash", COUNTERFACTUAL, "Site without the new care model (modelled)"),
        ("line", COMPARISON, "Matched comparison areas"),
    ])
    outcomes = ", ".join(p.title.lower() for p in panels)
    start = f" from {panels[0].months[0]:%B %Y}" if panels and panels[0].months else ""
    alt = (f"Line charts of monthly rates per 1,000 population of {outcomes} for {site_name}"
           f"{start}: the site as observed, the site as modelled without the new care model, "
           f"and the matched comparison areas; a dotted line marks go-live in {go_live:%B %Y}.")
    return Figure(canvas.data_uri(), alt)


def _interval_rows(canvas: Canvas, rows: Sequence[Interval], x_scale: Scale, top: float,
                   left: float, row_h: float, grouped: bool) -> float:
    """Draw forest rows (with group headings when grouped); return the y below the last.

    Rows of the published group are drawn as grey diamonds, so they read as reference
    points and not as sites."""
    y = top
    current = None
    for row in rows:
        if grouped and row.group != current:
            current = row.group
            y += row_h * 0.6
            heading = PUBLISHED_NAME if row.group == PUBLISHED else \
                MODEL_NAMES.get(row.group, row.group)
            canvas.text(8, y + 4, heading, size=10.5, weight="bold",
                        fill=MODEL_COLOURS.get(row.group, AXIS))
            y += row_h
        colour = MODEL_COLOURS.get(row.group, AXIS)
        canvas.text(left - 8, y + 4, clip_label(row.label, 46), size=10, anchor="end")
        if row.group == PUBLISHED:
            canvas.line(x_scale(row.low), y, x_scale(row.high), y, stroke=REFERENCE_GREY,
                        width=1.6)
            canvas.diamond(x_scale(row.estimate), y, 4.2, fill=AXIS)
        else:
            canvas.line(x_scale(row.low), y, x_scale(row.high), y, stroke=colour, width=1.6)
            canvas.circle(x_scale(row.estimate), y, 3.4, fill=colour)
        y += row_h
    return y


def _note(canvas: Canvas, y: float, text: str) -> None:
    """A small wrapped note under a chart (the chart's own caption, printed with it)."""
    for line in wrap(text, NOTE_CHARS):
        canvas.text(8, y, line, size=9, fill=AXIS)
        y += 12


def forest(rows: Sequence[Interval], title: str, x_label: str, subject: str,
           reference: Sequence[Interval] = (), note: str = "") -> Figure:
    """Each site's percentage change with its CI, grouped by model type, and published
    estimates on the same scale (if any) in a group of their own below the sites."""
    ordered = sorted(rows, key=lambda r: (MODEL_ORDER.index(r.group)
                                          if r.group in MODEL_ORDER else len(MODEL_ORDER),
                                          r.group, r.label))
    published = [Interval(r.label, r.estimate, r.low, r.high, PUBLISHED) for r in reference]
    shown = [*ordered, *published]
    groups = len({r.group for r in shown})
    row_h, left, right, top = 15.0, 300.0, WIDTH - 16, 30.0
    note_lines = wrap(note, NOTE_CHARS) if note else []
    height = top + row_h * (len(shown) + 1.6 * groups) + 48 + 12 * len(note_lines)
    canvas = Canvas(WIDTH, height, title=title)
    values = [v for r in shown for v in (r.low, r.high)] or [0.0]
    ticks = nice_ticks(min(*values, 0.0), max(*values, 0.0), 6)
    x_scale = Scale((ticks[0], ticks[-1]), (left, right))
    canvas.text(8, 16, title, size=12, weight="bold")
    bottom = _interval_rows(canvas, shown, x_scale, top, left, row_h, grouped=True)
    canvas.x_axis(x_scale, ticks, bottom, top, [tick_label(t, ticks, "%") for t in ticks])
    canvas.line(x_scale(0), top, x_scale(0), bottom, stroke=AXIS, width=1.2)
    _axis_title(canvas, x_label, (left + right) / 2, bottom + 30)
    if note:
        _note(canvas, bottom + 46, note)
    lower = sum(1 for r in ordered if r.high < 0)
    higher = sum(1 for r in ordered if r.low > 0)
    alt = (f"Forest plot of {subject} for {len(ordered)} sites grouped by model type, each "
           f"with its 95% confidence interval. {lower} sites have intervals wholly below "
           f"zero (lower than comparison areas) and {higher} wholly above zero.")
    if published:
        described = "; ".join(f"{r.label}: {r.estimate:+.1f}% ({r.low:+.1f}% to {r.high:+.1f}%)"
                              for r in published)
        alt += f" For reference, published estimates on the same scale: {described}."
    if note:
        alt += f" {note}"
    return Figure(canvas.data_uri(), alt)


def love_plot(covariates: Sequence[tuple[str, float | None, float | None]],
              site_name: str) -> Figure:
    """Standardised mean differences before and after matching, one row per covariate."""
    row_h, left, right, top = 17.0, 290.0, WIDTH - 20, 10.0
    height = top + row_h * len(covariates) + 62
    canvas = Canvas(WIDTH, height, title=f"Balance of {site_name} against comparison areas")
    values = _finite([v for _, b, a in covariates for v in (b, a)])
    limit = max([0.25, *[abs(v) for v in values]])
    ticks = nice_ticks(-limit, limit, 6)
    x_scale = Scale((ticks[0], ticks[-1]), (left, right))
    y = top + row_h / 2
    for label, before, after in covariates:
        canvas.line(left, y, right, y, stroke="#eef0f1", width=0.8)
        canvas.text(left - 8, y + 4, clip_label(label, 46), size=10, anchor="end")
        if before is not None and math.isfinite(before):
            canvas.circle(x_scale(before), y, 4, fill="#fff", stroke=COMPARISON)
        if after is not None and math.isfinite(after):
            canvas.circle(x_scale(after), y, 4, fill=COUNTERFACTUAL)
        y += row_h
    bottom = y - row_h / 2 + 8
    for mark in (-0.1, 0.1):
        canvas.line(x_scale(mark), top, x_scale(mark), bottom, stroke=AXIS, width=0.8,
                    dash="3 3")
    canvas.line(x_scale(0), top, x_scale(0), bottom, stroke=AXIS, width=1.0)
    canvas.x_axis(x_scale, ticks, bottom, top, [tick_label(t, ticks) for t in ticks],
                  grid=False)
    _axis_title(canvas, "Standardised mean difference (site minus comparison; dashed: \u00b10.1)",
                (left + right) / 2, bottom + 28)
    _legend(canvas, 10, height - 6, [("ring", COMPARISON, "All eligible areas (before matching)"),
                                     ("dot", COUNTERFACTUAL, "Matched comparison areas")])
    described = "; ".join(
        f"{label}: {'n/a' if b is None else f'{b:+.2f}'} before, "
        f"{'n/a' if a is None else f'{a:+.2f}'} after matching"
        for label, b, a in covariates)
    alt = (f"Love plot of standardised mean differences between {site_name} and its "
           f"comparison areas, before and after matching. {described}.")
    return Figure(canvas.data_uri(), alt)


def event_study(points: Sequence[tuple[int, float, float, float]], title: str,
                site_name: str, note: str = "", reference: int = -1) -> Figure:
    """% change against comparison areas by quarter relative to go-live, with 95% CIs.

    The reference quarter (fixed at zero) is marked by a dashed line and an open circle;
    go-live by a dotted line between the last quarter before it and the first after.
    `note` (the pre-trend test in words) is printed under the chart and read out in the
    alt text."""
    left, right, top, bottom = 64.0, WIDTH - 16, 50.0, 210.0
    note_lines = wrap(note, NOTE_CHARS) if note else []
    canvas = Canvas(WIDTH, bottom + 48 + 12 * len(note_lines),
                    title=f"{title}: event study for {site_name}")
    es = [p[0] for p in points]
    values = _finite([v for p in points for v in p[1:]]) or [0.0]
    y_ticks = nice_ticks(min(*values, 0.0), max(*values, 0.0), 5)
    low_e, high_e = min(es, default=0), max(es, default=1)
    step = 1 if high_e - low_e <= 12 else 2  # whole quarters, go-live (0) always labelled
    x_ticks = [float(e) for e in range(low_e, high_e + 1) if e % step == 0]
    x_scale = Scale((low_e - 0.5, high_e + 0.5), (left, right))
    y_scale = Scale((y_ticks[0], y_ticks[-1]), (bottom, top))
    canvas.text(8, 16, title, size=12, weight="bold")
    canvas.y_axis(y_scale, y_ticks, left, right,
                  [tick_label(t, y_ticks, "%") for t in y_ticks])
    canvas.x_axis(x_scale, x_ticks, bottom, top, [tick_label(t, [0, 1]) for t in x_ticks],
                  grid=False)
    canvas.line(left, y_scale(0), right, y_scale(0), stroke=AXIS, width=1.2)
    if reference in es:
        canvas.line(x_scale(reference), top, x_scale(reference), bottom,
                    stroke=REFERENCE_GREY, width=1, dash="4 3")
        canvas.text(x_scale(reference) - 4, top - 4, "Reference (0)", size=9,
                    anchor="end", fill=AXIS)
    live = x_scale(-0.5)
    canvas.line(live, top, live, bottom, stroke=AXIS, width=1.2, dash="2 2")
    canvas.text(live + 4, top - 4, "Go-live", size=9, fill=AXIS)
    for e, estimate, low, high in points:
        if e == reference:
            canvas.circle(x_scale(e), y_scale(estimate), 3.2, fill="#fff", stroke=AXIS)
            continue
        colour = COUNTERFACTUAL if e >= 0 else COMPARISON
        canvas.line(x_scale(e), y_scale(low), x_scale(e), y_scale(high), stroke=colour,
                    width=1.4)
        canvas.circle(x_scale(e), y_scale(estimate), 2.8, fill=colour)
    _axis_title(canvas, "Quarters relative to go-live (the first and last points pool "
                "earlier and later months)", (left + right) / 2, bottom + 30)
    canvas.text(8, 31, "% difference from comparison areas, relative to the quarter "
                "before go-live (95% CI)", size=9, fill=AXIS)
    if note:
        _note(canvas, bottom + 48, note)
    estimated = [p for p in points if p[0] != reference]
    pre = [p for p in estimated if p[0] < 0]
    post = [p for p in estimated if p[0] >= 0]
    covering = sum(1 for _, _, low, high in pre if low <= 0 <= high)
    below = sum(1 for _, _, _, high in post if high < 0)
    alt = (f"Event-study chart for {title.lower()} at {site_name}: the % difference from "
           f"comparison areas in each quarter from {low_e} to {high_e} relative to go-live, "
           f"against quarter {reference} (fixed at zero), with 95% confidence intervals. "
           f"{covering} of {len(pre)} pre-go-live intervals include zero; {below} of "
           f"{len(post)} intervals after go-live lie wholly below zero.")
    if note:
        alt += f" {note}"
    return Figure(canvas.data_uri(), alt)
