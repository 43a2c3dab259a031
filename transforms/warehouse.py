"""The DuckDB warehouse: the only module that reads and writes the database.

Layers, from raw to published:
  provenance, validation_results   what was received and what the checks said; current_files
                                   (view) is the loaded files no later extract replaced
  stg_aggregate, stg_episodes,     extracts, renamed and typed only (patient rows stay in
  stg_nhse_ae                      stg_episodes); one event_id per file
  area_month_episodes              episodes counted per file, area, month and measure
                                   (aggregates only, written in the same transaction)
  ref_areas                        area descriptors (population, age, deprivation)
  area_month_panel                 one row per area x month x outcome, aggregates only
  provider_month_panel             national A&E counts per organisation x month x outcome
  sites, comparison_areas          the protocol's sites and each site's matched comparators
  model_results, model_series      estimates and the series behind the plots
  claim_checks                     each site claim beside the controlled estimate (counts of
                                   patients or admissions only; no patient rows)
  event_study                      effects by quarter since go-live, with the pre-trend test
  runs                             one row per pipeline run, for the provenance footer

DuckDB allows one process at a time to open the file for writing (and none to read while it
does), so every function opens a short-lived connection and closes it. `connect` waits for a
lock held by another process, retrying with exponential backoff and jitter, so concurrent
writers queue rather than fail; $VANGUARD_LOCK_TIMEOUT (seconds, default 600) bounds the wait.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

log = logging.getLogger(__name__)

DEFAULT_DB = "vanguard.duckdb"

SCHEMA = """
CREATE TABLE IF NOT EXISTS provenance (
    event_id          BIGINT PRIMARY KEY,
    source_id         VARCHAR NOT NULL,
    kind              VARCHAR NOT NULL,
    path              VARCHAR NOT NULL,
    extract_date      DATE,
    sha256            VARCHAR NOT NULL,
    rows_received     BIGINT NOT NULL,
    rows_loaded       BIGINT NOT NULL,
    rows_quarantined  BIGINT NOT NULL,
    status            VARCHAR NOT NULL,
    message           VARCHAR,
    loaded_at         TIMESTAMP NOT NULL,
    code_version      VARCHAR NOT NULL,
    superseded_by     BIGINT,
    CHECK (rows_received = rows_loaded + rows_quarantined)
);

CREATE TABLE IF NOT EXISTS validation_results (
    event_id      BIGINT,
    target        VARCHAR NOT NULL,
    suite         VARCHAR NOT NULL,
    success       BOOLEAN NOT NULL,
    evaluated     INTEGER NOT NULL,
    result_json   VARCHAR NOT NULL,
    validated_at  TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS stg_aggregate (
    event_id    BIGINT NOT NULL,
    source_id   VARCHAR NOT NULL,
    area_code   VARCHAR NOT NULL,
    month       DATE NOT NULL,
    measure     VARCHAR NOT NULL,
    count       BIGINT NOT NULL,
    population  BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS stg_episodes (
    event_id           BIGINT NOT NULL,
    source_id          VARCHAR NOT NULL,
    patient_id         VARCHAR NOT NULL,
    admission_date     DATE NOT NULL,
    discharge_date     DATE NOT NULL,
    admission_method   VARCHAR NOT NULL,
    primary_diagnosis  VARCHAR,
    age                SMALLINT NOT NULL,
    sex                VARCHAR NOT NULL,
    area_code          VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS stg_nhse_ae (
    event_id     BIGINT NOT NULL,
    source_id    VARCHAR NOT NULL,
    period       DATE NOT NULL,
    org_code     VARCHAR NOT NULL,
    type         VARCHAR NOT NULL,
    attendances  BIGINT NOT NULL,
    breaches     BIGINT NOT NULL,
    admissions   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS area_month_episodes (
    event_id   BIGINT NOT NULL,
    source_id  VARCHAR NOT NULL,
    area_code  VARCHAR NOT NULL,
    month      DATE NOT NULL,
    measure    VARCHAR NOT NULL,
    count      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ref_areas (
    area_code          VARCHAR PRIMARY KEY,
    area_name          VARCHAR,
    population_2012    BIGINT,
    pct_aged_65_plus   DOUBLE,
    imd_score          DOUBLE
);
CREATE TABLE IF NOT EXISTS area_month_panel (
    area_code      VARCHAR NOT NULL,
    month          DATE NOT NULL,
    outcome        VARCHAR NOT NULL,
    count          BIGINT NOT NULL,
    population     BIGINT NOT NULL,
    rate_per_1000  DOUBLE NOT NULL,
    PRIMARY KEY (area_code, month, outcome)
);
CREATE TABLE IF NOT EXISTS provider_month_panel (
    org_code  VARCHAR NOT NULL,
    month     DATE NOT NULL,
    outcome   VARCHAR NOT NULL,
    count     BIGINT NOT NULL,
    PRIMARY KEY (org_code, month, outcome)
);
CREATE TABLE IF NOT EXISTS sites (
    site_id               VARCHAR PRIMARY KEY,
    name                  VARCHAR NOT NULL,
    model_type            VARCHAR NOT NULL,
    go_live               DATE NOT NULL,
    announced             DATE,
    nhse_vanguard_number  INTEGER,
    areas                 VARCHAR[] NOT NULL
);
CREATE TABLE IF NOT EXISTS comparison_areas (
    site_id       VARCHAR NOT NULL,
    treated_area  VARCHAR NOT NULL,
    area_code     VARCHAR NOT NULL,
    rank          INTEGER NOT NULL,
    distance      DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS model_results (
    site_id             VARCHAR NOT NULL,
    outcome             VARCHAR NOT NULL,
    outcome_label       VARCHAR NOT NULL,
    measure             VARCHAR NOT NULL,
    outcome_order       INTEGER NOT NULL,
    estimator           VARCHAR NOT NULL,
    inference           VARCHAR NOT NULL,
    inference_reason    VARCHAR NOT NULL,
    warnings            VARCHAR NOT NULL,
    log_rate_ratio      DOUBLE NOT NULL,
    se                  DOUBLE NOT NULL,
    df                  INTEGER NOT NULL,
    p_value             DOUBLE NOT NULL,
    rate_ratio          DOUBLE NOT NULL,
    pct_change          DOUBLE NOT NULL,
    pct_ci_low          DOUBLE NOT NULL,
    pct_ci_high         DOUBLE NOT NULL,
    n_obs               INTEGER NOT NULL,
    n_treated_areas     INTEGER NOT NULL,
    n_comparison_areas  INTEGER NOT NULL,
    n_placebo           INTEGER NOT NULL,
    pre_rate_per_1000   DOUBLE NOT NULL,
    post_rate_per_1000  DOUBLE NOT NULL,
    run_id              VARCHAR NOT NULL,
    fitted_at           TIMESTAMP NOT NULL,
    PRIMARY KEY (site_id, outcome)
);
CREATE TABLE IF NOT EXISTS balance (
    site_id       VARCHAR NOT NULL,
    feature       VARCHAR NOT NULL,
    mean_site     DOUBLE NOT NULL,
    mean_pool     DOUBLE NOT NULL,
    mean_matched  DOUBLE NOT NULL,
    smd_before    DOUBLE NOT NULL,
    smd_after     DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS synthetic_control_results (
    site_id       VARCHAR NOT NULL,
    outcome       VARCHAR NOT NULL,
    pct_change    DOUBLE NOT NULL,
    p_value       DOUBLE,
    pct_ci_low    DOUBLE,
    pct_ci_high   DOUBLE,
    pre_rmspe     DOUBLE NOT NULL,
    post_rmspe    DOUBLE NOT NULL,
    n_donors      INTEGER NOT NULL,
    n_placebo     INTEGER NOT NULL,
    weights_json  VARCHAR NOT NULL,
    warnings      VARCHAR NOT NULL,
    run_id        VARCHAR NOT NULL,
    fitted_at     TIMESTAMP NOT NULL,
    PRIMARY KEY (site_id, outcome)
);
CREATE TABLE IF NOT EXISTS model_series (
    site_id                   VARCHAR NOT NULL,
    outcome                   VARCHAR NOT NULL,
    month                     DATE NOT NULL,
    observed_rate             DOUBLE NOT NULL,
    counterfactual_rate       DOUBLE NOT NULL,
    comparison_rate           DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS claim_checks (
    site_id         VARCHAR NOT NULL,
    claim           VARCHAR NOT NULL,
    outcome         VARCHAR NOT NULL,
    check_type      VARCHAR NOT NULL,
    window_months   INTEGER NOT NULL,
    claimed_pct     DOUBLE NOT NULL,
    naive_pct       DOUBLE,
    comparison_pct  DOUBLE,
    did_pct         DOUBLE,
    ci_low          DOUBLE,
    ci_high         DOUBLE,
    p_value         DOUBLE,
    q_value         DOUBLE,
    mde_pct         DOUBLE,
    method          VARCHAR NOT NULL,
    inference       VARCHAR NOT NULL,
    n_site          BIGINT,
    n_comparison    BIGINT,
    run_id          VARCHAR NOT NULL,
    PRIMARY KEY (site_id, claim)
);
CREATE TABLE IF NOT EXISTS event_study (
    site_id     VARCHAR NOT NULL,
    outcome     VARCHAR NOT NULL,
    e           INTEGER NOT NULL,
    estimate    DOUBLE NOT NULL,
    ci_low      DOUBLE NOT NULL,
    ci_high     DOUBLE NOT NULL,
    p_pretrend  DOUBLE,
    inference   VARCHAR
);
CREATE TABLE IF NOT EXISTS runs (
    run_id            VARCHAR PRIMARY KEY,
    started_at        TIMESTAMP NOT NULL,
    finished_at       TIMESTAMP,
    status            VARCHAR NOT NULL,
    code_version      VARCHAR NOT NULL,
    protocol_name     VARCHAR NOT NULL,
    protocol_sha256   VARCHAR NOT NULL,
    data_sha256       VARCHAR,
    study_start       DATE NOT NULL,
    study_end         DATE NOT NULL,
    orchestrator      VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS run_log (
    run_id      VARCHAR NOT NULL,
    dag_run_id  VARCHAR,
    task        VARCHAR NOT NULL,
    item        VARCHAR,
    attempt     INTEGER NOT NULL,
    status      VARCHAR NOT NULL,
    message     VARCHAR,
    logged_at   TIMESTAMP NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS provenance_event_id START 1;
"""

# Changes to tables of warehouses created by earlier versions: (test, expected, change). A
# change runs only when its test query does not return `expected`, so that opening the
# warehouse writes nothing once it is up to date.
MIGRATIONS = [
    (
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'provenance' "
        "AND column_name = 'superseded_by'",
        1,
        "ALTER TABLE provenance ADD COLUMN superseded_by BIGINT",
    ),
    (  # HES leaves the diagnosis blank on some episodes; the contract allows it
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'stg_episodes' "
        "AND column_name = 'primary_diagnosis' AND NOT is_nullable",
        0,
        "ALTER TABLE stg_episodes ALTER COLUMN primary_diagnosis DROP NOT NULL",
    ),
    *(  # event_study was first created by the reports, without its test and inference
        (
            "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'event_study' "
            f"AND column_name = '{column}'",
            1,
            f"ALTER TABLE event_study ADD COLUMN {column} {kind}",
        )
        for column, kind in (("p_pretrend", "DOUBLE"), ("inference", "VARCHAR"))
    ),
]

VIEWS = """
CREATE VIEW IF NOT EXISTS current_files AS
    SELECT * FROM provenance WHERE status = 'loaded' AND superseded_by IS NULL;
"""

#: Seconds to wait for another process's lock before giving up, unless $VANGUARD_LOCK_TIMEOUT.
LOCK_TIMEOUT = 600.0


class WarehouseBusy(RuntimeError):
    """Another process held the warehouse for longer than the lock timeout."""



def resolve_db(db: str | Path | None) -> Path:
    """The warehouse path: explicit argument, else $VANGUARD_DB, else ./vanguard.duckdb."""
    return Path(db or os.environ.get("VANGUARD_DB") or DEFAULT_DB)


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def lock_timeout() -> float:
    """How long `connect` waits for another process's lock ($VANGUARD_LOCK_TIMEOUT seconds)."""
    value = os.environ.get("VANGUARD_LOCK_TIMEOUT")
    return float(value) if value else LOCK_TIMEOUT


def open_with_retry(path: Path, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    """Open the database, waiting with capped exponential backoff while another process has it.

    Jitter spreads the retries of processes that collided at the same moment, so eight
    waiting writers do not all wake together. Errors other than a lock conflict are raised
    at once.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    waited = False
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            remaining = deadline - time.monotonic()
            if not _is_lock_conflict(exc) or remaining <= 0:
                if _is_lock_conflict(exc):
                    raise WarehouseBusy(
                        f"warehouse {path} stayed locked by another process for {timeout:g} s "
                        f"(set VANGUARD_LOCK_TIMEOUT to wait longer): {exc}"
                    ) from exc
                raise
            if not waited:
                log.info("%s is in use by another process; waiting for it", path)
                waited = True
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 1.0)
        else:
            if waited:
                log.info("%s: lock acquired", path)
            return con


@contextmanager
def connect(db: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection with the schema in place (writers create it if needed).

    Waits (see `open_with_retry`) while another process holds the database.
    """
    path = Path(db)
    if read_only and not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist; run `vanguard run` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = open_with_retry(path, read_only, lock_timeout())
    try:
        if not read_only:
            con.execute(SCHEMA)
            for test, expected, change in MIGRATIONS:
                if con.execute(test).fetchall()[0][0] != expected:
                    con.execute(change)
            con.execute(VIEWS)
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: commit on success, roll back on any exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def query(db: str | Path, sql: str, params: list | None = None) -> pl.DataFrame:
    """Run a read-only query and return a polars frame."""
    with connect(db, read_only=True) as con:
        return pl.from_arrow(con.sql(sql, params=params).to_arrow_table())  # type: ignore[return-value]


def replace_rows(
    con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, where: str, params: list
) -> None:
    """Delete the rows matching `where` and insert `frame`, inside the caller's transaction.

    Used for derived tables so that re-running a step for the same partition gives the
    same table, never a duplicate.
    """
    con.execute(f"DELETE FROM {table} WHERE {where}", params)
    if frame.height:
        con.register("_frame", frame.to_arrow())
        columns = ", ".join(frame.columns)
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _frame")
        con.unregister("_frame")
