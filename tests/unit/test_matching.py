import warnings
from datetime import date

import numpy as np
import polars as pl
import pytest

from transforms.matching import (
    PropensityFitWarning,
    balance_table,
    firth_logit,
    nearest_neighbours,
    pre_period_features,
    propensity_neighbours,
    propensity_scores,
)
from transforms.months import month_range


def _panel(areas: dict[str, tuple[float, int]]) -> pl.DataFrame:
    months = month_range(date(2013, 1, 1), date(2015, 12, 1))
    rows = [
        (code, m, "emerg", int(rate * pop / 1000), pop, int(rate * pop / 1000) / pop * 1000)
        for code, (rate, pop) in areas.items() for m in months
    ]
    return pl.DataFrame(rows, schema=["area_code", "month", "outcome", "count", "population",
                                      "rate_per_1000"], orient="row")


def test_pre_period_features_use_only_months_before_go_live():
    panel = _panel({"T": (8.0, 100_000)}).with_columns(
        pl.when(pl.col("month") >= date(2015, 3, 1)).then(pl.col("count") * 10)
        .otherwise(pl.col("count")).alias("count")
    )
    features = pre_period_features(panel, "emerg", date(2015, 3, 1), 24)
    assert features["pre_rate"][0] == pytest.approx(8.0)


def test_nearest_neighbours_picks_closest_on_rate_and_population():
    panel = _panel({
        "T": (8.0, 200_000), "near": (8.1, 210_000), "mid": (9.0, 250_000),
        "far": (12.0, 800_000), "small": (8.0, 90_000),
    })
    features = pre_period_features(panel, "emerg", date(2015, 3, 1), 24)
    matched = nearest_neighbours(features, ["T"], ["near", "mid", "far", "small"],
                                 ("pre_rate", "log_population"), k=2)
    assert matched["area_code"].to_list()[0] == "near"
    assert "far" not in matched["area_code"].to_list()
    assert matched["rank"].to_list() == [1, 2]


def test_missing_treated_area_and_small_pool_are_errors():
    panel = _panel({"T": (8.0, 200_000), "C": (8.1, 210_000)})
    features = pre_period_features(panel, "emerg", date(2015, 3, 1), 24)
    with pytest.raises(ValueError, match=r"no pre-period data for treated areas \['X'\]"):
        nearest_neighbours(features, ["X"], ["C"], ("pre_rate",), k=1)
    with pytest.raises(ValueError, match="fewer than k=3"):
        nearest_neighbours(features, ["T"], ["C"], ("pre_rate",), k=3)


def _features() -> pl.DataFrame:
    return pl.DataFrame({
        "area_code": ["T1", "T2", "a", "b", "c", "d", "e"],
        "pre_rate": [8.0, 8.2, 8.05, 8.15, 9.5, 7.0, 8.1],
        "log_population": [12.0, 12.1, 12.02, 12.5, 12.0, 12.1, 12.08],
    })


def test_without_replacement_no_area_serves_twice():
    pool = ["a", "b", "c", "d", "e"]
    on = ("pre_rate", "log_population")
    shared = nearest_neighbours(_features(), ["T1", "T2"], pool, on, k=2)
    assert shared["area_code"].n_unique() < shared.height  # "e" or "a" is reused
    apart = nearest_neighbours(_features(), ["T1", "T2"], pool, on, k=2, replace=False)
    assert apart["area_code"].n_unique() == apart.height == 4


def test_caliper_drops_distant_areas_and_fails_when_none_left():
    pool = ["a", "b", "c", "d", "e"]
    matched = nearest_neighbours(_features(), ["T1"], pool, ("pre_rate",), k=5, caliper=0.2)
    assert set(matched["area_code"]) == {"a", "e", "b"}
    with pytest.raises(ValueError, match="no comparison area within caliper 0.001"):
        nearest_neighbours(_features(), ["T1"], pool, ("pre_rate",), k=2, caliper=0.001)


def test_mahalanobis_accounts_for_correlated_features():
    # Two features that move together in the pool: a candidate off the common line is
    # further in Mahalanobis terms than one on it, even if nearer in plain distance.
    features = pl.DataFrame({
        "area_code": ["T", "on", "off"] + [f"p{i}" for i in range(20)],
        "x": [0.0, 1.0, 0.6] + [float(i - 10) / 5 for i in range(20)],
        "y": [0.0, 1.0, -0.6] + [float(i - 10) / 5 + 0.01 * (i % 3) for i in range(20)],
    })
    pool = ["on", "off"] + [f"p{i}" for i in range(20) if abs(i - 10) > 6]
    plain = nearest_neighbours(features, ["T"], pool, ("x", "y"), k=1)
    maha = nearest_neighbours(features, ["T"], pool, ("x", "y"), k=1, metric="mahalanobis")
    assert plain["area_code"][0] == "off" and maha["area_code"][0] == "on"


def test_balance_table_reports_smd_before_and_after():
    features = _features()
    table = balance_table(features, ["T1"], ["a", "e"], ["a", "b", "c", "d", "e"],
                          ("pre_rate", "log_population"))
    row = table.filter(pl.col("feature") == "pre_rate").row(0, named=True)
    pool = np.array([8.05, 8.15, 9.5, 7.0, 8.1])
    assert row["smd_before"] == pytest.approx((8.0 - pool.mean()) / pool.std(ddof=1))
    assert row["smd_after"] == pytest.approx((8.0 - 8.075) / pool.std(ddof=1))
    assert abs(row["smd_after"]) < abs(row["smd_before"])


def _scored_pool(seed: int, n_pool: int = 120, n_treated: int = 12) -> tuple[pl.DataFrame,
                                                                             list[str],
                                                                             list[str]]:
    """Areas whose chance of being a site area rises with x (so the propensity model has
    overlap and a maximum-likelihood fit)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n_pool + n_treated)
    z = rng.normal(0, 1, n_pool + n_treated)
    x[:n_treated] += 1.0
    codes = [f"T{i}" for i in range(n_treated)] + [f"P{i:03d}" for i in range(n_pool)]
    frame = pl.DataFrame({"area_code": codes, "x": x, "z": z})
    return frame, codes[:n_treated], codes[n_treated:]


def test_propensity_scores_by_maximum_likelihood_when_groups_overlap():
    features, treated, pool = _scored_pool(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PropensityFitWarning)
        scores = propensity_scores(features, treated, pool, ("x", "z"))
    assert scores.fit == "maximum likelihood" and not scores.warnings
    # A larger x means a larger score: the model learnt the assignment rule.
    x = dict(zip(features["area_code"], features["x"], strict=True))
    ranked = sorted(pool, key=lambda a: scores.logit[a])
    assert x[ranked[-1]] > np.median([x[a] for a in pool]) > x[ranked[0]]
    assert np.corrcoef([x[a] for a in pool], [scores.logit[a] for a in pool])[0, 1] > 0.9


def test_separated_site_area_falls_back_to_firth_with_a_warning():
    rng = np.random.default_rng(4)
    pool_x = rng.normal(0, 1, 150)
    features = pl.DataFrame({
        "area_code": ["T", *[f"P{i:03d}" for i in range(150)]],
        "pre_rate": [5.0, *pool_x], "log_population": [0.0, *rng.normal(0, 1, 150)],
    })
    pool = [f"P{i:03d}" for i in range(150)]
    with pytest.warns(PropensityFitWarning, match="used Firth's penalised likelihood"):
        matched, scores = propensity_neighbours(features, ["T"], pool, ("pre_rate",), k=3)
    assert scores.fit == "Firth penalised likelihood" and scores.warnings
    assert all(np.isfinite(v) for v in scores.logit.values())
    # With one feature the logit is monotone in it: the separated area's closest scores
    # belong to the pool areas with the highest pre_rate, in order.
    highest = [f"P{i:03d}" for i in np.argsort(-pool_x)[:3]]
    assert matched["area_code"].to_list() == highest
    with pytest.warns(PropensityFitWarning):
        both = propensity_scores(features, ["T"], pool, ("pre_rate", "log_population"))
    assert both.fit == "Firth penalised likelihood"


def test_firth_agrees_with_maximum_likelihood_in_a_large_sample():
    import statsmodels.api as sm

    rng = np.random.default_rng(9)
    x = np.column_stack([np.ones(3000), rng.normal(0, 1, (3000, 2))])
    y = (rng.uniform(size=3000) < 1 / (1 + np.exp(-(x @ [-1.0, 0.8, -0.5])))).astype(float)
    ml = sm.Logit(y, x).fit(disp=0).params
    firth = firth_logit(x, y)
    assert firth == pytest.approx(ml, abs=0.02)
    assert np.all(np.abs(firth[1:]) <= np.abs(ml[1:]) + 1e-9)  # Firth shrinks towards 0


def test_propensity_matching_honours_caliper_k_and_replacement():
    features, treated, pool = _scored_pool(seed=2)
    on = ("x", "z")
    wide, scores = propensity_neighbours(features, treated[:3], pool, on, k=4)
    logits = np.array([scores.logit[a] for a in pool])
    sd = logits.std(ddof=1)
    for row in wide.iter_rows(named=True):
        gap = abs(scores.logit[row["treated_area"]] - scores.logit[row["area_code"]]) / sd
        assert row["distance"] == pytest.approx(gap)  # distance in SDs of the logit
    assert wide.group_by("treated_area").len()["len"].to_list() == [4, 4, 4]
    caliper = float(wide.group_by("treated_area").agg(pl.col("distance").min())["distance"]
                    .max()) + 1e-9  # every site area keeps at least its nearest
    narrow, _ = propensity_neighbours(features, treated[:3], pool, on, k=4, caliper=caliper)
    assert narrow["distance"].max() <= caliper
    assert narrow.height == wide.filter(pl.col("distance") <= caliper).height
    with pytest.raises(ValueError, match="no comparison area within caliper"):
        propensity_neighbours(features, treated[:3], pool, on, k=4, caliper=1e-9)
    apart, _ = propensity_neighbours(features, treated[:3], pool, on, k=4, replace=False)
    assert apart["area_code"].n_unique() == apart.height == 12


def test_match_site_by_propensity_improves_balance():
    from transforms.matching import match_site
    from transforms.protocol import Comparison, Site

    rng = np.random.default_rng(12)
    areas = {"T": (9.0, 300_000)} | {
        f"C{i:03d}": (float(rng.uniform(6, 10)), int(rng.uniform(1e5, 4e5))) for i in range(60)
    }
    panel = _panel(areas)
    site = Site("s", "S", "PACS", date(2015, 3, 1), ("T",))
    rule = Comparison("non_vanguard", 5, ("pre_rate", "log_population"), "emerg",
                      method="propensity", caliper=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PropensityFitWarning)
        matched, balance = match_site(panel, site, [a for a in areas if a != "T"], rule, 24)
    assert matched["site_id"].unique().to_list() == ["s"] and matched.height <= 5
    assert (balance["smd_after"].abs() < balance["smd_before"].abs()).all()
