"""Restricted wild cluster (score) bootstrap: weights, size under the null, recovery of a
known effect, and agreement of its scores with statsmodels' cluster-robust sandwich."""

import math
from datetime import date

import numpy as np
import pytest

from transforms.estimators import fit_poisson_did, wide
from transforms.poisson_fe import fit_poisson_fe, partial_out
from transforms.simulation import simulate_panel
from transforms.wild_bootstrap import (
    bootstrap_weights,
    restricted_scores,
    score_test,
    weight_kind,
    wild_cluster_bootstrap,
)

GO_LIVE = date(2015, 3, 1)


def _arrays(seed: int, n_areas: int, treated: int, rate_ratio: float):
    frame = simulate_panel(seed, n_areas=n_areas, treated=treated, rate_ratio=rate_ratio)
    areas, y, log_e, months = wide(frame)
    d = np.zeros_like(y)
    d[:treated] = months >= np.datetime64(GO_LIVE)
    return frame, areas, y, log_e, d


def test_rademacher_enumerates_every_sign_vector_when_draws_allow():
    w = bootstrap_weights(8, 999, "rademacher", seed=1)
    assert w.shape == (256, 8)
    assert len({tuple(row) for row in w}) == 256
    assert np.all(w.mean(axis=0) == 0)
    sampled = bootstrap_weights(12, 999, "rademacher", seed=1)
    assert sampled.shape == (999, 12) and set(np.unique(sampled)) == {-1.0, 1.0}


def test_webb_weights_have_mean_zero_variance_one_and_are_seeded():
    w = bootstrap_weights(10, 20_000, "webb", seed=4)
    assert len(np.unique(w)) == 6
    assert w.mean() == pytest.approx(0, abs=0.01)
    assert (w**2).mean() == pytest.approx(1, abs=0.01)
    assert np.array_equal(w, bootstrap_weights(10, 20_000, "webb", seed=4))
    assert not np.array_equal(w, bootstrap_weights(10, 20_000, "webb", seed=5))
    assert weight_kind(11) == "webb" and weight_kind(12) == "rademacher"
    with pytest.raises(ValueError, match="unknown bootstrap weights 'mammen'"):
        bootstrap_weights(10, 10, "mammen", seed=0)


def test_scores_at_the_estimate_sum_to_zero_and_give_the_statsmodels_sandwich():
    frame, areas, y, log_e, d = _arrays(3, n_areas=14, treated=4, rate_ratio=0.9)
    fit = fit_poisson_fe(y, log_e, d)
    scores = restricted_scores(y, log_e, d, fit.beta)
    assert abs(scores.sum()) < 1e-6 * np.abs(scores).sum()  # the slope's score equation
    assert score_test(scores, bootstrap_weights(14, 999, "rademacher", 0)).p_value == 1.0
    bread = float((fit.mu * partial_out(d, fit.mu) ** 2).sum())
    g, n, k = y.shape[0], y.size, y.shape[0] + y.shape[1]
    sandwich = math.sqrt(g / (g - 1) * (n - 1) / (n - k) * (scores**2).sum()) / bread
    # statsmodels GLM(..., cov_type="cluster") through fit_poisson_did
    reference = fit_poisson_did(frame, areas[:4], GO_LIVE, method="cluster_robust").estimate
    assert sandwich == pytest.approx(reference.se, rel=1e-6)


def test_size_under_the_null_is_near_five_percent():
    # 80 null panels of 16 areas (5 treated): the bootstrap p-value for beta = 0 should
    # reject about 5% of the time; 9 or more of 80 would happen with probability < 1% at 5%.
    weights = bootstrap_weights(16, 999, "rademacher", seed=0)
    p_values = []
    for seed in range(80):
        _, _, y, log_e, d = _arrays(1000 + seed, n_areas=16, treated=5, rate_ratio=1.0)
        p_values.append(score_test(restricted_scores(y, log_e, d, 0.0), weights).p_value)
    p = np.array(p_values)
    assert np.sum(p < 0.05) <= 8
    assert 0.35 < p.mean() < 0.65  # roughly uniform, not piled up at one end


def test_recovers_a_known_effect_with_a_reproducible_interval():
    _, _, y, log_e, d = _arrays(21, n_areas=20, treated=8, rate_ratio=0.80)
    fit = fit_poisson_fe(y, log_e, d)
    result = wild_cluster_bootstrap(y, log_e, d, fit.beta, 0.02, draws=999, seed=7)
    assert result.weights == "rademacher" and not result.enumerated
    assert result.ci_low < math.log(0.80) < result.ci_high
    assert result.ci_high < 0 and result.p_value < 0.05
    assert result.ci_high - result.ci_low < 0.1
    again = wild_cluster_bootstrap(y, log_e, d, fit.beta, 0.02, draws=999, seed=7)
    assert (again.ci_low, again.ci_high, again.p_value) == (
        result.ci_low, result.ci_high, result.p_value)


def test_fit_uses_the_bootstrap_below_thirty_areas_and_says_why():
    frame = simulate_panel(31, n_areas=16, treated=10, rate_ratio=0.85)
    estimate = fit_poisson_did(frame, [f"A{i:03d}" for i in range(10)], GO_LIVE).estimate
    assert estimate.inference == "wild_cluster_bootstrap"
    assert "16 areas in all" in estimate.inference_reason
    few_treated = fit_poisson_did(frame, [f"A{i:03d}" for i in range(5)], GO_LIVE).estimate
    assert few_treated.inference == "wild_cluster_bootstrap"
    assert "5 treated areas, fewer than 10" in few_treated.inference_reason
    assert estimate.diagnostics["bootstrap_weights"] == "rademacher"
    assert estimate.ci_low_log < math.log(0.85) < estimate.ci_high_log
    assert not estimate.warnings
    tidy = estimate.tidy()
    assert tidy.height == 1
    assert tidy["inference"][0] == "wild_cluster_bootstrap"
    assert tidy["conf_low"][0] == estimate.ci_low_log


def test_very_few_areas_get_webb_weights_and_a_warning():
    frame = simulate_panel(32, n_areas=9, treated=4, rate_ratio=0.85)
    estimate = fit_poisson_did(frame, [f"A{i:03d}" for i in range(4)], GO_LIVE).estimate
    assert estimate.inference == "wild_cluster_bootstrap"
    assert estimate.diagnostics["bootstrap_weights"] == "webb"
    assert any("Webb six-point" in w for w in estimate.warnings)


def test_rademacher_enumeration_gives_exact_p_values_in_steps_of_one_over_two_to_the_g():
    _, _, y, log_e, d = _arrays(41, n_areas=10, treated=4, rate_ratio=0.95)
    fit = fit_poisson_fe(y, log_e, d)
    result = wild_cluster_bootstrap(y, log_e, d, fit.beta, 0.02, weights="rademacher",
                                    draws=9999, seed=0)
    assert result.enumerated and result.n_draws == 1024
    assert (result.p_value * 1024) == pytest.approx(round(result.p_value * 1024))
    other_seed = wild_cluster_bootstrap(y, log_e, d, fit.beta, 0.02, weights="rademacher",
                                        draws=9999, seed=99)
    assert other_seed.p_value == result.p_value  # no simulation error to depend on the seed
