"""Callaway & Sant'Anna DiD: R `did` reference numbers, hand computations and seeded recovery.

Reference numbers and where they come from:
* did_mpdta_attgt.csv / did_mpdta_aggregates.csv (shared/reference): R
  `did::att_gt(yname="lemp", tname="year", idname="countyreal", gname="first.treat",
  control_group="nevertreated", xformla=~1, bstrap=FALSE)` and `aggte(type=...)` with
  analytic SEs, as stored in the csdid Python package's reference files. Point estimates to
  1e-6, analytic SEs to 1e-4 (the tolerances the reference README calls fair).
* W = 7.7912, p = 0.16812: `summary()` of that R run (shared/reference/README.md); R prints
  4-5 significant digits, so 1e-3.
* ATT(g,t) with xformla=~lpop (doubly robust): R `did` output printed in the ddml package's
  vignette "Diff-in-Diff with Double/Debiased Machine Learning" (thomaswiemann/ddml), to 4
  decimals, so 5e-5; its pre-test p-value 0.23267 is printed to 5 decimals.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from tests.conftest import SHARED_REFERENCE
from transforms.did import (
    CSOptions,
    CSResult,
    DidInputError,
    PanelColumns,
    estimate_cs,
)

MPDTA = PanelColumns(unit="countyreal", time="year", cohort="first.treat", outcome="lemp")


@pytest.fixture(scope="module")
def mpdta() -> pl.DataFrame:
    return pl.read_csv(SHARED_REFERENCE / "mpdta.csv")


@pytest.fixture(scope="module")
def r_run(mpdta: pl.DataFrame) -> CSResult:
    return estimate_cs(mpdta, MPDTA, CSOptions(method="dr"))


def wide(frame: pl.DataFrame) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Cohort per county and lemp per year, for computing ATTs by hand."""
    table = frame.pivot(on="year", index=["countyreal", "first.treat"], values="lemp")
    years = sorted(int(c) for c in table.columns if c.isdigit())
    return table["first.treat"].to_numpy(), {y: table[str(y)].to_numpy() for y in years}


def by_hand(cohort: np.ndarray, y: dict[int, np.ndarray], g: int, t: int, base: int,
            controls: np.ndarray) -> float:
    """(mean change treated) - (mean change controls) between `base` and `t`."""
    change = y[t] - y[base]
    return float(change[cohort == g].mean() - change[controls].mean())


def cell(result: CSResult, g: float, t: float):
    return next(c for c in result.att_gt if c.group == g and c.time == t)


def attgt_frame(result: CSResult) -> pl.DataFrame:
    return pl.DataFrame(result.to_dict()["att_gt"])


# --- R reference run ---------------------------------------------------------------------


def test_att_gt_matches_r(r_run: CSResult):
    # R did::att_gt, analytic SEs (did_mpdta_attgt.csv)
    reference = pl.read_csv(SHARED_REFERENCE / "did_mpdta_attgt.csv")
    ours = attgt_frame(r_run)
    assert ours.select("group", "time").rows() == reference.select("group", "time").rows()
    assert np.abs(ours["att"].to_numpy() - reference["att"].to_numpy()).max() < 1e-6
    assert np.abs(ours["se"].to_numpy() - reference["se"].to_numpy()).max() < 1e-4


@pytest.mark.parametrize("kind", ["simple", "group", "dynamic", "calendar"])
def test_aggregates_match_r(r_run: CSResult, kind: str):
    # R did::aggte(type = kind), analytic SEs (did_mpdta_aggregates.csv)
    reference = pl.read_csv(SHARED_REFERENCE / "did_mpdta_aggregates.csv", null_values="NA")
    reference = reference.filter(pl.col("type") == kind)
    block = r_run.to_dict()["aggregates"][kind]
    assert block["att"] == pytest.approx(reference["overall_att"][0], abs=1e-6)
    assert block["se"] == pytest.approx(reference["overall_se"][0], abs=1e-4)
    if kind != "simple":
        key = {"group": "group", "dynamic": "e", "calendar": "time"}[kind]
        assert [row[key] for row in block["by"]] == reference["egt"].cast(pl.Int64).to_list()
        att = np.array([row["att"] for row in block["by"]])
        se = np.array([row["se"] for row in block["by"]])
        assert np.abs(att - reference["att_egt"].to_numpy()).max() < 1e-6
        assert np.abs(se - reference["se_egt"].to_numpy()).max() < 1e-4


def test_pretest_matches_r(r_run: CSResult):
    # R did summary(att_gt): W = 7.7912, p = 0.16812 on 5 pre-treatment ATT(g,t)
    assert r_run.pretest.wald == pytest.approx(7.7912, abs=1e-3)
    assert r_run.pretest.p == pytest.approx(0.16812, abs=1e-3)
    assert r_run.pretest.df == 5


def test_pandas_input_gives_the_same_result(mpdta: pl.DataFrame, r_run: CSResult):
    assert estimate_cs(mpdta.to_pandas(), MPDTA).to_dict() == r_run.to_dict()


def test_methods_coincide_without_covariates(mpdta: pl.DataFrame, r_run: CSResult):
    # shared/reference/README.md: with no covariates reg, ipw and dr give identical estimates
    for method in ("reg", "ipw"):
        other = estimate_cs(mpdta, MPDTA, CSOptions(method=method))
        for a, b in zip(other.att_gt, r_run.att_gt, strict=True):
            assert a.att == pytest.approx(b.att, abs=1e-12)
            assert a.se == pytest.approx(b.se, abs=1e-12)
        assert other.to_dict()["method"] == method


def test_doubly_robust_with_covariate_matches_published_r(mpdta: pl.DataFrame):
    # R did::att_gt(xformla=~lpop) printed in the ddml vignette (4 decimals)
    published = [-0.0145, -0.0764, -0.1404, -0.1069, -0.0005, -0.0062, 0.0010, -0.0413,
                 0.0267, -0.0046, -0.0284, -0.0288]
    columns = PanelColumns(**{**MPDTA.__dict__, "covariates": ("lpop",)})
    result = estimate_cs(mpdta, columns, CSOptions(method="dr"))
    assert np.abs(np.array([c.att for c in result.att_gt]) - published).max() < 5e-5
    # same vignette: pre-test p-value 0.23267; aggte(type="dynamic") overall -0.0804 and
    # event-time estimates -3..3
    assert result.pretest.p == pytest.approx(0.23267, abs=1e-5)
    dynamic = result.aggregate("dynamic")
    assert dynamic.overall.att == pytest.approx(-0.0804, abs=5e-5)
    assert [e.att for e in dynamic.by] == pytest.approx(
        [0.0267, -0.0036, -0.0232, -0.0211, -0.0530, -0.1404, -0.1069], abs=5e-5)


def test_covariate_estimators_match_first_principles(mpdta: pl.DataFrame):
    """ATT(2004, 2004) with lpop: regression, Hajek IPW and DR written out with numpy."""
    table = mpdta.pivot(on="year", index=["countyreal", "first.treat", "lpop"], values="lemp")
    sample = table.filter(pl.col("first.treat").is_in([0, 2004]))
    d = (sample["first.treat"] == 2004).to_numpy().astype(float)
    change = (sample["2004"] - sample["2003"]).to_numpy()
    x = np.column_stack([np.ones(len(d)), sample["lpop"].to_numpy()])
    beta = np.linalg.lstsq(x[d == 0], change[d == 0], rcond=None)[0]
    predicted = x @ beta
    def neg_loglik(b: np.ndarray) -> float:
        return float(np.sum(np.logaddexp(0, x @ b) - d * (x @ b)))

    coef = optimize.minimize(neg_loglik, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    ps = 1 / (1 + np.exp(-(x @ coef)))
    odds = ps * (1 - d) / (1 - ps)
    expected = {
        "reg": (change - predicted)[d == 1].mean(),
        "ipw": change[d == 1].mean() - (odds * change).sum() / odds.sum(),
        "dr": (change - predicted)[d == 1].mean()
        - (odds * (change - predicted)).sum() / odds.sum(),
    }
    columns = PanelColumns(**{**MPDTA.__dict__, "covariates": ("lpop",)})
    for method, value in expected.items():
        result = estimate_cs(mpdta, columns, CSOptions(method=method))
        assert cell(result, 2004, 2004).att == pytest.approx(value, abs=1e-7), method


# --- hand computations -------------------------------------------------------------------


def test_two_by_two_equals_difference_of_mean_changes():
    frame = pl.DataFrame({
        "id": ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"],
        "t": [1, 2] * 5,
        "g": [2, 2, 2, 2, 0, 0, 0, 0, 0, 0],
        "y": [10.0, 14.0, 12.0, 17.0, 9.0, 10.0, 11.0, 13.0, 8.0, 8.5],
    })
    result = estimate_cs(frame, PanelColumns("id", "t", "g", "y"))
    treated, control = np.array([4.0, 5.0]), np.array([1.0, 2.0, 0.5])
    assert result.att_gt[0].att == pytest.approx(treated.mean() - control.mean(), abs=1e-12)
    # the influence-function SE of a 2x2 is the two-sample SE with 1/n variances
    se = math.sqrt(treated.var() / 2 + control.var() / 3)
    assert result.att_gt[0].se == pytest.approx(se, abs=1e-12)
    assert result.aggregate("simple").overall.att == pytest.approx(result.att_gt[0].att)
    assert any("fewer than 5 units" in w for w in result.warnings)


def test_not_yet_treated_uses_later_cohorts_as_controls(mpdta: pl.DataFrame):
    cohort, y = wide(mpdta)
    result = estimate_cs(mpdta, MPDTA, CSOptions(control="notyet"))
    # ATT(2004, 2004): controls never treated or first treated after 2004 (2006, 2007)
    expected = by_hand(cohort, y, 2004, 2004, 2003, cohort != 2004)
    assert cell(result, 2004, 2004).att == pytest.approx(expected, abs=1e-12)
    # ATT(2006, 2006) against 2005: controls never treated or first treated in 2007
    expected = by_hand(cohort, y, 2006, 2006, 2005, (cohort == 0) | (cohort == 2007))
    assert cell(result, 2006, 2006).att == pytest.approx(expected, abs=1e-12)
    # ATT(2004, 2007): only never-treated units are still untreated in 2007
    expected = by_hand(cohort, y, 2004, 2007, 2003, cohort == 0)
    assert cell(result, 2004, 2007).att == pytest.approx(expected, abs=1e-12)


def test_not_yet_equals_never_with_a_single_cohort(mpdta: pl.DataFrame):
    one_cohort = mpdta.filter(pl.col("first.treat").is_in([0, 2004]))
    never = estimate_cs(one_cohort, MPDTA, CSOptions(control="never"))
    not_yet = estimate_cs(one_cohort, MPDTA, CSOptions(control="notyet"))
    assert attgt_frame(never).equals(attgt_frame(not_yet))
    assert never.to_dict()["aggregates"] == not_yet.to_dict()["aggregates"]


def test_universal_base_period(mpdta: pl.DataFrame, r_run: CSResult):
    cohort, y = wide(mpdta)
    universal = estimate_cs(mpdta, MPDTA, CSOptions(base="universal"))
    assert len(universal.att_gt) == 3 * 5
    for g in (2004, 2006, 2007):
        reference = cell(universal, g, g - 1)
        assert reference.att == 0 and reference.se is None
        for t in range(g, 2008):  # post-treatment cells do not depend on the base choice
            assert cell(universal, g, t).att == pytest.approx(cell(r_run, g, t).att, abs=1e-12)
    # pre-treatment cells are long differences against g - 1
    expected = by_hand(cohort, y, 2007, 2004, 2006, cohort == 0)
    assert cell(universal, 2007, 2004).att == pytest.approx(expected, abs=1e-12)
    assert universal.pretest.df == 0 + 2 + 3  # the g-1 reference cells are left out
    # universal pre-treatment ATTs are an invertible transform of the varying ones
    assert universal.pretest.wald == pytest.approx(r_run.pretest.wald, rel=1e-9)
    dynamic = {e.label: e for e in universal.aggregate("dynamic").by}
    assert dynamic[-1].att == 0 and dynamic[-1].se is None


def test_anticipation_moves_the_base_period(mpdta: pl.DataFrame):
    cohort, y = wide(mpdta)
    result = estimate_cs(mpdta, MPDTA, CSOptions(anticipation=1))
    # the 2004 cohort has no period before 2004 - 1, so it is dropped as already treated
    assert result.n_units == 500 - 20
    assert any("already treated in the first period (accounting for anticipation = 1)" in w
               for w in result.warnings)
    assert sorted({c.group for c in result.att_gt}) == [2006, 2007]
    keep = cohort != 2004
    cohort = cohort[keep]
    y = {year: values[keep] for year, values in y.items()}
    # post-treatment base is g - 1 - anticipation
    for g, t in [(2006, 2006), (2006, 2007), (2007, 2007)]:
        expected = by_hand(cohort, y, g, t, g - 2, cohort == 0)
        assert cell(result, g, t).att == pytest.approx(expected, abs=1e-12)
    # the anticipation period itself is a short difference, reported as pre-treatment
    expected = by_hand(cohort, y, 2007, 2006, 2005, cohort == 0)
    assert cell(result, 2007, 2006).att == pytest.approx(expected, abs=1e-12)
    assert not cell(result, 2007, 2006).post


def test_constant_weights_give_the_unweighted_result(mpdta: pl.DataFrame, r_run: CSResult):
    weighted = estimate_cs(mpdta.with_columns(w=pl.lit(3.7)),
                                 PanelColumns(**{**MPDTA.__dict__, "weights": "w"}))
    a, b = weighted.to_dict(), r_run.to_dict()
    assert np.allclose([c["att"] for c in a["att_gt"]], [c["att"] for c in b["att_gt"]],
                       atol=1e-12)
    assert np.allclose([c["se"] for c in a["att_gt"]], [c["se"] for c in b["att_gt"]],
                       atol=1e-12)
    for kind in ("simple", "group", "dynamic", "calendar"):
        assert a["aggregates"][kind]["att"] == pytest.approx(b["aggregates"][kind]["att"])
        assert a["aggregates"][kind]["se"] == pytest.approx(b["aggregates"][kind]["se"])
    assert a["weights"] == "w"


def test_weight_two_equals_a_duplicated_unit(mpdta: pl.DataFrame):
    doubled_ids = [8001, 8019, 13001, 13003, 1001]  # two cohort-2007 counties, others
    copies = mpdta.filter(pl.col("countyreal").is_in(doubled_ids)).with_columns(
        pl.col("countyreal") + 1_000_000)
    duplicated = estimate_cs(pl.concat([mpdta, copies]), MPDTA)
    weighted = estimate_cs(
        mpdta.with_columns(w=pl.when(pl.col("countyreal").is_in(doubled_ids)).then(2.0)
                           .otherwise(1.0)),
        PanelColumns(**{**MPDTA.__dict__, "weights": "w"}))
    for a, b in zip(duplicated.att_gt, weighted.att_gt, strict=True):
        assert a.att == pytest.approx(b.att, abs=1e-12)
    for kind in ("simple", "group", "dynamic", "calendar"):
        assert weighted.aggregate(kind).overall.att == pytest.approx(
            duplicated.aggregate(kind).overall.att, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(scale=st.floats(min_value=1e-3, max_value=1e3))
def test_weights_are_scale_free(mpdta: pl.DataFrame, scale: float):
    columns = PanelColumns(**{**MPDTA.__dict__, "weights": "w", "covariates": ("lpop",)})
    frame = mpdta.with_columns(w=1.0 + (pl.col("countyreal") % 3))
    base = estimate_cs(frame, columns, CSOptions(method="ipw"))
    scaled = estimate_cs(frame.with_columns(pl.col("w") * scale), columns,
                               CSOptions(method="ipw"))
    assert base.aggregate("simple").overall.att == pytest.approx(
        scaled.aggregate("simple").overall.att, rel=1e-9)
    assert base.aggregate("simple").overall.se == pytest.approx(
        scaled.aggregate("simple").overall.se, rel=1e-7)


# --- seeded simulation -------------------------------------------------------------------


def staggered_panel(seed: int, effect: float, n_units: int = 600,
                    n_periods: int = 10) -> pl.DataFrame:
    """Unit and period effects, cohorts first treated in periods 4, 6 and 8, iid noise."""
    rng = np.random.default_rng(seed)
    cohort = rng.choice([0, 4, 6, 8], size=n_units, p=[0.4, 0.2, 0.2, 0.2])
    periods = np.arange(1, n_periods + 1)
    treated = (cohort[:, None] > 0) & (periods[None, :] >= cohort[:, None])
    y = (rng.normal(size=(n_units, 1)) + 0.3 * periods[None, :] + effect * treated
         + rng.normal(scale=1.0, size=(n_units, n_periods)))
    return pl.DataFrame({"id": np.repeat(np.arange(n_units), n_periods),
                         "t": np.tile(periods, n_units),
                         "g": np.repeat(cohort, n_periods), "y": y.ravel()})


@pytest.mark.parametrize(("seed", "control"), [(11, "never"), (12, "notyet")])
def test_recovers_a_known_constant_effect(seed: int, control: str):
    frame = staggered_panel(seed, effect=1.5, n_units=2000)
    result = estimate_cs(frame, PanelColumns("id", "t", "g", "y"),
                               CSOptions(control=control, bootstrap=499, seed=seed))
    for kind in ("simple", "group", "dynamic", "calendar"):
        overall = result.aggregate(kind).overall
        assert overall.ci_low <= 1.5 <= overall.ci_high, kind
        assert abs(overall.att - 1.5) < 0.1, kind
    dynamic = result.aggregate("dynamic")
    assert dynamic.crit_val_uniform is not None and dynamic.crit_val_uniform > 1.96
    for e in dynamic.by:  # the uniform band covers the whole event-study path
        truth = 1.5 if e.label >= 0 else 0.0
        assert e.ci_low <= truth <= e.ci_high, e
    assert result.pretest.p > 0.01


def test_standard_errors_are_calibrated():
    """Over 40 seeded panels the SE matches the spread of estimates, and there is no bias."""
    estimates, ses = [], []
    for seed in range(40):
        result = estimate_cs(staggered_panel(100 + seed, effect=1.5, n_units=300),
                                   PanelColumns("id", "t", "g", "y"))
        estimates.append(result.aggregate("simple").overall.att)
        ses.append(result.aggregate("simple").overall.se)
    spread, mean_se = np.std(estimates, ddof=1), np.mean(ses)
    assert abs(np.mean(estimates) - 1.5) < 3 * mean_se / np.sqrt(40)
    assert 0.7 < spread / mean_se < 1.3


# --- inference ---------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_close_to_analytic(mpdta: pl.DataFrame, r_run: CSResult):
    options = CSOptions(bootstrap=999, seed=7)
    first = estimate_cs(mpdta, MPDTA, options)
    again = estimate_cs(mpdta, MPDTA, options)
    assert first.to_dict() == again.to_dict()
    data = first.to_dict()
    assert data["inference"] == "multiplier_bootstrap"
    ratio = np.array([c.se for c in first.att_gt]) / np.array([c.se for c in r_run.att_gt])
    assert np.all((ratio > 0.85) & (ratio < 1.15))
    dynamic = data["aggregates"]["dynamic"]
    assert dynamic["band"] == "uniform" and dynamic["crit_val_uniform"] > 1.96
    for row in dynamic["by"]:
        half = dynamic["crit_val"] * row["se"]
        assert row["ci_low"] == pytest.approx(row["att"] - half)
        assert row["ci_high"] == pytest.approx(row["att"] + half)
    mammen = estimate_cs(mpdta, MPDTA, CSOptions(bootstrap=999, seed=7,
                                                       multiplier="mammen"))
    simple_ratio = (mammen.aggregate("simple").overall.se
                    / r_run.aggregate("simple").overall.se)
    assert 0.85 < simple_ratio < 1.15


def test_clustered_standard_errors(mpdta: pl.DataFrame, r_run: CSResult):
    by_unit = estimate_cs(mpdta, PanelColumns(**{**MPDTA.__dict__,
                                                       "cluster": "countyreal"}))
    assert [c.se for c in by_unit.att_gt] == pytest.approx([c.se for c in r_run.att_gt],
                                                           abs=1e-12)
    states = mpdta.with_columns(state=pl.col("countyreal") // 1000)
    columns = PanelColumns(**{**MPDTA.__dict__, "cluster": "state"})
    analytic = estimate_cs(states, columns)
    boot = estimate_cs(states, columns, CSOptions(bootstrap=999, seed=3))
    assert boot.to_dict()["bootstrap"]["n_clusters"] == 29
    ratio = boot.aggregate("simple").overall.se / analytic.aggregate("simple").overall.se
    assert 0.75 < ratio < 1.25


# --- sample rules and input errors -------------------------------------------------------


def test_unbalanced_units_are_dropped_with_a_warning(mpdta: pl.DataFrame):
    holey = mpdta.filter(~((pl.col("countyreal") == 8001) & (pl.col("year") == 2005)))
    result = estimate_cs(holey, MPDTA)
    assert result.n_units == 499
    assert any("1 units are missing in some periods" in w for w in result.warnings)


def test_missing_values_are_dropped_with_a_warning(mpdta: pl.DataFrame):
    gappy = mpdta.with_columns(
        lemp=pl.when((pl.col("countyreal") == 8001) & (pl.col("year") == 2005))
        .then(None).otherwise(pl.col("lemp")))
    result = estimate_cs(gappy, MPDTA)
    assert result.n_units == 499
    assert any("dropped 1 rows with missing" in w for w in result.warnings)


def test_always_treated_units_are_dropped_with_a_warning(mpdta: pl.DataFrame):
    ids = mpdta["countyreal"].unique().sort().head(12)
    early = mpdta.with_columns(pl.when(pl.col("countyreal").is_in(ids.implode())).then(2003)
                               .otherwise(pl.col("first.treat")).alias("first.treat"))
    n_early = 12
    result = estimate_cs(early, MPDTA)
    assert result.n_units == 500 - n_early
    assert any(f"dropped {n_early} units that were already treated" in w
               for w in result.warnings)


def test_not_yet_treated_without_never_treated_units(mpdta: pl.DataFrame):
    treated_only = mpdta.filter(pl.col("first.treat") > 0)
    with pytest.raises(DidInputError, match="no never-treated units"):
        estimate_cs(treated_only, MPDTA)
    result = estimate_cs(treated_only, MPDTA, CSOptions(control="notyet"))
    # as R did: periods from the last cohort on are dropped; that cohort is only a control
    assert sorted({c.group for c in result.att_gt}) == [2004, 2006]
    assert max(c.time for c in result.att_gt) == 2006
    cohort, y = wide(treated_only)
    expected = by_hand(cohort, y, 2004, 2004, 2003, cohort != 2004)
    assert cell(result, 2004, 2004).att == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: pl.concat([f, f.head(1)]), "appear more than once, first unit 8001 in period 2003"),
    (lambda f: f.with_columns(pl.col("lemp").cast(pl.String).str.replace("^8.46.*", "n/a")),
     "outcome column `lemp` must be numeric.*'n/a'"),
    (lambda f: f.with_columns(pl.when(pl.col("year") == 2007).then(2006)
                              .otherwise(pl.col("first.treat")).alias("first.treat")),
     "cohort column `first.treat` must be the same in every period"),
    (lambda f: f.drop("lemp"), "column\\(s\\) `lemp` not found"),
])
def test_impossible_panels_fail_with_a_clear_message(mpdta: pl.DataFrame, change, message):
    with pytest.raises(DidInputError, match=message):
        estimate_cs(change(mpdta), MPDTA)


@pytest.mark.parametrize(("extra", "message"), [
    (pl.col("lpop") * 2 + 1, "`lpop2` is a linear combination of `lpop`"),
    (pl.lit(5.0), "`lpop2` is constant"),
])
def test_singular_covariates_fail(mpdta: pl.DataFrame, extra: pl.Expr, message: str):
    columns = PanelColumns(**{**MPDTA.__dict__, "covariates": ("lpop", "lpop2")})
    with pytest.raises(DidInputError, match=message):
        estimate_cs(mpdta.with_columns(extra.alias("lpop2")), columns)


def test_weights_and_clusters_must_be_constant_within_units(mpdta: pl.DataFrame):
    varying = mpdta.with_columns(w=pl.col("year") - 2000.0)
    with pytest.raises(DidInputError, match="weights column `w` must be the same"):
        estimate_cs(varying, PanelColumns(**{**MPDTA.__dict__, "weights": "w"}))
    with pytest.raises(DidInputError, match="cluster column `year` must be the same"):
        estimate_cs(mpdta, PanelColumns(**{**MPDTA.__dict__, "cluster": "year"}))


def test_covariates_with_not_yet_treated_controls(mpdta: pl.DataFrame):
    columns = PanelColumns(**{**MPDTA.__dict__, "covariates": ("lpop",)})
    result = estimate_cs(mpdta, columns, CSOptions(control="notyet", method="dr"))
    assert all(c.att is not None and c.se is not None for c in result.att_gt)
    # with only never-treated units left as controls the cell is the never-treated one
    never = estimate_cs(mpdta, columns, CSOptions(method="dr"))
    assert cell(result, 2004, 2007).att == pytest.approx(cell(never, 2004, 2007).att,
                                                         abs=1e-10)


def test_time_varying_covariates_are_taken_from_the_earlier_period(mpdta: pl.DataFrame):
    # R did documents that each 2x2 uses the covariates of its earlier period; for cohort
    # 2004 every post-treatment cell compares with 2003, so only 2003 values matter there
    drifting = mpdta.with_columns(x=pl.col("lpop") + 0.3 * (pl.col("year") - 2003)
                                  * (pl.col("countyreal") % 7))
    frozen = drifting.with_columns(
        x=pl.col("x").filter(pl.col("year") == 2003).first().over("countyreal"))
    columns = PanelColumns(**{**MPDTA.__dict__, "covariates": ("x",)})
    a = estimate_cs(drifting, columns, CSOptions(method="dr"))
    b = estimate_cs(frozen, columns, CSOptions(method="dr"))
    for t in (2004, 2005, 2006, 2007):
        assert cell(a, 2004, t).att == pytest.approx(cell(b, 2004, t).att, abs=1e-12)
        assert cell(a, 2004, t).se == pytest.approx(cell(b, 2004, t).se, abs=1e-12)
    assert cell(a, 2007, 2006).att != pytest.approx(cell(b, 2007, 2006).att, abs=1e-9)


def test_cells_without_overlap_are_left_out_with_a_warning(mpdta: pl.DataFrame):
    # a covariate that separates cohort 2004 from the never treated: R did reports NA there
    frame = mpdta.with_columns(noise=np.random.default_rng(0).normal(size=mpdta.height))
    frame = frame.with_columns(
        x=((pl.col("first.treat") == 2004) * 20.0 + pl.col("noise")).first().over("countyreal"))
    columns = PanelColumns(**{**MPDTA.__dict__, "covariates": ("x",)})
    result = estimate_cs(frame, columns, CSOptions(method="dr"))
    assert all(c.att is None and c.se is None for c in result.att_gt if c.group == 2004)
    assert all(c.att is not None for c in result.att_gt if c.group != 2004)
    assert any("overlap condition violated for cohort 2004" in w for w in result.warnings)
    assert [e.label for e in result.aggregate("group").by] == [2006, 2007]
    assert math.isfinite(result.aggregate("simple").overall.att)
