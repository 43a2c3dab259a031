"""The run log the nightly tasks write: one row per attempt, re-runs replace a run's rows."""

import pytest

from transforms import runlog, warehouse
from transforms.pipeline import finish_run, start_run


@pytest.fixture
def db(tmp_path, protocol):
    path = tmp_path / "w.duckdb"
    start_run(path, protocol, orchestrator="airflow", run_id="nightly-2019-05-15")
    return path


def _entry(item: str, attempt: int = 1) -> runlog.Entry:
    return runlog.Entry("nightly-2019-05-15", "fit", item, "backfill__x", attempt)


def test_logged_records_success_and_failure_with_the_reason(db):
    with runlog.logged(db, _entry("dudley")):
        pass
    with pytest.raises(ValueError, match="no comparison areas"), \
            runlog.logged(db, _entry("wirral")):
        raise ValueError("no comparison areas")
    rows = runlog.read_run_log(db).select("item", "status", "message").rows()
    assert sorted(rows) == [("dudley", "success", None),
                            ("wirral", "failed", "ValueError: no comparison areas")]


def test_last_attempt_decides_and_the_run_is_partial_only_if_it_failed(db, protocol):
    runlog.record(db, _entry("dudley", 1), "failed", "WarehouseBusy: locked")
    runlog.record(db, _entry("dudley", 2), "success")
    latest = runlog.latest_outcomes(db, "nightly-2019-05-15")
    assert latest.select("item", "attempt", "status").rows() == [("dudley", 2, "success")]
    assert finish_run(db, "nightly-2019-05-15") == "success"
    runlog.record(db, _entry("wirral", 1), "failed", "PipelineError: panel")
    assert finish_run(db, "nightly-2019-05-15") == "partial"


def test_restarting_a_run_replaces_its_account(db, protocol):
    runlog.record(db, _entry("dudley"), "failed", "first try")
    runlog.record(db, runlog.Entry("other-run", "fit", "dudley"), "success")
    start_run(db, protocol, orchestrator="airflow", run_id="nightly-2019-05-15")
    left = warehouse.query(db, "SELECT run_id FROM run_log")["run_id"].to_list()
    assert left == ["other-run"]


def test_unknown_status_is_refused(db):
    with pytest.raises(ValueError, match="not one of"):
        runlog.record(db, _entry("dudley"), "done")


def test_long_messages_are_cut(db):
    runlog.record(db, _entry("dudley"), "failed", "x" * 10_000)
    assert len(runlog.read_run_log(db)["message"][0]) == runlog.MAX_MESSAGE
