"""Placebo validation on real NHS data: false-positive rate of the production estimator.

Usage: .venv/bin/python bench/placebo.py [--draws 500] [--treated 1 5] [--outcome admissions]
                                         [--seed 2015] [--method auto]

Fake go-live months are given to randomly chosen type 1 A&E trusts of
../shared/reference/nhs_ae_attendances_2016_2019.csv (NHS England A&E statistics, Apr 2016 -
Mar 2019), where nothing happened. Comparators, placebo donors, the estimator and its
inference are the production ones (transforms/placebo.py). Target: the share of 95%
intervals excluding zero lies between 3% and 7%. Prints one row per group size: the
false-positive rate with its exact binomial 95% interval, the share of p < 0.05, the
estimates' mean, mean absolute value and spread (log rate ratio), the median spread the
inference reported, the minimum detectable fall (%) that spread implies (transforms/power.py,
80% power), the median interval width and the time taken.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# Small matrices: one BLAS thread is faster than several fighting over two cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import polars as pl  # noqa: E402

from transforms.placebo import (  # noqa: E402
    PlaceboDesign,
    apply_filter,
    prepare_panel,
    run_study,
    summarise,
)
from transforms.power import minimum_detectable_effect  # noqa: E402

AE_FILE = (Path(__file__).resolve().parent.parent.parent / "shared" / "reference"
           / "nhs_ae_attendances_2016_2019.csv")


def _fmt(value: float | None, width: int) -> str:
    """A figure to 4 places, or 'inf' where the summary has none (unbounded intervals)."""
    return f"{'inf':>{width}}" if value is None else f"{value:>{width}.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--treated", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--outcome", default="admissions",
                        choices=["admissions", "attendances", "breaches"])
    parser.add_argument("--seed", type=int, default=2015)
    parser.add_argument("--method", default="auto",
                        choices=["auto", "cluster_robust", "placebo_in_space",
                                 "wild_cluster_bootstrap"])
    args = parser.parse_args()
    raw = pl.read_csv(AE_FILE, infer_schema_length=None)
    panel = prepare_panel(apply_filter(raw, "type", "1"), "org_code", "period", args.outcome)
    print(f"{AE_FILE.name}, type 1, outcome {args.outcome}: {len(panel.units)} trusts x "
          f"{len(panel.periods)} months; {'; '.join(panel.warnings) or 'none dropped'}")
    print(f"{args.draws} draws per row, seed {args.seed}, inference {args.method}, "
          "target false-positive rate 3-7%")
    print(f"{'treated':>7} {'draws':>6} {'FPR':>6} {'95% CI':>15} {'p<.05':>6} "
          f"{'mean':>7} {'mean|e|':>8} {'sd':>7} {'med se':>7} {'MDE %':>6} {'med CIw':>8} "
          f"{'time s':>7} {'s/draw':>7}"
          "  inference  verdict")
    for treated in args.treated:
        design = PlaceboDesign(treated=treated, method=args.method)
        start = time.perf_counter()
        results, failures = run_study(panel, design, args.draws, args.seed)
        elapsed = time.perf_counter() - start
        s = summarise(results, design, draws_requested=args.draws, failures=failures,
                      seed=args.seed, panel=panel)
        low, high = s["false_positive_rate_ci"]
        rate = s["false_positive_rate"]
        verdict = "pass" if rate is not None and 0.03 <= rate <= 0.07 else "FAIL"
        mde = minimum_detectable_effect(s["median_se"]).pct_reduction
        methods = ", ".join(f"{k} {v}" for k, v in s["inference"].items())
        print(f"{treated:>7} {s['draws']:>6} {rate:>6.3f} {f'{low:.3f}-{high:.3f}':>15} "
              f"{s['p_below_alpha_rate']:>6.3f} {s['mean_effect']:>7.4f} "
              f"{s['mean_abs_effect']:>8.4f} {s['sd_effect']:>7.4f} {s['median_se']:>7.4f} "
              f"{mde:>6.1f} "
              f"{_fmt(s['median_ci_width'], 8)} {elapsed:>7.0f} {elapsed / args.draws:>7.2f}"
              f"  {methods}  {verdict}", flush=True)
        if len(s["by_inference"]) > 1:
            for method, block in s["by_inference"].items():
                b_low, b_high = block["false_positive_rate_ci"]
                print(f"        {method}: {block['false_positives']} of {block['draws']} "
                      f"draws, rate {block['false_positive_rate']:.3f} "
                      f"({b_low:.3f}-{b_high:.3f})")
        for warning in s["warnings"][len(panel.warnings):]:
            print(f"        warning: {warning}")


if __name__ == "__main__":
    main()
