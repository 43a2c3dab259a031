"""A real Airflow on loopback backfills three nightly partitions into a fresh warehouse.

Starts the api-server, scheduler and dag-processor (LocalExecutor, parallelism 2, a
temporary AIRFLOW_HOME, the one-slot warehouse pool), creates a 3-day backfill with
`airflow backfill create`, waits for it through the REST API and checks the warehouse:
each day's extracts loaded once, only the sites whose data changed re-fitted, results
present, and the reports DAG run off the results asset. Every process it started is
stopped by its process id when it ends, pass or fail. Select it with
`pytest tests/integration/test_live_airflow.py`: 4 min 13 s on the 2-core reference machine
(7 min when it was busy), most of it the start-up of about 45 task processes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from transforms import warehouse
from transforms.demo_data import EXTRACT_DATE, generate_demo

pytestmark = pytest.mark.slow

SITES = ["calderdale", "dudley"]
DAYS = ["2019-05-15", "2019-05-16", "2019-05-17"]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DEADLINE = 600.0  # seconds for the backfill and then the reports


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reissue(landing: Path, site: str, day: str, bump: int) -> Path:
    """A later extract of a site's aggregate file with one count changed (still valid)."""
    lines = (landing / site / EXTRACT_DATE / "aggregate.csv").read_text().splitlines()
    area, month, measure, count, population = lines[7].split(",")
    lines[7] = ",".join([area, month, measure, str(int(count) + bump), population])
    target = landing / site / day / "aggregate.csv"
    target.parent.mkdir(parents=True)
    target.write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, protocol) -> Path:
    """Day 1: every source's first extract; day 2: Dudley re-issued; day 3: Calderdale."""
    root = tmp_path_factory.mktemp("live")
    generate_demo(root / "demo", seed=20190515, protocol=protocol.subset(SITES), n_areas=60)
    landing = root / "demo" / "landing"
    assert DAYS[0] == EXTRACT_DATE
    _reissue(landing, "dudley", DAYS[1], 3)
    _reissue(landing, "calderdale", DAYS[2], 5)
    shutil.copyfile(ROOT / "evaluation.toml", root / "evaluation.toml")
    return root


def _environment(root: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(root / "airflow"),
        # SQLite has one writer; wait for it (60 s) rather than fail after the default 5 s
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow' / 'airflow.db'}"
                                               "?timeout=60",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        # Unpausing also starts the run for yesterday's interval, with the default params:
        # point those at an empty landing area and a warehouse of their own.
        "VANGUARD_DB": str(root / "scheduled" / "vanguard.duckdb"),
        "VANGUARD_LANDING": str(root / "scheduled" / "landing"),
        "VANGUARD_OUT": str(root / "scheduled" / "out"),
        "VANGUARD_PROTOCOL": str(root / "evaluation.toml"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "GX_ANALYTICS_ENABLED": "False",
        "VANGUARD_GX_MAX_ROWS": "2000",  # the SQL rules still check every row
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    })
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done.stdout


def _api(port: int, path: str, body: dict | None = None, method: str = "GET") -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v2/{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read() or b"{}")


def _wait_for(what: str, check, timeout: float, logs: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:  # server not up yet, or the DAG not parsed yet
            found = None
        if found:
            return found
        time.sleep(3)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _conf(workspace: Path) -> dict:
    return {"db": str(workspace / "vanguard.duckdb"), "out": str(workspace / "out"),
            "landing": str(workspace / "demo" / "landing"), "sites": SITES,
            "protocol": str(workspace / "evaluation.toml")}


@pytest.fixture(scope="module")
def airflow(workspace) -> Iterator[tuple[dict[str, str], int, Path]]:
    """A 3-day backfill, then the scheduler, dag-processor and api-server on loopback, each
    stopped by its id at the end.

    The backfill is created before the services start: SQLite takes one writer, and a
    command that reads then writes fails at once ("database is locked") when another
    process writes in between.
    """
    port = _free_port()
    env = _environment(workspace, port)
    logs = workspace / "logs"
    logs.mkdir()
    (workspace / "scheduled" / "landing").mkdir(parents=True)
    _cli(env, "db", "migrate")
    _cli(env, "pools", "set", "vanguard_warehouse", "1", "DuckDB has a single writer")
    _cli(env, "dags", "reserialize")
    _cli(env, "backfill", "create", "--dag-id", "vanguard_nightly", "--from-date", DAYS[0],
         "--to-date", DAYS[-1], "--max-active-runs", "1",
         "--dag-run-conf", json.dumps(_conf(workspace)))
    for dag_id in ("vanguard_nightly", "vanguard_reports"):
        _cli(env, "dags", "unpause", dag_id)
    started: list[subprocess.Popen] = []
    try:
        for component in ("api-server", "scheduler", "dag-processor"):
            log = (logs / f"{component}.log").open("w")
            started.append(subprocess.Popen(
                [AIRFLOW, component], env=env, stdout=log, stderr=subprocess.STDOUT,
                cwd=ROOT, start_new_session=True,
            ))
        yield env, port, logs
    finally:
        for process in started:  # each in its own session: stop it and its workers
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def backfilled(workspace, airflow) -> dict:
    _, port, logs = airflow
    conf = _conf(workspace)
    started = time.monotonic()

    def finished() -> list[dict] | None:
        runs = _api(port, "dags/vanguard_nightly/dagRuns?limit=20")["dag_runs"]
        ours = [r for r in runs if r["run_type"] == "backfill"]
        done = [r for r in ours if r["state"] in ("success", "failed")]
        return ours if len(ours) == len(DAYS) and len(done) == len(DAYS) else None

    runs = _wait_for("the backfill", finished, DEADLINE, logs)

    def reports_done() -> list[dict] | None:
        runs = _api(port, "dags/vanguard_reports/dagRuns?limit=20")["dag_runs"]
        busy = [r for r in runs if r["state"] not in ("success", "failed")]
        return runs if runs and not busy else None

    reports = _wait_for("the reports", reports_done, DEADLINE - (time.monotonic() - started),
                        logs)
    return {"nightly": runs, "reports": reports, "db": Path(conf["db"]),
            "out": Path(conf["out"])}


def test_every_backfill_run_succeeds(backfilled):
    runs = backfilled["nightly"]
    assert sorted(r["logical_date"][:10] for r in runs) == DAYS
    assert {r["run_type"] for r in runs} == {"backfill"}
    assert {r["state"] for r in runs} == {"success"}


def test_each_partition_loaded_once(backfilled):
    files = warehouse.query(
        backfilled["db"],
        "SELECT source_id, strftime(extract_date, '%Y-%m-%d') AS day, count(*) AS n "
        "FROM provenance WHERE status = 'loaded' GROUP BY ALL ORDER BY day, source_id",
    )
    expected = [(s, DAYS[0], 1) for s in sorted(["comparison", *SITES])]
    expected += [("dudley", DAYS[1], 1), ("calderdale", DAYS[2], 1)]
    assert files.rows() == expected
    refused = warehouse.query(backfilled["db"],
                              "SELECT * FROM provenance WHERE status <> 'loaded'")
    assert refused.height == 0


def test_only_changed_sites_are_refitted_and_results_present(backfilled):
    db = backfilled["db"]
    fits = warehouse.query(
        db, "SELECT run_id, item FROM run_log WHERE task = 'fit' AND status = 'success' "
            "ORDER BY run_id, item")
    assert fits.rows() == [(f"nightly-{DAYS[0]}", s) for s in SITES] + [
        (f"nightly-{DAYS[1]}", "dudley"), (f"nightly-{DAYS[2]}", "calderdale")]
    results = warehouse.query(db, "SELECT site_id, run_id FROM model_results")
    assert results.height == len(SITES) * 4
    latest = dict(results.unique().rows())
    assert latest == {"dudley": f"nightly-{DAYS[1]}", "calderdale": f"nightly-{DAYS[2]}"}
    runs = warehouse.query(db, "SELECT run_id, status FROM runs ORDER BY run_id")
    assert runs.rows() == [(f"nightly-{day}", "success") for day in DAYS]


def test_reports_rebuilt_from_the_results_asset(backfilled):
    reports = backfilled["reports"]
    assert {r["run_type"] for r in reports} == {"asset_triggered"}
    assert {r["state"] for r in reports} == {"success"}
    assert (backfilled["out"] / "index.html").is_file()
    for site in SITES:
        assert (backfilled["out"] / "sites" / f"{site}.html").is_file()
