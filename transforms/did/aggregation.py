"""Aggregate group-time ATTs into summary effects, as R `did::aggte` does.

Four aggregations, each with an influence function per unit so that standard errors
(analytic or bootstrap) account for every ATT(g,t) used and, where the weights are cohort
shares estimated from the data, for the estimation of those weights too (R's `wif` term):

* simple: post-treatment ATT(g,t) averaged with weights proportional to cohort size;
* group: each cohort's average post-treatment ATT, then averaged over cohorts by size;
* dynamic (event study): ATT(g, g+e) averaged over cohorts by size for each event time e;
  the overall effect is the mean over e >= 0;
* calendar: ATT(g,t) averaged over cohorts treated by period t, by size; the overall effect is
  the mean over periods.

Influence functions are arrays with one row per estimate and one column per unit, scaled
like R's: the variance of an estimate is sum(IF^2) / n^2. Weighted sums of the ATT(g,t)
influence functions are sparse matrix products, so no n x cells copies are made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class GroupTimeEffects:
    """Valid (non-missing) ATT(g,t) with their influence functions, plus what weights need."""

    group: np.ndarray  # (K,) cohort of each ATT(g,t)
    time: np.ndarray  # (K,) period of each ATT(g,t)
    att: np.ndarray  # (K,)
    inf: np.ndarray  # (K, n)
    periods: np.ndarray  # every period of the panel, ascending
    unit_cohort: np.ndarray  # (n,) cohort of each unit, 0 = never treated
    weights: np.ndarray  # (n,) sampling weights


@dataclass(frozen=True)
class Aggregation:
    """One aggregation: an overall effect and, except for `simple`, effects by label."""

    kind: str
    att: float
    inf: np.ndarray  # (n,)
    labels: np.ndarray  # (E,) cohorts, event times or periods
    att_by: np.ndarray  # (E,)
    inf_by: np.ndarray  # (E, n)


@dataclass(frozen=True)
class _Cohorts:
    """Cohorts with ATT(g,t), each cell's and each unit's position among them, and P(G = g)."""

    values: np.ndarray  # (G,)
    cell_slot: np.ndarray  # (K,)
    unit_slot: np.ndarray  # (n,); G for units in none of them
    share: np.ndarray  # (G,) weighted P(G = g): R's `pg`


def _cohorts(effects: GroupTimeEffects, values: np.ndarray | None = None) -> _Cohorts:
    values = np.unique(effects.group) if values is None else values
    slot = np.searchsorted(values, effects.unit_cohort)
    member = (slot < len(values)) & (values[np.minimum(slot, len(values) - 1)]
                                     == effects.unit_cohort)
    unit_slot = np.where(member, slot, len(values))
    n = len(effects.unit_cohort)
    share = np.bincount(unit_slot, weights=effects.weights, minlength=len(values) + 1)[:-1] / n
    return _Cohorts(values=values, cell_slot=np.searchsorted(values, effects.group),
                    unit_slot=unit_slot, share=share)


def _weight_influence(cohorts: _Cohorts, weights: np.ndarray, slots: np.ndarray,
                      att: np.ndarray) -> np.ndarray:
    """The influence of estimating cohort-share weights, times the effects they weight.

    For effects `att` of cohorts `slots` weighted by pg = P(G = g), this is R's
    `wif(...) %*% att` without the n x cells matrix: for a unit i of cohort G_i,
    (w_i * sum_{k: g_k = G_i} att_k - sum_k pg_k att_k) / S
    - (w_i * #{k: g_k = G_i} - S) * sum_k pg_k att_k / S^2, with S = sum_k pg_k.
    """
    pg = cohorts.share[slots]
    total = pg.sum()
    weighted_att = pg @ att
    size = len(cohorts.values) + 1
    att_by_cohort = np.bincount(slots, weights=att, minlength=size)
    count_by_cohort = np.bincount(slots, minlength=size).astype(float)
    unit_att = weights * att_by_cohort[cohorts.unit_slot]
    unit_count = weights * count_by_cohort[cohorts.unit_slot]
    return (unit_att - weighted_att) / total - (unit_count - total) * weighted_att / total**2


def _size_weighted(effects: GroupTimeEffects, cohorts: _Cohorts, sets: list[np.ndarray],
                   weight_influence: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each set of cells: the cohort-size weighted mean ATT and its influence function."""
    rows, cols, values = [], [], []
    for e, cells in enumerate(sets):
        pg = cohorts.share[cohorts.cell_slot[cells]]
        rows.append(np.full(len(cells), e))
        cols.append(cells)
        values.append(pg / pg.sum())
    weight_matrix = sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(sets), len(effects.att)))
    att = weight_matrix @ effects.att
    inf = np.asarray(weight_matrix @ effects.inf)
    if not weight_influence:
        return att, inf
    inf += _weight_influences(cohorts, effects.weights,
                              [cohorts.cell_slot[cells] for cells in sets],
                              [effects.att[cells] for cells in sets])
    return att, inf


def _weight_influences(cohorts: _Cohorts, weights: np.ndarray, slots: list[np.ndarray],
                       att: list[np.ndarray]) -> np.ndarray:
    """`_weight_influence` for many sets of effects at once, one row per set.

    An event study has one set per event time; doing them together turns a few hundred
    passes over the units into a handful of whole-array operations.
    """
    size = len(cohorts.values) + 1
    att_by_cohort = np.zeros((len(slots), size))
    count_by_cohort = np.zeros((len(slots), size))
    total = np.empty(len(slots))
    weighted_att = np.empty(len(slots))
    for e, (s, a) in enumerate(zip(slots, att, strict=True)):
        pg = cohorts.share[s]
        total[e] = pg.sum()
        weighted_att[e] = pg @ a
        att_by_cohort[e] = np.bincount(s, weights=a, minlength=size)
        count_by_cohort[e] = np.bincount(s, minlength=size)
    # The constant terms of `_weight_influence` cancel: what is left is the unit's weight
    # times a number per (set, cohort)
    total, weighted_att = total[:, None], weighted_att[:, None]
    per_cohort = att_by_cohort / total - count_by_cohort * weighted_att / total**2
    return weights * per_cohort[:, cohorts.unit_slot]


def simple(effects: GroupTimeEffects) -> Aggregation:
    """All post-treatment ATT(g,t), weighted by cohort size."""
    post = np.flatnonzero(effects.group <= effects.time)
    att, inf = _size_weighted(effects, _cohorts(effects), [post])
    return Aggregation("simple", float(att[0]), inf[0], np.empty(0), np.empty(0),
                       np.empty((0, len(effects.unit_cohort))))


def by_group(effects: GroupTimeEffects) -> Aggregation:
    """Each cohort's mean post-treatment ATT; overall, those means weighted by cohort size."""
    post = effects.group <= effects.time
    cohorts = _cohorts(effects, np.unique(effects.group[post]))
    sets = [np.flatnonzero(post & (effects.group == g)) for g in cohorts.values]
    # within one cohort the size weights are equal: the plain mean R reports, with no
    # weight-estimation term
    att_by, inf_by = _size_weighted(effects, cohorts, sets, weight_influence=False)
    weights = cohorts.share / cohorts.share.sum()
    every = np.arange(len(cohorts.values))
    inf = weights @ inf_by + _weight_influence(cohorts, effects.weights, every, att_by)
    return Aggregation("group", float(weights @ att_by), inf, cohorts.values, att_by, inf_by)


def _mean_of(kind: str, labels: np.ndarray, att_by: np.ndarray,
             inf_by: np.ndarray, chosen: np.ndarray) -> Aggregation:
    """Overall effect as the plain mean of some of the by-label effects (no weight term)."""
    return Aggregation(kind, float(att_by[chosen].mean()), inf_by[chosen].mean(axis=0),
                       labels, att_by, inf_by)


def dynamic(effects: GroupTimeEffects) -> Aggregation:
    """Event-study effects by e = t - g; overall, the mean over e >= 0."""
    event = effects.time - effects.group
    labels, position = np.unique(event, return_inverse=True)
    order = np.argsort(position, kind="stable")
    sets = np.split(order, np.cumsum(np.bincount(position))[:-1])
    att_by, inf_by = _size_weighted(effects, _cohorts(effects), sets)
    return _mean_of("dynamic", labels, att_by, inf_by, labels >= 0)


def calendar(effects: GroupTimeEffects) -> Aggregation:
    """Effects by period among cohorts already treated; overall, the mean over periods."""
    post = effects.group <= effects.time
    periods = np.unique(effects.time[post])
    sets = [np.flatnonzero(post & (effects.time == t)) for t in periods]
    att_by, inf_by = _size_weighted(effects, _cohorts(effects), sets)
    return _mean_of("calendar", periods, att_by, inf_by, np.ones(len(periods), dtype=bool))
