"""What the reports read: warehouse tables, plus one input no pipeline step writes yet.

`claims` holds each site's own before/after claims (until a claims step exists, the
changes in emergency admission rate reported by HSJ, from the shared reference data); it
is created here if absent. `event_study` (coefficients by quarter since go-live, as %
change, with the pre-trend p-value) is written by the pipeline's fit step and defined
with the other warehouse tables; a site without rows shows "not yet estimated".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from transforms import warehouse

log = logging.getLogger(__name__)

REPORT_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    site_id             VARCHAR NOT NULL,
    outcome             VARCHAR NOT NULL,
    claimed_pct_change  DOUBLE NOT NULL,
    source              VARCHAR NOT NULL
);
"""

HSJ_SOURCE = (
    "HSJ (2018): change in the emergency admission rate from 2014/15 to the 12 months to "
    "September 2017, as reported (before and after, no comparison areas)"
)
HSJ_COLUMN = "hsj_pct_change_emerg_adm_rate_1415_to_12m_sep2017"
CLAIMED_OUTCOME = "emergency_admissions"
SITES_REFERENCE = "vanguard_sites_2015.csv"
MORCIANO_REFERENCE = "morciano2020_table1.csv"


def reference_dir() -> Path:
    """Published reference data: $VANGUARD_REFERENCE, else shared/reference beside the
    project checkout."""
    configured = os.environ.get("VANGUARD_REFERENCE")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "reference"


def claims_from_reference(sites: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """Claims per site from the vanguard reference list, matched on the NHS England
    vanguard number. HSJ's positive numbers are increases, so they are kept as signed."""
    published = reference.select(
        pl.col("nhse_vanguard_number").cast(pl.Int32, strict=False),
        pl.col(HSJ_COLUMN).cast(pl.Float64, strict=False).alias("claimed_pct_change"),
    ).drop_nulls()
    return (
        sites.select("site_id", pl.col("nhse_vanguard_number").cast(pl.Int32))
        .join(published, on="nhse_vanguard_number", how="inner")
        .select(
            "site_id",
            pl.lit(CLAIMED_OUTCOME).alias("outcome"),
            "claimed_pct_change",
            pl.lit(HSJ_SOURCE).alias("source"),
        )
        .sort("site_id")
    )


def ensure_report_tables(db: Path) -> None:
    """Create the claims table if no step has made it yet; opening the warehouse for
    writing brings the other tables (event_study among them) up to date."""
    with warehouse.connect(db) as con:
        con.execute(REPORT_SCHEMA)


def load_claims(db: Path, reference_csv: Path) -> int:
    """Replace the HSJ claims in the warehouse from the reference list; return the rows."""
    sites = warehouse.query(db, "SELECT site_id, nhse_vanguard_number FROM sites")
    reference = pl.read_csv(reference_csv, infer_schema_length=0)
    missing = {"nhse_vanguard_number", HSJ_COLUMN} - set(reference.columns)
    if missing:
        raise ValueError(f"{reference_csv}: missing column(s) {sorted(missing)}")
    claims = claims_from_reference(sites, reference)
    with warehouse.connect(db) as con, warehouse.transaction(con):
        con.execute(REPORT_SCHEMA)
        warehouse.replace_rows(con, "claims", claims, "source = ?", [HSJ_SOURCE])
    log.info("claims: %d site claims from %s", claims.height, reference_csv)
    return claims.height


def read_morciano(reference: Path) -> pl.DataFrame:
    """Morciano et al. 2020 Table 1 (published estimates), or an empty frame if absent."""
    path = reference / MORCIANO_REFERENCE
    schema = {"site_type": pl.String, "window": pl.String, "outcome": pl.String,
              "did_estimate": pl.Float64, "ci95_low": pl.Float64, "ci95_high": pl.Float64,
              "source": pl.String}
    if not path.is_file():
        log.warning("reports: %s not found; the forest plot has no published reference", path)
        return pl.DataFrame(schema=schema)
    return pl.read_csv(path, schema_overrides=schema).select(list(schema))


@dataclass(frozen=True)
class ReportData:
    """Everything the pages show, read once."""

    run: dict
    sites: pl.DataFrame
    results: pl.DataFrame
    series: pl.DataFrame
    comparators: pl.DataFrame
    panel: pl.DataFrame
    ref_areas: pl.DataFrame
    files: pl.DataFrame
    validations: pl.DataFrame
    claims: pl.DataFrame
    event_study: pl.DataFrame
    morciano: pl.DataFrame
    claim_checks: pl.DataFrame = field(default_factory=pl.DataFrame)
    run_steps: pl.DataFrame = field(default_factory=pl.DataFrame)


QUERIES = {
    "sites": "SELECT * FROM sites ORDER BY model_type, name",
    "results": "SELECT * FROM model_results ORDER BY site_id, outcome_order",
    "series": "SELECT site_id, outcome, month, counterfactual_rate FROM model_series "
              "ORDER BY site_id, outcome, month",
    "comparators": "SELECT * FROM comparison_areas ORDER BY site_id, treated_area, rank",
    "panel": "SELECT area_code, month, outcome, count, population FROM area_month_panel "
             "ORDER BY outcome, area_code, month",
    "ref_areas": "SELECT area_code, pct_aged_65_plus, imd_score FROM ref_areas",
    "files": (
        "SELECT event_id, source_id, regexp_extract(path, '[^/]+$') AS file, extract_date, "
        "kind, rows_received, rows_loaded, rows_quarantined, status, message "
        "FROM provenance ORDER BY source_id, event_id"
    ),
    "validations": (
        "SELECT v.event_id, v.suite, v.success, v.evaluated, v.result_json, p.source_id, "
        "p.kind, regexp_extract(v.target, '[^/]+$') AS file "
        "FROM validation_results v LEFT JOIN provenance p USING (event_id) "
        "ORDER BY v.event_id NULLS LAST, v.suite"
    ),
    "claims": "SELECT * FROM claims ORDER BY site_id, outcome",
    "event_study": "SELECT * FROM event_study ORDER BY site_id, outcome, e",
    "claim_checks": "SELECT * FROM claim_checks ORDER BY site_id, claim",
    # The latest run's final attempt at each step and item (transforms/runlog.py).
    "run_steps": (
        "SELECT task, item, status, attempt, message FROM run_log "
        "WHERE run_id = (SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1) "
        "QUALIFY row_number() OVER (PARTITION BY task, item "
        "ORDER BY attempt DESC, logged_at DESC) = 1 ORDER BY task, item"
    ),
}


def load_report_data(db: Path, reference: Path | None = None) -> ReportData:
    """Read every table the pages need, with the published reference estimates."""
    frames = {name: warehouse.query(db, sql) for name, sql in QUERIES.items()}
    runs = warehouse.query(db, "SELECT * FROM runs ORDER BY started_at DESC LIMIT 1")
    return ReportData(
        run=runs.row(0, named=True) if runs.height else {},
        morciano=read_morciano(reference or reference_dir()),
        **frames,
    )
