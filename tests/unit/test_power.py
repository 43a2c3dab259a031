"""Minimum detectable effects: the textbook multiplier, and power recovered by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transforms.power import minimum_detectable_effect, placebo_minimum_detectable_effect


def test_multiplier_is_the_published_2_8_standard_errors():
    # Bloom (1995), "Minimum detectable effects", Evaluation Review 19(5):547-556: for a
    # two-tailed test at 0.05 with 80% power the MDE is 2.80 standard errors (to 2 d.p.).
    mde = minimum_detectable_effect(1.0)
    assert mde.log_rate_ratio == pytest.approx(2.80, abs=0.005)
    assert mde.basis == "standard_error"


def test_percentages_follow_from_the_log_scale_and_are_asymmetric():
    mde = minimum_detectable_effect(0.05)
    assert mde.pct_reduction == pytest.approx(100 * (1 - math.exp(-mde.log_rate_ratio)))
    assert mde.pct_increase == pytest.approx(100 * (math.exp(mde.log_rate_ratio) - 1))
    assert mde.pct_reduction < 100 * mde.log_rate_ratio < mde.pct_increase


def test_mde_scales_with_the_spread_and_grows_with_power_and_strictness():
    base = minimum_detectable_effect(0.04).log_rate_ratio
    assert minimum_detectable_effect(0.08).log_rate_ratio == pytest.approx(2 * base)
    assert minimum_detectable_effect(0.04, power=0.9).log_rate_ratio > base
    assert minimum_detectable_effect(0.04, alpha=0.01).log_rate_ratio > base


def test_t_reference_is_wider_with_few_clusters_and_tends_to_normal():
    normal = minimum_detectable_effect(0.05).log_rate_ratio
    few = minimum_detectable_effect(0.05, df=4).log_rate_ratio
    many = minimum_detectable_effect(0.05, df=10_000).log_rate_ratio
    assert few > 1.2 * normal
    assert many == pytest.approx(normal, rel=1e-3)


@pytest.mark.parametrize("se", [0.02, 0.1])
def test_a_true_effect_of_one_mde_is_detected_with_the_stated_power(se: float):
    rng = np.random.default_rng(7)
    mde = minimum_detectable_effect(se)
    estimates = -mde.log_rate_ratio + se * rng.standard_normal(40_000)
    power = float(np.mean(np.abs(estimates / se) > 1.959964))
    assert power == pytest.approx(0.80, abs=0.01)  # Monte Carlo se 0.002
    half = -mde.log_rate_ratio / 2 + se * rng.standard_normal(40_000)
    assert float(np.mean(np.abs(half / se) > 1.959964)) < 0.35


def test_placebo_mde_matches_the_normal_one_for_normal_placebos():
    placebos = 0.05 * np.random.default_rng(3).standard_normal(200_000)
    from_spread = minimum_detectable_effect(float(np.std(placebos, ddof=1)))
    from_placebos = placebo_minimum_detectable_effect(placebos)
    assert from_placebos.basis == "placebo_distribution"
    assert from_placebos.log_rate_ratio == pytest.approx(from_spread.log_rate_ratio, rel=0.01)


def test_placebo_mde_gives_the_stated_power_with_heavy_tailed_placebos():
    rng = np.random.default_rng(11)
    placebos = 0.03 * rng.standard_t(3, size=100_000)
    mde = placebo_minimum_detectable_effect(placebos)
    critical = float(np.quantile(np.abs(placebos), 0.95))
    estimates = -mde.log_rate_ratio + 0.03 * rng.standard_t(3, size=100_000)
    assert float(np.mean(np.abs(estimates) > critical)) == pytest.approx(0.80, abs=0.01)
    # the normal approximation from the spread misjudges heavy tails
    spread = minimum_detectable_effect(float(np.std(placebos, ddof=1))).log_rate_ratio
    assert abs(spread - mde.log_rate_ratio) > 0.05 * mde.log_rate_ratio


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"se_or_placebo_spread": 0.0}, "positive"),
     ({"se_or_placebo_spread": float("nan")}, "positive"),
     ({"se_or_placebo_spread": 0.1, "alpha": 1.0}, "alpha"),
     ({"se_or_placebo_spread": 0.1, "power": 0.0}, "power"),
     ({"se_or_placebo_spread": 0.1, "df": 0}, "df")],
)
def test_bad_inputs_say_what_is_wrong(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        minimum_detectable_effect(**kwargs)


def test_placebo_mde_needs_placebos():
    with pytest.raises(ValueError, match="at least 2"):
        placebo_minimum_detectable_effect(np.array([0.1, float("nan")]))
