"""Placebo validation: fake go-live dates on real units where nothing happened.

If the production estimator and its inference are honest, a 95% interval for a unit that
was never treated excludes zero about 5% of the time. This module draws such fake sites
from a real panel (N units chosen at random, a go-live month chosen at random with enough
months either side), picks their comparators and placebo donors by the production rule
(`transforms.matching`: nearest units on the pre-period level, as `pipeline.match_step`
and `pipeline.placebo_donors` do), runs exactly `estimators.fit_poisson_did` with the
inference it chooses, and summarises how often the interval excluded zero.

The pure steps are `prepare_panel`, `draw_assignments`, `run_draw` and `summarise`;
`register` adds the `vanguard placebo` command, whose JSON is described in
docs/placebo-json-schema.md. Numerical libraries are imported when the command runs, not
when the parser is built.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from transforms.argtypes import whole_number
from transforms.months import add_months

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: Name given to the single outcome inside the placebo panel (matching needs one).
OUTCOME = "placebo_outcome"
#: Synthetic calendar the panel's periods are mapped onto, in order, one month each.
FIRST_MONTH = date(2000, 1, 1)


class PlaceboInputError(ValueError):
    """The panel or the options cannot give a placebo study; the message says why."""


@dataclass(frozen=True)
class PlaceboDesign:
    """How fake sites are drawn and analysed; the defaults are the demo protocol's.

    `matches_per_area`, `match_on`, `metric`, `placebo_donors` and `pre_period_months`
    are the production comparison rule (evaluation.toml [comparison] and [inference]).
    """

    treated: int = 1
    min_pre: int = 6
    min_post: int = 6
    matches_per_area: int = 5
    match_on: tuple[str, ...] = ("pre_rate", "log_population")
    metric: str = "standardised"
    placebo_donors: int = 40
    pre_period_months: int = 24
    alpha: float = 0.05
    method: str = "auto"


@dataclass(frozen=True)
class PlaceboPanel:
    """A balanced unit x month panel (area_code, month, count, population, outcome,
    rate_per_1000) with the original period labels and what was dropped on the way."""

    frame: pl.DataFrame
    units: tuple[str, ...]
    periods: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def months(self) -> list[date]:
        return [add_months(FIRST_MONTH, i) for i in range(len(self.periods))]


@dataclass(frozen=True)
class Assignment:
    """One fake site: its units and the index of its go-live period (first post period)."""

    treated: tuple[str, ...]
    go_live_index: int


@dataclass(frozen=True)
class DrawResult:
    """The production estimate for one fake site, on the log rate-ratio scale."""

    treated: tuple[str, ...]
    go_live: str
    estimate: float
    se: float  # the inference's spread: placebo standard deviation or cluster-robust SE
    ci_low: float
    ci_high: float
    p_value: float
    inference: str
    n_comparators: int
    n_donors: int
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rejects(self) -> bool:
        """True when the interval excludes zero: a false positive, as nothing happened."""
        return self.ci_low > 0 or self.ci_high < 0


# -- the panel ------------------------------------------------------------------------


def apply_filter(frame: pl.DataFrame, column: str, value: str) -> pl.DataFrame:
    """Rows whose `column`, read as text, equals `value` (e.g. type == '1' for major A&E)."""
    if column not in frame.columns:
        raise PlaceboInputError(f"filter column `{column}` not found; the panel has "
                                f"{frame.columns}")
    kept = frame.filter(pl.col(column).cast(pl.String) == value)
    if kept.height == 0:
        raise PlaceboInputError(f"no rows have {column} == {value!r}; values present: "
                                f"{sorted(frame[column].cast(pl.String).unique().to_list())}")
    return kept


def prepare_panel(frame: pl.DataFrame, unit: str, time: str, outcome: str,
                  offset: str | None = None) -> PlaceboPanel:
    """The long panel the estimator expects, keeping only units seen every period with a
    positive count.

    Real organisations open, close and merge; a unit with a missing period or a zero count
    cannot enter a balanced Poisson panel, so it is dropped and the warning says how many.
    `offset` is a log-exposure column; without it the exposure is 1 (log exposure 0).
    Periods are sorted and mapped onto consecutive months so any ordered time column works.
    """
    needed = [unit, time, outcome] + ([offset] if offset else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise PlaceboInputError(f"column(s) {missing} not found; the panel has {frame.columns}")
    if not frame[outcome].dtype.is_numeric():
        raise PlaceboInputError(f"column `{outcome}` must hold counts, found "
                                f"{frame[outcome].dtype}")
    exposure = pl.col(offset).cast(pl.Float64).exp() if offset else pl.lit(1.0)
    data = frame.select(
        pl.col(unit).cast(pl.String).alias("area_code"),
        pl.col(time).alias("_period"),
        pl.col(outcome).cast(pl.Float64).alias("count"),
        exposure.alias("population"),
    )
    duplicated = data.select(["area_code", "_period"]).is_duplicated().sum()
    if duplicated:
        raise PlaceboInputError(f"{duplicated} rows repeat a ({unit}, {time}) pair; filter the "
                                "panel to one row per unit and period (e.g. --filter type=1)")
    periods = data["_period"].unique().sort().to_list()
    n_periods = len(periods)
    per_unit = data.group_by("area_code").agg(
        pl.len().alias("n"),
        (pl.col("count").is_null() | (pl.col("count") <= 0)
         | pl.col("population").is_null() | (pl.col("population") <= 0)).sum().alias("bad"),
    )
    incomplete = per_unit.filter(pl.col("n") < n_periods)["area_code"].to_list()
    nonpositive = per_unit.filter((pl.col("n") == n_periods) & (pl.col("bad") > 0))[
        "area_code"].to_list()
    warnings = []
    if incomplete:
        warnings.append(f"{len(incomplete)} unit(s) dropped for missing periods (of "
                        f"{n_periods}), e.g. {sorted(incomplete)[:5]}")
    if nonpositive:
        warnings.append(f"{len(nonpositive)} unit(s) dropped for zero, negative or missing "
                        f"counts or exposure, e.g. {sorted(nonpositive)[:5]}")
    dropped = set(incomplete) | set(nonpositive)
    index = pl.DataFrame({"_period": periods,
                          "month": [add_months(FIRST_MONTH, i) for i in range(n_periods)]},
                         schema_overrides={"_period": data["_period"].dtype})
    kept = (
        data.filter(~pl.col("area_code").is_in(sorted(dropped)))
        .join(index, on="_period")
        .select(
            "area_code", "month", "count", "population",
            pl.lit(OUTCOME).alias("outcome"),
            (pl.col("count") / pl.col("population") * 1000.0).alias("rate_per_1000"),
        )
        .sort(["area_code", "month"])
    )
    for message in warnings:
        log.warning("placebo panel: %s", message)
    return PlaceboPanel(kept, tuple(kept["area_code"].unique().sort().to_list()),
                        tuple(str(p) for p in periods), tuple(warnings))


# -- draws ----------------------------------------------------------------------------


def go_live_range(n_periods: int, min_pre: int, min_post: int) -> range:
    """Go-live indices leaving at least `min_pre` periods before and `min_post` from it."""
    return range(min_pre, n_periods - min_post + 1)


def draw_assignments(units: Sequence[str], n_periods: int, n_treated: int, draws: int,
                     seed: int, min_pre: int = 6, min_post: int = 6) -> list[Assignment]:
    """`draws` fake sites: `n_treated` distinct units each and a go-live index, seeded.

    One generator drives every draw in turn, so the same seed gives the same list and a
    longer run starts with the shorter run's draws.
    """
    if n_treated < 1:
        raise PlaceboInputError(f"--treated must be at least 1, got {n_treated}")
    if n_treated >= len(units):
        raise PlaceboInputError(f"--treated {n_treated} leaves no comparators among "
                                f"{len(units)} complete units")
    starts = go_live_range(n_periods, min_pre, min_post)
    if len(starts) == 0:
        raise PlaceboInputError(f"{n_periods} periods cannot give {min_pre} pre-period and "
                                f"{min_post} post-period months")
    import numpy as np

    rng = np.random.default_rng(seed)
    ordered = sorted(units)
    out = []
    for _ in range(draws):
        chosen = rng.choice(len(ordered), size=n_treated, replace=False)
        go_live = int(rng.integers(starts.start, starts.stop))
        out.append(Assignment(tuple(sorted(ordered[i] for i in chosen)), go_live))
    return out


def comparators_and_donors(panel: PlaceboPanel, treated: Sequence[str], go_live: date,
                           design: PlaceboDesign) -> tuple[list[str], list[str]]:
    """The fake site's matched comparators and placebo donors, by the production rule.

    Every other unit is in the pool (none was treated). Comparators: the
    `matches_per_area` nearest units per treated unit on the pre-period features, pooled
    and unique (pipeline.match_step). Donors: the `placebo_donors` nearest
    (pipeline.placebo_donors).
    """
    from transforms.matching import nearest_neighbours, pre_period_features

    features = pre_period_features(panel.frame, OUTCOME, go_live, design.pre_period_months)
    pool = [u for u in panel.units if u not in set(treated)]
    matched = nearest_neighbours(features, list(treated), pool, design.match_on,
                                 min(design.matches_per_area, len(pool)), metric=design.metric)
    nearest = nearest_neighbours(features, list(treated), pool, design.match_on,
                                 min(design.placebo_donors, len(pool)), metric=design.metric)
    return (sorted(set(matched["area_code"].to_list())),
            sorted(set(nearest["area_code"].to_list())))


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else float("nan")


def run_draw(panel: PlaceboPanel, assignment: Assignment, design: PlaceboDesign,
             seed: int = 0) -> DrawResult:
    """The production estimator and inference on one fake site."""
    from transforms.estimators import fit_poisson_did

    go_live = add_months(FIRST_MONTH, assignment.go_live_index)
    comparators, donors = comparators_and_donors(panel, assignment.treated, go_live, design)
    columns = ["area_code", "month", "count", "population"]
    model = panel.frame.filter(
        pl.col("area_code").is_in(list(assignment.treated) + comparators)).select(columns)
    donor_rows = panel.frame.filter(pl.col("area_code").is_in(donors)).select(columns)
    fit = fit_poisson_did(model, list(assignment.treated), go_live, design.alpha,
                          donors=donor_rows, seed=seed, method=design.method)
    est = fit.estimate
    return DrawResult(
        treated=assignment.treated, go_live=panel.periods[assignment.go_live_index],
        estimate=est.log_rate_ratio, se=est.se, ci_low=est.ci_low_log, ci_high=est.ci_high_log,
        p_value=_finite(est.p_value), inference=est.inference,
        n_comparators=len(comparators), n_donors=len(donors), warnings=tuple(est.warnings),
    )


def run_study(panel: PlaceboPanel, design: PlaceboDesign, draws: int,
              seed: int) -> tuple[list[DrawResult], list[str]]:
    """Every draw's result, and a message for each draw the estimator refused.

    A refused draw is reported, not retried, so the draws analysed are still the seeded
    ones; the summary counts them.
    """
    import numpy as np

    assignments = draw_assignments(panel.units, len(panel.periods), design.treated, draws,
                                   seed, design.min_pre, design.min_post)
    results, failures = [], []
    for number, assignment in enumerate(assignments):
        try:
            results.append(run_draw(panel, assignment, design, seed=seed + number))
        except (ValueError, np.linalg.LinAlgError) as exc:
            failures.append(f"draw {number} ({', '.join(assignment.treated)} from "
                            f"{panel.periods[assignment.go_live_index]}): {exc}")
        if (number + 1) % 100 == 0:
            log.info("placebo: %d of %d draws done", number + 1, draws)
    return results, failures


# -- summary --------------------------------------------------------------------------


def binomial_interval(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper-Pearson interval for a proportion: exact, so never too narrow at 5% rates
    where the normal approximation is poor."""
    from scipy import stats

    if trials == 0:
        return (float("nan"), float("nan"))
    low = 0.0 if successes == 0 else float(
        stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(
        stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def by_inference(results: Sequence[DrawResult]) -> dict[str, dict[str, Any]]:
    """False positives for each inference method the draws used.

    The production rule picks the method from the design, so one study can mix methods;
    a pooled rate in range can hide one method over-rejecting and another under-rejecting.
    """
    out = {}
    for method in sorted({r.inference for r in results}):
        chosen = [r for r in results if r.inference == method]
        rejections = sum(r.rejects for r in chosen)
        low, high = binomial_interval(rejections, len(chosen))
        out[method] = {"draws": len(chosen), "false_positives": rejections,
                       "false_positive_rate": rejections / len(chosen),
                       "false_positive_rate_ci": [low, high]}
    return out


def summarise(results: Sequence[DrawResult], design: PlaceboDesign, *, draws_requested: int,
              failures: Sequence[str] = (), seed: int, panel: PlaceboPanel) -> dict[str, Any]:
    """The placebo study as plain data (docs/placebo-json-schema.md)."""
    n = len(results)
    rejections = sum(r.rejects for r in results)
    import numpy as np

    estimates = np.array([r.estimate for r in results])
    widths = np.array([r.ci_high - r.ci_low for r in results])
    spreads = np.array([r.se for r in results if math.isfinite(r.se)])
    p_values = np.array([r.p_value for r in results if math.isfinite(r.p_value)])
    rate = rejections / n if n else float("nan")
    low, high = binomial_interval(rejections, n)
    warning_counts = Counter(w for r in results for w in r.warnings)
    messages = [*panel.warnings, *(f"{m} ({c} of {n} draws)" for m, c in
                                   sorted(warning_counts.items()))]
    if failures:
        messages.append(f"{len(failures)} of {draws_requested} draws could not be fitted, "
                        f"e.g. {failures[0]}")

    def stat(values: np.ndarray, how: Callable[[np.ndarray], Any]) -> float | None:
        return _json_number(float(how(values))) if values.size else None

    return {
        "draws": n,
        "draws_requested": draws_requested,
        "draws_failed": len(failures),
        "treated": design.treated,
        "alpha": design.alpha,
        "false_positive_rate": _json_number(rate),
        "false_positive_rate_ci": [_json_number(low), _json_number(high)],
        "false_positives": rejections,
        "p_below_alpha_rate": (_json_number(float(np.mean(p_values < design.alpha)))
                               if p_values.size else None),
        "coverage_of_zero": _json_number(1.0 - rate),
        "mean_effect": stat(estimates, np.mean),
        "mean_abs_effect": stat(np.abs(estimates), np.mean),
        "sd_effect": stat(estimates, lambda v: np.std(v, ddof=1)) if n > 1 else None,
        "median_ci_width": stat(widths, np.median),
        "median_se": stat(spreads, np.median),
        "scale": "log_rate_ratio",
        "inference": dict(sorted(Counter(r.inference for r in results).items())),
        "by_inference": by_inference(results),
        "warnings": messages,
        "seed": seed,
        "n_units": len(panel.units),
        "n_periods": len(panel.periods),
        "design": {
            "min_pre": design.min_pre, "min_post": design.min_post,
            "matches_per_area": design.matches_per_area, "match_on": list(design.match_on),
            "metric": design.metric, "placebo_donors": design.placebo_donors,
            "pre_period_months": design.pre_period_months, "method": design.method,
        },
    }


# -- command line ---------------------------------------------------------------------


positive = whole_number(1)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `placebo` subcommand to an argparse subparsers object."""
    defaults = PlaceboDesign()
    parser = subparsers.add_parser(
        "placebo",
        help="false-positive rate of the production estimator on fake go-live dates",
        description="Give N randomly chosen real units a fake go-live month where nothing "
                    "happened, choose comparators and placebo donors by the production "
                    "rule, fit the production Poisson DiD with its inference, and report "
                    "how often the 95%% interval excludes zero. A file with a `type` column "
                    "(NHS England's A&E format) is filtered to type 1 unless --filter says "
                    "otherwise. Exit 0 on success, 2 when the input cannot be used.",
    )
    parser.add_argument("panel", metavar="PANEL", help="CSV or Parquet panel file")
    parser.add_argument("--unit", required=True, help="unit id column")
    parser.add_argument("--time", required=True, help="period column (any sortable values)")
    parser.add_argument("--outcome", required=True, help="count column")
    parser.add_argument("--offset", metavar="COL",
                        help="log exposure column (default: none, log exposure 0)")
    parser.add_argument("--filter", metavar="COL=VALUE",
                        help="keep rows where COL equals VALUE (default: type=1 when the "
                             "panel has a `type` column)")
    parser.add_argument("--draws", type=positive, default=500,
                        help="fake sites to draw (default: 500)")
    parser.add_argument("--treated", type=positive, default=defaults.treated,
                        help="units per fake site (default: 1)")
    parser.add_argument("--seed", type=int, default=2015, help="random seed (default: 2015)")
    parser.add_argument("--min-pre", type=positive, default=defaults.min_pre,
                        help="fewest periods before go-live (default: 6)")
    parser.add_argument("--min-post", type=positive, default=defaults.min_post,
                        help="fewest periods from go-live (default: 6)")
    parser.add_argument("--matches", type=positive, default=defaults.matches_per_area,
                        help="matched comparators per treated unit (default: 5)")
    parser.add_argument("--donors", type=positive, default=defaults.placebo_donors,
                        help="nearest units offered as placebo donors (default: 40)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_placebo)
    return parser


def _filter_of(text: str | None, columns: Sequence[str]) -> tuple[str, str] | None:
    """The (column, value) filter asked for, or type=1 for NHS England's A&E format."""
    if text is None:
        return ("type", "1") if "type" in columns else None
    column, sep, value = text.partition("=")
    if not sep or not column:
        raise PlaceboInputError(f"--filter must look like COL=VALUE, got {text!r}")
    return column, value


def _text(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def summary_text(summary: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    low, high = summary["false_positive_rate_ci"]
    rate = summary["false_positive_rate"]
    lines = [
        f"placebo study: {summary['draws']} draws of {summary['treated']} treated unit(s) "
        f"among {summary['n_units']} units x {summary['n_periods']} periods",
        f"false-positive rate {rate:.3f} (95% CI {low:.3f} to {high:.3f})"
        if rate is not None else "false-positive rate: no draws fitted",
        f"mean effect {_text(summary['mean_effect'])}, mean |effect| "
        f"{_text(summary['mean_abs_effect'])}, median CI width "
        f"{_text(summary['median_ci_width'])} (log rate ratio)",
        f"inference: {summary['inference']}",
    ]
    return "\n".join(lines + [f"warning: {w}" for w in summary["warnings"]])


def run_placebo(args: argparse.Namespace) -> int:
    """Run the `placebo` subcommand; returns the exit code."""
    from transforms.did.cli import read_panel
    from transforms.did.options import DidInputError

    design = PlaceboDesign(treated=args.treated, min_pre=args.min_pre,
                           min_post=args.min_post, matches_per_area=args.matches,
                           placebo_donors=args.donors)
    try:
        frame = read_panel(Path(args.panel))
        chosen = _filter_of(args.filter, frame.columns)
        if chosen:
            frame = apply_filter(frame, *chosen)
        panel = prepare_panel(frame, args.unit, args.time, args.outcome, args.offset)
        results, failures = run_study(panel, design, args.draws, args.seed)
    except (DidInputError, PlaceboInputError) as exc:
        print(f"placebo: {exc}", file=sys.stderr)
        return 2
    summary = summarise(results, design, draws_requested=args.draws, failures=failures,
                        seed=args.seed, panel=panel)
    summary["filter"] = {"column": chosen[0], "value": chosen[1]} if chosen else None
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        print(summary_text(summary))
    return 0
