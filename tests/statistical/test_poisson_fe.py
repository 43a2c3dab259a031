"""The fast fixed-effects Poisson solver agrees with statsmodels' GLM on the same data."""

from datetime import date

import numpy as np
import polars as pl
import pytest

from transforms.estimators import fit_poisson_did, wide
from transforms.inference import invert_placebos, placebo_sets
from transforms.poisson_fe import cluster_robust_se, fit_poisson_fe
from transforms.simulation import simulate_panel

GO_LIVE = date(2015, 3, 1)


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_statsmodels_glm(seed):
    frame = simulate_panel(seed, n_areas=10, treated=2, rate_ratio=0.85)
    areas, y, log_e, months = wide(frame)
    d = np.zeros_like(y)
    d[:2] = months >= np.datetime64(GO_LIVE)
    fast = fit_poisson_fe(y, log_e, d)
    reference = fit_poisson_did(frame, areas[:2], GO_LIVE, method="cluster_robust").estimate
    assert fast.converged
    assert fast.beta == pytest.approx(reference.log_rate_ratio, abs=1e-9)
    # statsmodels: GLM(...).fit(cov_type="cluster") with its default small-sample correction
    assert cluster_robust_se(y, fast, d) == pytest.approx(reference.se, rel=1e-7)
    assert fast.mu.sum(axis=1) == pytest.approx(y.sum(axis=1))  # unit score equations


def test_placebo_sets_are_distinct_and_seeded():
    donors = list(range(20))
    assert placebo_sets(donors, 1, 50, seed=0) == [(d,) for d in donors]
    pairs = placebo_sets(donors, 2, 50, seed=3)
    assert len(pairs) == len(set(pairs)) == 50
    assert pairs == placebo_sets(donors, 2, 50, seed=3)
    assert len(placebo_sets(list(range(5)), 2, 50, seed=0)) == 10  # all combinations


def test_invert_placebos_interval_and_p_value():
    placebos = np.linspace(-0.05, 0.05, 41)
    result = invert_placebos(-0.2, placebos, alpha=0.05)
    assert result.p_value == pytest.approx(1 / 42)
    # 41 placebos: ranks floor(0.025 * 42) = 1 and ceil(0.975 * 42) = 41, the extremes.
    assert (result.ci_low, result.ci_high) == pytest.approx((-0.2 - 0.05, -0.2 + 0.05))
    wider = invert_placebos(0.0, np.arange(199, dtype=float), alpha=0.05)
    # 199 placebos: ranks 5 and 195 of the sorted values 0..198.
    assert (wider.ci_low, wider.ci_high) == pytest.approx((-194.0, -4.0))
    inside = invert_placebos(0.0, placebos, alpha=0.05)
    assert inside.p_value == 1.0


def test_wide_rejects_unbalanced_panels():
    frame = simulate_panel(1, n_areas=3, treated=1, rate_ratio=1.0)
    with pytest.raises(ValueError, match="balanced panel"):
        wide(frame.filter(~((pl.col("area_code") == "A001") & (pl.col("month") == GO_LIVE))))
