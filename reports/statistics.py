"""Small statistics the reports compute from stored results: q-values and balance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date

import polars as pl

BALANCE_COVARIATES = {
    "log_population": "Log population",
    "pct_aged_65_plus": "% aged 65 and over",
    "imd_score": "Deprivation (IMD score)",
}


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg q-values (false discovery rate), in the input order.

    q for the i-th smallest of m p-values is min over j >= i of p_(j) * m / j, capped at 1.
    Missing or NaN p-values get no q-value and do not count towards m.
    """
    present = [(p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    for p, _ in present:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(present)
    q: list[float | None] = [None] * len(p_values)
    running = 1.0
    for rank, (p, index) in reversed(list(enumerate(sorted(present), start=1))):
        running = min(running, p * m / rank)
        q[index] = running
    return q


def area_features(panel: pl.DataFrame, ref_areas: pl.DataFrame, go_live: date,
                  areas: Sequence[str]) -> pl.DataFrame:
    """Per area, before go-live: each outcome's rate per 1,000 per month, log mean
    population, and the reference descriptors (% aged 65+, IMD score) where known.

    `panel` has area_code, month, outcome, count, population; `ref_areas` has area_code,
    pct_aged_65_plus and imd_score (it may be empty).
    """
    pre = panel.filter((pl.col("month") < go_live) & pl.col("area_code").is_in(list(areas)))
    rates = (
        pre.group_by("area_code", "outcome")
        .agg((pl.col("count").sum() / pl.col("population").sum() * 1000.0).alias("rate"))
        .with_columns(pl.format("pre_rate:{}", pl.col("outcome")).alias("outcome"))
        .pivot(on="outcome", index="area_code", values="rate")
    )
    population = pre.group_by("area_code").agg(
        pl.col("population").mean().log().alias("log_population"))
    descriptors = ref_areas.select(
        pl.col("area_code"),
        pl.col("pct_aged_65_plus").cast(pl.Float64),
        pl.col("imd_score").cast(pl.Float64),
    )
    return (
        rates.join(population, on="area_code", how="left")
        .join(descriptors, on="area_code", how="left")
        .sort("area_code")
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _sd(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def standardised_differences(
    features: pl.DataFrame,
    site_areas: Sequence[str],
    matched: Sequence[str],
    pool: Sequence[str],
) -> pl.DataFrame:
    """Standardised mean differences of the site's areas against all eligible areas
    (before matching) and against its matched comparators (after matching).

    Both use the standard deviation across the eligible pool as the yardstick, because
    with one or two site areas the site's own spread is undefined or meaningless. A
    comparator matched to several site areas counts once per match, as in the model.
    Returns covariate, site_mean, pool_mean, matched_mean, smd_before, smd_after.
    """
    rows = []
    by_area = {r["area_code"]: r for r in features.iter_rows(named=True)}
    for covariate in [c for c in features.columns if c != "area_code"]:
        def values(codes: Sequence[str], column: str = covariate) -> list[float]:
            found = [by_area.get(code, {}).get(column) for code in codes]
            return [float(v) for v in found if v is not None and math.isfinite(float(v))]

        site, pool_values, matched_values = values(site_areas), values(pool), values(matched)
        site_mean, pool_mean = _mean(site), _mean(pool_values)
        matched_mean, sd = _mean(matched_values), _sd(pool_values)

        def smd(other: float | None, site_mean: float | None = site_mean,
                sd: float | None = sd) -> float | None:
            if site_mean is None or other is None or not sd:
                return None
            return (site_mean - other) / sd

        rows.append({
            "covariate": covariate, "site_mean": site_mean, "pool_mean": pool_mean,
            "matched_mean": matched_mean, "smd_before": smd(pool_mean),
            "smd_after": smd(matched_mean),
        })
    schema = {"covariate": pl.String, "site_mean": pl.Float64, "pool_mean": pl.Float64,
              "matched_mean": pl.Float64, "smd_before": pl.Float64, "smd_after": pl.Float64}
    return pl.DataFrame(rows, schema=schema)
