"""Poisson extended TWFE: equals unit fixed effects where theory says so, recovers known
effects under staggered go-lives, and its event study is flat before go-live."""

import math
from datetime import date

import numpy as np
import polars as pl
import pytest

from transforms.etwfe import fit_etwfe_poisson
from transforms.months import months_between
from transforms.simulation import START, simulate_panel

WAVES = [date(2015, 3, 1), date(2015, 9, 1), date(2016, 9, 1)]


def _staggered(seed: int, rate_ratio: float, n_areas: int = 60, treated: int = 24):
    go_lives = [WAVES[i % 3] for i in range(treated)]
    frame = simulate_panel(seed, n_areas, treated, rate_ratio, go_live=go_lives)
    return frame.with_columns(
        ((pl.col("month").dt.year() - START.year) * 12
         + pl.col("month").dt.month() - START.month + 1).alias("period"),
        pl.col("go_live").map_elements(
            lambda d: months_between(START, d) + 1, return_dtype=pl.Int64
        ).fill_null(0).alias("cohort"),
    )


def _fit(frame, **kw):
    return fit_etwfe_poisson(frame, unit="area_code", period="period", cohort="cohort",
                             count="count", exposure="population", **kw)


def test_cohort_effects_equal_unit_effects():
    # With each area's population constant over time, pooled Poisson with cohort dummies is
    # numerically the Poisson fixed-effects estimator (Wooldridge 2023): compare the cell
    # effects with statsmodels' GLM with one dummy per area.
    import statsmodels.api as sm

    frame = _staggered(3, 0.8, n_areas=14, treated=6).filter(pl.col("period") <= 40)
    result = _fit(frame, leads=False)
    data = frame.sort("area_code", "period").to_pandas()
    import pandas as pd

    cells = [((data.cohort == g) & (data.period == t)).astype(float)
             for g, t in zip(result.cells["cohort"], result.cells["period"], strict=True)]
    x = pd.concat(cells + [
        pd.get_dummies(data.area_code).astype(float),
        pd.get_dummies(data.period, drop_first=True).astype(float),
    ], axis=1)
    reference = sm.GLM(data["count"].astype(float), x.to_numpy(), family=sm.families.Poisson(),
                       offset=np.log(data.population.astype(float))).fit()
    np.testing.assert_allclose(result.cells["log_rate_ratio"].to_numpy(),
                               reference.params[: len(cells)], atol=1e-8)


def test_recovers_rate_ratio_under_staggered_go_lives():
    result = _fit(_staggered(11, 0.70))
    overall = result.overall
    assert overall.ci_low_log <= math.log(0.70) <= overall.ci_high_log
    assert overall.pct_change == pytest.approx(-30.0, abs=1.5)
    assert result.pretest["df"] > 0 and result.pretest["p"] > 0.01
    pre = result.event_study.filter(pl.col("e") < -1)
    post = result.event_study.filter(pl.col("e") >= 0)
    assert pre["log_rate_ratio"].abs().mean() < 0.03
    assert post["log_rate_ratio"].mean() == pytest.approx(math.log(0.7), abs=0.03)
    # About 30% of an ~8.5-a-month rate that grows ~3% a year: roughly 3 per 1,000 a month.
    assert 2.0 < result.avoided_per_1000 < 4.5


def test_null_effect_is_not_detected():
    result = _fit(_staggered(12, 1.0))
    assert abs(result.overall.pct_change) < 2.0
    assert result.overall.p_value > 0.05


def test_needs_never_treated_units():
    frame = _staggered(1, 0.9, n_areas=6, treated=6)
    with pytest.raises(ValueError, match="no never-treated units"):
        _fit(frame)
