"""Render the programme page and one page per site from the warehouse alone."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from jinja2 import Environment, PackageLoader, select_autoescape

from reports import plots
from reports.wording import evidence_rating, headline
from transforms import warehouse

log = logging.getLogger(__name__)


def _environment() -> Environment:
    # Autoescape: site names, file names and data values are untrusted text.
    return Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def load_report_data(db: Path) -> dict[str, pl.DataFrame]:
    """Everything the pages show, read once from the warehouse."""
    tables = {
        "runs": "SELECT * FROM runs ORDER BY started_at DESC LIMIT 1",
        "sites": "SELECT * FROM sites ORDER BY model_type, name",
        "results": "SELECT * FROM model_results ORDER BY site_id, outcome_order",
        "series": "SELECT * FROM model_series ORDER BY site_id, outcome, month",
        "comparators": "SELECT * FROM comparison_areas ORDER BY site_id, treated_area, rank",
        "files": (
            "SELECT source_id, regexp_extract(path, '[^/]+$') AS file, extract_date, kind, "
            "rows_received, rows_loaded, rows_quarantined, status, message "
            "FROM provenance ORDER BY source_id, event_id"
        ),
    }
    return {name: warehouse.query(db, sql) for name, sql in tables.items()}


def _provenance(runs: pl.DataFrame) -> dict:
    run = runs.row(0, named=True) if runs.height else {}
    return {
        "run_id": run.get("run_id", "none"),
        "code_version": run.get("code_version", "unknown"),
        "protocol_sha256": (run.get("protocol_sha256") or "")[:12],
        "data_sha256": (run.get("data_sha256") or "")[:12],
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _result_rows(results: pl.DataFrame, site_id: str) -> list[dict]:
    rows = []
    for row in results.filter(pl.col("site_id") == site_id).iter_rows(named=True):
        row["headline"] = headline(row["outcome_label"], row["pct_change"], row["pct_ci_low"],
                                   row["pct_ci_high"], row["p_value"])
        row["rating"] = evidence_rating(row["p_value"], row["n_treated_areas"])
        rows.append(row)
    return rows


def render_site(env: Environment, data: dict[str, pl.DataFrame], site: dict,
                provenance: dict) -> str:
    """One site's page: headline, estimates, plots, comparators, data quality, methods."""
    results = _result_rows(data["results"], site["site_id"])
    site_series = data["series"].filter(pl.col("site_id") == site["site_id"])
    panels = [
        (row["outcome_label"], site_series.filter(pl.col("outcome") == row["outcome"]))
        for row in results
    ]
    figures = []
    if site_series.height:
        labels = ", ".join(label.lower() for label, _ in panels)
        figures.append({
            "src": plots.observed_vs_counterfactual(panels, site["go_live"]),
            "alt": f"Monthly rates per 1,000 population of {labels} for {site['name']}: "
                   "observed, modelled without the new care model, and in matched "
                   "comparison areas, with the go-live month marked",
        })
    files = data["files"].filter(pl.col("source_id") == site["site_id"]).to_dicts()
    comparators = data["comparators"].filter(pl.col("site_id") == site["site_id"]).to_dicts()
    return env.get_template("site.html").render(
        site=site, results=results, figures=figures, files=files,
        comparators=comparators, provenance=provenance,
    )


def render_index(env: Environment, data: dict[str, pl.DataFrame], provenance: dict) -> str:
    """Programme page: forest plot of the primary outcome and a table of every estimate."""
    joined = data["results"].join(data["sites"], on="site_id", how="inner")
    outcomes = joined.sort("outcome_order")["outcome"].unique(maintain_order=True).to_list()
    forests = []
    for outcome in outcomes:
        rows = joined.filter(pl.col("outcome") == outcome).sort(["model_type", "name"]).to_dicts()
        label = rows[0]["outcome_label"]
        forests.append({
            "src": plots.forest(rows, label),
            "alt": f"Forest plot of the percentage change in {label.lower()} for each site "
                   "with 95% confidence intervals, grouped by model type",
        })
    table = joined.sort(["model_type", "name", "outcome_order"]).to_dicts()
    quarantined = data["files"].filter(pl.col("status") == "quarantined").to_dicts()
    return env.get_template("index.html").render(
        sites=data["sites"].to_dicts(), table=table, forests=forests,
        files=data["files"].to_dicts(), quarantined=quarantined, provenance=provenance,
    )


def render_reports(db: str | Path, out: str | Path) -> list[Path]:
    """Write `out/index.html` and `out/sites/<site_id>.html`; return the paths written."""
    db, out = Path(db), Path(out)
    (out / "sites").mkdir(parents=True, exist_ok=True)
    data = load_report_data(db)
    env = _environment()
    provenance = _provenance(data["runs"])
    written = []
    fitted = set(data["results"]["site_id"].to_list())
    for site in data["sites"].to_dicts():
        if site["site_id"] not in fitted:
            continue
        path = out / "sites" / f"{site['site_id']}.html"
        path.write_text(render_site(env, data, site, provenance), encoding="utf-8")
        written.append(path)
    index = out / "index.html"
    index.write_text(render_index(env, data, provenance), encoding="utf-8")
    written.append(index)
    log.info("reports: wrote %d pages under %s", len(written), out)
    return written
