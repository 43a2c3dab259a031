from datetime import date

import numpy as np
import polars as pl
import pytest

from transforms.matching import balance_table, nearest_neighbours, pre_period_features
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
