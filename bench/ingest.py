"""Ingest ten million patient-level episodes, validate them and aggregate them to the panel.

Usage: .venv/bin/python bench/ingest.py [--rows N] [--workdir DIR] [--seed N]

Writes a demo landing area for one patient-level site plus the national comparison pool,
then an episodes file of N rows (default 10 million, about 0.6 GB of CSV) for the
comparison areas, written by a child process so its memory does not count. It then times,
in this process:

  bare DuckDB      read_csv + GROUP BY of the same file to area-month counts (the same three
                   episode measures), before and after the ingest; the mean is the baseline
  bare load        CREATE TABLE AS read_csv of the same file into a DuckDB file, for reference:
                   what storing the rows costs before any checking
  ingest           ingest_file: hash and scan, stage into stg_episodes, every SQL rule on
                   every row, the GX suite on GX_MAX_ROWS staged rows, episode counts per
                   area-month, provenance, one transaction
  panel            build_panel_step: current counts, area and provider panels, GX panel suite

and prints wall times, rows per second, peak RSS of this process, and the ratio of
ingest + panel to the bare DuckDB baseline. Importing Great Expectations and building its
context happen once per process and are timed separately, before the ingest.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

SITE = "south-somerset"
CHUNK = 1_000_000


def write_episodes(path: str, areas: list[str], rows: int, seed: int, start: str,
                   days: int) -> None:
    """N synthetic HES-like episodes for `areas`, spread evenly over the study window."""
    rng = np.random.default_rng(seed)
    methods = np.array(["21", "22", "23", "2A", "28", "11", "12", "13", "31", "81"])
    method_p = np.array([0.3, 0.1, 0.05, 0.05, 0.1, 0.2, 0.1, 0.04, 0.04, 0.02])
    diagnoses = np.array(["J189", "I214", "F329", "K409", "R69X", "S720", "N390", "F05",
                          "J44.1", "I50"])
    pool = np.array([f"{x:016X}" for x in rng.integers(0, 2**63, 2_000_000).tolist()])
    first = np.datetime64(start)
    last_day = first + np.timedelta64(days - 1, "D")
    with open(path, "wb") as handle:
        for offset in range(0, rows, CHUNK):
            n = min(CHUNK, rows - offset)
            admitted = first + rng.integers(0, days, n).astype("timedelta64[D]")
            stay = (rng.geometric(0.35, n) - 1).astype("timedelta64[D]")
            ids = pool[rng.integers(0, len(pool), n)]
            frame = pl.DataFrame({
                "patient_id": ids,
                "admission_date": admitted,
                "discharge_date": np.minimum(admitted + stay, last_day),
                "admission_method": methods[rng.choice(len(methods), n, p=method_p)],
                "primary_diagnosis": diagnoses[rng.integers(0, len(diagnoses), n)],
                "age": rng.integers(0, 100, n).astype(np.int16),
                "sex": np.array(["1", "2"])[rng.integers(0, 2, n)],
                "area_code": np.array(areas)[rng.integers(0, len(areas), n)],
            })
            frame.write_csv(handle, include_header=offset == 0)


def bare_duckdb(path: Path) -> Timer:
    """A plain read_csv + GROUP BY to the same area-month episode measures."""
    from transforms.panel import episode_counts_sql

    con = duckdb.connect()
    with Timer() as timer:
        con.execute(
            f"SELECT count(*) FROM ({episode_counts_sql('read_csv(?)')})", [str(path)]
        ).fetchall()
    con.close()
    return timer


def bare_duckdb_load(path: Path, workdir: Path) -> Timer:
    """Copy the file into a DuckDB table as it is: the floor of any durable staging."""
    db = workdir / "bare-load.duckdb"
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    with Timer() as timer:
        con.execute("CREATE TABLE episodes AS SELECT * FROM read_csv(?)", [str(path)])
        con.execute("CHECKPOINT")
    con.close()
    db.unlink(missing_ok=True)
    return timer


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def cpu_seconds() -> float:
    """User + system CPU of this process: steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=2015)
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("transforms.ingest").setLevel(logging.INFO)

    from expectations.contract import study_window
    from transforms import pipeline
    from transforms.demo_data import generate_demo
    from transforms.ingest import ingest_file
    from transforms.protocol import default_protocol_path, load_protocol

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vanguard-bench-ingest-"))
    shutil.rmtree(work / "demo", ignore_errors=True)
    protocol = load_protocol(default_protocol_path()).subset([SITE])
    db, quarantine = work / "bench.duckdb", work / "quarantine"
    for leftover in (db, db.with_name(db.name + ".wal")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(quarantine, ignore_errors=True)

    generate_demo(work / "demo", seed=args.seed, protocol=protocol, n_areas=120)
    landing = work / "demo" / "landing"
    comparison = landing / "comparison" / "2019-05-15" / "aggregate.csv"
    areas = sorted(pl.read_csv(comparison)["area_code"].unique().to_list())
    big = landing / "comparison" / "2019-05-16" / "episodes.csv"
    big.parent.mkdir(parents=True, exist_ok=True)
    first, after = study_window(protocol.start, protocol.end)
    days = (after - first).days
    started = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(
        target=write_episodes,
        args=(str(big), areas, args.rows, args.seed, first.isoformat(), days),
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit("generating the episodes file failed")
    size_gb = big.stat().st_size / 1e9
    print(f"episodes file          {args.rows:>12,} rows, {size_gb:.2f} GB, "
          f"{len(areas)} areas (written in {time.perf_counter() - started:.0f} s)", flush=True)

    started = time.perf_counter()
    from expectations import validate_aggregate

    validate_aggregate(pl.read_csv(comparison, n_rows=10, try_parse_dates=True).to_pandas(),
                       start=protocol.start, end=protocol.end)
    print(f"GX start-up (once)     {time.perf_counter() - started:8.1f} s", flush=True)

    pipeline.record_sites(db, protocol)
    for source, files in pipeline.sources_in(landing, protocol).items():
        small = [f for f in files if f != big]
        report = pipeline.ingest_source(db, protocol, source, small, quarantine)
        assert not report.errors, report.errors

    baseline = [bare_duckdb(big)]
    print(f"bare DuckDB (1st)      {baseline[0].wall:8.1f} s", flush=True)

    with Timer() as ingest:
        outcome = ingest_file(db, "comparison", big, protocol, quarantine)
    assert outcome.status == "loaded" and outcome.rows_loaded == args.rows, outcome
    print(f"ingest + validate      {ingest.wall:8.1f} s  ({args.rows / ingest.wall:,.0f} rows/s)",
          flush=True)

    with Timer() as panel:
        panel_rows = pipeline.build_panel_step(db, protocol)
    print(f"panel + validate       {panel.wall:8.1f} s  ({panel_rows:,} panel rows)", flush=True)

    baseline.append(bare_duckdb(big))
    print(f"bare DuckDB (2nd)      {baseline[1].wall:8.1f} s", flush=True)
    load = bare_duckdb_load(big, work)
    print(f"bare DuckDB load       {load.wall:8.1f} s  (CREATE TABLE AS read_csv, for reference)")
    bare_wall = sum(t.wall for t in baseline) / len(baseline)
    bare_cpu = sum(t.cpu for t in baseline) / len(baseline)
    total_wall, total_cpu = ingest.wall + panel.wall, ingest.cpu + panel.cpu
    print(f"{'total':<22} {total_wall:8.1f} s  ({args.rows / total_wall:,.0f} rows/s end to end)")
    print(f"{'':<22} {'wall':>8} {'CPU':>8}")
    print(f"{'ratio to bare DuckDB':<22} {total_wall / bare_wall:8.2f} {total_cpu / bare_cpu:8.2f}"
          "   (read_csv + GROUP BY; target <= 2.0)")
    print(f"{'ratio to bare load':<22} {total_wall / load.wall:8.2f} {total_cpu / load.cpu:8.2f}"
          "   (read_csv into a table)")
    print(f"{'bare load / bare':<22} {load.wall / bare_wall:8.2f} {load.cpu / bare_cpu:8.2f}"
          "   (the cost of storing the rows at all)")
    print(f"{'peak RSS':<22} {peak_rss_gb():8.2f} GB (target <= 4 GB)")


if __name__ == "__main__":
    main()
