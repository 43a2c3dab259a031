"""The DuckDB warehouse: the only module that reads and writes the database.

Layers, from raw to published:
  provenance, validation_results   what was received and what the checks said
  stg_aggregate, stg_episodes      site extracts, renamed and typed only (patient rows stay here)
  ref_areas                        area descriptors (population, age, deprivation)
  area_month_panel                 one row per area x month x outcome, aggregates only
  sites, comparison_areas          the protocol's sites and each site's matched comparators
  model_results, model_series      estimates and the series behind the plots
  runs                             one row per pipeline run, for the provenance footer

DuckDB allows one writer at a time, so every function opens a short-lived connection and
closes it; orchestrators must serialise writing tasks.
"""

from __future__ import annotations

import logging
import os
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
    primary_diagnosis  VARCHAR NOT NULL,
    age                SMALLINT NOT NULL,
    sex                VARCHAR NOT NULL,
    area_code          VARCHAR NOT NULL
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
CREATE TABLE IF NOT EXISTS model_series (
    site_id                   VARCHAR NOT NULL,
    outcome                   VARCHAR NOT NULL,
    month                     DATE NOT NULL,
    observed_rate             DOUBLE NOT NULL,
    counterfactual_rate       DOUBLE NOT NULL,
    comparison_rate           DOUBLE NOT NULL
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
CREATE SEQUENCE IF NOT EXISTS provenance_event_id START 1;
"""


def resolve_db(db: str | Path | None) -> Path:
    """The warehouse path: explicit argument, else $VANGUARD_DB, else ./vanguard.duckdb."""
    return Path(db or os.environ.get("VANGUARD_DB") or DEFAULT_DB)


@contextmanager
def connect(db: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection with the schema in place (writers create it if needed)."""
    path = Path(db)
    if read_only and not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist; run `vanguard run` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        if not read_only:
            con.execute(SCHEMA)
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
