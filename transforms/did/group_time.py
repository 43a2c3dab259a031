"""Group-time average treatment effects ATT(g,t) and their influence functions.

For each treated cohort g and period t, ATT(g,t) is a two-period DiD between cohort g and a
control group, across t and a base period (Callaway & Sant'Anna 2021). This module decides,
as R `did::att_gt` does, which comparisons are made (the "cell plan") and computes them:

* base period: "varying" compares each pre-treatment period with the one before it, and
  post-treatment periods with g - 1 - anticipation; "universal" compares every period with
  g - 1 - anticipation, and that reference period's ATT is 0 by construction;
* controls: "never" uses never-treated units; "notyet" adds units first treated after both
  periods of the comparison (plus anticipation), excluding cohort g itself.

Without covariates every estimator (reg, ipw, dr) reduces to a difference in weighted mean
changes, so cells are computed as array operations over all periods of a cohort at once.
With covariates, comparisons that share units and covariate values are passed together to
the DRDID estimators in `drdid`.

Influence functions are stored as a (cells x units) array on R's scale: the variance of
ATT(g,t) is sum(IF^2) / n^2, zero for units in neither cohort g nor its controls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from transforms.did.drdid import (
    ESTIMATORS,
    SingularDesign,
    TwoByTwo,
    overlap_violated,
    regression_infeasible,
)
from transforms.did.panel_checks import WidePanel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellPlan:
    """Which comparison each ATT(g,t) is: cohort, period, base period and control cut-off."""

    group: np.ndarray  # (K,) cohort g
    time: np.ndarray  # (K,) period t
    group_index: np.ndarray  # (K,) position of g in the panel's groups
    t_index: np.ndarray  # (K,) column of t
    base_index: np.ndarray  # (K,) column of the base period
    reference: np.ndarray  # (K,) universal base period's own cell: ATT = 0 by construction
    cutoff: np.ndarray  # (K,) controls must be first treated after this (inf: never treated)


def plan_cells(times: np.ndarray, groups: np.ndarray, base: str, anticipation: float,
               control: str) -> CellPlan:
    """The ATT(g,t) to estimate, in R `did`'s order (by cohort, then period)."""
    shift = 1 if base == "varying" else 0
    rows: list[tuple[float, float, int, int, int, bool, float]] = []
    for gi, g in enumerate(groups):
        before = np.flatnonzero(times + anticipation < g)
        last_pre = int(before[-1])
        for t in range(len(times) - shift):
            current = t + shift
            base_index = t if base == "varying" else last_pre
            if g <= times[current]:
                base_index = last_pre
            cutoff = max(times[current], times[base_index]) + anticipation
            rows.append((float(g), float(times[current]), gi, current, base_index,
                         base == "universal" and base_index == current,
                         float(cutoff) if control == "notyet" else np.inf))
    columns = list(zip(*rows, strict=True))
    return CellPlan(group=np.array(columns[0]), time=np.array(columns[1]),
                    group_index=np.array(columns[2], dtype=int),
                    t_index=np.array(columns[3], dtype=int),
                    base_index=np.array(columns[4], dtype=int),
                    reference=np.array(columns[5], dtype=bool), cutoff=np.array(columns[6]))


@dataclass(frozen=True)
class GroupTimeEstimates:
    """ATT(g,t) for every planned cell (NaN where it cannot be estimated) and the IFs."""

    plan: CellPlan
    att: np.ndarray  # (K,)
    inf: np.ndarray  # (K, n)
    warnings: tuple[str, ...]


def _control_members(block_cohorts: np.ndarray, group: float,
                     cutoff: np.ndarray) -> np.ndarray:
    """(blocks, cells): whether each cohort block is a control for each cell."""
    cohorts = block_cohorts[:, None]
    return (cohorts == 0) | ((cohorts > cutoff[None, :]) & (cohorts != group))


def _no_overlap(method: str, n_treated: np.ndarray, n_control: np.ndarray,
                w_treated: float, w_control: np.ndarray) -> np.ndarray:
    """Cells that DRDID's propensity score methods cannot estimate without covariates.

    With an intercept-only logit the propensity score is the treated share. R `did` skips a
    cell whose unweighted share is >= 0.999, and DRDID trims controls at a score of 0.995,
    which leaves no controls.
    """
    if method == "reg":
        return np.zeros(len(n_control), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = n_treated / (n_treated + n_control)
        weighted_share = w_treated / (w_treated + w_control)
    return (share >= 0.999) | (weighted_share >= 0.995)


def _period_changes(y_by_period: np.ndarray, now: np.ndarray, base: np.ndarray,
                    rows: slice) -> np.ndarray:
    """Outcome changes (cells, units in `rows`) from base to current period."""
    return y_by_period[now, rows] - y_by_period[base, rows]


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive integers as the equivalent slice; other indices unchanged."""
    if len(index) and index[-1] - index[0] == len(index) - 1 and (np.diff(index) == 1).all():
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _unconditional(panel: WidePanel, plan: CellPlan, method: str, inf: np.ndarray,
                   att: np.ndarray) -> list[str]:
    """Closed-form cells without covariates, one cohort at a time; fills `att` and `inf`.

    ATT(g,t) = weighted mean change of cohort g - weighted mean change of its controls, and
    a unit's influence function is n * w_i * (change_i - mean) / (sum of w in its group),
    negative for controls. Arrays are oriented (cells, units) so writes are contiguous.
    """
    n = panel.n_units
    y_by_period = np.ascontiguousarray(panel.y.T)
    blocks = panel.cohort_blocks()
    block_cohorts = np.array([c for c, _ in blocks])
    warnings = []
    for gi, g in enumerate(panel.groups):
        cells = np.flatnonzero((plan.group_index == gi) & ~plan.reference)
        if len(cells) == 0:
            continue
        now, base = plan.t_index[cells], plan.base_index[cells]
        members = _control_members(block_cohorts, g, plan.cutoff[cells])
        treated = blocks[int(np.flatnonzero(block_cohorts == g)[0])][1]
        w_treated = panel.weights[treated]
        total_treated = w_treated.sum()
        change = _period_changes(y_by_period, now, base, treated)
        mean_treated = change @ w_treated / total_treated
        changes = {}
        control_total = np.zeros(len(cells))
        control_sum = np.zeros(len(cells))
        control_count = np.zeros(len(cells))
        for b, (_, rows) in enumerate(blocks):
            if not members[b].any():
                continue
            w = panel.weights[rows]
            changes[b] = _period_changes(y_by_period, now, base, rows)
            control_total += members[b] * w.sum()
            control_sum += members[b] * (changes[b] @ w)
            control_count += members[b] * (rows.stop - rows.start)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_control = control_sum / control_total
        bad = (control_total <= 0) | _no_overlap(method, treated.stop - treated.start,
                                                 control_count, total_treated, control_total)
        mean_control[bad] = np.nan
        att[cells] = mean_treated - mean_control
        # a cohort's cells are usually consecutive rows: write through a slice, not a gather
        rows_out = _as_slice(cells)
        change -= mean_treated[:, None]
        change *= (n / total_treated) * w_treated
        inf[rows_out, treated] = change
        for b, block_change in changes.items():
            use = members[b] & ~bad
            rows = blocks[b][1]
            if use.all():
                block_change -= mean_control[:, None]
                block_change *= -n * panel.weights[rows] / control_total[:, None]
                inf[rows_out, rows] = block_change
                continue
            scaled = block_change[use] - mean_control[use, None]
            scaled *= -n * panel.weights[rows] / control_total[use, None]
            inf[cells[use], rows] = scaled
        inf[cells[bad]] = np.nan
        warnings += [f"no usable controls for cohort {g:g} in period {t:g}; ATT(g,t) left out"
                     for t in plan.time[cells[bad]]]
    return warnings


def _covariates_vary(panel: WidePanel) -> bool:
    assert panel.covariates is not None
    return bool((panel.covariates != panel.covariates[0]).any())


@dataclass(frozen=True)
class _Batch:
    """ATT(g,t) cells that share treated units, controls and covariate period."""

    cells: np.ndarray
    rows: np.ndarray  # units of cohort g and of its controls
    treated: np.ndarray  # 1.0 for cohort g, 0.0 for controls (per row)
    period: int  # column of the covariate values used
    label: str


def _batches(panel: WidePanel, plan: CellPlan, gi: int, varying: bool) -> list[_Batch]:
    """Group one cohort's cells by control set and (for time-varying covariates) period."""
    g = panel.groups[gi]
    blocks = panel.cohort_blocks()
    block_cohorts = np.array([c for c, _ in blocks])
    cells = np.flatnonzero((plan.group_index == gi) & ~plan.reference)
    members = _control_members(block_cohorts, g, plan.cutoff[cells])
    # covariates are taken from the earlier of the two periods, as in R `did`
    period = (np.minimum(plan.t_index[cells], plan.base_index[cells]) if varying
              else np.zeros(len(cells), dtype=int))
    keys = [(members[:, j].tobytes(), int(period[j])) for j in range(len(cells))]
    batches = []
    for key in dict.fromkeys(keys):
        chosen = [j for j, k in enumerate(keys) if k == key]
        rows = np.concatenate([np.arange(s.start, s.stop) for (c, s), m
                               in zip(blocks, members[:, chosen[0]], strict=True)
                               if m or c == g])
        batch_cells = cells[chosen]
        batches.append(_Batch(
            cells=batch_cells, rows=rows, treated=(panel.cohort[rows] == g).astype(float),
            period=key[1],
            label=f"cohort {g:g} in period(s) " + ", ".join(f"{t:g}"
                                                            for t in plan.time[batch_cells])))
    return batches


def _estimate_batch(panel: WidePanel, plan: CellPlan, batch: _Batch,
                    method: str) -> tuple[TwoByTwo | None, str | None]:
    """DRDID on one batch, after R `did`'s checks; a warning instead when it cannot be done."""
    assert panel.covariates is not None
    d = batch.treated
    if not (d == 0).any():
        return None, f"no usable controls for {batch.label}; ATT(g,t) left out"
    x = np.column_stack([np.ones(len(batch.rows)), panel.covariates[batch.period][batch.rows]])
    if method in ("dr", "ipw") and overlap_violated(x, d):
        return None, f"overlap condition violated for {batch.label}; ATT(g,t) left out"
    if method in ("dr", "reg") and regression_infeasible(x, d):
        return None, (f"not enough control units for {batch.label} to run the outcome "
                      "regression; ATT(g,t) left out")
    y = panel.y[batch.rows]
    change = y[:, plan.t_index[batch.cells]] - y[:, plan.base_index[batch.cells]]
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = ESTIMATORS[method](change, d, x, panel.weights[batch.rows])
    except SingularDesign as exc:
        return None, f"{exc} for {batch.label}; ATT(g,t) left out"
    if not np.isfinite(result.att).all():
        return result, (f"no controls left after trimming propensity scores at 0.995 for "
                        f"{batch.label}; ATT(g,t) left out")
    return result, None


def _with_covariates(panel: WidePanel, plan: CellPlan, method: str, inf: np.ndarray,
                     att: np.ndarray) -> list[str]:
    """DRDID cells, batching comparisons that share units and covariate values."""
    varying = _covariates_vary(panel)
    warnings = []
    for gi in range(len(panel.groups)):
        for batch in _batches(panel, plan, gi, varying):
            result, warning = _estimate_batch(panel, plan, batch, method)
            if warning:
                warnings.append(warning)
            if result is None:
                att[batch.cells] = np.nan
                continue
            att[batch.cells] = result.att
            # DRDID's influence function is on the batch's n1 units; R scales it by n / n1
            inf[np.ix_(batch.cells, batch.rows)] = (result.inf
                                                    * (panel.n_units / len(batch.rows))).T
    return warnings


def group_time_effects(panel: WidePanel, plan: CellPlan, method: str) -> GroupTimeEstimates:
    """Estimate every planned ATT(g,t) with its influence function."""
    att = np.zeros(len(plan.group))
    inf = np.zeros((len(plan.group), panel.n_units))
    if panel.covariates is None:
        warnings = _unconditional(panel, plan, method, inf, att)
    else:
        warnings = _with_covariates(panel, plan, method, inf, att)
    non_finite = ~np.isfinite(att)
    att[non_finite] = np.nan
    inf[non_finite] = np.nan
    log.info("estimated %d ATT(g,t) for %d cohorts on %d units", int((~non_finite).sum()),
             len(panel.groups), panel.n_units)
    return GroupTimeEstimates(plan=plan, att=att, inf=inf, warnings=tuple(warnings))
