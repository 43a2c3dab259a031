"""Time our Callaway-Sant'Anna and Poisson ETWFE against peer Python packages on one panel.

Usage: .venv/bin/python bench/estimate.py [--units 7000] [--periods 120] [--cohorts 10]
       [--repeat 3] [--max-seconds 30] [--poisson-units 1000] [--poisson-periods 60]
       [--poisson-cohorts 5] [--skip NAME ...] [--seed 1]

The peers are the bench extra (`make bench-deps`): `diff-diff` (CallawaySantAnna),
`differences` (ATTgt) and `pyfixest` (fepois). Each estimator runs in its own subprocess, which
simulates the same seeded panel (a digest of it is checked to be identical), so that peak
resident memory (RSS) is separable per estimator; every thread pool (BLAS, OpenMP, polars,
numba, rayon) is limited to one thread so that the figures compare code, not cores.

Callaway-Sant'Anna: y = unit effect + period effect + 0.5 * treated + noise, 30% never
treated, the rest spread over the cohorts. Every package is set to the same definition:
never-treated controls, "varying" base period (R `did`'s default), no anticipation, doubly
robust estimator (without covariates all three of DRDID's estimators give the same numbers),
analytic (influence-function) standard errors, no bootstrap. Each package gets the same pandas
DataFrame; `differences` also needs never-treated cohorts as missing and a (unit, period)
index, which is prepared before its clock starts. Timed: group-time ATTs, their standard
errors and the simple aggregate. Ours is timed twice: doing just that, and doing everything
`vanguard did` does (also the group, event-study and calendar aggregations and the pre-test).

Poisson: counts with each unit's population constant over time as the exposure, and a rate
ratio of 0.8 after go-live. Both fit Wooldridge's extended TWFE with cohort x period
interactions for every treated cohort and period except the one before go-live (leads
included), plus cohort and period fixed effects and log population as the offset, standard
errors clustered by unit. pyfixest gets the interactions as `i(cell, ref=0)`, which it expands
to one dense column per cell (at 2,000 x 60 with 5 cohorts it took 65 s and 2.2 GB here):
that is why the compared panel is smaller by default. Ours is also timed alone on a count
panel of the Callaway-Sant'Anna size (`ours-poisson-large`), to show how it scales.

Agreement is checked before anything is timed: every ATT(g,t), the simple aggregate and every
Poisson cell coefficient must agree with ours to 1e-6 (standard errors are printed beside).
Times are the best of --repeat runs after one untimed warm-up run, or the warm-up run alone
when it took longer than --max-seconds (pyfixest's numba code is compiled beforehand on a
50-unit slice, so such a run does not include compiling).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

TOLERANCE = 1e-6
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "POLARS_MAX_THREADS", "NUMBA_NUM_THREADS", "RAYON_NUM_THREADS")
CS_ESTIMATORS = ("ours", "ours-full", "diff-diff", "differences")
POISSON_ESTIMATORS = ("ours-poisson", "pyfixest", "ours-poisson-large")
CS_TARGET_RATIO = 5.0  # at least this many times faster than the fastest peer
CS_AIM_RATIO = 20.0
CS_RSS_LIMIT_MB = 2048.0
POISSON_TARGET_RATIO = 0.5  # no more than twice pyfixest's time


def cs_panel(n_units: int, n_periods: int, n_cohorts: int, seed: int) -> pd.DataFrame:
    """Long staggered panel: y = unit effect + period effect + 0.5 * treated + noise."""
    rng = np.random.default_rng(seed)
    starts = np.linspace(n_periods * 0.2, n_periods * 0.9, n_cohorts).round().astype(int) + 1
    cohort = np.where(rng.random(n_units) < 0.3, 0, rng.choice(starts, size=n_units))
    periods = np.arange(1, n_periods + 1)
    treated = (cohort[:, None] > 0) & (periods[None, :] >= cohort[:, None])
    y = (rng.normal(size=(n_units, 1)) + np.sin(periods / 6.0)[None, :] + 0.5 * treated
         + rng.normal(scale=0.5, size=(n_units, n_periods)))
    return pd.DataFrame({
        "unit": np.repeat(np.arange(n_units), n_periods),
        "month": np.tile(periods, n_units),
        "first_month": np.repeat(cohort, n_periods),
        "y": y.ravel(),
    })


def poisson_panel(n_units: int, n_periods: int, n_cohorts: int, seed: int) -> pd.DataFrame:
    """Long panel of counts: population (constant per unit) x rate, rate ratio 0.8 once live.

    With exposure constant over time within a unit, cohort fixed effects give the same cell
    coefficients as unit fixed effects (Wooldridge 2023), so the cohort form is no shortcut.
    """
    rng = np.random.default_rng(seed)
    starts = np.linspace(n_periods * 0.2, n_periods * 0.9, n_cohorts).round().astype(int) + 1
    cohort = np.where(rng.random(n_units) < 0.3, 0, rng.choice(starts, size=n_units))
    periods = np.arange(1, n_periods + 1)
    population = rng.integers(20_000, 300_000, size=n_units).astype(float)
    treated = (cohort[:, None] > 0) & (periods[None, :] >= cohort[:, None])
    log_rate = (np.log(8e-4) + rng.normal(scale=0.2, size=(n_units, 1))
                + 0.1 * np.sin(periods / 6.0)[None, :] + np.log(0.8) * treated)
    counts = rng.poisson(population[:, None] * np.exp(log_rate))
    return pd.DataFrame({
        "unit": np.repeat(np.arange(n_units), n_periods),
        "month": np.tile(periods, n_units),
        "cohort": np.repeat(cohort, n_periods),
        "count": counts.ravel().astype(float),
        "population": np.repeat(population, n_periods),
    })


def digest(frame: pd.DataFrame) -> str:
    """Short fingerprint of a panel's values, to show every process saw the same data."""
    return hashlib.sha256(frame.to_numpy(dtype=float).tobytes()).hexdigest()[:12]


# ---- what each estimator runs (inside its own subprocess) ------------------------------------

Estimates = dict[str, Any]


def _ours_cs(frame: pd.DataFrame, full: bool) -> Callable[[], Estimates]:
    from transforms.did import CSOptions, PanelColumns, estimate_cs

    columns = PanelColumns(unit="unit", time="month", cohort="first_month", outcome="y")
    options = CSOptions(control="never", base="varying", method="dr")
    kinds = ("simple", "group", "dynamic", "calendar") if full else ("simple",)

    def run() -> Estimates:
        result = estimate_cs(frame, columns, options, aggregations=kinds, pretest=full)
        simple = result.aggregate("simple").overall
        return {"att_gt": [[c.group, c.time, c.att, c.se] for c in result.att_gt],
                "simple": [simple.att, simple.se]}
    return run


def _diff_diff(frame: pd.DataFrame) -> Callable[[], Estimates]:
    from diff_diff import CallawaySantAnna

    def run() -> Estimates:
        model = CallawaySantAnna(control_group="never_treated", base_period="varying",
                                 anticipation=0, estimation_method="dr", n_bootstrap=0)
        result = model.fit(frame, outcome="y", unit="unit", time="month",
                           first_treat="first_month")
        cells = [[float(g), float(t), cell["effect"], cell["se"]]
                 for (g, t), cell in result.group_time_effects.items()]
        return {"att_gt": cells, "simple": [result.overall_att, result.overall_se]}
    return run


def _differences(frame: pd.DataFrame) -> Callable[[], Estimates]:
    from differences import ATTgt

    # its conventions: never treated as missing cohort, a (unit, period) index
    data = frame.assign(first_month=frame["first_month"].where(frame["first_month"] > 0))
    data = data.set_index(["unit", "month"])

    def run() -> Estimates:
        model = ATTgt(data=data, cohort_column="first_month", base_period="varying",
                      anticipation=0)
        model.fit(formula="y", est_method="dr", control_group="never_treated",
                  progress_bar=False)
        simple = model.aggregate("simple")
        cells = model.results().reset_index()
        att = cells[("ATTgtElements", "", "ATT")].to_numpy()
        se = cells[("ATTgtElements", "analytic", "std_error")].to_numpy()
        groups = cells["cohort"].to_numpy(dtype=float).ravel()
        times = cells["time"].to_numpy(dtype=float).ravel()
        return {"att_gt": [list(row) for row in zip(groups, times, att, se, strict=True)],
                "simple": [float(simple.iloc[0, 0]), float(simple.iloc[0, 1])]}
    return run


def _ours_poisson(frame: pd.DataFrame) -> Callable[[], Estimates]:
    import polars as pl

    from transforms.etwfe import fit_etwfe_poisson

    table = pl.from_pandas(frame)

    def run() -> Estimates:
        result = fit_etwfe_poisson(table, unit="unit", period="month", cohort="cohort",
                                   count="count", exposure="population", leads=True)
        cells = result.cells
        return {"cells": [list(row) for row in zip(
            cells["cohort"].to_list(), cells["period"].to_list(),
            cells["log_rate_ratio"].to_list(), cells["se"].to_list(), strict=True)]}
    return run


def etwfe_cells(cohort: np.ndarray, month: np.ndarray) -> list[tuple[int, int]]:
    """The interactions ours estimates with leads: every treated cohort and period except
    the period just before go-live, in cohort then period order."""
    periods = np.unique(month)
    return [(int(g), int(t)) for g in np.unique(cohort[cohort > 0]) for t in periods
            if t != g - 1]


def _pyfixest(frame: pd.DataFrame) -> Callable[[], Estimates]:
    import pyfixest as pf

    cells = etwfe_cells(frame["cohort"].to_numpy(), frame["month"].to_numpy())
    number = {cell: k + 1 for k, cell in enumerate(cells)}
    data = frame.assign(
        log_population=np.log(frame["population"]),
        cell=[number.get((g, t), 0) for g, t in zip(frame["cohort"], frame["month"],
                                                      strict=True)])

    formula = "count ~ i(cell, ref=0) | cohort + month"
    # numba compiles pyfixest's demeaning on first use: do that on a few units, untimed, so
    # that a single timed run (when one run exceeds --max-seconds) does not include it
    pf.fepois(formula, data=data[data["unit"] < data["unit"].min() + 50],
              offset="log_population", vcov={"CRV1": "unit"})

    def run() -> Estimates:
        fit = pf.fepois(formula, data=data, offset="log_population", vcov={"CRV1": "unit"})
        coef, se = fit.coef(), fit.se()
        return {"cells": [[g, t, float(coef.get(f"cell::{k}", np.nan)),
                           float(se.get(f"cell::{k}", np.nan))]
                          for (g, t), k in number.items()]}
    return run


@dataclass(frozen=True)
class Job:
    name: str
    kind: str  # "cs" or "poisson"


def _runner(name: str, frame: pd.DataFrame) -> Callable[[], Estimates]:
    builders: dict[str, Callable[[], Callable[[], Estimates]]] = {
        "ours": lambda: _ours_cs(frame, full=False),
        "ours-full": lambda: _ours_cs(frame, full=True),
        "diff-diff": lambda: _diff_diff(frame),
        "differences": lambda: _differences(frame),
        "ours-poisson": lambda: _ours_poisson(frame),
        "ours-poisson-large": lambda: _ours_poisson(frame),
        "pyfixest": lambda: _pyfixest(frame),
    }
    return builders[name]()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    """Simulate the panel, run one estimator (warm-up + repeats) and print JSON."""
    import warnings

    warnings.simplefilter("ignore")
    if args.worker == "ours-poisson-large":
        frame = poisson_panel(args.units, args.periods, args.cohorts, args.seed)
    elif args.worker in POISSON_ESTIMATORS:
        frame = poisson_panel(args.poisson_units, args.poisson_periods, args.poisson_cohorts,
                              args.seed)
    else:
        frame = cs_panel(args.units, args.periods, args.cohorts, args.seed)
    run = _runner(args.worker, frame)
    baseline = _peak_rss_mb()
    walls, cpus = [], []
    estimates: Estimates = {}
    for attempt in range(args.repeat + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        estimates = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if attempt == 0 and walls[0] > args.max_seconds:
            break
    timed = slice(0, 1) if len(walls) == 1 else slice(1, None)
    print(json.dumps({"name": args.worker, "digest": digest(frame), "wall": walls[timed],
                      "cpu": cpus[timed], "rss_before_mb": baseline,
                      "rss_peak_mb": _peak_rss_mb(), **estimates}, default=float))


# ---- the parent: run the workers, compare, print --------------------------------------------

def run_worker(name: str, args: argparse.Namespace) -> dict | None:
    """One estimator in a fresh single-threaded process; None (with the reason) if it fails."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1")}
    command = [sys.executable, __file__, "--worker", name, "--units", str(args.units),
               "--periods", str(args.periods), "--cohorts", str(args.cohorts),
               "--poisson-units", str(args.poisson_units),
               "--poisson-periods", str(args.poisson_periods),
               "--poisson-cohorts", str(args.poisson_cohorts), "--repeat", str(args.repeat),
               "--max-seconds", str(args.max_seconds), "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        print(f"{name}: failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _by_cell(rows: list[list[float]]) -> dict[tuple[float, float], tuple[float, float]]:
    return {(float(g), float(t)): (float(att), float(se)) for g, t, att, se in rows}


@dataclass(frozen=True)
class Agreement:
    """How far a peer's estimates are from ours."""

    shared: int  # cells both report
    only_ours: int
    only_theirs: int
    max_att: float  # largest |difference| over shared cells' estimates
    max_se: float
    simple_att: float  # |difference| of the simple aggregate (NaN for Poisson)
    simple_se: float

    @property
    def agrees(self) -> bool:
        return (self.only_ours == 0 and self.only_theirs == 0 and self.max_att <= TOLERANCE
                and not self.simple_att > TOLERANCE)


def agreement(ours: list[list[float]], theirs: list[list[float]],
              ours_simple: list[float] | None = None,
              theirs_simple: list[float] | None = None) -> Agreement:
    """Compare cell by cell ((group, time, estimate, se) rows) and the simple aggregate."""
    a, b = _by_cell(ours), _by_cell(theirs)
    shared = sorted(set(a) & set(b))
    att = [abs(a[k][0] - b[k][0]) for k in shared]
    se = [abs(a[k][1] - b[k][1]) for k in shared]
    simple_att = simple_se = float("nan")
    if ours_simple is not None and theirs_simple is not None:
        simple_att = abs(ours_simple[0] - theirs_simple[0])
        simple_se = abs(ours_simple[1] - theirs_simple[1])
    return Agreement(
        shared=len(shared), only_ours=len(set(a) - set(b)), only_theirs=len(set(b) - set(a)),
        max_att=float(np.nanmax(att)) if att and not np.isnan(att).all() else float("inf"),
        max_se=float(np.nanmax(se)) if se and not np.isnan(se).all() else float("nan"),
        simple_att=simple_att, simple_se=simple_se)


def _describe(name: str, check: Agreement) -> str:
    verdict = "agrees" if check.agrees else "DISAGREES"
    simple = ("" if np.isnan(check.simple_att) else
              f"; simple ATT |diff| {check.simple_att:.1e} (SE {check.simple_se:.1e})")
    extra = ("" if not (check.only_ours or check.only_theirs) else
             f"; cells only ours {check.only_ours}, only theirs {check.only_theirs}")
    return (f"  {name:<13} {verdict} with ours to {TOLERANCE:g}: {check.shared} cells, "
            f"max |estimate diff| {check.max_att:.1e}, max |SE diff| {check.max_se:.1e}"
            f"{simple}{extra}")


def _table(results: list[dict], reference: str) -> list[str]:
    base = next(r for r in results if r["name"] == reference)
    lines = [f"  {'estimator':<13} {'best wall s':>11} {'best CPU s':>10} {'runs':>4} "
             f"{'RSS before MB':>13} {'peak RSS MB':>11} {'time / ours':>11}"]
    for r in results:
        ratio = min(r["wall"]) / min(base["wall"])
        lines.append(f"  {r['name']:<13} {min(r['wall']):>11.3f} {min(r['cpu']):>10.3f} "
                     f"{len(r['wall']):>4} {r['rss_before_mb']:>13.0f} {r['rss_peak_mb']:>11.0f}"
                     f" {ratio:>10.1f}x")
    return lines


def report_cs(results: dict[str, dict]) -> list[str]:
    """Agreement, the timing table and the Callaway-Sant'Anna targets."""
    ours = results["ours"]
    lines = ["Agreement (ATT(g,t) and simple aggregate):"]
    peers = [n for n in ("diff-diff", "differences") if n in results]
    verdicts = {}
    for name in ["ours-full", *peers]:
        check = agreement(ours["att_gt"], results[name]["att_gt"], ours["simple"],
                          results[name]["simple"])
        verdicts[name] = check.agrees
        lines.append(_describe(name, check))
    lines += ["Timing (group-time ATTs + simple aggregate + analytic SEs; ours-full also does "
              "group/dynamic/calendar and the pre-test):"]
    lines += _table([results[n] for n in ("ours", "ours-full", *peers) if n in results], "ours")
    if not peers:
        return [*lines, "  no peer ran: no targets to judge"]
    fastest = min(peers, key=lambda n: min(results[n]["wall"]))
    ratio = min(results[fastest]["wall"]) / min(ours["wall"])
    full_ratio = min(results[fastest]["wall"]) / min(results["ours-full"]["wall"])
    rss = max(ours["rss_peak_mb"], results["ours-full"]["rss_peak_mb"])
    lines += [
        f"  fastest peer: {fastest}; ours is {ratio:.1f}x faster (ours-full {full_ratio:.1f}x): "
        f"target >= {CS_TARGET_RATIO:g}x {'MET' if ratio >= CS_TARGET_RATIO else 'MISSED'}, "
        f"aim {CS_AIM_RATIO:g}x {'met' if ratio >= CS_AIM_RATIO else 'not reached'}",
        f"  our peak RSS {rss:.0f} MB: target <= {CS_RSS_LIMIT_MB:.0f} MB "
        f"{'MET' if rss <= CS_RSS_LIMIT_MB else 'MISSED'}",
        f"  every peer agrees to {TOLERANCE:g}: "
        f"{'yes' if all(verdicts[p] for p in peers) else 'NO'}",
    ]
    return lines


def report_poisson(results: dict[str, dict]) -> list[str]:
    ours = results["ours-poisson"]
    lines = ["Agreement (cell log rate ratios):"]
    if "pyfixest" not in results:
        return [*lines, "  pyfixest did not run", *_table([ours], "ours-poisson")]
    check = agreement(ours["cells"], results["pyfixest"]["cells"])
    lines.append(_describe("pyfixest", check))
    lines += ["Timing (fit + clustered SEs; ours also aggregates):"]
    lines += _table([ours, results["pyfixest"]], "ours-poisson")
    ratio = min(results["pyfixest"]["wall"]) / min(ours["wall"])
    lines.append(f"  ours takes {1 / ratio:.2f}x pyfixest's time: target <= 2x "
                 f"{'MET' if ratio >= POISSON_TARGET_RATIO else 'MISSED'}")
    if "ours-poisson-large" in results:
        large = results["ours-poisson-large"]
        lines.append(f"  ours alone on the Callaway-Sant'Anna-size panel: best "
                     f"{min(large['wall']):.3f} s wall, {min(large['cpu']):.3f} s CPU, peak RSS "
                     f"{large['rss_peak_mb']:.0f} MB, {len(large['cells'])} cells")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=7000)
    parser.add_argument("--periods", type=int, default=120)
    parser.add_argument("--cohorts", type=int, default=10)
    parser.add_argument("--poisson-units", type=int, default=1000)
    parser.add_argument("--poisson-periods", type=int, default=60)
    parser.add_argument("--poisson-cohorts", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="a run longer than this is not repeated")
    parser.add_argument("--skip", nargs="*", default=[], choices=("diff-diff", "differences",
                                                                  "pyfixest", "poisson"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    print(f"Callaway-Sant'Anna panel: {args.units} units x {args.periods} periods, "
          f"{args.cohorts} cohorts, seed {args.seed}; Poisson panel: {args.poisson_units} x "
          f"{args.poisson_periods}, {args.poisson_cohorts} cohorts")
    print(f"one thread per process ({', '.join(THREAD_VARIABLES)} = 1); load average at "
          f"start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    jobs = [n for n in CS_ESTIMATORS if n not in args.skip]
    if "poisson" not in args.skip:
        jobs += [n for n in POISSON_ESTIMATORS if n not in args.skip]
    results = {}
    for name in jobs:
        result = run_worker(name, args)
        if result is not None:
            results[name] = result
            print(f"  ran {name}: best {min(result['wall']):.3f} s "
                  f"(data {result['digest']})", flush=True)
    for kind, names in (("cs", CS_ESTIMATORS), ("poisson", POISSON_ESTIMATORS[:2])):
        digests = {results[n]["digest"] for n in names if n in results}
        if len(digests) > 1:
            print(f"WARNING: the {kind} processes simulated different panels: {digests}")
    if "ours" in results and "ours-full" in results:
        print("\n".join(["", "Callaway-Sant'Anna", *report_cs(results)]))
    if "ours-poisson" in results:
        print("\n".join(["", "Poisson ETWFE (cohort x period interactions + cohort FE + period "
                         "FE, offset log population, CR1 by unit)", *report_poisson(results)]))


if __name__ == "__main__":
    main()
