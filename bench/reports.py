"""Time the board papers (HTML and PDF) for a 50-site programme.

Usage: .venv/bin/python bench/reports.py [--db WAREHOUSE] [--sites 50] [--workdir DIR]

Copies a fitted warehouse (by default it builds the full demo first, about 2 minutes, not
timed), duplicates its sites with their estimates, series, comparators and files until
there are --sites of them, then times `render_reports` and prints the figure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path, and this file's name would hide
# the `reports` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from reports import render_reports  # noqa: E402
from transforms import pipeline, warehouse  # noqa: E402
from transforms.demo_data import generate_demo  # noqa: E402
from transforms.protocol import default_protocol_path, load_protocol  # noqa: E402

# Per-site tables copied for each duplicate site, with the columns other than site_id.
SITE_TABLES = ("model_results", "model_series", "comparison_areas")


def build_demo(work: Path) -> Path:
    """The full demo warehouse (31 sites), fitted without Airflow."""
    protocol = load_protocol(default_protocol_path())
    generate_demo(work / "demo", seed=2015, protocol=protocol)
    db = work / "demo.duckdb"
    pipeline.run_pipeline(db, work / "demo" / "landing", work / "demo-out", protocol)
    return db


def _copy_rows(con, table: str, where: str, params: list, replace: dict[str, str]) -> None:
    """Insert copies of `table`'s rows matching `where`, with some columns replaced by SQL
    expressions (whatever other columns the table has today)."""
    columns = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
    select = ", ".join(f"{replace[c]} AS {c}" if c in replace else c for c in columns)
    con.execute(f"INSERT INTO {table} SELECT {select} FROM {table} WHERE {where}", params)


def duplicate_sites(db: Path, target: int) -> int:
    """Add copies of existing sites (new ids, same data) until there are `target` sites."""
    with warehouse.connect(db) as con, warehouse.transaction(con):
        sites = [row[0] for row in con.execute(
            "SELECT site_id FROM sites ORDER BY site_id").fetchall()]
        for n in range(max(0, target - len(sites))):
            source = sites[n % len(sites)]
            copy = f"'{source}-copy{n}'"
            _copy_rows(con, "sites", "site_id = ?", [source],
                       {"site_id": copy, "name": f"name || ' (copy {n})'",
                        "nhse_vanguard_number": "NULL"})
            for table in SITE_TABLES:
                _copy_rows(con, table, "site_id = ?", [source], {"site_id": copy})
            (offset,) = con.execute(
                "SELECT coalesce(max(event_id), 0) FROM provenance").fetchone() or (0,)
            _copy_rows(con, "validation_results",
                       "event_id IN (SELECT event_id FROM provenance WHERE source_id = ?)",
                       [source], {"event_id": f"event_id + {offset}"})
            _copy_rows(con, "provenance", "source_id = ?", [source],
                       {"event_id": f"event_id + {offset}", "source_id": copy})
        (count,) = con.execute("SELECT count(*) FROM sites").fetchone() or (0,)
    return int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a fitted warehouse to copy (default: build the demo)")
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    parser.add_argument("--workers", type=int, help="PDF worker processes (default: per CPU)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vanguard-bench-reports-"))
    work.mkdir(parents=True, exist_ok=True)
    source = Path(args.db) if args.db else build_demo(work)
    db = work / "bench-reports.duckdb"
    shutil.copyfile(source, db)
    n_sites = duplicate_sites(db, args.sites)
    out = work / "reports"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    written = render_reports(db, out, workers=args.workers)
    elapsed = time.perf_counter() - start
    pdfs = sum(1 for p in written if p.suffix == ".pdf")
    print(f"reports for {n_sites} sites: {len(written) - pdfs} HTML pages and {pdfs} PDFs "
          f"in {elapsed:.1f} s ({out})")


if __name__ == "__main__":
    main()
