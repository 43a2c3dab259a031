"""The run log: what each step of a run did for each site or source, for reports and audits.

One row per attempt of a step (`ingest`, `fit`, ...) on one item (a source or a site):
`success`, `failed` or `skipped`, with the reason. Airflow keeps its own task logs, but
they live outside the warehouse; this table lets a board paper say which sites were not
updated in a run and why, from the database alone. Rows for a run are cleared when the
run starts again, so re-running a run leaves one account of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from transforms import warehouse

log = logging.getLogger(__name__)

STATUSES = ("success", "failed", "skipped")

#: Longest message kept; a quarantine reason can list thousands of bad rows.
MAX_MESSAGE = 4000


@dataclass(frozen=True)
class Entry:
    """Where a log row belongs: the evaluation run, the orchestrator's run, the step."""

    run_id: str
    task: str
    item: str | None = None
    dag_run_id: str | None = None
    attempt: int = 1


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def record(db: Path, entry: Entry, status: str, message: str | None = None) -> None:
    """Append one outcome. Never raises: a log that cannot be written must not hide the
    error being logged (e.g. when the warehouse itself is what failed)."""
    if status not in STATUSES:
        raise ValueError(f"run_log status '{status}' is not one of {STATUSES}")
    text = None if message is None else message[:MAX_MESSAGE]
    try:
        with warehouse.connect(db) as con, warehouse.transaction(con):
            con.execute(
                "INSERT INTO run_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [entry.run_id, entry.dag_run_id, entry.task, entry.item, entry.attempt,
                 status, text, _now()],
            )
    except (duckdb.Error, OSError, warehouse.WarehouseBusy) as exc:
        log.warning("run_log: could not record %s %s %s: %s", entry.task, entry.item,
                    status, exc)


def clear(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Forget a run's earlier account, inside the caller's transaction (a re-run)."""
    con.execute("DELETE FROM run_log WHERE run_id = ?", [run_id])


@contextmanager
def logged(db: Path, entry: Entry) -> Iterator[None]:
    """Record `success` when the block finishes and `failed` with the error when it raises
    (the error is re-raised unchanged)."""
    try:
        yield
    except BaseException as exc:
        record(db, entry, "failed", f"{type(exc).__name__}: {exc}")
        raise
    record(db, entry, "success")


def read_run_log(db: str | Path, run_id: str | None = None) -> pl.DataFrame:
    """The run log, oldest first; with `run_id`, one run's rows only."""
    where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
    return warehouse.query(
        db, f"SELECT * FROM run_log {where} ORDER BY logged_at, task, item", params
    )


def latest_outcomes(db: str | Path, run_id: str) -> pl.DataFrame:
    """Each step's last attempt per item in a run: what the run finally did."""
    return warehouse.query(
        db,
        "SELECT * FROM run_log WHERE run_id = ? "
        "QUALIFY row_number() OVER (PARTITION BY task, item ORDER BY attempt DESC, "
        "logged_at DESC) = 1 ORDER BY task, item",
        [run_id],
    )
