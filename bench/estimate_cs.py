"""Time the Callaway & Sant'Anna estimator on a synthetic staggered panel.

Usage: .venv/bin/python bench/estimate_cs.py [--units 7000] [--periods 120] [--cohorts 10]
       [--method dr] [--control never] [--covariates 0] [--bootstrap 0] [--repeat 3]

Builds a long panel with numpy (unit and period effects, a constant effect of 0.5 from each
cohort's first treated period, 30% never treated), then prints wall times for preparing the
panel (checks and pivot) and for estimating (every ATT(g,t), the four aggregations, analytic
standard errors and the pre-test; the best and median of --repeat runs, since shared
machines are noisy), and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import polars as pl

from transforms.did import CSOptions, PanelColumns, estimate_panel, estimation_sample, wide_panel

COLUMNS = PanelColumns(unit="unit", time="month", cohort="first_month", outcome="y")


def synthetic_panel(n_units: int, n_periods: int, n_cohorts: int, seed: int,
                    n_covariates: int = 0) -> pl.DataFrame:
    """Long panel: y = unit effect + period effect + 0.5 * treated + noise.

    Covariates x1.. are unit-level standard normals that shift the outcome's trend.
    """
    rng = np.random.default_rng(seed)
    starts = np.linspace(n_periods * 0.2, n_periods * 0.9, n_cohorts).round().astype(int) + 1
    cohort = np.where(rng.random(n_units) < 0.3, 0, rng.choice(starts, size=n_units))
    periods = np.arange(1, n_periods + 1)
    treated = (cohort[:, None] > 0) & (periods[None, :] >= cohort[:, None])
    x = rng.normal(size=(n_units, n_covariates))
    trend = (x.sum(axis=1, keepdims=True) * periods[None, :] / n_periods) if n_covariates else 0
    y = (rng.normal(size=(n_units, 1)) + np.sin(periods / 6.0)[None, :] + 0.5 * treated
         + trend + rng.normal(scale=0.5, size=(n_units, n_periods)))
    return pl.DataFrame({
        "unit": np.repeat(np.arange(n_units), n_periods),
        "month": np.tile(periods, n_units),
        "first_month": np.repeat(cohort, n_periods),
        "y": y.ravel(),
        **{f"x{j + 1}": np.repeat(x[:, j], n_periods) for j in range(n_covariates)},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=7000)
    parser.add_argument("--periods", type=int, default=120)
    parser.add_argument("--cohorts", type=int, default=10)
    parser.add_argument("--method", default="dr")
    parser.add_argument("--control", default="never")
    parser.add_argument("--covariates", type=int, default=0, help="unit-level covariates")
    parser.add_argument("--bootstrap", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    frame = synthetic_panel(args.units, args.periods, args.cohorts, args.seed, args.covariates)
    columns = PanelColumns(**{**COLUMNS.__dict__,
                              "covariates": tuple(f"x{j + 1}" for j in range(args.covariates))})
    options = CSOptions(method=args.method, control=args.control, bootstrap=args.bootstrap,
                        seed=args.seed)
    prepare_times, estimate_times = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        panel = estimation_sample(wide_panel(frame, columns), options.control,
                                  options.anticipation)
        prepared = time.perf_counter()
        result = estimate_panel(panel, options)
        prepare_times.append(prepared - start)
        estimate_times.append(time.perf_counter() - prepared)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    simple = result.aggregate("simple").overall
    print(f"panel            {args.units} units x {args.periods} periods, {args.cohorts} cohorts, "
          f"{len(result.att_gt)} ATT(g,t), method {args.method}, control {args.control}, "
          f"{args.covariates} covariates, bootstrap {args.bootstrap}")
    for label, times in (("prepare panel", prepare_times), ("estimate", estimate_times)):
        print(f"{label:<16} best {min(times):7.3f} s   median {float(np.median(times)):7.3f} s")
    print("                 (estimate = every ATT(g,t), four aggregations, SEs, pre-test)")
    print(f"peak RSS         {peak_mb:8.0f} MB")
    print(f"simple ATT       {simple.att:.4f} (SE {simple.se:.4f}; true effect 0.5)")


if __name__ == "__main__":
    main()
