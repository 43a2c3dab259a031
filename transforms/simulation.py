"""Seeded Poisson panels with known effects, for recovery tests and coverage studies.

The data-generating process mirrors the demo: rates about 8.5 per 1,000 a month, area
effects, about 3% a year common growth, a winter peak, multiplicative gamma noise
(over-dispersion) and Poisson counts. Treated areas get a constant rate ratio from their
go-live month.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from transforms.months import month_range

START, END = date(2012, 4, 1), date(2019, 3, 1)


def simulate_panel(
    seed: int,
    n_areas: int,
    treated: int,
    rate_ratio: float,
    go_live: date | list[date] = date(2015, 3, 1),
    dispersion_cv: float = 0.04,
) -> pl.DataFrame:
    """Areas A000.. over Apr 2012 - Mar 2019; the first `treated` areas get the effect.

    `go_live` may be one month or one per treated area (staggered adoption). Columns:
    area_code, month, count, population, go_live (null for untreated areas).
    """
    rng = np.random.default_rng(seed)
    months = month_range(START, END)
    month_array = np.array(months, dtype="datetime64[D]")
    t = np.arange(len(months)) / 12.0
    winter = 0.1 * np.cos(2 * np.pi * (np.array([m.month for m in months]) - 1) / 12)
    starts = go_live if isinstance(go_live, list) else [go_live] * treated
    shape = 1 / dispersion_cv**2
    frames = []
    for a in range(n_areas):
        population = int(rng.integers(80_000, 900_000))
        mu = population / 1000 * 8.5 * np.exp(rng.normal(0, 0.15) + 0.03 * t + winter)
        start = starts[a] if a < treated else None
        if start is not None:
            mu = mu * np.where(month_array >= np.datetime64(start), rate_ratio, 1.0)
        counts = rng.poisson(mu * rng.gamma(shape, 1 / shape, len(months)))
        frames.append(pl.DataFrame({
            "area_code": f"A{a:03d}", "month": months, "count": counts.astype(np.int64),
            "population": population, "go_live": start,
        }, schema_overrides={"go_live": pl.Date}))
    return pl.concat(frames)


# -- coverage study ------------------------------------------------------------------

WAVES = [date(2015, 3, 1), date(2015, 9, 1), date(2016, 9, 1)]


@dataclass(frozen=True)
class Draw:
    """One replication's estimate and 95% interval on the log rate-ratio scale."""

    log_rate_ratio: float
    ci_low_log: float
    ci_high_log: float
    inference: str


def with_periods(frame: pl.DataFrame) -> pl.DataFrame:
    """Integer period (1 = first month) and cohort (first treated period, 0 = never)."""
    first = START.year * 12 + START.month
    return frame.with_columns(
        (pl.col("month").dt.year() * 12 + pl.col("month").dt.month() - first + 1)
        .cast(pl.Int64).alias("period"),
        (pl.col("go_live").dt.year() * 12 + pl.col("go_live").dt.month() - first + 1)
        .cast(pl.Int64).fill_null(0).alias("cohort"),
    )


def design_staggered(seed: int, rate_ratio: float) -> Draw:
    """Many treated areas (24 of 60) going live in three waves: Poisson extended TWFE."""
    from transforms.etwfe import fit_etwfe_poisson

    frame = simulate_panel(seed, 60, 24, rate_ratio, go_live=[WAVES[i % 3] for i in range(24)])
    result = fit_etwfe_poisson(with_periods(frame), unit="area_code", period="period",
                               cohort="cohort", count="count", exposure="population",
                               leads=False)
    o = result.overall
    return Draw(o.log_rate_ratio, o.ci_low_log, o.ci_high_log, "cluster_robust")


def design_two_treated(seed: int, rate_ratio: float) -> Draw:
    """One site of 2 treated areas against 30 comparators, which also serve as placebos
    (pairs of them, studentised placebo-in-space)."""
    from transforms.estimators import fit_poisson_did

    frame = simulate_panel(seed, 32, 2, rate_ratio)
    controls = frame.filter(pl.col("go_live").is_null())
    e = fit_poisson_did(frame, ["A000", "A001"], WAVES[0], donors=controls, seed=seed).estimate
    return Draw(e.log_rate_ratio, e.ci_low_log, e.ci_high_log, e.inference)


def design_few_clusters(seed: int, rate_ratio: float) -> Draw:
    """A programme of 6 treated areas among 20 with no placebo donors: fewer than 30
    clusters, so the restricted wild cluster bootstrap (Rademacher weights)."""
    from transforms.estimators import fit_poisson_did

    frame = simulate_panel(seed, 20, 6, rate_ratio)
    treated = [f"A{i:03d}" for i in range(6)]
    e = fit_poisson_did(frame, treated, WAVES[0], seed=seed).estimate
    return Draw(e.log_rate_ratio, e.ci_low_log, e.ci_high_log, e.inference)


def design_matched(seed: int, rate_ratio: float) -> Draw:
    """One treated area; 5 comparators and 40 placebo donors matched on the pre-period rate
    and population from a pool of 120 areas, as the pipeline does."""
    from transforms.estimators import fit_poisson_did
    from transforms.matching import nearest_neighbours, pre_period_features

    frame = simulate_panel(seed, 121, 1, rate_ratio)
    panel = frame.with_columns(
        pl.lit("emergency_admissions").alias("outcome"),
        (pl.col("count") / pl.col("population") * 1000).alias("rate_per_1000"),
    )
    features = pre_period_features(panel, "emergency_admissions", WAVES[0], 24)
    pool = [f"A{i:03d}" for i in range(1, 121)]
    on = ("pre_rate", "log_population")
    comparators = nearest_neighbours(features, ["A000"], pool, on, 5)["area_code"].to_list()
    donors = nearest_neighbours(features, ["A000"], pool, on, 40)["area_code"].to_list()
    model = frame.filter(pl.col("area_code").is_in(["A000", *comparators]))
    placebo = frame.filter(pl.col("area_code").is_in(donors))
    e = fit_poisson_did(model, ["A000"], WAVES[0], donors=placebo, seed=seed).estimate
    return Draw(e.log_rate_ratio, e.ci_low_log, e.ci_high_log, e.inference)


DESIGNS = {
    "staggered (24 of 60 areas, 3 waves; ETWFE)": design_staggered,
    "one site, 2 treated areas, 30 comparators": design_two_treated,
    "one site, matched comparators from 120": design_matched,
    "6 treated of 20 areas, no donors": design_few_clusters,
}


def coverage(design, reps: int, rate_ratio: float, first_seed: int = 0, jobs: int = 1) -> dict:
    """Bias (percentage points), 95% CI coverage and mean CI width over replications.

    `jobs` > 1 spreads the replications over processes; each replication is seeded by its
    number, so the figures do not depend on `jobs`.
    """
    seeds = range(first_seed, first_seed + reps)
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            draws = list(pool.map(design, seeds, [rate_ratio] * reps, chunksize=8))
    else:
        draws = [design(seed, rate_ratio) for seed in seeds]
    truth = math.log(rate_ratio)
    pct = np.array([100 * (math.exp(d.log_rate_ratio) - 1) for d in draws])
    covered = np.array([d.ci_low_log <= truth <= d.ci_high_log for d in draws])
    width = np.array([100 * (math.exp(d.ci_high_log) - math.exp(d.ci_low_log)) for d in draws])
    return {
        "reps": reps,
        "bias_pp": float(pct.mean() - 100 * (rate_ratio - 1)),
        "coverage": float(covered.mean()),
        "mc_se_coverage": float(math.sqrt(covered.mean() * (1 - covered.mean()) / reps)),
        "mean_ci_width_pp": float(width.mean()),
        "inference": sorted({d.inference for d in draws}),
    }
