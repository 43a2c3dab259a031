"""Event studies: exact against statsmodels' GLM with dummies, and on seeded simulated
panels they recover a known step effect, hold the pre-trend test near its nominal rate
when nothing happened before go-live, and detect a pre-trend that is there."""

from __future__ import annotations

import json
import math
from datetime import date

import numpy as np
import polars as pl
import pytest

from transforms.event_study import (
    REFERENCE,
    fit_event_poisson,
    fit_event_study,
    quarter_bins,
)
from transforms.simulation import simulate_panel

GO_LIVE = date(2015, 3, 1)


def treated_codes(n: int) -> list[str]:
    return [f"A{i:03d}" for i in range(n)]


def with_pretrend(frame: pl.DataFrame, treated: int, slope: float, seed: int) -> pl.DataFrame:
    """Thin the treated areas' counts before go-live so that their rate climbs by `slope`
    (log points a month) towards go-live, relative to every other area."""
    rng = np.random.default_rng(seed)
    months_before = ((pl.col("month").dt.year() - GO_LIVE.year) * 12
                     + pl.col("month").dt.month() - GO_LIVE.month)
    keep = frame.with_columns(
        pl.when(pl.col("area_code").is_in(treated_codes(treated)) & (months_before < 0))
        .then((slope * months_before).exp()).otherwise(1.0).alias("keep")
    )
    thinned = rng.binomial(keep["count"].to_numpy(), keep["keep"].to_numpy())
    return keep.with_columns(pl.Series("count", thinned.astype(np.int64))).drop("keep")


def test_quarters_relative_to_go_live_bin_the_tails():
    months = np.array([date(2012, 4, 1), date(2013, 2, 1), date(2013, 3, 1),
                       date(2014, 12, 1), date(2015, 2, 1), date(2015, 3, 1),
                       date(2015, 5, 1), date(2015, 6, 1), date(2018, 2, 1),
                       date(2019, 3, 1)], dtype="datetime64[D]")
    # 35, 25, 24 and 3 months before; 1 before; go-live; 2 and 3 months after; 35 and
    # 48 months after (both in the last bin, quarter 11).
    assert quarter_bins(months, GO_LIVE).tolist() == [-8, -8, -8, -1, -1, 0, 0, 1, 11, 11]
    assert quarter_bins(months, GO_LIVE, pre=4, post=2).tolist() == [
        -4, -4, -4, -1, -1, 0, 0, 1, 1, 1]


def test_fit_equals_statsmodels_glm_with_dummies():
    import statsmodels.api as sm

    panel = simulate_panel(21, n_areas=14, treated=4, rate_ratio=0.92).sort("area_code",
                                                                            "month")
    study = fit_event_study(panel, treated_codes(4), GO_LIVE)
    bins = quarter_bins(panel["month"].to_numpy(), GO_LIVE)
    treated = panel["area_code"].is_in(treated_codes(4)).to_numpy()
    quarters = sorted(set(bins.tolist()) - {REFERENCE})
    area = np.unique(panel["area_code"].to_numpy(), return_inverse=True)[1]
    month = np.unique(panel["month"].to_numpy(), return_inverse=True)[1]
    x = np.column_stack([(treated & (bins == e)).astype(float) for e in quarters]
                        + [np.eye(area.max() + 1)[area], np.eye(month.max() + 1)[month][:, 1:]])
    glm = sm.GLM(panel["count"].to_numpy().astype(float), x, family=sm.families.Poisson(),
                 offset=np.log(panel["population"].to_numpy().astype(float))).fit(
        cov_type="cluster", cov_kwds={"groups": area})
    ours = [study.coefficient(e) for e in quarters]
    np.testing.assert_allclose([c.log_rate_ratio for c in ours], glm.params[:len(quarters)],
                               atol=1e-9)
    np.testing.assert_allclose([c.se for c in ours], glm.bse[:len(quarters)], rtol=1e-7)


def test_step_effect_is_recovered_with_cluster_robust_inference():
    panel = simulate_panel(31, n_areas=30, treated=8, rate_ratio=0.90)
    study = fit_event_study(panel, treated_codes(8), GO_LIVE)
    assert study.inference == "cluster_robust" and study.n_placebo == 0
    assert study.n_treated_areas == 8 and study.n_comparison_areas == 22
    tidy = study.tidy()
    assert tidy["e"].to_list() == list(range(-8, 12))
    assert tidy.filter(pl.col("e") == REFERENCE)["log_rate_ratio"].item() == 0.0
    assert tidy["n_months"].sum() == 84
    post = tidy.filter(pl.col("e") >= 0)
    pre = tidy.filter(pl.col("e") < REFERENCE)
    # Every quarter is measured against the reference quarter (three months), whose own
    # noise shifts them all alike (about 0.015 here): the post-period average is within
    # two of those of log(0.9); set against the pre-period average, which shares that
    # shift, within 1.5 percentage points.
    assert post["log_rate_ratio"].mean() == pytest.approx(math.log(0.9), abs=0.03)
    before = tidy.filter(pl.col("e") < 0)["log_rate_ratio"].mean()
    assert post["log_rate_ratio"].mean() - before == pytest.approx(math.log(0.9), abs=0.015)
    assert (post["log_rate_ratio"] - math.log(0.9)).abs().max() < 0.06
    assert pre["log_rate_ratio"].abs().max() < 0.05
    covered = ((post["ci_low_log"] <= math.log(0.9)) & (math.log(0.9) <= post["ci_high_log"]))
    assert covered.sum() >= 10  # of 12 pointwise 95% intervals
    # The simultaneous band is wider than each pointwise interval.
    estimated = tidy.filter(pl.col("e") != REFERENCE)
    assert (estimated["band_high_log"] - estimated["band_low_log"]
            > estimated["ci_high_log"] - estimated["ci_low_log"]).all()
    assert study.pretrend.df == 7 and study.pretrend.p_value > 0.05
    json.dumps(study.to_dict())  # plain data

    rows = study.warehouse_rows("site", "emergency_admissions")
    assert rows.columns == ["site_id", "outcome", "e", "estimate", "ci_low", "ci_high",
                            "p_pretrend", "inference"]
    first_post = study.coefficient(0)
    stored = rows.filter(pl.col("e") == 0).row(0, named=True)
    assert stored["estimate"] == pytest.approx(100 * math.expm1(first_post.log_rate_ratio))
    assert stored["ci_low"] == pytest.approx(100 * math.expm1(first_post.ci_low_log))
    assert stored["p_pretrend"] == study.pretrend.p_value


def test_pretrend_test_holds_its_size_on_null_panels():
    """With few treated areas an F test on the cluster-robust covariance rejects far too
    often (about 37% at 5% for 8 of 30 areas); the wild bootstrap p-value should not."""
    p_values = []
    for seed in range(40):
        panel = simulate_panel(500 + seed, n_areas=20, treated=6, rate_ratio=0.9)
        p_values.append(fit_event_study(panel, treated_codes(6), GO_LIVE).pretrend.p_value)
    rejections = sum(p < 0.05 for p in p_values)
    assert rejections <= 5  # nominal 2 of 40
    assert 0.3 < float(np.mean(p_values)) < 0.7  # roughly uniform, not piled up at 1


def test_pretrend_is_detected_with_cluster_robust_inference():
    panel = with_pretrend(simulate_panel(41, n_areas=30, treated=8, rate_ratio=0.9),
                          treated=8, slope=0.005, seed=41)
    study = fit_event_study(panel, treated_codes(8), GO_LIVE)
    assert study.pretrend.p_value < 0.01
    pre = study.tidy().filter(pl.col("e") < REFERENCE).sort("e")
    # Climbing towards go-live: the earliest quarter lies furthest below the reference.
    assert pre["log_rate_ratio"][0] < -0.08


def test_few_areas_still_get_a_pretrend_test_and_a_warning():
    # Six areas: fewer than the seven pre-period quarters, so the clustered covariance of
    # the pre-period coefficients is singular; the test must still give a p-value.
    panel = simulate_panel(13, n_areas=6, treated=2, rate_ratio=0.9)
    study = fit_event_study(panel, treated_codes(2), GO_LIVE, seed=1,
                            method="wild_cluster_bootstrap")
    assert study.inference == "cluster_robust"
    assert "2 treated area(s) without placebo inference" in study.warnings[0]
    assert 0 < study.pretrend.p_value <= 1 and study.pretrend.df == 7
    many = simulate_panel(13, n_areas=12, treated=4, rate_ratio=0.9)
    assert not fit_event_study(many, treated_codes(4), GO_LIVE, seed=1).warnings


def placebo_design(panel: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One treated area, 5 comparators, every other area a placebo donor."""
    return (panel.filter(pl.col("area_code") <= "A005"),
            panel.filter(pl.col("area_code") > "A000"))


def test_placebo_inference_recovers_a_step_and_detects_a_pretrend():
    model, donors = placebo_design(simulate_panel(8, n_areas=46, treated=1, rate_ratio=0.85))
    study = fit_event_study(model, ["A000"], GO_LIVE, donors=donors, seed=3,
                            method="placebo_in_space")
    assert study.inference == "placebo_in_space" and study.n_placebo == 45
    post = study.tidy().filter(pl.col("e") >= 0)
    # One area: its reference quarter's noise is about 0.025 on the log scale.
    assert post["log_rate_ratio"].mean() == pytest.approx(math.log(0.85), abs=0.05)
    covered = (post["ci_low_log"] <= math.log(0.85)) & (math.log(0.85) <= post["ci_high_log"])
    assert covered.sum() >= 10
    assert study.pretrend.method == "placebo distribution" and study.pretrend.p_value > 0.05

    trending = with_pretrend(simulate_panel(8, n_areas=46, treated=1, rate_ratio=0.85),
                             treated=1, slope=0.01, seed=8)
    model, donors = placebo_design(trending)
    study = fit_event_study(model, ["A000"], GO_LIVE, donors=donors, seed=3,
                            method="placebo_in_space")
    assert study.pretrend.p_value == pytest.approx(1 / 46)  # beyond every placebo


def test_placebo_pretrend_test_holds_its_size_on_null_panels():
    rejections = 0
    for seed in range(25):
        model, donors = placebo_design(
            simulate_panel(700 + seed, n_areas=41, treated=1, rate_ratio=1.0))
        study = fit_event_study(model, ["A000"], GO_LIVE, donors=donors, seed=seed,
                                method="placebo_in_space")
        rejections += study.pretrend.p_value < 0.05
    assert rejections <= 4  # nominal 1.25 of 25


def test_fitted_means_reproduce_every_margin():
    # The Poisson score equations are margins of the table: every month, every area and
    # each quarter of the treated area; at the maximum the fitted means match them all.
    panel = simulate_panel(5, n_areas=8, treated=1, rate_ratio=0.9).sort("area_code", "month")
    y = panel["count"].to_numpy().astype(float).reshape(8, -1)
    log_e = np.log(panel["population"].to_numpy().astype(float)).reshape(8, -1)
    bins = quarter_bins(panel["month"].to_numpy()[:84], GO_LIVE)
    quarters = sorted(set(bins.tolist()) - {REFERENCE})
    fit = fit_event_poisson(y, log_e, 1, bins, quarters)
    assert fit.converged
    np.testing.assert_allclose(fit.mu.sum(axis=0), y.sum(axis=0), rtol=1e-9)
    np.testing.assert_allclose(fit.mu.sum(axis=1), y.sum(axis=1), rtol=1e-9)
    for e in [REFERENCE, *quarters]:
        assert fit.mu[0, bins == e].sum() == pytest.approx(y[0, bins == e].sum(), rel=1e-9)


def test_a_window_without_a_pre_period_quarter_is_refused():
    panel = simulate_panel(2, n_areas=6, treated=1, rate_ratio=1.0)
    with pytest.raises(ValueError, match="reference quarter before go-live"):
        fit_event_study(panel.filter(pl.col("month") >= GO_LIVE), ["A000"], GO_LIVE)
    with pytest.raises(ValueError, match="none of the treated areas"):
        fit_event_study(panel, ["Z999"], GO_LIVE)
