"""The whole pipeline on a small seeded demo, through the CLI and through the real DAG.

Checks that known injected effects are recovered, that the CLI and Airflow produce the
same estimates, that a bad drop fails loudly without stopping the rest, and that no
patient identifier reaches the panel or the reports.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import ROOT
from transforms import warehouse
from transforms.cli import main
from transforms.demo_data import EXTRACT_DATE, generate_demo

SITES = ["calderdale", "dudley", "harrogate", "wirral", "south-somerset", "later-wave-mcp-demo"]
SEED = 20150310
N_AREAS = 90

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory, protocol) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=SEED, protocol=protocol.subset(SITES), n_areas=N_AREAS)
    return root


@pytest.fixture(scope="module")
def truth(demo) -> dict:
    return json.loads((demo / "truth.json").read_text())


def _run_cli(demo: Path, landing: Path, name: str) -> tuple[int, Path, Path]:
    db, out = demo / f"{name}.duckdb", demo / f"{name}-out"
    code = main(["run", "--db", str(db), "--landing", str(landing), "--out", str(out),
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


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).get_dag("vanguard_nightly")


def _run_dag(demo: Path, landing: Path, name: str):
    db, out = demo / f"{name}.duckdb", demo / f"{name}-out"
    conf = {"db": str(db), "landing": str(landing), "out": str(out), "sites": SITES,
            "protocol": str(ROOT / "evaluation.toml")}
    return _dag().test(run_conf=conf), db, out


def test_airflow_dag_matches_cli(cli_run, demo):
    dag_run, db, out = _run_dag(demo, demo / "landing", "airflow")
    assert dag_run.state == "success"
    assert (out / "index.html").is_file()
    run = warehouse.query(db, "SELECT * FROM runs").row(0, named=True)
    assert run["orchestrator"] == "airflow" and run["status"] == "success"
    numeric = ["log_rate_ratio", "se", "pct_ci_low", "pct_ci_high", "p_value"]
    cli = _results(cli_run[0]).select("site_id", "outcome", *numeric)
    dag = _results(db).select("site_id", "outcome", *numeric)
    assert dag.shape == cli.shape
    for column in numeric:
        assert (dag[column] - cli[column]).abs().max() < 1e-9, column


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
    states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
    failed = {key for key, state in states.items() if state == "failed"}
    assert [task for task, _ in failed] == ["ingest"]
    assert states[("all_files_accepted", -1)] == "upstream_failed"
    assert states[("publish_reports", -1)] == "success"
    assert dag_run.state == "failed"
    assert warehouse.query(db, "SELECT status FROM runs")["status"][0] == "partial"
