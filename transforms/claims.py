"""Check the sites' own before/after claims against comparison areas.

Two kinds of claim, as pre-registered in the protocol's ``[[claims.sites]]``:

``cohort``        "our most complex 4% had 30% fewer unplanned admissions" (South Somerset):
                  the same risk rule picks cohorts in the site and in comparison areas on
                  the same dates (transforms/cohort.py); the comparison cohort's fall is the
                  regression to the mean the site's figure contains.
``before_after``  "a third fewer mental-health admissions in seven months" (North East
                  Hampshire and Farnham's crisis café): the rate per 1,000 in the N months
                  after go-live against the N months before, as the site would have quoted
                  it, for the site and for its matched comparison areas, beside the site's
                  full-window difference-in-differences estimate from model_results.

`claim_check_rows` assembles one typed row per claim (the warehouse table claim_checks):
claimed, naive and comparison changes, the DiD estimate with CI, p, q and the minimum
detectable effect. Pure functions: the pipeline's `claims_step` does the reading and writing.
Percentages are signed changes (-30.0 = 30% fewer); `mde_pct` is the smallest fall the
check could detect with 80% power, as a positive percentage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date

import polars as pl

from transforms.cohort import CohortResult, CohortRule, cohort_change, cohort_did, cohort_members
from transforms.months import add_months
from transforms.protocol import Claim, Protocol

log = logging.getLogger(__name__)

CLAIM_CHECK_SCHEMA: dict[str, pl.DataType] = {
    "site_id": pl.String(),
    "claim": pl.String(),
    "outcome": pl.String(),
    "check_type": pl.String(),
    "window_months": pl.Int32(),
    "claimed_pct": pl.Float64(),
    "naive_pct": pl.Float64(),
    "comparison_pct": pl.Float64(),
    "did_pct": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "p_value": pl.Float64(),
    "q_value": pl.Float64(),
    "mde_pct": pl.Float64(),
    "method": pl.String(),
    "inference": pl.String(),
    "n_site": pl.Int64(),
    "n_comparison": pl.Int64(),
    "run_id": pl.String(),
}
"""The columns of claim_checks, in table order."""

MDE_POWER = 0.8


@dataclass(frozen=True)
class WindowRates:
    """Pooled rates per 1,000 population per month before and after go-live."""

    before: float
    after: float
    count: int  # events in both windows together

    @property
    def pct_change(self) -> float | None:
        return None if self.before <= 0 else 100.0 * (self.after / self.before - 1.0)


def window_rates(panel: pl.DataFrame, areas: list[str], outcome: str, go_live: date,
                 months: int) -> WindowRates:
    """The rate in the `months` months before go-live and the `months` months from it.

    `panel` has area_month_panel's columns. Both windows must be complete for every area,
    else the comparison would rest on a different mix of months, so a gap is an error that
    names the areas and months.
    """
    before_start, after_end = add_months(go_live, -months), add_months(go_live, months)
    rows = panel.filter(
        pl.col("area_code").is_in(areas) & (pl.col("outcome") == outcome)
        & pl.col("month").is_between(before_start, after_end, closed="left")
    )
    expected = 2 * months * len(areas)
    if rows.height != expected:
        raise ValueError(
            f"area_month_panel: {outcome} has {rows.height} rows for areas {areas} from "
            f"{before_start:%Y-%m} to {add_months(after_end, -1):%Y-%m}; expected {expected} "
            "(one per area and month)"
        )
    sums = rows.group_by(pl.col("month") >= go_live).agg(
        pl.col("count").sum(), pl.col("population").sum()
    )
    by_period = {r["month"]: r for r in sums.iter_rows(named=True)}

    def rate(after: bool) -> float:
        row = by_period[after]
        return 1000.0 * row["count"] / row["population"]

    return WindowRates(rate(False), rate(True), int(rows["count"].sum()))


def mde_pct(se: float | None, alpha: float, df: int | None = None) -> float | None:
    """The smallest fall detectable with 80% power from a standard error, or None."""
    if se is None or not math.isfinite(se) or se <= 0:
        return None
    from transforms.power import minimum_detectable_effect

    return minimum_detectable_effect(se, alpha, MDE_POWER, df).pct_reduction


def _base_row(claim: Claim, check_type: str, window: int, run_id: str) -> dict:
    return {"site_id": claim.site, "claim": claim.claim, "outcome": claim.outcome,
            "check_type": check_type, "window_months": window,
            "claimed_pct": claim.claimed_pct, "run_id": run_id, "q_value": None}


def before_after_check(claim: Claim, site_areas: list[str], comparators: list[str],
                       go_live: date, panel: pl.DataFrame, model: dict | None,
                       run_id: str, alpha: float = 0.05) -> dict:
    """A seven-month (or `claim.window_months`) before/after claim beside the site's DiD.

    `model` is the site's model_results row for the claim's outcome (None when not fitted:
    the estimate columns are then empty and `inference` says so).
    """
    months = claim.window_months
    site = window_rates(panel, site_areas, claim.outcome, go_live, months)
    comparison = (window_rates(panel, comparators, claim.outcome, go_live, months)
                  if comparators else None)
    row = _base_row(claim, "before_after", months, run_id) | {
        "naive_pct": site.pct_change,
        "comparison_pct": comparison.pct_change if comparison else None,
        "n_site": site.count, "n_comparison": comparison.count if comparison else None,
    }
    if model is None:
        return row | {"did_pct": None, "ci_low": None, "ci_high": None, "p_value": None,
                      "mde_pct": None, "method": "none", "inference": "not_fitted"}
    df = model.get("df") if model.get("inference") == "cluster_robust" else None
    return row | {
        "did_pct": model["pct_change"], "ci_low": model["pct_ci_low"],
        "ci_high": model["pct_ci_high"], "p_value": model["p_value"],
        "mde_pct": mde_pct(model.get("se"), alpha, df),
        "method": model["estimator"], "inference": model["inference"],
    }


def cohort_check(claim: Claim, site_areas: list[str], comparison_areas: list[str],
                 go_live: date, episodes: pl.DataFrame, population: pl.DataFrame,
                 rule: CohortRule, run_id: str, alpha: float = 0.05) -> dict:
    """A risk-stratified cohort claim: naive, comparison-cohort and DiD changes.

    Without comparison episodes only the naive figure can be given; the row then says
    `no_comparison_cohort` rather than inventing a comparison.
    """
    row = _base_row(claim, "cohort", rule.follow_up_months, run_id)
    site_rows = episodes.filter(pl.col("area_code").is_in(site_areas))
    if site_rows.height == 0:
        raise ValueError(f"{claim.site}: no patient-level episodes for areas {site_areas}; "
                         "a cohort claim needs the site's episodes extract")
    site = cohort_members(site_rows, rule, go_live, population)
    comparison_rows = episodes.filter(pl.col("area_code").is_in(comparison_areas))
    if comparison_rows.height == 0:
        log.warning("%s: no patient-level episodes in comparison areas %s; only the "
                    "naive before/after change can be given", claim.site, comparison_areas)
        naive = cohort_change(site, rule, "site cohort")
        return row | {
            "naive_pct": 100.0 * math.expm1(naive.log_change), "comparison_pct": None,
            "did_pct": None, "ci_low": None, "ci_high": None, "p_value": None,
            "mde_pct": None, "method": "none", "inference": "no_comparison_cohort",
            "n_site": naive.members, "n_comparison": None,
        }
    comparison = cohort_members(comparison_rows, rule, go_live, population)
    result: CohortResult = cohort_did(site, comparison, rule, alpha)
    log.info("%s: cohort of %d (comparison %d in %d areas): naive %.1f%%, comparison "
             "%.1f%%, DiD %.1f%% (%.1f%% to %.1f%%)", claim.site, result.n_site,
             result.n_comparison, result.n_comparison_areas, result.naive_pct,
             result.comparison_pct, result.did_pct, result.ci_low, result.ci_high)
    return row | {
        "naive_pct": result.naive_pct, "comparison_pct": result.comparison_pct,
        "did_pct": result.did_pct, "ci_low": result.ci_low, "ci_high": result.ci_high,
        "p_value": result.p_value, "mde_pct": mde_pct(result.se, alpha, result.df),
        "method": result.method, "inference": result.inference,
        "n_site": result.n_site, "n_comparison": result.n_comparison,
    }


def with_q_values(checks: pl.DataFrame, model_results: pl.DataFrame) -> pl.DataFrame:
    """Benjamini-Hochberg q-values over every site outcome and every claim check together.

    A before/after check's DiD is its site outcome's model, so it takes that test's q-value
    rather than counting the same test twice; cohort checks are tests of their own.
    """
    from reports.statistics import benjamini_hochberg

    own = checks["check_type"] == "cohort"
    family = model_results["p_value"].to_list() + checks.filter(own)["p_value"].to_list()
    q = benjamini_hochberg(family)
    n_models = model_results.height
    by_outcome = {
        (r["site_id"], r["outcome"]): q[i]
        for i, r in enumerate(model_results.select("site_id", "outcome").iter_rows(named=True))
    }
    cohort_q = iter(q[n_models:])
    values = []
    for row in checks.iter_rows(named=True):
        if row["check_type"] == "cohort":
            values.append(next(cohort_q))
        else:
            values.append(by_outcome.get((row["site_id"], row["outcome"]))
                          if row["p_value"] is not None else None)
    return checks.with_columns(pl.Series("q_value", values, dtype=pl.Float64))


def claim_check_rows(protocol: Protocol, panel: pl.DataFrame, comparators: pl.DataFrame,
                     model_results: pl.DataFrame, episodes: pl.DataFrame,
                     run_id: str) -> pl.DataFrame:
    """One claim_checks row per claim of a site in this run, with joint q-values.

    `panel`: area_month_panel rows; `comparators`: comparison_areas (site_id, area_code);
    `model_results`: every site outcome's estimate (site_id, outcome, pct_change,
    pct_ci_low, pct_ci_high, p_value, se, df, estimator, inference); `episodes`:
    stg_episodes rows of the cohort claims' sites and comparison areas.
    """
    in_run = {site.id for site in protocol.sites}
    rule = CohortRule.from_protocol(protocol.claims.cohort)
    models = {(r["site_id"], r["outcome"]): r for r in model_results.iter_rows(named=True)}
    rows = []
    for claim in protocol.claims.sites:
        if claim.site not in in_run:
            continue
        site = protocol.site(claim.site)
        if claim.check == "cohort":
            areas = list(site.areas) + list(protocol.claims.cohort.comparison_areas)
            population = baseline_population(panel, areas, claim.outcome, rule, site.go_live)
            rows.append(cohort_check(claim, list(site.areas),
                                     list(protocol.claims.cohort.comparison_areas),
                                     site.go_live, episodes, population, rule, run_id,
                                     protocol.alpha))
        else:
            matched = (comparators.filter(pl.col("site_id") == claim.site)["area_code"]
                       .unique().sort().to_list())
            rows.append(before_after_check(claim, list(site.areas), matched, site.go_live,
                                           panel, models.get((claim.site, claim.outcome)),
                                           run_id, protocol.alpha))
    checks = pl.DataFrame(rows, schema=CLAIM_CHECK_SCHEMA) if rows else pl.DataFrame(
        schema=CLAIM_CHECK_SCHEMA)
    if checks.height:
        checks = with_q_values(checks, model_results.filter(pl.col("p_value").is_not_null()))
    return checks.select(list(CLAIM_CHECK_SCHEMA))


def baseline_population(panel: pl.DataFrame, areas: list[str], outcome: str,
                        rule: CohortRule, go_live: date) -> pl.DataFrame:
    """Mean resident population of each area over the cohort's baseline window."""
    start, end, _ = rule.windows(go_live)
    return (
        panel.filter(pl.col("area_code").is_in(areas) & (pl.col("outcome") == outcome)
                     & pl.col("month").is_between(start, end, closed="left"))
        .group_by("area_code")
        .agg(pl.col("population").mean().round().cast(pl.Int64))
        .sort("area_code")
    )
