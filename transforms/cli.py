"""The `vanguard` command: demo data, ingest, the whole pipeline, and reports.

Exit codes: 0 success; 1 some input was quarantined (the rest was processed);
2 the protocol or a pipeline stage failed and nothing downstream was produced.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from transforms.protocol import ProtocolError, default_protocol_path, load_protocol
from transforms.warehouse import resolve_db

log = logging.getLogger("vanguard")


def _protocol(args: argparse.Namespace):
    protocol = load_protocol(args.protocol)
    if getattr(args, "sites", None):
        protocol = protocol.subset(args.sites.split(","))
    return protocol


def cmd_demo_data(args: argparse.Namespace) -> int:
    from transforms.demo_data import generate_demo

    summary = generate_demo(Path(args.out), seed=args.seed, protocol=_protocol(args),
                            n_areas=args.areas)
    print(f"demo data written to {args.out}: {summary}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from transforms.pipeline import ingest_source

    db = resolve_db(args.db)
    quarantine_dir = Path(args.quarantine) if args.quarantine else db.parent / "quarantine"
    report = ingest_source(db, _protocol(args), args.site, [Path(f) for f in args.files],
                           quarantine_dir)
    for outcome in report.outcomes:
        print(f"{outcome.status}: {outcome.path} ({outcome.rows_loaded} rows)")
    for error in report.errors:
        print(f"QUARANTINED: {error}", file=sys.stderr)
    return 1 if report.errors else 0


def cmd_run(args: argparse.Namespace) -> int:
    from transforms.pipeline import PipelineError, run_pipeline

    db = resolve_db(args.db)
    try:
        run_id, errors = run_pipeline(db, Path(args.landing), Path(args.out), _protocol(args),
                                      Path(args.quarantine) if args.quarantine else None)
    except PipelineError as exc:
        print(f"pipeline failed: {exc}", file=sys.stderr)
        return 2
    for error in errors:
        print(f"QUARANTINED: {error}", file=sys.stderr)
    print(f"run {run_id} finished; reports in {Path(args.out).resolve()}/index.html")
    return 1 if errors else 0


def cmd_report(args: argparse.Namespace) -> int:
    from reports import render_reports

    written = render_reports(resolve_db(args.db), Path(args.out))
    print(f"wrote {len(written)} pages; open {Path(args.out).resolve()}/index.html")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from transforms.status import run_status

    text, ok = run_status(resolve_db(args.db), Path(args.out),
                          Path(args.truth) if args.truth else None)
    print(text)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vanguard",
        description="Evaluate NHS new care model vanguards against matched comparison areas.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p: argparse.ArgumentParser, db: bool = True) -> None:
        p.add_argument("--protocol", default=str(default_protocol_path()),
                       help="evaluation protocol TOML (default: %(default)s)")
        if db:
            p.add_argument("--db", help="DuckDB warehouse (default: $VANGUARD_DB or "
                                        "./vanguard.duckdb)")

    demo = sub.add_parser("demo-data", help="write seeded synthetic site extracts",
                          description="Write seeded, deterministic synthetic extracts for "
                                      "every protocol site and the comparison pool, plus "
                                      "truth.json with the injected effects.")
    add_common(demo, db=False)
    demo.add_argument("--out", required=True, help="output directory")
    demo.add_argument("--seed", type=int, default=2015, help="random seed (default 2015)")
    demo.add_argument("--areas", type=int, default=200, help="number of areas (default 200)")
    demo.add_argument("--sites", help="comma-separated subset of protocol site ids")
    demo.set_defaults(func=cmd_demo_data)

    ingest = sub.add_parser("ingest", help="validate and load extract files for one source",
                            description="Validate files against the data contract and load "
                                        "each all-or-nothing; bad files are quarantined.")
    add_common(ingest)
    ingest.add_argument("--site", required=True,
                        help="site id from the protocol, or 'comparison' for the national pool")
    ingest.add_argument("--quarantine", help="quarantine directory (default: next to the db)")
    ingest.add_argument("files", nargs="+", help="CSV files")
    ingest.set_defaults(func=cmd_ingest)

    run = sub.add_parser("run", help="the whole pipeline without Airflow",
                         description="Ingest every file under LANDING/<source>/<extract_date>/,"
                                     " build the panel, match, fit and write reports.")
    add_common(run)
    run.add_argument("--landing", required=True, help="landing directory")
    run.add_argument("--out", required=True, help="report directory")
    run.add_argument("--quarantine", help="quarantine directory (default: next to the db)")
    run.add_argument("--sites", help="comma-separated subset of protocol site ids")
    run.set_defaults(func=cmd_run)

    report = sub.add_parser("report", help="render HTML reports from the warehouse",
                            description="Render the programme page and one page per site.")
    report.add_argument("--db", help="DuckDB warehouse")
    report.add_argument("--out", required=True, help="report directory")
    report.set_defaults(func=cmd_report)

    status = sub.add_parser("status", help="check the latest run and summarise its estimates",
                            description="Exit 0 only if the latest run succeeded and its "
                                        "reports exist; with --truth, set the demo's injected "
                                        "effects beside the estimates.")
    status.add_argument("--db", help="DuckDB warehouse")
    status.add_argument("--out", required=True, help="report directory")
    status.add_argument("--truth", help="truth.json written by demo-data")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except ProtocolError as exc:
        print(f"protocol error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
