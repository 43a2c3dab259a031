"""The warehouse's state in a few lines: the latest run, and every file received.

`run_status` says whether the latest run succeeded and where its reports are; `load_status`
lists each file received with its reconciliation (rows received = loaded + quarantined, and
rows loaded = rows found in staging), its validation outcome, whether a later extract
replaced it, and the reason for every refusal.
"""

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


_FILES = """
    SELECT p.event_id, p.source_id, p.kind, p.path, p.extract_date, p.status,
           p.rows_received, p.rows_loaded, p.rows_quarantined, p.superseded_by, p.message,
           p.code_version,
           coalesce(a.n, 0) + coalesce(e.n, 0) + coalesce(n.n, 0) AS rows_staged,
           v.checks, v.passed
    FROM provenance p
    LEFT JOIN (SELECT event_id, count(*) AS n FROM stg_aggregate GROUP BY 1) a USING (event_id)
    LEFT JOIN (SELECT event_id, count(*) AS n FROM stg_episodes GROUP BY 1) e USING (event_id)
    LEFT JOIN (SELECT event_id, count(*) AS n FROM stg_nhse_ae GROUP BY 1) n USING (event_id)
    LEFT JOIN (SELECT event_id, count(*) AS checks, bool_and(success) AS passed
               FROM validation_results WHERE event_id IS NOT NULL GROUP BY 1) v USING (event_id)
    ORDER BY p.event_id
"""


def file_status(db: Path) -> pl.DataFrame:
    """One row per file received, with its reconciliation and validation outcome."""
    files = warehouse.query(db, _FILES)
    loaded_paths = set(files.filter(pl.col("status") == "loaded")["path"].to_list())
    return files.with_columns(
        (
            (pl.col("rows_received") == pl.col("rows_loaded") + pl.col("rows_quarantined"))
            & (pl.col("rows_loaded") == pl.col("rows_staged"))
        ).alias("reconciled"),
        # a refusal is outstanding until a file at the same path loads after it
        (
            (pl.col("status") == "quarantined")
            & ~pl.col("path").is_in(sorted(loaded_paths))
        ).alias("outstanding"),
    )


def _short(path: str, parts: int = 3) -> str:
    return "/".join(Path(path).parts[-parts:])


def load_status(db: Path) -> tuple[str, bool]:
    """Every file received, the refusals with their reasons, and the reconciliation.

    OK when every file reconciles and no refusal is outstanding.
    """
    files = file_status(db)
    if not files.height:
        return f"{db}: no files received", True
    quarantined = files.filter(pl.col("status") == "quarantined")
    superseded = files.filter(pl.col("superseded_by").is_not_null()).height
    lines = [
        f"Files received: {files.height} ({files.height - quarantined.height} loaded, "
        f"{superseded} of them replaced by a later extract; {quarantined.height} quarantined)",
        f"  {'event':>5}  {'source':<22} {'kind':<9} {'extract':<10} {'status':<11} "
        f"{'received':>10} = {'loaded':>10} + {'refused':>9}  {'staged':>10}  checks  file",
    ]
    for row in files.iter_rows(named=True):
        status = row["status"]
        if row["superseded_by"] is not None:
            status = f"replaced>{row['superseded_by']}"
        checks = "none" if row["checks"] is None else ("passed" if row["passed"] else "FAILED")
        mark = "" if row["reconciled"] else "  <- DOES NOT RECONCILE"
        lines.append(
            f"  {row['event_id']:>5}  {row['source_id'][:22]:<22} {row['kind'][:9]:<9} "
            f"{str(row['extract_date'] or '-'):<10} {status[:11]:<11} "
            f"{row['rows_received']:>10,} = {row['rows_loaded']:>10,} + "
            f"{row['rows_quarantined']:>9,}  {row['rows_staged']:>10,}  {checks:<6}  "
            f"{_short(row['path'])}{mark}"
        )
    if quarantined.height:
        lines.append("Quarantined files and reasons:")
        for row in quarantined.iter_rows(named=True):
            flag = "" if row["outstanding"] else " (since loaded again)"
            lines.append(f"  event {row['event_id']}, {row['source_id']}: {row['path']}{flag}")
            reason = str(row["message"] or "").removeprefix(f"{row['path']}: ")
            lines += [f"      {text}" for text in reason.splitlines()]
    broken = files.filter(~pl.col("reconciled"))
    if broken.height:
        lines.append(f"Reconciliation: {broken.height} file(s) DO NOT reconcile: "
                     f"events {broken['event_id'].to_list()}")
    else:
        lines.append(
            f"Reconciliation: all {files.height} files reconcile (rows received = loaded + "
            "quarantined; rows loaded = rows in staging)"
        )
    ok = not broken.height and not files["outstanding"].any()
    return "\n".join(lines), ok
