"""Poisson extended two-way fixed effects (Wooldridge 2023) for staggered go-lives.

One rate ratio per site is biased when sites go live at different dates and effects
change with time since go-live: already-treated areas end up as controls. The extended
model gives every cohort (areas sharing a go-live month) its own effect in every period:

    E[y_it] = E_it * exp(a + b_g + c_t + sum_{g, s} tau_gs * 1[cohort_i = g, t = s])

with E_it the population (offset), cohort effects b_g, period effects c_t and one tau per
treated cohort-period cell (and, for the pre-trend test, per pre-period cell except the
one just before go-live). Every regressor varies only by cohort and period, so the
Poisson score equations involve only cell totals: the model is fitted on the cohort x period
table (tiny whatever the number of areas), and clustered standard errors come from
area-level scores. Each cell's indicator is one table row, so the cohort and period effects
are a statsmodels fit to the other rows and every tau is closed form; the sandwich uses the
bread's block structure, never a design row per area-period and cell, which on 7,000 areas x
120 months would take gigabytes. Cells are aggregated to an overall rate ratio, an event
study by months since go-live, and admissions avoided per 1,000 population.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy import stats


@dataclass(frozen=True)
class Aggregate:
    """A weighted average of cell log rate ratios, with delta-method inference."""

    log_rate_ratio: float
    se: float
    ci_low_log: float
    ci_high_log: float
    p_value: float

    @property
    def pct_change(self) -> float:
        return 100.0 * (math.exp(self.log_rate_ratio) - 1.0)

    def to_dict(self) -> dict:
        return {
            "log_rate_ratio": self.log_rate_ratio, "se": self.se,
            "rate_ratio": math.exp(self.log_rate_ratio), "pct_change": self.pct_change,
            "pct_ci_low": 100.0 * (math.exp(self.ci_low_log) - 1.0),
            "pct_ci_high": 100.0 * (math.exp(self.ci_high_log) - 1.0),
            "p_value": self.p_value,
        }


@dataclass(frozen=True)
class EtwfeResult:
    cells: pl.DataFrame  # cohort, period, e, post, log_rate_ratio, se, weight
    vcov: np.ndarray  # clustered covariance of the cells' log rate ratios
    alpha: float
    overall: Aggregate
    event_study: pl.DataFrame  # e, log_rate_ratio, se, ci_low_log, ci_high_log
    pretest: dict  # W, df, p (joint test that all pre-period cells are zero)
    avoided_per_1000: float
    n_units: int
    n_clusters: int
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _cell_design(cohorts: np.ndarray, periods: np.ndarray, cells: list[tuple[int, int]],
                 cohort_levels: list[int], period_levels: list[int]) -> np.ndarray:
    """Design rows for (cohort, period) pairs: intercept, cohort and period dummies
    (first level dropped), then one indicator per estimated cell."""
    n = cohorts.size
    cohort_cols = cohort_levels[1:]
    period_cols = period_levels[1:]
    x = np.zeros((n, 1 + len(cohort_cols) + len(period_cols) + len(cells)))
    x[:, 0] = 1.0
    for j, g in enumerate(cohort_cols):
        x[:, 1 + j] = cohorts == g
    offset = 1 + len(cohort_cols)
    for j, t in enumerate(period_cols):
        x[:, offset + j] = periods == t
    offset += len(period_cols)
    for j, (g, t) in enumerate(cells):
        x[:, offset + j] = (cohorts == g) & (periods == t)
    return x


@dataclass(frozen=True)
class _CellFit:
    """What the aggregation needs from a fit: each cell's log rate ratio, their clustered
    covariance, and each cell's fitted count (sum of its areas' fitted means)."""

    tau: np.ndarray
    v_tau: np.ndarray
    cell_mu: np.ndarray


@dataclass(frozen=True)
class _Layout:
    """The model's rows and columns: area-period rows (sorted by area, then period), the
    cohort x period table, and which table row each estimated cell is."""

    unit_idx: np.ndarray  # area number of each row
    cohort_idx: np.ndarray  # position of each row's cohort in cohort_levels
    period_idx: np.ndarray  # position of each row's period in period_levels
    y: np.ndarray
    exposure: np.ndarray
    cohort_levels: list[int]
    period_levels: list[int]
    cells: list[tuple[int, int]]
    table_cohort: np.ndarray
    table_period: np.ndarray
    table_y: np.ndarray
    table_e: np.ndarray
    cell_row: np.ndarray  # table row of each cell

    @property
    def n_clusters(self) -> int:
        return int(self.unit_idx.max()) + 1

    def small_sample_factor(self, k: int) -> float:
        """statsmodels' CR1 factor G / (G - 1) * (N - 1) / (N - K)."""
        n_obs, g = self.y.size, self.n_clusters
        return g / (g - 1) * (n_obs - 1) / (n_obs - k)


def _dense_fit(layout: _Layout) -> _CellFit:
    """Poisson GLM on the table with every cell's indicator, and a sandwich built from one
    design row per area-period: exact in every case, but its memory grows with rows x cells."""
    import statsmodels.api as sm

    levels = (layout.cohort_levels, layout.period_levels)
    x_cells = _cell_design(layout.table_cohort, layout.table_period, layout.cells, *levels)
    fit = sm.GLM(layout.table_y, x_cells, family=sm.families.Poisson(),
                 offset=np.log(layout.table_e)).fit()
    params = np.asarray(fit.params)
    cohorts_u = np.asarray(layout.cohort_levels)[layout.cohort_idx]
    periods_u = np.asarray(layout.period_levels)[layout.period_idx]
    x_units = _cell_design(cohorts_u, periods_u, layout.cells, *levels)
    mu_units = layout.exposure * np.exp(x_units @ params)
    scores = np.zeros((layout.n_clusters, x_units.shape[1]))
    np.add.at(scores, layout.unit_idx, x_units * (layout.y - mu_units)[:, None])
    bread = np.linalg.pinv((x_units * mu_units[:, None]).T @ x_units)
    vcov = layout.small_sample_factor(x_units.shape[1]) * bread @ (scores.T @ scores) @ bread
    first_cell = x_units.shape[1] - len(layout.cells)
    return _CellFit(tau=params[first_cell:], v_tau=vcov[first_cell:, first_cell:],
                    cell_mu=np.asarray(fit.mu)[layout.cell_row])


def _structured_fit(layout: _Layout) -> _CellFit | None:
    """The same estimates without a design row per area-period and cell.

    Each cell indicator picks out one table row, so at the maximum its fitted count equals
    its observed count: the cohort and period effects are the Poisson fit to the other
    table rows alone, and each cell's log rate ratio is its observed log rate minus those.
    The covariance follows from the bread's block inverse (Schur complement on the diagonal
    cell block): a cell's row of the inverse applied to an area-period's design row is
    1 / (fitted count) for the period's own cell, and -A_cell S^-1 a for a period outside the
    cells, so areas' scores enter only through their residuals, cohort by cohort.
    Returns None where this does not apply (an empty cell, or effects not identified by the
    other rows); the dense fit handles those.
    """
    import statsmodels.api as sm

    levels = (layout.cohort_levels, layout.period_levels)
    base = _cell_design(layout.table_cohort, layout.table_period, [], *levels)
    is_cell = np.zeros(len(layout.table_y), dtype=bool)
    is_cell[layout.cell_row] = True
    others = ~is_cell
    if (layout.table_y[is_cell] <= 0).any() or (
            np.linalg.matrix_rank(base[others]) < base.shape[1]):
        return None
    fit = sm.GLM(layout.table_y[others], base[others], family=sm.families.Poisson(),
                 offset=np.log(layout.table_e[others])).fit()
    gamma = np.asarray(fit.params)
    eta_base = base @ gamma
    cell_y = layout.table_y[layout.cell_row]
    tau = np.log(cell_y / layout.table_e[layout.cell_row]) - eta_base[layout.cell_row]

    # fitted log rate per (cohort, period) and every area-period's residual, area x period
    n_cohorts, n_periods = len(layout.cohort_levels), len(layout.period_levels)
    cohort_pos = np.searchsorted(layout.cohort_levels, layout.table_cohort)
    period_pos = np.searchsorted(layout.period_levels, layout.table_period)
    grid_base = _cell_design(np.repeat(layout.cohort_levels, n_periods),
                             np.tile(layout.period_levels, n_cohorts), [], *levels)
    eta = (grid_base @ gamma).reshape(n_cohorts, n_periods)
    cell_index = np.full((n_cohorts, n_periods), -1)
    cell_index[cohort_pos[layout.cell_row], period_pos[layout.cell_row]] = np.arange(len(tau))
    eta[cohort_pos[layout.cell_row], period_pos[layout.cell_row]] += tau
    mu_units = layout.exposure * np.exp(eta[layout.cohort_idx, layout.period_idx])
    residual = np.zeros((layout.n_clusters, n_periods))
    residual[layout.unit_idx, layout.period_idx] = layout.y - mu_units
    unit_cohort = np.zeros(layout.n_clusters, dtype=int)
    unit_cohort[layout.unit_idx] = layout.cohort_idx

    fitted = np.exp(eta_base[others]) * layout.table_e[others]
    s_inv = np.linalg.inv((base[others] * fitted[:, None]).T @ base[others])
    p = base[layout.cell_row] @ s_inv  # A_cell S^-1
    n_cells, k_base = len(tau), base.shape[1]
    ww = np.zeros((n_cells, n_cells))
    wq = np.zeros((n_cells, k_base))
    qq = np.zeros((k_base, k_base))
    for c in range(n_cohorts):
        r = residual[unit_cohort == c]
        in_cell = cell_index[c] >= 0
        j = cell_index[c, in_cell]
        q = r[:, ~in_cell] @ grid_base.reshape(n_cohorts, n_periods, k_base)[c, ~in_cell]
        w = r[:, in_cell] / cell_y[j]
        ww[np.ix_(j, j)] = w.T @ w
        wq[j] = w.T @ q
        qq += q.T @ q
    pwq = p @ wq.T
    meat = ww - pwq - pwq.T + p @ qq @ p.T
    factor = layout.small_sample_factor(k_base + n_cells)
    return _CellFit(tau=tau, v_tau=factor * meat, cell_mu=cell_y)


def _layout(frame: pl.DataFrame, unit: str, period: str, cohort: str, count: str,
            exposure: str, leads: bool) -> _Layout:
    """Rows, levels, cells and the cohort x period table of the model."""
    data = frame.select(unit, period, cohort, count, exposure).sort(unit, period)
    cohorts_u = data[cohort].to_numpy()
    periods_u = data[period].to_numpy()
    if (data[cohort] == 0).sum() == 0:
        raise ValueError(f"column `{cohort}` has no never-treated units (0): no controls")
    period_levels = sorted(set(periods_u.tolist()))
    cohort_levels = [0] + sorted(set(cohorts_u.tolist()) - {0})
    cells = [(g, t) for g in cohort_levels[1:] for t in period_levels
             if t >= g or (leads and t < g - 1)]
    table = (
        data.group_by(cohort, period)
        .agg(pl.col(count).sum().alias("y"), pl.col(exposure).sum().alias("e"))
        .sort(cohort, period)
    )
    table_cohort, table_period = table[cohort].to_numpy(), table[period].to_numpy()
    row_of = {(g, t): i for i, (g, t) in enumerate(zip(table_cohort.tolist(),
                                                       table_period.tolist(), strict=True))}
    empty = [cell for cell in cells if cell not in row_of]
    if empty:
        g, t = empty[0]
        raise ValueError(f"cohort {g} (column `{cohort}`) has no rows in period {t} (column "
                         f"`{period}`), so its effect there cannot be estimated; "
                         f"{len(empty)} cohort-period cells are empty")
    return _Layout(
        unit_idx=np.unique(data[unit].to_numpy(), return_inverse=True)[1],
        cohort_idx=np.searchsorted(cohort_levels, cohorts_u),
        period_idx=np.searchsorted(period_levels, periods_u),
        y=data[count].to_numpy().astype(float), exposure=data[exposure].to_numpy().astype(float),
        cohort_levels=cohort_levels, period_levels=period_levels, cells=cells,
        table_cohort=table_cohort, table_period=table_period,
        table_y=table["y"].to_numpy().astype(float), table_e=table["e"].to_numpy().astype(float),
        cell_row=np.array([row_of[cell] for cell in cells], dtype=int))


def fit_etwfe_poisson(
    frame: pl.DataFrame,
    *,
    unit: str,
    period: str,
    cohort: str,
    count: str,
    exposure: str,
    alpha: float = 0.05,
    leads: bool = True,
) -> EtwfeResult:
    """Fit the cohort x period Poisson model and aggregate it.

    `period` and `cohort` are integer period indices; cohort is the first treated period,
    0 for never treated. `exposure` is the population (its log is the offset).
    """
    layout = _layout(frame, unit, period, cohort, count, exposure, leads)
    fit = _structured_fit(layout) or _dense_fit(layout)
    cells, tau, v_tau = layout.cells, fit.tau, fit.v_tau
    n_clusters = layout.n_clusters
    cell_frame = pl.DataFrame({
        "cohort": [g for g, _ in cells],
        "period": [t for _, t in cells],
        "e": [t - g for g, t in cells],
        "post": [t >= g for g, t in cells],
        "log_rate_ratio": tau,
        "se": np.sqrt(np.diag(v_tau)),
    })

    # Weights: each treated cell's expected count without treatment, so the overall
    # estimate is the rate ratio of admissions actually seen to those expected.
    post_mask = np.array([t >= g for g, t in cells])
    cell_weight = fit.cell_mu * np.exp(-tau)
    w_post = np.where(post_mask, cell_weight, 0.0)
    overall = _aggregate(tau, v_tau, w_post / w_post.sum(), alpha, n_clusters - 1)

    e_values = cell_frame["e"].to_numpy()
    event_weights = {}
    event_rows = []
    for e in sorted(set(e_values.tolist())):
        weights = np.where(e_values == e, cell_weight, 0.0)
        event_weights[e] = weights / weights.sum()
        agg = _aggregate(tau, v_tau, event_weights[e], alpha, n_clusters - 1)
        event_rows.append((e, agg.log_rate_ratio, agg.se, agg.ci_low_log, agg.ci_high_log))
    event_study = pl.DataFrame(event_rows, orient="row",
                               schema=["e", "log_rate_ratio", "se", "ci_low_log", "ci_high_log"])
    pretest = _pretest(tau, v_tau, event_weights, n_clusters)

    avoided = float((cell_weight - fit.cell_mu)[post_mask].sum())
    person_periods = float(layout.table_e[layout.cell_row][post_mask].sum())
    warnings = []
    if np.unique(layout.unit_idx[layout.cohort_idx > 0]).size < 5:
        warnings.append("fewer than 5 treated areas: clustered errors are unreliable")
    return EtwfeResult(
        cells=cell_frame.with_columns(pl.Series("weight", cell_weight)), vcov=v_tau,
        alpha=alpha, overall=overall, event_study=event_study, pretest=pretest,
        avoided_per_1000=1000.0 * avoided / person_periods,
        n_units=n_clusters, n_clusters=n_clusters, warnings=tuple(warnings),
    )


def aggregate_by(result: EtwfeResult, column: str) -> list[tuple[int, Aggregate]]:
    """Post-go-live cells averaged within each value of `column` (cohort, period or e),
    weighted by expected untreated counts."""
    cells = result.cells
    post = cells["post"].to_numpy()
    tau = cells["log_rate_ratio"].to_numpy()
    df = result.n_clusters - 1
    out = []
    for value in sorted(cells.filter(pl.col("post"))[column].unique().to_list()):
        weights = np.where(post & (cells[column].to_numpy() == value),
                           cells["weight"].to_numpy(), 0.0)
        out.append((value, _aggregate(tau, result.vcov, weights / weights.sum(),
                                      result.alpha, df)))
    return out


def _pretest(tau: np.ndarray, v_tau: np.ndarray, event_weights: dict[int, np.ndarray],
             n_clusters: int, max_leads: int = 12) -> dict:
    """Joint Wald test that the event-study leads (months -2, -3, ... before go-live) are
    zero.

    Testing every pre-period cell would ask more of a clustered covariance than it holds
    (its rank is below the number of areas), so the test uses the event-time averages of
    the last `max_leads` pre-periods, and never more restrictions than areas minus one.
    """
    leads = sorted((e for e in event_weights if e < -1), reverse=True)
    leads = leads[: min(max_leads, n_clusters - 1)]
    if not leads:
        return {"W": float("nan"), "df": 0, "p": float("nan"), "leads": []}
    contrast = np.vstack([event_weights[e] for e in leads])
    b, v = contrast @ tau, contrast @ v_tau @ contrast.T
    w_stat = float(b @ np.linalg.solve(v, b))
    return {"W": w_stat, "df": len(leads), "p": float(stats.chi2.sf(w_stat, len(leads))),
            "leads": leads}


def _aggregate(tau: np.ndarray, v_tau: np.ndarray, weights: np.ndarray, alpha: float,
               df: int) -> Aggregate:
    """Weighted mean of cell log rate ratios; its variance by the delta method (linear)."""
    estimate = float(weights @ tau)
    se = float(np.sqrt(weights @ v_tau @ weights))
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    p = float(2 * stats.t.sf(abs(estimate / se), df)) if se > 0 else float("nan")
    return Aggregate(estimate, se, estimate - crit * se, estimate + crit * se, p)
