"""Placebo validation of the production estimator: fake go-live dates on real A&E trusts.

The full study (500 draws per group size) is bench/placebo.py; here a small version checks
that the false-positive rate is plausible for a 5% test given its binomial error, plus the
draw assignment, the panel preparation and the `vanguard placebo` JSON.
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from tests.conftest import SHARED_REFERENCE
from transforms.cli import build_parser
from transforms.placebo import (
    PlaceboDesign,
    PlaceboInputError,
    apply_filter,
    binomial_interval,
    draw_assignments,
    go_live_range,
    prepare_panel,
    run_study,
    summarise,
)
from transforms.simulation import simulate_panel

AE_FILE = SHARED_REFERENCE / "nhs_ae_attendances_2016_2019.csv"
UNITS = [f"U{i:02d}" for i in range(30)]


@pytest.fixture(scope="module")
def ae_panel():
    """Type 1 A&E departments, emergency admissions via A&E, complete trusts only."""
    raw = pl.read_csv(AE_FILE, infer_schema_length=None)
    return prepare_panel(apply_filter(raw, "type", "1"), "org_code", "period", "admissions")


# -- the small study on real data -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("treated", "draws"), [(1, 40), (5, 40)])
def test_false_positive_rate_is_plausible_on_real_trusts(ae_panel, treated: int, draws: int):
    design = PlaceboDesign(treated=treated)
    results, failures = run_study(ae_panel, design, draws, seed=20_160_401)
    summary = summarise(results, design, draws_requested=draws, failures=failures,
                        seed=20_160_401, panel=ae_panel)
    assert summary["draws"] == draws and not failures
    low, high = summary["false_positive_rate_ci"]
    # a 5% test must not be ruled out by the binomial error of this few draws, and even
    # at this size a rate above 15% would mean the intervals are far too narrow
    assert low <= 0.05 <= high, summary
    assert summary["false_positive_rate"] <= 0.15, summary
    # the production choice: placebo inference for few treated units, else a cluster method
    allowed = ({"placebo_in_space"} if treated <= 3
               else {"cluster_robust", "wild_cluster_bootstrap"})
    assert set(summary["inference"]) <= allowed
    # nothing happened, so the estimates centre on zero (log rate ratio)
    assert abs(summary["mean_effect"]) < 3 * summary["sd_effect"] / math.sqrt(draws) + 0.01


def test_real_file_keeps_complete_trusts_and_says_how_many_were_dropped(ae_panel):
    assert len(ae_panel.periods) == 36
    assert ae_panel.periods[0].startswith("2016-04") and ae_panel.periods[-1].startswith(
        "2019-03")
    assert ae_panel.frame.height == len(ae_panel.units) * 36
    dropped = int(ae_panel.warnings[0].split()[0])
    raw = pl.read_csv(AE_FILE, infer_schema_length=None)
    assert len(ae_panel.units) + dropped == apply_filter(raw, "type", "1")["org_code"].n_unique()
    assert "missing periods" in ae_panel.warnings[0]


# -- draw assignment ----------------------------------------------------------------------


def test_draws_are_reproducible_from_the_seed_and_extend_as_a_prefix():
    first = draw_assignments(UNITS, 36, 3, 50, seed=9)
    assert first == draw_assignments(UNITS, 36, 3, 50, seed=9)
    assert draw_assignments(UNITS, 36, 3, 80, seed=9)[:50] == first
    assert first != draw_assignments(UNITS, 36, 3, 50, seed=10)


def test_draws_respect_pre_and_post_minimums_and_use_the_whole_range():
    draws = draw_assignments(UNITS, 36, 1, 2000, seed=1, min_pre=6, min_post=8)
    starts = {d.go_live_index for d in draws}
    assert min(starts) >= 6 and 36 - max(starts) >= 8
    assert starts == set(go_live_range(36, 6, 8))  # every allowed month turns up


def test_a_draw_never_treats_the_same_unit_twice_and_covers_every_unit():
    draws = draw_assignments(UNITS, 36, 7, 500, seed=4)
    assert all(len(set(d.treated)) == 7 for d in draws)
    assert {u for d in draws for u in d.treated} == set(UNITS)


@pytest.mark.parametrize(("n_treated", "periods", "message"), [
    (0, 36, "at least 1"), (30, 36, "no comparators"), (1, 11, "pre-period"),
])
def test_impossible_draws_say_why(n_treated: int, periods: int, message: str):
    with pytest.raises(PlaceboInputError, match=message):
        draw_assignments(UNITS, periods, n_treated, 5, seed=0)


# -- panel preparation --------------------------------------------------------------------


def _toy(counts: dict[str, list[int]]) -> pl.DataFrame:
    return pl.DataFrame([{"unit": u, "t": t, "y": c} for u, row in counts.items()
                         for t, c in enumerate(row) if c is not None])


def test_units_with_gaps_or_zero_counts_are_dropped_with_a_count():
    frame = _toy({"a": [5, 6, 7], "b": [5, 0, 7], "c": [4, 5, 6], "d": [1, 2]})
    panel = prepare_panel(frame, "unit", "t", "y")
    assert panel.units == ("a", "c")
    assert any(w.startswith("1 unit(s) dropped for missing") for w in panel.warnings)
    assert any(w.startswith("1 unit(s) dropped for zero") for w in panel.warnings)
    assert (panel.frame["population"] == 1.0).all()  # no offset: log exposure 0


def test_offset_is_a_log_exposure_and_repeated_rows_are_refused():
    frame = _toy({"a": [5, 6], "b": [3, 4]}).with_columns(pl.lit(math.log(250.0)).alias("lp"))
    panel = prepare_panel(frame, "unit", "t", "y", offset="lp")
    assert panel.frame["population"].to_list() == pytest.approx([250.0] * 4)
    with pytest.raises(PlaceboInputError, match="repeat"):
        prepare_panel(pl.concat([frame, frame]), "unit", "t", "y")
    with pytest.raises(PlaceboInputError, match="not found"):
        prepare_panel(frame, "unit", "month", "y")


def test_binomial_interval_is_exact_clopper_pearson():
    # Clopper and Pearson (1934): 0 of 10 gives [0, 1 - 0.025^(1/10)] = [0, 0.3085]
    low, high = binomial_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** 0.1)
    low, high = binomial_interval(25, 500)
    assert low < 0.05 < high and high - low == pytest.approx(0.04, abs=0.01)


# -- the command --------------------------------------------------------------------------

FIELDS = {"draws", "draws_requested", "draws_failed", "treated", "alpha",
          "false_positive_rate", "false_positive_rate_ci", "false_positives",
          "p_below_alpha_rate", "coverage_of_zero", "mean_effect", "mean_abs_effect",
          "sd_effect", "median_ci_width", "median_se", "by_inference", "scale", "inference",
          "warnings", "seed", "n_units", "n_periods", "design", "filter"}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = build_parser().parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_on_the_national_file(capsys: pytest.CaptureFixture[str]):
    code, out, err = _run(["placebo", str(AE_FILE), "--unit", "org_code", "--time", "period",
                           "--outcome", "admissions", "--draws", "3", "--seed", "5", "--json"],
                          capsys)
    assert code == 0, err
    data = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert set(data) == FIELDS
    assert data["draws"] == 3 and data["treated"] == 1 and data["seed"] == 5
    assert data["filter"] == {"column": "type", "value": "1"}
    assert data["n_periods"] == 36 and data["n_units"] > 100
    assert sum(data["inference"].values()) == 3
    assert {m: b["draws"] for m, b in data["by_inference"].items()} == data["inference"]
    assert sum(b["false_positives"] for b in data["by_inference"].values()) == data[
        "false_positives"]
    assert data["coverage_of_zero"] == pytest.approx(1 - data["false_positive_rate"])
    assert "dropped for missing periods" in data["warnings"][0]


def test_cli_with_an_offset_on_a_simulated_panel(tmp_path, capsys: pytest.CaptureFixture[str]):
    panel = simulate_panel(seed=3, n_areas=45, treated=0, rate_ratio=1.0).with_columns(
        pl.col("population").log().alias("log_pop")).drop("go_live")
    path = tmp_path / "panel.parquet"
    panel.write_parquet(path)
    code, out, err = _run(["placebo", str(path), "--unit", "area_code", "--time", "month",
                           "--outcome", "count", "--offset", "log_pop", "--treated", "4",
                           "--draws", "2", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["filter"] is None and data["n_units"] == 45 and data["n_periods"] == 84
    assert sum(data["inference"].values()) == 2 and "placebo_in_space" not in data["inference"]
    assert data["median_ci_width"] is not None and 0 < data["median_ci_width"] < 0.5


def test_cli_refuses_a_bad_filter_with_exit_2(capsys: pytest.CaptureFixture[str]):
    code, out, err = _run(["placebo", str(AE_FILE), "--unit", "org_code", "--time", "period",
                           "--outcome", "admissions", "--filter", "type=9", "--json"], capsys)
    assert code == 2 and out == ""
    assert "type == '9'" in err and "values present" in err


def test_cli_text_summary(tmp_path, capsys: pytest.CaptureFixture[str]):
    panel = simulate_panel(seed=5, n_areas=45, treated=0, rate_ratio=1.0).drop("go_live")
    path = tmp_path / "panel.csv"
    panel.write_csv(path)
    code, out, err = _run(["placebo", str(path), "--unit", "area_code", "--time", "month",
                           "--outcome", "count", "--draws", "1"], capsys)
    assert code == 0, err
    assert out.startswith("placebo study: 1 draws of 1 treated unit(s) among 45 units x 84")
    assert "false-positive rate 0.000" in out or "false-positive rate 1.000" in out
