"""The whole pipeline on a small seeded demo, through the CLI and through the real DAG.

Checks that known injected effects are recovered, that the CLI and Airflow produce the
same estimates, that a second nightly run changes nothing, that a bad drop fails loudly
(only its own task, with the reason in the run log) without stopping the rest, and that no
patient identifier reaches the panel or the reports.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import ROOT
from transforms import warehouse
from transforms.cli import main
from transforms.demo_data import EXTRACT_DATE, generate_demo
from transforms.runlog import read_run_log

SITES = ["calderdale", "dudley", "harrogate", "wirral", "south-somerset", "later-wave-mcp-demo"]
SEED = 20150310
N_AREAS = 90

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory, protocol) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=SEED, protocol=protocol.subset(SITES), n_areas=N_AREAS)
    # One copy of the protocol for every run here, so that all of them fit the same one.
    shutil.copyfile(ROOT / "evaluation.toml", root / "evaluation.toml")
    return root


@pytest.fixture(scope="module")
def truth(demo) -> dict:
    return json.loads((demo / "truth.json").read_text())


def _run_cli(demo: Path, landing: Path, name: str) -> tuple[int, Path, Path]:
    db, out = demo / f"{name}.duckdb", demo / f"{name}-out"
    code = main(["run", "--db", str(db), "--landing", str(landing), "--out", str(out),
                 "--protocol", str(demo / "evaluation.toml"),
                 "--quarantine", str(demo / f"{name}-quarantine"), "--sites", ",".join(SITES)])
    return code, db, out


@pytest.fixture(scope="module")
def cli_run(demo) -> tuple[Path, Path]:
    code, db, out = _run_cli(demo, demo / "landing", "cli")
    assert code == 0
    return db, out


def _results(db: Path) -> pl.DataFrame:
    return warehouse.query(db, "SELECT * FROM model_results ORDER BY site_id, outcome")


def _estimate(db: Path, site: str, outcome: str) -> dict:
    rows = _results(db).filter((pl.col("site_id") == site) & (pl.col("outcome") == outcome))
    assert rows.height == 1
    return rows.row(0, named=True)


def test_cli_run_writes_every_report(cli_run):
    db, out = cli_run
    assert (out / "index.html").is_file()
    for site in SITES:
        assert (out / "sites" / f"{site}.html").is_file()
    assert _results(db).height == len(SITES) * 4
    run = warehouse.query(db, "SELECT * FROM runs").row(0, named=True)
    assert run["status"] == "success" and run["orchestrator"] == "cli"
    assert len(run["data_sha256"]) == 64


def test_clearly_non_zero_effect_is_recovered(cli_run, truth):
    db, _ = cli_run
    true_pct = truth["sites"]["calderdale"]["effects"]["emergency_admissions"]["pct_change"]
    assert true_pct == pytest.approx(-8.0)
    est = _estimate(db, "calderdale", "emergency_admissions")
    assert est["pct_ci_low"] <= true_pct <= est["pct_ci_high"]
    assert est["p_value"] < 0.05


def test_zero_effect_site_is_near_zero(cli_run, truth):
    db, _ = cli_run
    assert truth["sites"]["harrogate"]["effects"]["emergency_admissions"]["rate_ratio"] == 1.0
    est = _estimate(db, "harrogate", "emergency_admissions")
    assert abs(est["pct_change"]) < 2.5


def test_staggered_site_uses_its_own_go_live(cli_run):
    db, _ = cli_run
    site = warehouse.query(db, "SELECT * FROM sites WHERE site_id = 'later-wave-mcp-demo'")
    assert site["go_live"][0].isoformat() == "2015-09-01"
    panel = warehouse.query(
        db, "SELECT * FROM area_month_panel WHERE outcome = 'emergency_admissions' "
            "AND list_contains(?, area_code) AND month < DATE '2015-09-01'",
        [site["areas"][0].to_list()],
    )
    crude = 1000 * panel["count"].sum() / panel["population"].sum()
    est = _estimate(db, "later-wave-mcp-demo", "emergency_admissions")
    assert est["pre_rate_per_1000"] == pytest.approx(crude, rel=1e-12)


def test_no_patient_identifier_leaves_staging(cli_run, demo):
    db, out = cli_run
    episodes = pl.read_csv(demo / "landing" / "south-somerset" / EXTRACT_DATE / "episodes.csv",
                           columns=["patient_id"])
    ids = set(episodes["patient_id"].to_list())
    assert len(ids) > 1000
    for table in ("area_month_panel", "model_results", "model_series", "comparison_areas"):
        columns = warehouse.query(db, f"SELECT * FROM {table} LIMIT 0").columns
        assert "patient_id" not in columns
    token = re.compile(r"\b[0-9A-F]{16}\b")
    for page in out.rglob("*.html"):
        assert not ids & set(token.findall(page.read_text())), page


def _dag(dag_id: str = "vanguard_nightly"):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).get_dag(dag_id)


def _run_dag(demo: Path, landing: Path, name: str, **test_args):
    """One nightly run without a logical date (a manual run: every extract not yet loaded)."""
    db, out = demo / f"{name}.duckdb", demo / f"{name}-out"
    conf = {"db": str(db), "landing": str(landing), "out": str(out), "sites": SITES,
            "protocol": str(demo / "evaluation.toml"), **test_args.pop("conf", {})}
    test_args.setdefault("logical_date", None)
    return _dag().test(run_conf=conf, **test_args), db, out


def _states(dag_run) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}


def _snapshot(db: Path) -> dict[str, list]:
    """The warehouse tables a repeated run must leave as they were, row for row."""
    tables = {"provenance": "event_id", "model_results": "site_id, outcome",
              "area_month_panel": "area_code, month, outcome", "comparison_areas": "ALL"}
    return {t: warehouse.query(db, f"SELECT * FROM {t} ORDER BY {o}").rows()
            for t, o in tables.items()}


@pytest.fixture(scope="module")
def airflow_run(cli_run, demo):
    dag_run, db, out = _run_dag(demo, demo / "landing", "airflow")
    return dag_run, db, out, _snapshot(db)


def test_airflow_dag_matches_cli(cli_run, airflow_run):
    dag_run, db, out, _ = airflow_run
    assert dag_run.state == "success"
    states = _states(dag_run)
    assert states[("publish_results", -1)] == "success"  # emits vanguard://results
    assert sorted(k for k in states if k[0] == "evaluate_site") == [
        ("evaluate_site", i) for i in range(len(SITES))]
    run = warehouse.query(db, "SELECT * FROM runs").row(0, named=True)
    assert run["orchestrator"] == "airflow" and run["status"] == "success"
    numeric = ["log_rate_ratio", "se", "pct_ci_low", "pct_ci_high", "p_value"]
    cli = _results(cli_run[0]).select("site_id", "outcome", *numeric)
    dag = _results(db).select("site_id", "outcome", *numeric)
    assert dag.shape == cli.shape
    for column in numeric:
        assert (dag[column] - cli[column]).abs().max() < 1e-9, column


def test_reports_dag_renders_the_nightly_results(airflow_run):
    _, db, out, _ = airflow_run
    reports = _dag("vanguard_reports").test(run_conf={"db": str(db), "out": str(out)},
                                            logical_date=None)
    assert reports.state == "success"
    assert (out / "index.html").is_file()
    for site in SITES:
        assert (out / "sites" / f"{site}.html").is_file()


def test_second_run_changes_nothing(airflow_run, demo):
    """Idempotent: nothing new in the landing area, so nothing is loaded or re-fitted, and
    no results event is emitted (the reports are not rebuilt)."""
    _, db, _, before = airflow_run
    again, _, _ = _run_dag(demo, demo / "landing", "airflow")
    states = _states(again)
    assert again.state == "success"
    assert states[("publish_results", -1)] == "skipped"
    assert states[("build_panel", -1)] == "skipped"
    assert _snapshot(db) == before
    assert warehouse.query(db, "SELECT count(*) AS n FROM runs")["n"][0] == 2


def test_ad_hoc_run_refits_one_outcome_of_one_site(airflow_run, demo):
    """Params `sites`, `outcomes` and `force`: only that row is re-fitted; the site's other
    outcomes and the other sites keep their rows, and the refit gives the same numbers."""
    _, db, _, _ = airflow_run
    before = _results(db)
    dag_run, _, _ = _run_dag(demo, demo / "landing", "airflow", conf={
        "sites": ["harrogate"], "outcomes": ["bed_days"], "force": True})
    assert dag_run.state == "success"
    assert [k for k in _states(dag_run) if k[0] == "evaluate_site"] == [("evaluate_site", 0)]
    after = _results(db)
    assert after.shape == before.shape
    refitted = (pl.col("site_id") == "harrogate") & (pl.col("outcome") == "bed_days")
    assert after.filter(refitted)["run_id"][0] != before.filter(refitted)["run_id"][0]
    assert after.filter(~refitted).equals(before.filter(~refitted))
    numeric = ["log_rate_ratio", "se", "p_value", "outcome_order"]
    assert after.filter(refitted).select(numeric).equals(before.filter(refitted).select(numeric))


def test_scheduled_day_without_extracts_loads_nothing(demo):
    """A run owns its data interval, end excluded: the day before the extract date finds
    nothing. (`dag.test` runs the interval that ends at the logical date given.)"""
    dag_run, db, _ = _run_dag(demo, demo / "landing", "airflow-interval",
                              logical_date=datetime(2019, 5, 15, tzinfo=UTC),
                              conf={"partition": "interval"})
    assert dag_run.state == "success"
    assert warehouse.query(db, "SELECT count(*) AS n FROM provenance")["n"][0] == 0
    assert warehouse.query(db, "SELECT run_id FROM runs")["run_id"].to_list() == [
        "nightly-2019-05-14"]
    assert _states(dag_run)[("publish_results", -1)] == "skipped"


@pytest.fixture(scope="module")
def bad_landing(demo) -> Path:
    """The demo's landing area plus a re-issued Dudley extract with a negative count."""
    landing = demo / "bad-landing"
    shutil.copytree(demo / "landing", landing)
    source = landing / "dudley" / EXTRACT_DATE / "aggregate.csv"
    lines = source.read_text().splitlines()
    area, month, measure, _, population = lines[5].split(",")
    lines[5] = ",".join([area, month, measure, "-40", population])
    reissue = landing / "dudley" / "2019-06-01" / "aggregate.csv"
    reissue.parent.mkdir(parents=True)
    reissue.write_text("\n".join(lines) + "\n")
    return landing


def test_bad_drop_fails_loudly_and_the_rest_carries_on(demo, bad_landing, capsys):
    code, db, out = _run_cli(demo, bad_landing, "cli-bad")
    assert code == 1
    assert "count" in capsys.readouterr().err
    run = warehouse.query(db, "SELECT * FROM runs").row(0, named=True)
    assert run["status"] == "partial"
    assert _results(db)["site_id"].n_unique() == len(SITES)
    refused = demo / "cli-bad-quarantine" / "dudley" / "2019-06-01"
    assert (refused / "aggregate.csv").is_file()
    assert (refused / "aggregate.csv.reason.json").is_file()
    assert "quarantined" in (out / "index.html").read_text()


def test_bad_drop_fails_only_its_airflow_task(demo, bad_landing):
    dag_run, db, out = _run_dag(demo, bad_landing, "airflow-bad")
    states = _states(dag_run)
    failed = {key for key, state in states.items() if state == "failed"}
    assert [task for task, _ in failed] == ["ingest"]
    dudley = sorted(SITES + ["comparison"]).index("dudley")
    assert failed == {("ingest", dudley)}  # not retried: a refused file stays refused
    assert states[("all_files_accepted", -1)] == "upstream_failed"
    assert all(state == "success" for (task, _), state in states.items()
               if task in ("evaluate_site", "finish_run", "publish_results"))
    assert dag_run.state == "failed"
    assert warehouse.query(db, "SELECT status FROM runs")["status"][0] == "partial"
    assert _results(db)["site_id"].n_unique() == len(SITES)
    log = read_run_log(db).filter(pl.col("status") == "failed")
    assert log.select("task", "item", "attempt").rows() == [("ingest", "dudley", 1)]
    assert "count" in log["message"][0] and "2019-06-01" in log["message"][0]
