"""Poisson DiD: exact on a hand-computed 2x2, and recovers known effects on seeded panels."""

import math
from datetime import date

import polars as pl
import pytest

from transforms.estimators import fit_poisson_did, pre_post_rates
from transforms.simulation import simulate_panel

GO_LIVE = date(2015, 3, 1)


def test_two_by_two_equals_ratio_of_rate_ratios():
    # A saturated 2x2 (each group twice, so cluster-robust SEs have residual degrees of
    # freedom): exp(beta) must equal the ratio of the groups' before/after rate ratios.
    frame = pl.DataFrame({
        "area_code": ["T1", "T1", "C1", "C1", "T2", "T2", "C2", "C2"],
        "month": [date(2015, 2, 1), GO_LIVE] * 4,
        "count": [1200, 1100, 3000, 3150] * 2,
        "population": [150_000, 151_000, 400_000, 402_000] * 2,
    })
    fit = fit_poisson_did(frame, ["T1", "T2"], GO_LIVE)
    by_hand = math.log((1100 / 151_000) / (1200 / 150_000)) - math.log(
        (3150 / 402_000) / (3000 / 400_000)
    )
    assert fit.estimate.log_rate_ratio == pytest.approx(by_hand, abs=1e-8)
    assert fit.estimate.n_treated_areas == 2 and fit.estimate.n_comparison_areas == 2


@pytest.mark.parametrize(("rate_ratio", "seed"), [(0.90, 11), (1.0, 12), (1.06, 13)])
def test_recovers_known_effect(rate_ratio, seed):
    frame = simulate_panel(seed, n_areas=30, treated=8, rate_ratio=rate_ratio)
    treated = [f"A{i:03d}" for i in range(8)]
    estimate = fit_poisson_did(frame, treated, GO_LIVE).estimate
    true_pct = 100 * (rate_ratio - 1)
    low, high = estimate.pct_ci
    assert low <= true_pct <= high
    assert estimate.pct_change == pytest.approx(true_pct, abs=1.5)
    assert high - low < 4.0  # informative: 30 areas of 84 months
    assert estimate.df == 29 and estimate.n_obs == 30 * 84
    assert not estimate.warnings


def test_null_effect_is_not_significant_and_few_treated_warns():
    frame = simulate_panel(5, n_areas=12, treated=1, rate_ratio=1.0)
    estimate = fit_poisson_did(frame, ["A000"], GO_LIVE).estimate
    assert abs(estimate.pct_change) < 3.0
    assert estimate.p_value > 0.05
    assert estimate.inference == "cluster_robust"
    assert "too few comparable areas for placebo inference" in estimate.warnings[0]


def test_one_treated_area_gets_placebo_inference():
    panel = simulate_panel(8, n_areas=46, treated=1, rate_ratio=0.9)
    model = panel.filter(pl.col("area_code") <= "A005")
    donors = panel.filter(pl.col("area_code") > "A000")
    estimate = fit_poisson_did(model, ["A000"], GO_LIVE, donors=donors).estimate
    assert estimate.inference == "placebo_in_space" and estimate.n_placebo == 45
    assert "1 treated area(s)" in estimate.inference_reason
    low, high = estimate.pct_ci
    assert low <= -10 <= high
    assert estimate.p_value == pytest.approx(1 / 46)  # more extreme than every placebo
    assert not estimate.warnings
    forced = fit_poisson_did(model, ["A000"], GO_LIVE, donors=donors,
                             method="cluster_robust").estimate
    assert forced.inference == "cluster_robust"
    assert forced.log_rate_ratio == estimate.log_rate_ratio


def test_counterfactual_matches_observed_before_go_live_on_average():
    frame = simulate_panel(3, n_areas=20, treated=4, rate_ratio=0.85)
    fit = fit_poisson_did(frame, [f"A{i:03d}" for i in range(4)], GO_LIVE)
    pre = fit.series.filter(pl.col("month") < GO_LIVE)
    post = fit.series.filter(pl.col("month") >= GO_LIVE)
    # The model fits the site's own pre-period, so the gap is centred on zero there ...
    assert (pre["observed_rate"] / pre["counterfactual_rate"]).mean() == pytest.approx(1, abs=0.01)
    # ... and opens by the effect afterwards.
    assert (post["observed_rate"] / post["counterfactual_rate"]).mean() == pytest.approx(
        0.85, abs=0.02
    )


def test_pre_post_rates_are_crude_site_rates():
    frame = pl.DataFrame({
        "area_code": ["T", "T", "C"], "month": [date(2015, 2, 1), GO_LIVE, GO_LIVE],
        "count": [10, 30, 99], "population": [1000, 2000, 1000],
    })
    assert pre_post_rates(frame, ["T"], GO_LIVE) == (10.0, 15.0)


def test_no_treated_months_is_an_error():
    frame = simulate_panel(1, n_areas=3, treated=0, rate_ratio=1.0)
    with pytest.raises(ValueError, match="no treated area-months"):
        fit_poisson_did(frame.filter(pl.col("month") < GO_LIVE), ["A000"], GO_LIVE)
