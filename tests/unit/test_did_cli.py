"""`vanguard did`: argument handling, JSON output, exit codes and messages."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import SHARED_REFERENCE
from transforms.did import cli

MPDTA_ARGS = ["--unit", "countyreal", "--time", "year", "--cohort", "first.treat",
              "--outcome", "lemp"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Parse `argv` with a parser that only has the `did` subcommand, run it."""
    parser = argparse.ArgumentParser(prog="vanguard")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def strict_json(text: str) -> dict:
    def no_constants(name: str) -> float:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def test_json_output_matches_the_r_reference(capsys: pytest.CaptureFixture[str]):
    code, out, err = run(["did", str(SHARED_REFERENCE / "mpdta.csv"), *MPDTA_ARGS, "--json"],
                         capsys)
    assert code == 0, err
    data = strict_json(out)
    assert set(data) >= {"att_gt", "aggregates", "pretest", "n_units", "method", "inference",
                         "warnings"}
    assert data["n_units"] == 500 and data["method"] == "dr"
    assert data["inference"] == "analytic" and data["bootstrap"] is None
    first = data["att_gt"][0]
    # R did::att_gt, first row of did_mpdta_attgt.csv
    assert (first["group"], first["time"]) == (2004, 2004)
    assert first["att"] == pytest.approx(-0.0105032462209624, abs=1e-6)
    assert first["se"] == pytest.approx(0.0232510363681664, abs=1e-4)
    assert set(data["aggregates"]) == {"simple", "group", "dynamic", "calendar"}
    assert set(data["aggregates"]["group"]["by"][0]) == {"group", "att", "se", "ci_low",
                                                         "ci_high"}
    assert data["aggregates"]["dynamic"]["by"][0]["e"] == -3
    assert data["aggregates"]["calendar"]["by"][0]["time"] == 2004
    assert data["aggregates"]["dynamic"]["band"] == "pointwise"
    assert data["aggregates"]["dynamic"]["crit_val_uniform"] is None
    # R did summary(att_gt): W = 7.7912, p = 0.16812
    assert data["pretest"] == {"W": pytest.approx(7.7912, abs=1e-3), "df": 5,
                               "p": pytest.approx(0.16812, abs=1e-3)}


def test_parquet_input_with_options_and_bootstrap(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]):
    panel = tmp_path / "mpdta.parquet"
    pl.read_csv(SHARED_REFERENCE / "mpdta.csv").with_columns(
        w=pl.lit(2.0), state=pl.col("countyreal") // 1000).write_parquet(panel)
    code, out, err = run(["did", str(panel), *MPDTA_ARGS, "--control", "notyet",
                          "--base", "universal", "--covariates", "lpop", "--method", "ipw",
                          "--weights", "w", "--cluster", "state", "--bootstrap", "199",
                          "--seed", "5", "--multiplier", "mammen", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    assert (data["control"], data["base"], data["method"]) == ("notyet", "universal", "ipw")
    assert data["covariates"] == ["lpop"] and data["weights"] == "w"
    assert data["inference"] == "multiplier_bootstrap"
    assert data["bootstrap"] == {"draws": 199, "multiplier": "mammen", "seed": 5,
                                 "cluster": "state", "n_clusters": 29}
    dynamic = data["aggregates"]["dynamic"]
    assert dynamic["band"] == "uniform"
    assert dynamic["crit_val"] == dynamic["crit_val_uniform"] > 1.96
    reference_period = next(row for row in dynamic["by"] if row["e"] == -1)
    assert reference_period["att"] == 0 and reference_period["se"] is None
    assert data["att_gt_crit_val_uniform"] > 1.96


def test_text_summary_without_json(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(["did", str(SHARED_REFERENCE / "mpdta.csv"), *MPDTA_ARGS], capsys)
    assert code == 0
    assert "Group-time ATTs" in out and "pre-test of parallel trends" in out
    assert "-0.0105" in out


@pytest.mark.parametrize(("extra", "message"), [
    (["--family", "poisson", "--offset", "nope"], r"\['nope'\] not found"),
    (["--offset", "lpop"], "--offset only applies with --family poisson"),
    (["--covariates", "nope"], "`nope` not found"),
])
def test_unusable_requests_exit_2_with_a_message(extra: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]):
    code, out, err = run(["did", str(SHARED_REFERENCE / "mpdta.csv"), *MPDTA_ARGS, *extra,
                          "--json"], capsys)
    assert code == 2 and out == ""
    assert re.search(message, err), err


def test_bad_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, _, err = run(["did", str(tmp_path / "missing.csv"), *MPDTA_ARGS], capsys)
    assert code == 2 and "not found" in err
    odd = tmp_path / "panel.xlsx"
    odd.write_text("x")
    code, _, err = run(["did", str(odd), *MPDTA_ARGS], capsys)
    assert code == 2 and ".csv or .parquet" in err
    duplicated = tmp_path / "dup.csv"
    frame = pl.read_csv(SHARED_REFERENCE / "mpdta.csv")
    pl.concat([frame, frame.head(1)]).write_csv(duplicated)
    code, _, err = run(["did", str(duplicated), *MPDTA_ARGS], capsys)
    assert code == 2 and "appear more than once" in err


def test_negative_anticipation_is_rejected_by_the_parser():
    parser = argparse.ArgumentParser(prog="vanguard")
    cli.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["did", "x.csv", *MPDTA_ARGS, "--anticipation", "-1"])


def test_missing_estimates_are_null_in_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # cohort 2004 against not-yet-treated units in a panel without never-treated units:
    # everything stays finite or null, never NaN
    panel = tmp_path / "treated.csv"
    pl.read_csv(SHARED_REFERENCE / "mpdta.csv").filter(pl.col("first.treat") > 0).write_csv(panel)
    code, out, err = run(["did", str(panel), *MPDTA_ARGS, "--control", "notyet", "--json"],
                         capsys)
    assert code == 0, err
    data = strict_json(out)
    assert any("no never-treated units" in w for w in data["warnings"])
    for row in data["att_gt"]:
        assert row["att"] is None or math.isfinite(row["att"])


def test_poisson_family_gives_rate_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from datetime import date

    from transforms.etwfe import fit_etwfe_poisson
    from transforms.simulation import simulate_panel, with_periods

    waves = [date(2015, 3, 1), date(2016, 9, 1)]
    frame = with_periods(simulate_panel(4, 30, 12, 0.75, go_live=[waves[i % 2] for i in
                                                                   range(12)]))
    frame = frame.with_columns(pl.col("population").log().alias("log_pop")).drop(
        "month", "go_live")
    path = tmp_path / "counts.parquet"
    frame.write_parquet(path)
    code, out, err = run(["did", str(path), "--unit", "area_code", "--time", "period",
                          "--cohort", "cohort", "--outcome", "count", "--family", "poisson",
                          "--offset", "log_pop", "--json"], capsys)
    assert code == 0, err
    data = strict_json(out)
    assert data["method"] == "poisson_etwfe" and data["scale"] == "log_rate_ratio"
    simple = data["aggregates"]["simple"]
    direct = fit_etwfe_poisson(frame, unit="area_code", period="period", cohort="cohort",
                               count="count", exposure="population")
    assert simple["att"] == pytest.approx(direct.overall.log_rate_ratio, abs=1e-10)
    assert simple["rate_ratio"] == pytest.approx(0.75, abs=0.02)
    groups = {row["group"] for row in data["aggregates"]["group"]["by"]}
    assert groups == set(frame.filter(pl.col("cohort") > 0)["cohort"].unique().to_list())
    assert {"e", "att", "se"} <= set(data["aggregates"]["dynamic"]["by"][0])
    assert data["pretest"]["df"] > 0 and data["avoided_per_1000"] > 0
