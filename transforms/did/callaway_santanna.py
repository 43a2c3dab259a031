"""Callaway & Sant'Anna (2021) difference-in-differences with staggered adoption.

Reproduces R package `did`: `att_gt` (group-time ATTs with DRDID's estimators), its Wald
pre-test of parallel trends, and `aggte` (simple, group, dynamic and calendar aggregations),
with analytic standard errors from influence functions (R's `bstrap = FALSE`) or a
multiplier bootstrap with uniform (sup-t) bands. The data flow is

    long table --wide_panel--> WidePanel --estimation_sample--> balanced estimation sample
      --plan_cells / group_time_effects--> ATT(g,t) + influence functions
      --aggregation--> summaries --inference--> CSResult (plain data, `to_dict()` for JSON)

Why this estimator: with staggered go-live dates, two-way fixed effects regressions compare
late adopters with early adopters and can weight effects negatively; ATT(g,t) only ever
compares a cohort with units not (yet) treated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from scipy import linalg, stats
from scipy.linalg import blas, lapack

from transforms.did import aggregation, bootstrap
from transforms.did.group_time import GroupTimeEstimates, group_time_effects, plan_cells
from transforms.did.options import CSOptions, DidInputError, PanelColumns
from transforms.did.panel_checks import WidePanel, estimation_sample, wide_panel

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_ZERO_SE = math.sqrt(np.finfo(float).eps) * 10  # R `did` reports smaller standard errors as NA


@dataclass(frozen=True)
class Effect:
    """One estimate: `label` is its cohort, event time or period (None for an overall one)."""

    label: float | None
    att: float | None
    se: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class GroupTimeATT:
    group: float
    time: float
    att: float | None
    se: float | None
    ci_low: float | None
    ci_high: float | None
    post: bool


@dataclass(frozen=True)
class AggregateEffect:
    """An aggregation's overall effect and its effects by cohort, event time or period.

    `crit_val` is the critical value used for the `by` intervals: the sup-t value when
    bootstrapping (a uniform band, as R `did`), otherwise the normal quantile (pointwise).
    """

    kind: str
    overall: Effect
    by: tuple[Effect, ...] = ()
    crit_val: float | None = None
    crit_val_uniform: float | None = None


@dataclass(frozen=True)
class PreTest:
    """Wald test that every pre-treatment ATT(g,t) is zero, with the analytic covariance."""

    wald: float | None  # the statistic W
    df: int
    p: float | None


_BY_KEY = {"group": "group", "dynamic": "e", "calendar": "time"}
AGGREGATIONS = ("simple", "group", "dynamic", "calendar")


def _number(value: float | None) -> float | int | None:
    """JSON-friendly: None for missing, int for whole periods and cohorts."""
    if value is None or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _estimate(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class CSResult:
    """Everything the estimator reports, as plain data."""

    att_gt: tuple[GroupTimeATT, ...]
    aggregates: tuple[AggregateEffect, ...]
    pretest: PreTest
    n_units: int
    periods: tuple[float, ...]
    options: CSOptions
    covariates: tuple[str, ...] = ()
    weights: str | None = None
    cluster: str | None = None
    n_clusters: int | None = None
    att_gt_crit_val_uniform: float | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def aggregate(self, kind: str) -> AggregateEffect:
        for agg in self.aggregates:
            if agg.kind == kind:
                return agg
        raise KeyError(f"aggregation {kind!r} was not computed; this result has "
                       f"{', '.join(a.kind for a in self.aggregates) or 'none'}")

    def to_dict(self) -> dict:
        """The JSON document described in docs/did-json-schema.md."""
        aggregates: dict[str, dict] = {}
        for agg in self.aggregates:
            block: dict = {"att": _estimate(agg.overall.att), "se": _estimate(agg.overall.se),
                           "ci_low": _estimate(agg.overall.ci_low),
                           "ci_high": _estimate(agg.overall.ci_high)}
            if agg.kind in _BY_KEY:
                block["crit_val"] = _estimate(agg.crit_val)
                block["crit_val_uniform"] = _estimate(agg.crit_val_uniform)
                block["band"] = "uniform" if agg.crit_val_uniform is not None else "pointwise"
                block["by"] = [{_BY_KEY[agg.kind]: _number(e.label), "att": _estimate(e.att),
                                "se": _estimate(e.se), "ci_low": _estimate(e.ci_low),
                                "ci_high": _estimate(e.ci_high)} for e in agg.by]
            aggregates[agg.kind] = block
        opts = self.options
        return {
            "estimator": "callaway_santanna",
            "method": opts.method,
            "control": opts.control,
            "base": opts.base,
            "anticipation": _number(opts.anticipation),
            "covariates": list(self.covariates),
            "weights": self.weights,
            "cluster": self.cluster,
            "n_units": self.n_units,
            "n_periods": len(self.periods),
            "first_period": _number(self.periods[0]) if self.periods else None,
            "last_period": _number(self.periods[-1]) if self.periods else None,
            "alpha": opts.alpha,
            "inference": opts.inference,
            "bootstrap": None if not opts.bootstrap else {
                "draws": opts.bootstrap, "multiplier": opts.multiplier, "seed": opts.seed,
                "cluster": self.cluster, "n_clusters": self.n_clusters},
            "att_gt": [{"group": _number(c.group), "time": _number(c.time),
                        "att": _estimate(c.att), "se": _estimate(c.se),
                        "ci_low": _estimate(c.ci_low), "ci_high": _estimate(c.ci_high),
                        "post": c.post} for c in self.att_gt],
            "att_gt_crit_val_uniform": _estimate(self.att_gt_crit_val_uniform),
            "aggregates": aggregates,
            "pretest": {"W": _estimate(self.pretest.wald), "df": self.pretest.df,
                        "p": _estimate(self.pretest.p)},
            "warnings": list(self.warnings),
        }


def analytic_se(inf: np.ndarray, n_units: int, cluster: np.ndarray | None = None) -> np.ndarray:
    """Influence-function standard errors, sqrt(sum_c S_c^2) / n; NaN where (near) zero.

    Without clusters this is R `did`'s sqrt(mean(IF^2) / n). With a cluster column the
    units' influence functions are summed within clusters first (the sandwich form).
    """
    sums = bootstrap.cluster_sums(inf, cluster)
    se = np.sqrt(np.einsum("ij,ij->i", sums, sums)) / n_units
    return np.where(se <= _ZERO_SE, np.nan, se)


def _distinct_rows(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One representative of each distinct row (exact values), and each row's number.

    Rows are keyed by a fixed random projection, so equal rows share a key whatever their
    number; the grouping is then checked against the rows themselves and, in the unlikely
    event that two different rows share a key, redone by hashing each row's bytes.
    """
    keys = part @ np.random.default_rng(0).standard_normal(part.shape[1])
    _, firsts, position = np.unique(keys, return_index=True, return_inverse=True)
    if np.array_equal(part[firsts][position], part, equal_nan=True):
        return firsts, position
    seen: dict[bytes, int] = {}
    first_rows: list[int] = []
    position = np.empty(len(part), dtype=int)
    for i, row in enumerate(part):
        number = seen.setdefault(row.tobytes(), len(first_rows))
        if number == len(first_rows):
            first_rows.append(i)
        position[i] = number
    return np.array(first_rows), position


def _gram(inf: np.ndarray, rows: np.ndarray, unit_blocks: list[slice]) -> np.ndarray:
    """inf[rows] @ inf[rows].T, one block of units at a time.

    An ATT(g,t) influence function is zero outside cohort g and its controls, so most
    (row, block) pairs contribute nothing; and on never-treated controls every cohort's
    comparison of the same two periods has the same influence function, so only distinct
    rows are multiplied (BLAS `syrk`, one triangle).
    """
    selected = inf[rows]
    gram = np.zeros((len(rows), len(rows)))
    for block in unit_blocks:
        part = selected[:, block]
        active = np.flatnonzero(np.any(part, axis=1))
        if len(active) == 0:
            continue
        part = part[active]
        firsts, position = _distinct_rows(part)
        upper = blas.dsyrk(1.0, np.asfortranarray(part[firsts].T), trans=1)
        full = np.triu(upper) + np.triu(upper, 1).T
        gram[np.ix_(active, active)] += full[position][:, position]
    return gram


def wald_pretest(att: np.ndarray, inf: np.ndarray, n_units: int, pre: np.ndarray,
                 unit_blocks: list[slice] | None = None) -> tuple[PreTest, list[str]]:
    """R `did`'s pre-test: W = att' V^-1 att over pre-treatment cells, chi-squared(df)."""
    df = int(pre.sum())
    if df == 0:
        return PreTest(wald=None, df=0, p=None), ["no pre-treatment ATT(g,t) to test"]
    blocks = unit_blocks or [slice(0, n_units)]
    covariance = _gram(inf, np.flatnonzero(pre), blocks) / n_units**2
    singular = PreTest(wald=None, df=df, p=None), [
        "pre-test not reported: the pre-treatment covariance matrix is singular"]
    try:
        factor = linalg.cho_factor(covariance)
    except linalg.LinAlgError:
        return singular
    rcond, _ = lapack.dpocon(factor[0], float(np.abs(covariance).sum(axis=0).max()),
                             uplo="L" if factor[1] else "U")
    if rcond <= np.finfo(float).eps:
        return singular
    w = float(att[pre] @ linalg.cho_solve(factor, att[pre]))
    return PreTest(wald=w, df=df, p=float(stats.chi2.sf(w, df))), []


def _effects(estimates: GroupTimeEstimates, panel: WidePanel) -> aggregation.GroupTimeEffects:
    valid = np.isfinite(estimates.att)
    plan = estimates.plan
    if valid.all():  # no copy of the influence functions
        return aggregation.GroupTimeEffects(
            group=plan.group, time=plan.time, att=estimates.att, inf=estimates.inf,
            periods=panel.times, unit_cohort=panel.cohort, weights=panel.weights)
    return aggregation.GroupTimeEffects(
        group=plan.group[valid], time=plan.time[valid], att=estimates.att[valid],
        inf=estimates.inf[valid], periods=panel.times, unit_cohort=panel.cohort,
        weights=panel.weights)


@dataclass(frozen=True)
class _Family:
    """A block of estimates with their standard errors and critical value."""

    att: np.ndarray
    se: np.ndarray
    crit_val: float  # for confidence intervals of this family
    uniform: float | None  # sup-t critical value when bootstrapping


def _families(inf_blocks: list[np.ndarray], att_blocks: list[np.ndarray], uniform: list[bool],
              panel: WidePanel, options: CSOptions) -> list[_Family]:
    """Standard errors and critical values for each block of estimates."""
    z = float(stats.norm.ppf(1 - options.alpha / 2))
    analytic = [analytic_se(block, panel.n_units, panel.cluster) for block in inf_blocks]
    if not options.bootstrap:
        return [_Family(a, s, z, None) for a, s in zip(att_blocks, analytic, strict=True)]
    draws = bootstrap.multiplier_draws(inf_blocks, panel.n_units, panel.cluster,
                                       options.bootstrap, options.multiplier, options.seed)
    families = []
    for a, d, s_analytic, band in zip(att_blocks, draws, analytic, uniform, strict=True):
        se = np.where(np.isfinite(s_analytic), bootstrap.bootstrap_se(d), np.nan)
        crit = bootstrap.sup_t_critical_value(d, se, options.alpha) if band else float("nan")
        usable = band and math.isfinite(crit) and crit >= z
        families.append(_Family(a, se, crit if usable else z, crit if usable else None))
    return families


def _interval(att: float, se: float, crit: float) -> tuple[float | None, float | None]:
    if not (math.isfinite(att) and math.isfinite(se)):
        return None, None
    return att - crit * se, att + crit * se


def _group_time_rows(group: np.ndarray, time: np.ndarray, att: np.ndarray, se: np.ndarray,
                     crit: float) -> list[GroupTimeATT]:
    """One row per ATT(g,t), None where missing; the arithmetic is done on whole arrays
    because panels with long histories have thousands of cells."""
    finite = np.isfinite(att) & np.isfinite(se)
    low, high = (att - crit * se).tolist(), (att + crit * se).tolist()
    att_values = np.where(np.isfinite(att), att, np.nan).tolist()
    se_values = np.where(np.isfinite(se), se, np.nan).tolist()
    return [GroupTimeATT(group=g, time=t,
                         att=a if a == a else None, se=s if s == s else None,
                         ci_low=lo if ok else None, ci_high=hi if ok else None, post=g <= t)
            for g, t, a, s, lo, hi, ok in zip(group.tolist(), time.tolist(), att_values,
                                              se_values, low, high, finite.tolist(),
                                              strict=True)]


def _effect(label: float | None, att: float, se: float, crit: float) -> Effect:
    low, high = _interval(att, se, crit)
    return Effect(label=label, att=_estimate(att), se=_estimate(se), ci_low=low, ci_high=high)


def estimate_panel(panel: WidePanel, options: CSOptions,
                   aggregations: Sequence[str] = AGGREGATIONS,
                   pretest: bool = True) -> CSResult:
    """Callaway & Sant'Anna on a balanced estimation sample (see `estimation_sample`).

    Every aggregation and the pre-test are computed by default; a caller that needs only
    some of them (the simple ATT, say) can skip the rest, which is most of the cost on
    panels with many periods.
    """
    unknown = set(aggregations) - set(AGGREGATIONS)
    if unknown:
        raise DidInputError(f"unknown aggregation(s) {', '.join(sorted(unknown))}; "
                            f"choose from {', '.join(AGGREGATIONS)}")
    plan = plan_cells(panel.times, panel.groups, options.base, options.anticipation,
                      options.control)
    estimates = group_time_effects(panel, plan, options.method)
    warnings = list(panel.warnings) + list(estimates.warnings)
    effects = _effects(estimates, panel)
    if len(effects.att) == 0:
        raise DidInputError("no ATT(g,t) could be estimated; see the warnings: "
                            + "; ".join(warnings))
    aggregate_by_kind = {"simple": aggregation.simple, "group": aggregation.by_group,
                         "dynamic": aggregation.dynamic, "calendar": aggregation.calendar}
    aggregates = [aggregate_by_kind[kind](effects) for kind in AGGREGATIONS
                  if kind in aggregations]

    inf_blocks = [effects.inf]
    att_blocks = [effects.att]
    uniform = [True]
    for agg in aggregates:
        inf_blocks += [agg.inf[None, :], agg.inf_by]
        att_blocks += [np.array([agg.att]), agg.att_by]
        uniform += [False, agg.kind != "simple"]
    families = _families(inf_blocks, att_blocks, uniform, panel, options)

    valid = np.isfinite(estimates.att)
    cell_se = np.full(len(valid), np.nan)
    cell_se[valid] = families[0].se
    cell_crit = families[0].crit_val
    att_gt = _group_time_rows(plan.group, plan.time, estimates.att, cell_se, cell_crit)

    results = []
    for i, agg in enumerate(aggregates):
        overall, by = families[1 + 2 * i], families[2 + 2 * i]
        results.append(AggregateEffect(
            kind=agg.kind,
            overall=_effect(None, agg.att, float(overall.se[0]), overall.crit_val),
            by=tuple(_effect(float(label), a, s, by.crit_val)
                     for label, a, s in zip(agg.labels, agg.att_by, by.se, strict=True)),
            crit_val=by.crit_val if agg.kind != "simple" else None,
            crit_val_uniform=by.uniform))

    # R drops cells with zero analytic variance (the universal base period's own cell)
    pre_test = PreTest(wald=None, df=0, p=None)
    if pretest:
        pre = ((effects.group > effects.time)
               & np.isfinite(analytic_se(effects.inf, panel.n_units)))
        pre_test, pretest_warnings = wald_pretest(effects.att, effects.inf, panel.n_units, pre,
                                                  [rows for _, rows in panel.cohort_blocks()])
        warnings += pretest_warnings
    if panel.cluster is not None and not options.bootstrap:
        warnings.append("analytic standard errors are clustered by summing unit influence "
                        "functions within clusters (R `did` needs the bootstrap for this)")
    n_clusters = None if panel.cluster is None else int(np.unique(panel.cluster).size)
    for message in warnings:
        log.warning(message)
    return CSResult(att_gt=tuple(att_gt), aggregates=tuple(results), pretest=pre_test,
                    n_units=panel.n_units, periods=tuple(float(t) for t in panel.times),
                    options=options, covariates=panel.covariate_names,
                    n_clusters=n_clusters, att_gt_crit_val_uniform=families[0].uniform,
                    warnings=tuple(warnings))


def estimate_cs(frame: pl.DataFrame | pd.DataFrame, columns: PanelColumns,
                options: CSOptions | None = None,
                aggregations: Sequence[str] = AGGREGATIONS, pretest: bool = True) -> CSResult:
    """Check a long panel (polars or pandas), build the estimation sample and estimate."""
    options = options or CSOptions()
    table = frame if isinstance(frame, pl.DataFrame) else pl.from_pandas(frame)
    panel = estimation_sample(wide_panel(table, columns), options.control, options.anticipation)
    result = estimate_panel(panel, options, aggregations, pretest)
    return replace(result, weights=columns.weights, cluster=columns.cluster)
