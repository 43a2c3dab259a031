"""DuckDB lets one process write at a time. Eight ingests started at once, as eight Airflow
workers would, must all land, with nothing lost and no lock error reaching the user."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from transforms import warehouse
from transforms.warehouse import WarehouseBusy

MEASURES = ("emergency_admissions", "ae_attendances", "bed_days", "mh_emergency_admissions")
MONTHS = [f"2015-{m:02d}-01" for m in range(1, 13)]


def _aggregate(areas: tuple[str, ...]) -> str:
    rows = [
        f"{area},{month},{measure},{100 + i},250000\n"
        for area in areas
        for month in MONTHS
        for i, measure in enumerate(MEASURES)
    ]
    return "area_code,month,measure,count,population\n" + "".join(rows)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _ingest_process(db: str, site_id: str, path: str, quarantine: str, log: str) -> None:
    """One worker: the `vanguard ingest` command, its output to a file, its exit code out."""
    import contextlib

    from transforms.cli import main

    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["-v", "ingest", "--db", db, "--quarantine", quarantine, "--site", site_id,
                     path])
    sys.exit(code)


def test_eight_concurrent_ingests_all_land(tmp_path, protocol, monkeypatch):
    """Eight worker processes, forked like Airflow's local executor forks its workers (from a
    server that has imported the code once), ingest different sites into one warehouse."""
    sites = protocol.sites[:8]
    db = tmp_path / "w.duckdb"
    files = {}
    for site in sites:
        path = tmp_path / "landing" / site.id / "2019-05-15" / "aggregate.csv"
        path.parent.mkdir(parents=True)
        path.write_text(_aggregate(site.areas))
        files[site.id] = path
    monkeypatch.setenv("VANGUARD_LOCK_TIMEOUT", "300")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["transforms.cli", "transforms.ingest", "great_expectations"])
    workers = {
        site_id: context.Process(
            target=_ingest_process,
            args=(str(db), site_id, str(path), str(tmp_path / "q"),
                  str(tmp_path / f"{site_id}.log")),
        )
        for site_id, path in files.items()
    }
    for worker in workers.values():
        worker.start()
    for worker in workers.values():
        worker.join(timeout=600)
    outputs = {site_id: (tmp_path / f"{site_id}.log").read_text() for site_id in workers}
    for site_id, worker in workers.items():
        output = outputs[site_id]
        assert worker.exitcode == 0, output
        for failure in ("Could not set lock", "Conflicting lock", "WarehouseBusy", "Traceback"):
            assert failure not in output, output
        assert f"loaded: {files[site_id]}" in output
    # they really did contend for the lock, and waited rather than failed
    assert any("in use by another process; waiting" in out for out in outputs.values())

    loaded = warehouse.query(
        db, "SELECT source_id, rows_loaded FROM provenance WHERE status = 'loaded'"
    )
    expected = {site.id: len(site.areas) * len(MONTHS) * len(MEASURES) for site in sites}
    assert dict(loaded.rows()) == expected
    staged = warehouse.query(db, "SELECT source_id, count(*) AS n FROM stg_aggregate GROUP BY 1")
    assert dict(staged.rows()) == expected


def test_the_ingest_command_waits_for_another_process(tmp_path, protocol):
    """The command line, in a separate interpreter, while another process holds the lock."""
    db = tmp_path / "w.duckdb"
    with warehouse.connect(db):
        pass
    site = protocol.sites[0]
    path = tmp_path / "landing" / site.id / "2019-05-15" / "aggregate.csv"
    path.parent.mkdir(parents=True)
    path.write_text(_aggregate(site.areas))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(4)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        done = subprocess.run(
            [sys.executable, "-m", "transforms.cli", "ingest", "--db", str(db),
             "--quarantine", str(tmp_path / "q"), "--site", site.id, str(path)],
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "lock" not in (done.stdout + done.stderr).lower()
    finally:
        holder.kill()
        holder.wait()


def test_a_writer_waits_for_the_lock_and_gives_up_after_the_timeout(tmp_path, monkeypatch):
    db = tmp_path / "w.duckdb"
    with warehouse.connect(db):
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(3)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("VANGUARD_LOCK_TIMEOUT", "0.3")
        with pytest.raises(WarehouseBusy, match="stayed locked by another process"), \
                warehouse.connect(db):
            pass
        monkeypatch.setenv("VANGUARD_LOCK_TIMEOUT", "60")
        with warehouse.connect(db) as con:  # waits until the holder exits
            assert con.execute("SELECT count(*) FROM provenance").fetchall() == [(0,)]
        assert holder.poll() is not None
    finally:
        holder.kill()
        holder.wait()


def test_a_reader_waits_for_a_writer_too(tmp_path):
    db = tmp_path / "w.duckdb"
    with warehouse.connect(db):
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(1)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert warehouse.query(db, "SELECT count(*) AS n FROM runs")["n"][0] == 0
    finally:
        holder.kill()
        holder.wait()


def test_other_connection_errors_are_not_retried(tmp_path):
    not_a_database = tmp_path / "w.duckdb"
    not_a_database.write_text("this is not a DuckDB file")
    with pytest.raises(Exception) as raised, warehouse.connect(not_a_database):
        pass
    assert not isinstance(raised.value, WarehouseBusy)
