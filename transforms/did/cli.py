"""`vanguard did`: Callaway & Sant'Anna DiD on any panel file, printed as JSON or a table.

Exit codes: 0 success; 2 the input or options cannot be used (the message says why).
`register(subparsers)` adds the subcommand to the `vanguard` parser in transforms/cli.py.
The JSON document is described in docs/did-json-schema.md. Numerical libraries are
imported when the command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transforms.argtypes import whole_number
from transforms.did.options import (
    BASES,
    CONTROLS,
    METHODS,
    MULTIPLIERS,
    CSOptions,
    DidInputError,
    PanelColumns,
)

if TYPE_CHECKING:
    import polars as pl

    from transforms.did.callaway_santanna import CSResult



non_negative = whole_number(0)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `did` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "did",
        help="Callaway & Sant'Anna difference-in-differences on a panel file",
        description="Group-time ATTs, their aggregations (simple, by cohort, event study, "
                    "calendar) and a parallel-trends pre-test, matching R package `did`. "
                    "Standard errors are analytic unless --bootstrap N is given.",
    )
    parser.add_argument("panel", metavar="PANEL",
                        help="CSV or Parquet file with one row per unit and period")
    parser.add_argument("--unit", required=True, help="unit id column")
    parser.add_argument("--time", required=True, help="period column (numeric)")
    parser.add_argument("--cohort", required=True,
                        help="first treated period of each unit, 0 for never treated")
    parser.add_argument("--outcome", required=True, help="outcome column")
    parser.add_argument("--control", choices=CONTROLS, default="never",
                        help="never-treated or not-yet-treated controls (default: never)")
    parser.add_argument("--base", choices=BASES, default="varying",
                        help="base period for pre-treatment ATTs (default: varying)")
    parser.add_argument("--anticipation", type=non_negative, default=0, metavar="K",
                        help="periods of anticipation before treatment (default: 0)")
    parser.add_argument("--covariates", default="", metavar="C1,C2",
                        help="comma-separated covariate columns")
    parser.add_argument("--method", choices=METHODS, default="dr",
                        help="2x2 estimator with covariates: outcome regression, inverse "
                             "probability weighting or doubly robust (default: dr)")
    parser.add_argument("--weights", metavar="COL", help="sampling weights, constant per unit")
    parser.add_argument("--cluster", metavar="COL", help="cluster column, constant per unit")
    parser.add_argument("--bootstrap", type=non_negative, default=0, metavar="N",
                        help="multiplier bootstrap draws (default: 0 = analytic SEs)")
    parser.add_argument("--multiplier", choices=MULTIPLIERS, default="rademacher",
                        help="bootstrap multiplier weights (default: rademacher)")
    parser.add_argument("--seed", type=int, help="random seed for the bootstrap")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="1 - confidence level (default: 0.05)")
    parser.add_argument("--family", choices=("gaussian", "poisson"), default="gaussian",
                        help="outcome family (only gaussian is estimated here)")
    parser.add_argument("--offset", metavar="COL", help="log offset column (poisson only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_did)
    return parser


def read_panel(path: Path) -> pl.DataFrame:
    """A CSV or Parquet file as a polars DataFrame."""
    import polars as pl

    if not path.exists():
        raise DidInputError(f"panel file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
        if suffix in (".csv", ".txt"):
            return pl.read_csv(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DidInputError(f"could not read {path}: {exc}") from exc
    raise DidInputError(f"panel file {path} must end in .csv or .parquet")


def _fmt(value: float | None, width: int = 10) -> str:
    return f"{'NA':>{width}}" if value is None else f"{value:>{width}.4f}"


def summary_text(result: CSResult) -> str:
    """A plain-text summary for a terminal."""
    data = result.to_dict()
    lines = [f"Callaway & Sant'Anna DiD: method {data['method']}, control {data['control']}, "
             f"base {data['base']}, anticipation {data['anticipation']}, "
             f"{data['n_units']} units, {data['inference']} SEs", "",
             "Group-time ATTs", f"{'group':>8} {'time':>8} {'ATT':>10} {'SE':>10}"]
    lines += [f"{c['group']:>8} {c['time']:>8} {_fmt(c['att'])} {_fmt(c['se'])}"
              for c in data["att_gt"]]
    for kind, block in data["aggregates"].items():
        lines += ["", f"{kind}: ATT {_fmt(block['att'], 0)} (SE {_fmt(block['se'], 0)})"]
        key = {"group": "group", "dynamic": "e", "calendar": "time"}.get(kind)
        if key:
            lines += [f"{row[key]:>8} {_fmt(row['att'])} {_fmt(row['se'])}"
                      for row in block["by"]]
    pre = data["pretest"]
    if pre["W"] is not None:
        lines += ["", f"pre-test of parallel trends: W = {pre['W']:.4f}, df = {pre['df']}, "
                      f"p = {pre['p']:.5f}"]
    lines += [f"warning: {w}" for w in data["warnings"]]
    return "\n".join(lines)


def poisson_document(panel: pl.DataFrame, args: argparse.Namespace) -> dict:
    """Wooldridge's extended TWFE Poisson, in the same JSON shape as Callaway & Sant'Anna.

    `att` values are log rate ratios; each aggregate also carries its rate ratio and
    percentage change, and the document gives admissions avoided per 1,000 exposure.
    """
    import math

    import polars as pl

    from transforms.etwfe import aggregate_by, fit_etwfe_poisson

    needed = [args.unit, args.time, args.cohort, args.outcome] + ([args.offset] if args.offset
                                                                  else [])
    missing = [c for c in needed if c not in panel.columns]
    if missing:
        raise DidInputError(f"column(s) {missing} not found; the panel has {panel.columns}")
    if not panel[args.outcome].dtype.is_numeric() or (panel[args.outcome] < 0).any():
        raise DidInputError(f"column `{args.outcome}` must hold non-negative counts for "
                            "--family poisson")
    exposure = (pl.col(args.offset).exp() if args.offset else pl.lit(1.0)).alias("_exposure")
    result = fit_etwfe_poisson(
        panel.with_columns(exposure), unit=args.unit, period=args.time, cohort=args.cohort,
        count=args.outcome, exposure="_exposure", alpha=args.alpha,
    )

    def block(agg, **label) -> dict:
        return {**label, "att": agg.log_rate_ratio, "se": agg.se,
                "rate_ratio": math.exp(agg.log_rate_ratio), "pct_change": agg.pct_change}

    def by(column: str, key: str) -> list[dict]:
        return [block(agg, **{key: value}) for value, agg in aggregate_by(result, column)]

    dynamic = [{"e": row["e"], "att": row["log_rate_ratio"], "se": row["se"]}
               for row in result.event_study.iter_rows(named=True)]
    pre = result.pretest
    return {
        "att_gt": [{"group": r["cohort"], "time": r["period"], "att": r["log_rate_ratio"],
                    "se": r["se"]} for r in result.cells.iter_rows(named=True)],
        "aggregates": {
            "simple": block(result.overall),
            "group": {**block(result.overall), "by": by("cohort", "group")},
            "dynamic": {**block(result.overall), "by": dynamic},
            "calendar": {**block(result.overall), "by": by("period", "time")},
        },
        "pretest": {"W": None if math.isnan(pre["W"]) else pre["W"], "df": pre["df"],
                    "p": None if math.isnan(pre["p"]) else pre["p"]},
        "avoided_per_1000": result.avoided_per_1000,
        "n_units": result.n_units,
        "method": "poisson_etwfe",
        "scale": "log_rate_ratio",
        "inference": "cluster_robust_unit",
        "warnings": list(result.warnings),
    }


def run_poisson(args: argparse.Namespace) -> int:
    """The `--family poisson` path of `vanguard did`."""
    try:
        document = poisson_document(read_panel(Path(args.panel)), args)
    except (DidInputError, ValueError) as exc:
        print(f"did: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(document, allow_nan=False))
    return 0


def run_did(args: argparse.Namespace) -> int:
    """Run the `did` subcommand; returns the exit code."""
    if args.family == "poisson":
        return run_poisson(args)
    if args.offset:
        print("did: --offset only applies with --family poisson", file=sys.stderr)
        return 2
    from transforms.did.callaway_santanna import estimate_cs

    columns = PanelColumns(
        unit=args.unit, time=args.time, cohort=args.cohort, outcome=args.outcome,
        covariates=tuple(c.strip() for c in args.covariates.split(",") if c.strip()),
        weights=args.weights, cluster=args.cluster)
    try:
        options = CSOptions(control=args.control, base=args.base,
                            anticipation=args.anticipation, method=args.method,
                            bootstrap=args.bootstrap, multiplier=args.multiplier,
                            seed=args.seed, alpha=args.alpha)
        result = estimate_cs(read_panel(Path(args.panel)), columns, options)
    except DidInputError as exc:
        print(f"did: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
    else:
        print(summary_text(result))
    return 0
