"""Time each stage of the whole pipeline on the full demo (200 areas, 31 sites).

Usage: .venv/bin/python bench/pipeline.py [--seed N] [--workdir DIR]
Prints one line per stage with its wall time, and the total.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from reports import render_reports
from transforms import pipeline
from transforms.demo_data import generate_demo
from transforms.protocol import default_protocol_path, load_protocol


def timed(label: str, func: Callable[[], object], figures: list[tuple[str, float]]) -> object:
    start = time.perf_counter()
    result = func()
    figures.append((label, time.perf_counter() - start))
    print(f"{label:<28} {figures[-1][1]:8.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2015)
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vanguard-bench-"))
    shutil.rmtree(work / "demo", ignore_errors=True)
    protocol = load_protocol(default_protocol_path())
    db, landing, out = work / "bench.duckdb", work / "demo" / "landing", work / "out"
    db.unlink(missing_ok=True)
    figures: list[tuple[str, float]] = []

    timed("demo data", lambda: generate_demo(work / "demo", seed=args.seed, protocol=protocol),
          figures)
    run_id = pipeline.start_run(db, protocol, orchestrator="bench")
    pipeline.record_sites(db, protocol)

    def ingest_all() -> None:
        for source, files in pipeline.sources_in(landing, protocol).items():
            report = pipeline.ingest_source(db, protocol, source, files, work / "quarantine")
            assert not report.errors, report.errors

    timed("ingest + validate (GX)", ingest_all, figures)
    timed("panel + validate (GX)", lambda: pipeline.build_panel_step(db, protocol), figures)
    timed("matching (31 sites)",
          lambda: [pipeline.match_step(db, protocol, s.id) for s in protocol.sites], figures)
    timed("fit (31 sites x 4)",
          lambda: [pipeline.fit_step(db, protocol, s.id, run_id) for s in protocol.sites],
          figures)
    pipeline.finish_run(db, run_id)
    timed("reports (HTML)", lambda: render_reports(db, out), figures)
    print(f"{'total':<28} {sum(t for _, t in figures):8.1f} s")


if __name__ == "__main__":
    main()
