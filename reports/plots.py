"""Plots as self-contained PNG data URIs, so every page works offline."""

from __future__ import annotations

import base64
import io
from datetime import date

import polars as pl


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return plt, fig, ax


def _to_data_uri(plt, fig) -> str:
    """PNG bytes embedded as a data URI; metadata stripped so output is reproducible."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def observed_vs_counterfactual(series: pl.DataFrame, go_live: date, title: str) -> str:
    """The site's observed rate, the model's counterfactual, and the comparators' rate."""
    plt, fig, ax = _figure(7.0, 3.2)
    months = series["month"].to_list()
    ax.plot(months, series["comparison_rate"], color="#9aa5b1", lw=1.2,
            label="Matched comparison areas")
    ax.plot(months, series["counterfactual_rate"], color="#005eb8", lw=1.4, ls="--",
            label="Site without the new care model (modelled)")
    ax.plot(months, series["observed_rate"], color="#d5281b", lw=1.6, label="Site observed")
    ax.axvline(go_live, color="#425563", lw=1, ls=":")
    ax.annotate("go-live", (go_live, ax.get_ylim()[1]), fontsize=8, ha="left", va="top",
                color="#425563")
    ax.set_ylabel("per 1,000 population per month")
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    return _to_data_uri(plt, fig)


def forest(rows: list[dict], title: str) -> str:
    """Each site's percentage change with its CI, grouped by model type."""
    plt, fig, ax = _figure(7.0, 0.28 * len(rows) + 1.2)
    y = list(range(len(rows)))[::-1]
    colours = {"PACS": "#005eb8", "MCP": "#009639", "care-home": "#ed8b00"}
    for yi, row in zip(y, rows, strict=True):
        colour = colours.get(row["model_type"], "#425563")
        ax.plot([row["pct_ci_low"], row["pct_ci_high"]], [yi, yi], color=colour, lw=1.4)
        ax.plot(row["pct_change"], yi, "o", color=colour, ms=4)
    ax.axvline(0, color="#425563", lw=0.8)
    ax.set_yticks(y, [f"{r['name'][:40]} ({r['model_type']})" for r in rows], fontsize=7)
    ax.set_xlabel("% change vs matched comparison areas (95% CI)")
    ax.set_title(title, fontsize=10, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    return _to_data_uri(plt, fig)
