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
from transforms.protocol import Comparison, Site

#: Matching features that come from the area descriptors rather than the panel.
AREA_DESCRIPTORS = ("pct_aged_65_plus", "imd_score")


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


def _distances(pool_x: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each pool row to x: standardised Euclidean or Mahalanobis (both scaled
    by the pool's spread, so units of measurement do not matter)."""
    diff = pool_x - x
    if metric == "mahalanobis":
        inverse = np.linalg.pinv(np.atleast_2d(np.cov(pool_x, rowvar=False)))
        return np.sqrt(np.einsum("ij,jk,ik->i", diff, inverse, diff).clip(min=0))
    scale = pool_x.std(axis=0, ddof=1)
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0
    return np.sqrt(((diff / scale) ** 2).sum(axis=1))


def nearest_neighbours(
    features: pl.DataFrame,
    treated: list[str],
    pool: list[str],
    on: tuple[str, ...],
    k: int,
    *,
    metric: str = "standardised",
    caliper: float | None = None,
    replace: bool = True,
) -> pl.DataFrame:
    """For each treated area the k closest pool areas.

    `caliper` drops candidates further than that distance; `replace=False` stops one pool
    area serving two treated areas of the same site (greedy, in the order given).
    """
    missing = sorted(set(treated) - set(features["area_code"].to_list()))
    if missing:
        raise ValueError(f"no pre-period data for treated areas {missing}")
    candidates = features.filter(pl.col("area_code").is_in(pool))
    if candidates.height < k:
        raise ValueError(f"comparison pool has {candidates.height} areas, fewer than k={k}")
    columns = list(on)
    pool_x = candidates.select(columns).to_numpy().astype(float)
    codes = candidates["area_code"].to_list()
    used: set[str] = set()
    rows = []
    for area in treated:
        x = features.filter(pl.col("area_code") == area).select(columns).to_numpy()[0]
        distance = _distances(pool_x, x.astype(float), metric)
        order = [int(i) for i in np.argsort(distance, kind="stable")
                 if (caliper is None or distance[i] <= caliper)
                 and (replace or codes[int(i)] not in used)][:k]
        if not order:
            raise ValueError(
                f"no comparison area within caliper {caliper} of {area}; widen the caliper"
            )
        for rank, i in enumerate(order, start=1):
            rows.append((area, codes[i], rank, float(distance[i])))
            used.add(codes[i])
    return pl.DataFrame(
        rows, schema=["treated_area", "area_code", "rank", "distance"], orient="row"
    )


def balance_table(
    features: pl.DataFrame, treated: list[str], matched: list[str], pool: list[str],
    on: tuple[str, ...],
) -> pl.DataFrame:
    """Standardised mean differences of each feature, site areas against the whole pool
    (before matching) and against the matched areas (after): |SMD| < 0.1 is the usual aim.

    The denominator is the pool's standard deviation, because a site of one area has no
    spread of its own.
    """
    rows = []
    for column in on:
        values = dict(zip(features["area_code"], features[column], strict=True))
        site = np.array([values[a] for a in treated], dtype=float)
        before = np.array([values[a] for a in pool if a in values], dtype=float)
        after = np.array([values[a] for a in matched if a in values], dtype=float)
        sd = float(before.std(ddof=1)) or 1.0
        rows.append((column, float(site.mean()), float(before.mean()), float(after.mean()),
                     float((site.mean() - before.mean()) / sd),
                     float((site.mean() - after.mean()) / sd)))
    return pl.DataFrame(rows, orient="row", schema=[
        "feature", "mean_site", "mean_pool", "mean_matched", "smd_before", "smd_after"])


def site_features(
    panel: pl.DataFrame, site: Site, rule: Comparison, pre_months: int,
    areas: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Pre-period features for the site's go-live, joined to area descriptors (age,
    deprivation) when the protocol matches on them."""
    features = pre_period_features(panel, rule.matching_outcome, site.go_live, pre_months)
    descriptors = [c for c in rule.match_on if c in AREA_DESCRIPTORS]
    if descriptors:
        if areas is None or areas.height == 0:
            raise ValueError(f"matching on {descriptors} needs the area descriptors "
                             "(reference/areas.csv) to be loaded")
        features = features.join(areas.select("area_code", *descriptors), on="area_code",
                                 how="inner")
    return features


def match_site(
    panel: pl.DataFrame,
    site: Site,
    pool: list[str],
    rule: Comparison,
    pre_months: int,
    areas: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The site's matched comparison areas (one row per treated area and comparator) and
    the balance table before and after matching."""
    features = site_features(panel, site, rule, pre_months, areas)
    matched = nearest_neighbours(
        features, list(site.areas), pool, rule.match_on, rule.matches_per_area,
        metric=rule.metric, caliper=rule.caliper, replace=rule.replacement,
    )
    balance = balance_table(features, list(site.areas), matched["area_code"].to_list(),
                            pool, rule.match_on)
    site_id = pl.lit(site.id).alias("site_id")
    return (
        matched.with_columns(site_id).select(
            ["site_id", "treated_area", "area_code", "rank", "distance"]),
        balance.with_columns(site_id).select(["site_id", *balance.columns]),
    )
