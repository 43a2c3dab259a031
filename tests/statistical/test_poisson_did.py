"""Poisson DiD: exact on a hand-computed 2x2, and recovers known effects on seeded panels."""

import math
from datetime import date

import numpy as np
import polars as pl
import pytest

from transforms.estimators import fit_poisson_did, pre_post_rates, wide
from transforms.inference import choose_inference, invert_studentised_placebos, studentising_se
from transforms.poisson_fe import cluster_robust_se, fit_poisson_fe, robust_se
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
    # One treated area, no placebo donors and 12 areas: the wild cluster bootstrap, with a
    # warning that it is conservative with a single treated cluster.
    frame = simulate_panel(5, n_areas=12, treated=1, rate_ratio=1.0)
    estimate = fit_poisson_did(frame, ["A000"], GO_LIVE).estimate
    assert abs(estimate.pct_change) < 3.0
    assert estimate.p_value > 0.05
    assert estimate.inference == "wild_cluster_bootstrap"
    assert "too few comparable areas for placebo inference" in estimate.inference_reason
    assert "1 treated area(s) with the wild cluster bootstrap" in estimate.warnings[0]
    assert estimate.diagnostics["n_clusters"] == 12
    # With 40 areas the bootstrap is still chosen (one treated cluster); forcing CR1 warns.
    many = simulate_panel(5, n_areas=40, treated=1, rate_ratio=1.0)
    chosen = fit_poisson_did(many, ["A000"], GO_LIVE).estimate
    assert chosen.inference == "wild_cluster_bootstrap"
    assert "conservative" in chosen.inference_reason
    forced = fit_poisson_did(many, ["A000"], GO_LIVE, method="cluster_robust").estimate
    assert forced.inference == "cluster_robust"
    assert "intervals are likely too narrow" in forced.warnings[0]


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
    assert estimate.diagnostics["smallest_p"] == pytest.approx(1 / 46)
    # 45 placebos: the interval ends are the most extreme placebos, which is fragile.
    assert len(estimate.warnings) == 1 and "only 45 possible placebo draws" in estimate.warnings[0]
    forced = fit_poisson_did(model, ["A000"], GO_LIVE, donors=donors,
                             method="cluster_robust").estimate
    assert forced.inference == "cluster_robust"
    assert forced.log_rate_ratio == estimate.log_rate_ratio
    assert any("only 6 areas" in w for w in forced.warnings)


@pytest.mark.parametrize(("n_treated", "n_placebo", "n_clusters", "method", "warns"), [
    (1, 40, 6, "placebo_in_space", ["only 40 possible placebo draws"]),
    (2, 435, 32, "placebo_in_space", []),
    (2, 10, 20, "wild_cluster_bootstrap", ["2 treated area(s) with the wild cluster"]),
    (2, 10, 40, "wild_cluster_bootstrap", ["2 treated area(s) with the wild cluster"]),
    (6, 0, 20, "wild_cluster_bootstrap", []),
    (5, 0, 10, "wild_cluster_bootstrap", ["only 10 areas: Webb six-point"]),
    (8, 0, 30, "wild_cluster_bootstrap", []),  # few treated clusters, whatever the total
    (5, 0, None, "wild_cluster_bootstrap", []),
    (10, 0, 30, "cluster_robust", []),
    (12, 0, None, "cluster_robust", []),
])
def test_choose_inference_follows_the_design(n_treated, n_placebo, n_clusters, method, warns):
    choice = choose_inference(n_treated, n_placebo, n_clusters=n_clusters)
    assert choice.method == method
    assert choice.reason
    assert len(choice.warnings) == len(warns)
    for expected, warning in zip(warns, choice.warnings, strict=True):
        assert expected in warning


def test_choose_inference_rejects_unknown_methods_and_too_few_placebos():
    with pytest.raises(ValueError, match="unknown inference method 'bayes'"):
        choose_inference(1, 40, "bayes")
    with pytest.raises(ValueError, match="at least 39 placebo draws; the donors allow 12"):
        choose_inference(1, 12, "placebo_in_space")
    forced = choose_inference(10, 0, "wild_cluster_bootstrap", n_clusters=50)
    assert forced.method == "wild_cluster_bootstrap" and "protocol" in forced.reason


def test_typed_result_to_dict_and_tidy_agree():
    frame = simulate_panel(4, n_areas=30, treated=10, rate_ratio=0.9)
    estimate = fit_poisson_did(frame, [f"A{i:03d}" for i in range(10)], GO_LIVE).estimate
    row = estimate.to_dict()
    # keys the pipeline's fit step reads
    for key in ["estimator", "inference", "inference_reason", "warnings", "log_rate_ratio",
                "se", "df", "p_value", "rate_ratio", "pct_change", "pct_ci_low",
                "pct_ci_high", "n_obs", "n_placebo", "n_treated_areas", "n_comparison_areas"]:
        assert key in row
    assert row["method"] == "poisson_twfe"
    assert row["diagnostics"]["cr1_se"] == estimate.se
    tidy = estimate.tidy()
    assert tidy.columns[:6] == ["term", "estimate", "std_error", "conf_low", "conf_high",
                                "p_value"]
    assert tidy["estimate"][0] == row["log_rate_ratio"]
    assert tidy["pct_ci_low"][0] == pytest.approx(row["pct_ci_low"])
    assert tidy["inference"][0] == "cluster_robust"


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


def test_studentised_placebo_interval_and_p_value_by_hand():
    # 41 placebo t's from -5 to 5 (estimates -0.05..0.05, each with SE 0.01); the site has
    # estimate -0.2 and SE 0.02, so t = -10, beyond every placebo.
    placebos = np.linspace(-0.05, 0.05, 41)
    result = invert_studentised_placebos(-0.2, 0.02, placebos, np.full(41, 0.01), 0.05)
    assert result.p_value == pytest.approx(1 / 42)
    # ranks 1 and 41 of 41 (as for invert_placebos): t = -5 and 5, times the site's SE
    assert (result.ci_low, result.ci_high) == pytest.approx((-0.2 - 0.1, -0.2 + 0.1))
    # a placebo with twice the estimate and twice the SE is the same t: nothing changes
    doubled = invert_studentised_placebos(-0.2, 0.02, 2 * placebos, np.full(41, 0.02), 0.05)
    assert (doubled.ci_low, doubled.ci_high, doubled.p_value) == pytest.approx(
        (result.ci_low, result.ci_high, result.p_value))


def test_studentising_se_is_cr1_for_several_treated_areas_and_robust_for_one():
    frame = simulate_panel(6, n_areas=12, treated=2, rate_ratio=0.9)
    _, y, log_e, months = wide(frame)
    d = np.zeros_like(y)
    d[:2] = months >= np.datetime64(GO_LIVE)
    fit = fit_poisson_fe(y, log_e, d)
    assert studentising_se(y, fit, d, 2) == cluster_robust_se(y, fit, d)
    assert studentising_se(y, fit, d, 1) == robust_se(y, fit, d)
    assert robust_se(y, fit, d) != cluster_robust_se(y, fit, d)
