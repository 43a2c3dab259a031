"""The area-by-month panel: one row per area, month and outcome, aggregates only.

Patient identifiers never reach this layer: it is built from aggregate counts alone.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from transforms.ingest import COMPARISON_SOURCE
from transforms.protocol import Outcome

PANEL_COLUMNS = ["area_code", "month", "outcome", "count", "population", "rate_per_1000"]


def expected_source(site_areas: dict[str, str]) -> pl.Expr:
    """The source an area's figures must come from: its own site, else the national pool."""
    return (
        pl.col("area_code")
        .replace_strict(site_areas, default=COMPARISON_SOURCE, return_dtype=pl.String)
    )


def select_current(staged: pl.DataFrame, site_areas: dict[str, str]) -> pl.DataFrame:
    """Keep each key's row from the area's own source and its latest extract.

    `staged` is stg_aggregate joined to provenance (`extract_date`, `event_id`). A re-issued
    extract supersedes the earlier one key by key, and a vanguard area's own extract wins
    over any national figure for it.
    """
    return (
        staged.filter(pl.col("source_id") == expected_source(site_areas))
        .sort(["extract_date", "event_id"], nulls_last=False)
        .unique(subset=["area_code", "month", "measure"], keep="last", maintain_order=True)
    )


def build_panel(
    current: pl.DataFrame, outcomes: tuple[Outcome, ...], months: list[date]
) -> pl.DataFrame:
    """Long panel of counts, populations and rates per 1,000 for the protocol's outcomes."""
    measure_to_outcome = pl.DataFrame(
        {"measure": [o.measure for o in outcomes], "outcome": [o.id for o in outcomes]}
    )
    return (
        current.filter(pl.col("month").is_between(min(months), max(months)))
        .join(measure_to_outcome, on="measure", how="inner")
        .with_columns(
            (pl.col("count") / pl.col("population") * 1000.0).alias("rate_per_1000")
        )
        .select(PANEL_COLUMNS)
        .sort(["outcome", "area_code", "month"])
    )


def incomplete_areas(panel: pl.DataFrame, n_months: int) -> pl.DataFrame:
    """Areas and outcomes that do not cover every month of the study window."""
    return (
        panel.group_by(["area_code", "outcome"])
        .agg(pl.len().alias("months"))
        .filter(pl.col("months") != n_months)
        .sort(["area_code", "outcome"])
    )
