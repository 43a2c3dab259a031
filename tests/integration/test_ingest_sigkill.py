"""Killing an ingest mid-load (SIGKILL: no clean-up code runs) leaves the warehouse exactly
as it was, and running the same ingest again completes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from transforms import warehouse
from transforms.ingest import REJECTED_SUFFIX, ingest_file

SITE, AREA = "south-somerset", "A004"
ROWS = 600_000

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _episodes(path: Path, rows: int) -> None:
    rng = np.random.default_rng(5)
    admitted = np.datetime64("2012-04-01") + rng.integers(0, 2500, rows).astype("timedelta64[D]")
    pl.DataFrame({
        "patient_id": [f"{x:016X}" for x in rng.integers(0, 2**62, rows).tolist()],
        "admission_date": admitted,
        "discharge_date": admitted + rng.integers(0, 9, rows).astype("timedelta64[D]"),
        "admission_method": np.array(["21", "11", "2A", "31"])[rng.integers(0, 4, rows)],
        "primary_diagnosis": np.array(["J189", "F329", "I214"])[rng.integers(0, 3, rows)],
        "age": rng.integers(0, 100, rows).astype(np.int16),
        "sex": np.array(["1", "2"])[rng.integers(0, 2, rows)],
        "area_code": [AREA] * rows,
    }).write_csv(path)


def _state(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table (the prior state is small)."""
    with warehouse.connect(db, read_only=True) as con:
        tables = [t for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}


def _ingest_process(db: str, path: str, quarantine: str, log: str) -> None:
    """The `vanguard -v ingest` command with its output (progress log included) to a file."""
    import contextlib

    from transforms.cli import main

    with open(log, "w", buffering=1) as out, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        code = main(["-v", "ingest", "--db", db, "--quarantine", quarantine, "--site", SITE,
                     path])
    sys.exit(code)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "episodes.csv"
    _episodes(path, ROWS)
    return path


def _kill_when(args: tuple[str, str, str], log: Path, signal_line: str, delay: float) -> None:
    """Run the ingest in a worker process; SIGKILL it `delay` s after it logs `signal_line`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["transforms.cli", "transforms.ingest", "great_expectations"])
    worker = context.Process(target=_ingest_process, args=(*args, str(log)))
    worker.start()
    deadline = time.monotonic() + 240
    while signal_line not in (log.read_text() if log.exists() else ""):
        assert worker.is_alive(), log.read_text()
        assert time.monotonic() < deadline, "the ingest never reached " + signal_line
        time.sleep(0.01)
    time.sleep(delay)
    assert worker.is_alive(), f"the ingest finished before it could be killed: {signal_line}"
    os.kill(worker.pid or 0, signal.SIGKILL)
    worker.join(timeout=60)
    assert worker.exitcode == -signal.SIGKILL


def test_sigkill_mid_load_leaves_the_warehouse_unchanged(tmp_path, big_file, protocol):
    db, quarantine = tmp_path / "w.duckdb", tmp_path / "quarantine"
    small = protocol.subset([SITE])
    prior = tmp_path / "landing" / SITE / "2019-05-01" / "aggregate.csv"
    prior.parent.mkdir(parents=True)
    prior.write_text("area_code,month,measure,count,population\n"
                     "A004,2015-01-01,emergency_admissions,1200,150000\n"
                     "A004,2015-02-01,emergency_admissions,1100,150000\n")
    ingest_file(db, SITE, prior, small, quarantine)
    before = _state(db)

    path = tmp_path / "landing" / SITE / "2019-05-15" / "episodes.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(big_file.read_bytes())
    for n, (signal_line, delay) in enumerate([
        ("staging into stg_episodes", 0.3),  # while DuckDB inserts the rows
        ("rows staged, checking", 0.05),  # while the staged rows are checked and validated
    ]):
        _kill_when((str(db), str(path), str(quarantine)), tmp_path / f"kill{n}.log",
                   signal_line, delay)
        assert _state(db) == before, signal_line
        assert path.is_file() and not path.with_name(path.name + REJECTED_SUFFIX).exists()
        assert not list(quarantine.rglob("episodes.csv"))

    outcome = ingest_file(db, SITE, path, small, quarantine)  # the re-run completes
    assert (outcome.status, outcome.rows_received, outcome.rows_loaded) == ("loaded", ROWS, ROWS)
    staged = warehouse.query(db, "SELECT count(*) AS n FROM stg_episodes")["n"][0]
    assert staged == ROWS
