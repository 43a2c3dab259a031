"""Plots as self-contained PNG data URIs, so every page works offline."""

from __future__ import annotations

import base64
import io
from datetime import date

import polars as pl


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), dpi=100, squeeze=False)
    return plt, fig, axes


def _to_data_uri(plt, fig) -> str:
    """PNG bytes embedded as a data URI; metadata stripped so output is reproducible."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _decimal_year(month: date) -> float:
    """Months as decimal years: plain numeric ticks draw far faster than date locators."""
    return month.year + (month.month - 1) / 12


def observed_vs_counterfactual(panels: list[tuple[str, pl.DataFrame]], go_live: date) -> str:
    """Small multiples, one per outcome: the site observed, its modelled counterfactual
    and its comparators, so a board sees where the lines part after go-live."""
    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + ncols - 1) // ncols
    plt, fig, axes = _figure(7.2, 2.4 * nrows + 0.4, nrows, ncols)
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        months = [_decimal_year(m) for m in series["month"].to_list()]
        ax.plot(months, series["comparison_rate"], color="#9aa5b1", lw=1.0,
                label="Matched comparison areas")
        ax.plot(months, series["counterfactual_rate"], color="#005eb8", lw=1.2, ls="--",
                label="Site without the new care model (modelled)")
        ax.plot(months, series["observed_rate"], color="#d5281b", lw=1.3, label="Site observed")
        ax.axvline(_decimal_year(go_live), color="#425563", lw=0.8, ls=":")
        ax.set_xticks(range(int(months[0]) + 1, int(months[-1]) + 1))
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.supylabel("per 1,000 population per month (dotted line: go-live)", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=3, fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.93, bottom=0.1 + 0.02 / nrows,
                        hspace=0.45, wspace=0.2)
    return _to_data_uri(plt, fig)


def forest(rows: list[dict], title: str) -> str:
    """Each site's percentage change with its CI, grouped by model type."""
    plt, fig, axes = _figure(7.0, 0.22 * len(rows) + 1.0)
    ax = axes[0, 0]
    y = list(range(len(rows)))[::-1]
    colours = {"PACS": "#005eb8", "MCP": "#009639", "care-home": "#ed8b00"}
    for yi, row in zip(y, rows, strict=True):
        colour = colours.get(row["model_type"], "#425563")
        ax.plot([row["pct_ci_low"], row["pct_ci_high"]], [yi, yi], color=colour, lw=1.4)
        ax.plot(row["pct_change"], yi, "o", color=colour, ms=4)
    ax.axvline(0, color="#425563", lw=0.8)
    ax.set_yticks(y, [f"{r['name'][:40]} ({r['model_type']})" for r in rows], fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("% change vs matched comparison areas (95% CI)", fontsize=8)
    ax.set_title(title, fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.subplots_adjust(left=0.42, right=0.98, top=1 - 0.35 / fig.get_figheight(),
                        bottom=0.55 / fig.get_figheight())
    return _to_data_uri(plt, fig)
