"""Risk-stratified cohorts: the naive before/after figure is badly biased by regression to
the mean, and the cohort difference-in-differences recovers the truth.

Seeded simulations of patients with a persistent gamma frailty and a transient yearly
shock: picking the top 4% in the baseline year selects people having a bad year, so their
admissions fall the next year with no intervention. The same rule in comparison areas
measures that fall, and the ratio of the two changes is the effect.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm

from transforms.cohort import (
    INFERENCE,
    INFERENCE_AREAS,
    CohortRule,
    cohort_change,
    cohort_did,
    cohort_members,
    evaluate_cohort_claim,
)

GO_LIVE = date(2015, 3, 1)
RULE = CohortRule(top_pct=4.0, baseline_months=12, follow_up_months=12)
RATE, SHAPE, SIGMA = 0.25, 0.3, 0.5
DIAGNOSES = np.array(["I500", "J440", "F329", "N390", "R074", "S720"])


def simulate(seed: int, site_ratio: float, n_comparison_areas: int = 5,
             n_per_area: int = 30_000) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Episodes for one site area (A000) and comparison areas, and each area's population.

    Risk = age gradient x gamma frailty (shape 0.3, persistent) x a log-normal shock drawn
    afresh each year (sigma 0.5, transient); the site's follow-up year is multiplied by
    `site_ratio`. Areas share one data-generating process: pure regression to the mean.
    """
    rng = np.random.default_rng(seed)
    frames = []
    start = GO_LIVE - timedelta(days=365)
    for a in range(n_comparison_areas + 1):
        code = f"A{a:03d}"
        age = rng.integers(18, 95, n_per_area)
        rate = RATE * rng.gamma(SHAPE, 1 / SHAPE, n_per_area) * (0.5 + age / 60)
        shocks = np.exp(SIGMA * rng.standard_normal((2, n_per_area)) - SIGMA**2 / 2)
        ratio = site_ratio if a == 0 else 1.0
        counts = [rng.poisson(rate * shocks[0]), rng.poisson(rate * shocks[1] * ratio)]
        for first_day, n in zip((start, GO_LIVE), counts, strict=True):
            person = np.repeat(np.arange(n_per_area), n)
            days = rng.integers(0, 365, person.size)
            frames.append(pl.DataFrame({
                "patient": person,
                "area_code": np.full(person.size, code),
                "admission_date": np.datetime64(first_day) + days.astype("timedelta64[D]"),
                "admission_method": np.full(person.size, "21"),
                "primary_diagnosis": DIAGNOSES[rng.integers(0, DIAGNOSES.size, person.size)],
                "age": age[person],
            }))
    population = pl.DataFrame({
        "area_code": [f"A{a:03d}" for a in range(n_comparison_areas + 1)],
        "population": [n_per_area] * (n_comparison_areas + 1),
    })
    episodes = pl.concat(frames).with_columns(
        pl.concat_str("area_code", pl.col("patient").cast(pl.String), separator="-")
        .alias("patient_id"),
        pl.col("admission_date").cast(pl.Date),
    ).drop("patient")
    return episodes, population


def evaluate(episodes: pl.DataFrame, population: pl.DataFrame):
    comparison = sorted(set(episodes["area_code"]) - {"A000"})
    return evaluate_cohort_claim(episodes, ["A000"], comparison, RULE, GO_LIVE,
                                 population=population)


@pytest.mark.parametrize("seed", [1, 2])
def test_did_recovers_a_known_effect_the_naive_figure_exaggerates(seed: int):
    episodes, population = simulate(seed, site_ratio=0.90)
    result = evaluate(episodes, population)
    assert result.n_site == 1200  # 4% of 30,000 residents
    assert result.naive_pct < -40  # the truth is -10%: the naive figure is four times it
    assert result.comparison_pct < -40  # nearly the same fall with no intervention at all
    assert result.ci_low <= -10 <= result.ci_high
    assert abs(result.did_pct + 10) < 6
    assert result.inference == INFERENCE_AREAS and result.df == 4


@pytest.mark.parametrize("seed", [3, 4])
def test_null_effect_naive_strongly_negative_did_covers_zero(seed: int):
    episodes, population = simulate(seed, site_ratio=1.0)
    result = evaluate(episodes, population)
    assert result.naive_pct < -40
    assert result.ci_low <= 0 <= result.ci_high
    assert abs(result.did_pct) < 6


def test_interval_coverage_under_the_null():
    """95% intervals cover the true zero in most of 20 small seeded replications."""
    covered = 0
    for seed in range(100, 120):
        episodes, population = simulate(seed, 1.0, n_comparison_areas=3, n_per_area=6_000)
        result = evaluate(episodes, population)
        covered += result.ci_low <= 0 <= result.ci_high
    # Binomial(20, 0.95): 16 or more with probability 0.997.
    assert covered >= 16


def test_patient_clustered_variance_matches_statsmodels_glm():
    """Without the between-area term, the variance is the Poisson GLM sandwich with patient
    clusters (saturated group x period model, no small-sample correction)."""
    episodes, population = simulate(9, 0.9, n_comparison_areas=1, n_per_area=4_000)
    members = cohort_members(episodes, RULE, GO_LIVE, population)
    site = members.filter(pl.col("area_code") == "A000")
    comparison = members.filter(pl.col("area_code") != "A000")
    result = cohort_did(site, comparison, RULE)
    assert result.inference == INFERENCE and result.df is None

    long = pl.concat([
        members.select("patient_id", "area_code", pl.col("baseline").alias("y"),
                       pl.lit(0).alias("post")),
        members.select("patient_id", "area_code", pl.col("follow_up").alias("y"),
                       pl.lit(1).alias("post")),
    ]).with_columns((pl.col("area_code") == "A000").cast(pl.Int64).alias("site"))
    x = np.column_stack([np.ones(long.height), long["site"], long["post"],
                         long["site"] * long["post"]])
    groups = pl.Series(long["patient_id"]).rank("dense").to_numpy()
    fit = sm.GLM(long["y"].to_numpy(), x, family=sm.families.Poisson()).fit(
        cov_type="cluster", cov_kwds={"groups": groups, "use_correction": False})
    assert result.log_rate_ratio == pytest.approx(fit.params[3], rel=1e-8)
    raw = (cohort_change(site, RULE, small_sample=False).variance
           + cohort_change(comparison, RULE, small_sample=False).variance)
    assert math.sqrt(raw) == pytest.approx(fit.bse[3], rel=1e-6)
