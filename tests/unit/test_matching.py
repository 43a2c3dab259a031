from datetime import date

import polars as pl
import pytest

from transforms.matching import nearest_neighbours, pre_period_features
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
