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
    # transforms.ingest alone: the modelling stack is not needed to load a file
    from transforms.ingest import IngestError, ingest_file

    db = resolve_db(args.db)
    quarantine_dir = Path(args.quarantine) if args.quarantine else db.parent / "quarantine"
    protocol = _protocol(args)
    refused = 0
    for name in args.files:
        try:
            outcome = ingest_file(db, args.site, Path(name), protocol, quarantine_dir)
        except IngestError as exc:
            refused += 1
            print(f"QUARANTINED: {exc}", file=sys.stderr)
            continue
        print(f"{outcome.status}: {outcome.path} ({outcome.rows_loaded:,} of "
              f"{outcome.rows_received:,} rows loaded)")
    if refused:
        print(f"{refused} of {len(args.files)} file(s) refused; see {quarantine_dir}",
              file=sys.stderr)
    return 1 if refused else 0


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
    from transforms.status import load_status, run_status

    db = resolve_db(args.db)
    ok = True
    if args.out:
        text, ok = run_status(db, Path(args.out), Path(args.truth) if args.truth else None)
        print(text)
    files, files_ok = load_status(db)
    print(files)
    return 0 if ok and files_ok else 1


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
                                        "each all-or-nothing; bad files are moved to "
                                        "quarantine with a reason. Exit 0 when every file "
                                        "loaded (or was already loaded), 1 when any was "
                                        "refused.")
    add_common(ingest)
    ingest.add_argument("--site", required=True,
                        help="site id from the protocol, or 'comparison' for the national pool")
    ingest.add_argument("--quarantine", help="quarantine directory (default: next to the db)")
    ingest.add_argument("files", nargs="+",
                        help="extract files: CSV (.csv, .csv.gz) or Parquet (.parquet)")
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

    status = sub.add_parser("status", help="files received, refusals, and the latest run",
                            description="List every file received with its reconciliation "
                                        "(rows received = loaded + quarantined) and checks, "
                                        "and the reason for each refusal. With --out, also "
                                        "check the latest run and its reports; with --truth, "
                                        "set the demo's injected effects beside the "
                                        "estimates. Exit 0 only if every file reconciles, no "
                                        "refusal is outstanding and (with --out) the latest "
                                        "run succeeded with its reports written.")
    status.add_argument("--db", help="DuckDB warehouse")
    status.add_argument("--out", help="report directory (checks the latest run)")
    status.add_argument("--truth", help="truth.json written by demo-data (with --out)")
    status.set_defaults(func=cmd_status)

    from transforms.did.cli import register as register_did
    from transforms.placebo import register as register_placebo

    register_did(sub)
    register_placebo(sub)
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
