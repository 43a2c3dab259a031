"""The DAG folder imports cleanly, quickly and without I/O, and wires the expected tasks."""

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.conftest import ROOT

NIGHTLY_TASKS = {
    "start_run", "discover_sources", "ingest", "all_files_accepted", "plan_refits",
    "build_panel", "site_ids", "evaluate_site", "all_sites_fitted", "check_claims",
    "finish_run", "publish_results",
}
#: Tasks that open the warehouse: they must share the one-slot pool.
WAREHOUSE_TASKS = {"start_run", "ingest", "plan_refits", "build_panel", "evaluate_site",
                   "check_claims", "finish_run", "publish_results"}

# Imports the DAG files with file, socket and database access made to fail, and reports the
# parse time and which heavy modules the parse pulled in. A subprocess, so that modules the
# test session already imported do not hide an import at the DAG's top level.
PROBE = """
import builtins, importlib.util, json, socket, sys, time
import pendulum, airflow.sdk, airflow.sdk.exceptions
from airflow.sdk import Asset, Param, dag, task
def refuse(*args, **kwargs):
    raise AssertionError(f"I/O at DAG import: {args[:1]}")
before = set(sys.modules)
builtins.open, socket.socket.connect = refuse, refuse
times = {}
for name in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location(f"probe_{len(times)}", name)
    module = importlib.util.module_from_spec(spec)
    start = time.perf_counter()
    spec.loader.exec_module(module)
    times[name] = time.perf_counter() - start
heavy = sorted(m for m in set(sys.modules) - before
               if m.split(".")[0] in {"polars", "duckdb", "transforms", "reports", "pandas",
                                      "great_expectations", "numpy", "scipy", "statsmodels"})
print(json.dumps({"times": times, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module")
def nightly(dagbag):
    return dagbag.dags["vanguard_nightly"]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"vanguard_nightly", "vanguard_reports"} <= set(dagbag.dags)


def test_parse_is_fast_and_does_no_io():
    files = [str(p) for p in sorted((ROOT / "dags").glob("*.py"))]
    done = subprocess.run([sys.executable, "-c", PROBE, *files], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(probe["times"]) == set(files)
    for name, seconds in probe["times"].items():
        assert seconds < 2.0, f"{name} took {seconds:.2f} s to parse"
    assert probe["heavy"] == []


def test_tags_retries_and_backoff(dagbag):
    for dag in dagbag.dags.values():
        assert "vanguard" in dag.tags and dag.catchup is False and dag.max_active_runs == 1
        for task in dag.tasks:
            assert task.retries >= 1, task.task_id
            assert task.retry_exponential_backoff > 1, task.task_id
            assert task.retry_delay >= timedelta(seconds=10), task.task_id


def test_nightly_task_ids_and_wiring(nightly):
    assert set(nightly.task_ids) == NIGHTLY_TASKS
    upstream = {t.task_id: t.upstream_task_ids for t in nightly.tasks}
    assert upstream["discover_sources"] == {"start_run"}
    assert upstream["ingest"] == {"start_run", "discover_sources"}
    assert upstream["all_files_accepted"] == {"ingest"}
    assert upstream["plan_refits"] == {"ingest"}
    assert upstream["build_panel"] == {"plan_refits", "start_run"}
    assert upstream["evaluate_site"] == {"build_panel", "site_ids", "start_run"}
    assert upstream["all_sites_fitted"] == {"evaluate_site"}
    assert upstream["check_claims"] == {"evaluate_site", "start_run"}
    assert upstream["finish_run"] == {"check_claims", "start_run"}
    assert upstream["publish_results"] == {"finish_run", "start_run"}
    assert nightly.get_task("ingest").is_mapped and nightly.get_task("evaluate_site").is_mapped


def test_gates_and_closing_tasks_trigger_rules(nightly):
    """Gates fail the run when a file or a site failed; planning and closing always run."""
    for gate in ("all_files_accepted", "all_sites_fitted", "publish_results", "build_panel"):
        assert nightly.get_task(gate).trigger_rule == "all_success", gate
    for closing in ("plan_refits", "check_claims", "finish_run"):
        assert nightly.get_task(closing).trigger_rule == "all_done", closing


def test_nightly_schedule_and_params(nightly):
    """A daily data interval (not a bare trigger time): the run's partition of extracts."""
    assert type(nightly.timetable).__name__ == "CronDataIntervalTimetable"
    assert nightly.timetable.expression == "0 0 * * *"
    assert {"sites", "outcomes", "force", "partition", "db", "landing", "out"} <= set(
        nightly.params.keys())
    assert nightly.params["force"] is False and nightly.params["partition"] == "auto"


def test_warehouse_tasks_share_a_one_slot_pool(dagbag):
    nightly = dagbag.dags["vanguard_nightly"]
    for task in nightly.tasks:
        in_pool = task.pool == "vanguard_warehouse"
        assert in_pool == (task.task_id in WAREHOUSE_TASKS), task.task_id
    for task_id in ("ingest", "evaluate_site"):
        assert nightly.get_task(task_id).max_active_tis_per_dagrun == 1
    assert dagbag.dags["vanguard_reports"].get_task("publish_reports").pool == "vanguard_warehouse"


def test_reports_follow_the_results_asset(dagbag):
    """The asset the results step emits is the one, and the only one, the reports wait on."""
    outlets = dagbag.dags["vanguard_nightly"].get_task("publish_results").outlets
    assert [a.uri for a in outlets] == ["vanguard://results/"]
    reports = dagbag.dags["vanguard_reports"]
    assert reports.task_ids == ["publish_reports"]
    awaited = [asset.uri for asset in reports.timetable.asset_condition.objects]
    assert awaited == [outlets[0].uri]
