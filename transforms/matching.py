"""Pick comparison areas for a site: nearest neighbours on pre-period characteristics.

Matching only on the pre-period keeps the choice blind to outcomes after go-live.
Features are standardised over the candidate pool so that a rate per 1,000 and a log
population weigh alike.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

from transforms.months import add_months
from transforms.protocol import Site


def pre_period_features(
    panel: pl.DataFrame, outcome: str, go_live: date, pre_months: int
) -> pl.DataFrame:
    """Per area: pre-period rate per 1,000, log population and log-rate trend per year."""
    start = add_months(go_live, -pre_months)
    pre = panel.filter(
        (pl.col("outcome") == outcome) & (pl.col("month") >= start) & (pl.col("month") < go_live)
    ).with_columns(
        ((pl.col("month").dt.year() * 12 + pl.col("month").dt.month()) / 12.0).alias("t"),
        pl.col("rate_per_1000").log().alias("log_rate"),
    )
    return (
        pre.group_by("area_code")
        .agg(
            (pl.col("count").sum() / pl.col("population").sum() * 1000.0).alias("pre_rate"),
            pl.col("population").mean().log().alias("log_population"),
            pl.cov("t", "log_rate").truediv(pl.col("t").var()).alias("pre_trend"),
        )
        .sort("area_code")
    )


def nearest_neighbours(
    features: pl.DataFrame, treated: list[str], pool: list[str], on: tuple[str, ...], k: int
) -> pl.DataFrame:
    """For each treated area the k closest pool areas (standardised Euclidean distance)."""
    missing = sorted(set(treated) - set(features["area_code"].to_list()))
    if missing:
        raise ValueError(f"no pre-period data for treated areas {missing}")
    candidates = features.filter(pl.col("area_code").is_in(pool))
    if candidates.height < k:
        raise ValueError(f"comparison pool has {candidates.height} areas, fewer than k={k}")
    columns = list(on)
    pool_x = candidates.select(columns).to_numpy()
    scale = pool_x.std(axis=0, ddof=1)
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0
    rows = []
    for area in treated:
        x = features.filter(pl.col("area_code") == area).select(columns).to_numpy()[0]
        distance = np.sqrt((((pool_x - x) / scale) ** 2).sum(axis=1))
        order = np.argsort(distance, kind="stable")[:k]
        for rank, i in enumerate(order, start=1):
            rows.append((area, candidates["area_code"][int(i)], rank, float(distance[i])))
    return pl.DataFrame(
        rows, schema=["treated_area", "area_code", "rank", "distance"], orient="row"
    )


def match_site(
    panel: pl.DataFrame,
    site: Site,
    pool: list[str],
    *,
    outcome: str,
    pre_months: int,
    on: tuple[str, ...],
    k: int,
) -> pl.DataFrame:
    """The site's matched comparison areas, one row per (treated area, comparator)."""
    features = pre_period_features(panel, outcome, site.go_live, pre_months)
    matched = nearest_neighbours(features, list(site.areas), pool, on, k)
    return matched.with_columns(pl.lit(site.id).alias("site_id")).select(
        ["site_id", "treated_area", "area_code", "rank", "distance"]
    )

