"""The DAG folder imports cleanly, quickly, and wires the expected tasks."""

import time

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "vanguard_nightly" in dagbag.dags


def test_parse_is_fast_and_does_no_io():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vanguard_nightly_probe",
                                                  ROOT / "dags" / "vanguard_nightly.py")
    module = importlib.util.module_from_spec(spec)
    start = time.perf_counter()
    spec.loader.exec_module(module)
    assert time.perf_counter() - start < 2.0


def test_task_ids_and_wiring(dagbag):
    dag = dagbag.dags["vanguard_nightly"]
    assert set(dag.task_ids) == {
        "start_run", "discover_sources", "ingest", "build_panel", "site_ids",
        "evaluate_site", "finish_run", "publish_reports", "all_files_accepted",
    }
    assert dag.get_task("build_panel").upstream_task_ids == {"ingest"}
    assert "build_panel" in dag.get_task("evaluate_site").upstream_task_ids
    assert dag.get_task("publish_reports").upstream_task_ids == {"finish_run"}
    gate = dag.get_task("all_files_accepted")
    assert gate.upstream_task_ids == {"ingest"} and gate.trigger_rule == "all_success"
    assert dag.get_task("build_panel").trigger_rule == "all_done"
    assert "vanguard" in dag.tags and dag.catchup is False and dag.max_active_runs == 1


def test_writers_are_serialised_and_retried(dagbag):
    dag = dagbag.dags["vanguard_nightly"]
    for task_id in ("ingest", "evaluate_site"):
        assert dag.get_task(task_id).max_active_tis_per_dagrun == 1
    assert all(task.retries >= 1 for task in dag.tasks)
