"""A run's outcome in a few lines: did it succeed, where are the reports, what was found."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from transforms import warehouse


def truth_frame(truth_path: Path) -> pl.DataFrame:
    """Injected effects from a demo's truth.json as (site_id, measure, true_pct_change)."""
    truth = json.loads(truth_path.read_text())
    rows = [
        (site_id, measure, effect["pct_change"])
        for site_id, site in truth["sites"].items()
        for measure, effect in site["effects"].items()
    ]
    return pl.DataFrame(rows, schema=["site_id", "measure", "true_pct_change"], orient="row")


def run_status(db: Path, out: Path, truth_path: Path | None = None) -> tuple[str, bool]:
    """Summary text and whether the latest run succeeded with its reports written."""
    runs = warehouse.query(db, "SELECT * FROM runs ORDER BY started_at DESC LIMIT 1")
    if not runs.height:
        return f"{db}: no runs recorded", False
    run = runs.row(0, named=True)
    index = out / "index.html"
    results = warehouse.query(
        db, "SELECT site_id, outcome, measure, pct_change, pct_ci_low, pct_ci_high, p_value "
            "FROM model_results ORDER BY site_id, outcome"
    )
    lines = [
        f"run {run['run_id']} ({run['orchestrator']}): {run['status']}",
        f"{results['site_id'].n_unique()} sites, {results.height} estimates",
        f"reports: {index.resolve()}" + ("" if index.is_file() else " (MISSING)"),
    ]
    if truth_path is not None and truth_path.is_file():
        joined = results.join(truth_frame(truth_path), on=["site_id", "measure"])
        joined = joined.with_columns(
            pl.col("true_pct_change").is_between("pct_ci_low", "pct_ci_high").alias("covered")
        )
        lines.append(
            f"true effect inside the 95% CI for {int(joined['covered'].sum())} of "
            f"{joined.height} site-outcome estimates"
        )
        nonzero = joined.filter(pl.col("true_pct_change").abs() >= 4)
        for row in nonzero.iter_rows(named=True):
            lines.append(
                f"  {row['site_id']:<24} {row['outcome']:<24} true {row['true_pct_change']:+6.1f}%"
                f"  estimated {row['pct_change']:+6.1f}% "
                f"({row['pct_ci_low']:+.1f}% to {row['pct_ci_high']:+.1f}%)"
            )
    ok = run["status"] == "success" and index.is_file()
    return "\n".join(lines), ok
