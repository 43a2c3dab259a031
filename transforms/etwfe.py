"""Poisson extended two-way fixed effects (Wooldridge 2023) for staggered go-lives.

One rate ratio per site is biased when sites go live at different dates and effects
change with time since go-live: already-treated areas end up as controls. The extended
model gives every cohort (areas sharing a go-live month) its own effect in every period:

    E[y_it] = E_it * exp(a + b_g + c_t + sum_{g, s} tau_gs * 1[cohort_i = g, t = s])

with E_it the population (offset), cohort effects b_g, period effects c_t and one tau per
treated cohort-period cell (and, for the pre-trend test, per pre-period cell except the
one just before go-live). Every regressor varies only by cohort and period, so the
Poisson score equations involve only cell totals: the model is fitted with statsmodels on
the cohort x period table (tiny whatever the number of areas), and clustered standard
errors come from area-level scores. Cells are aggregated to an overall rate ratio, an
event study by months since go-live, and admissions avoided per 1,000 population.
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
    import statsmodels.api as sm

    data = frame.select(unit, period, cohort, count, exposure).sort(unit, period)
    cohorts_u = data[cohort].to_numpy()
    periods_u = data[period].to_numpy()
    if (data[cohort] == 0).sum() == 0:
        raise ValueError(f"column `{cohort}` has no never-treated units (0): no controls")
    period_levels = sorted(set(periods_u.tolist()))
    cohort_levels = [0] + sorted(set(cohorts_u.tolist()) - {0})
    treated_cohorts = cohort_levels[1:]
    cells = [(g, t) for g in treated_cohorts for t in period_levels
             if t >= g or (leads and t < g - 1)]

    table = (
        data.group_by(cohort, period)
        .agg(pl.col(count).sum().alias("y"), pl.col(exposure).sum().alias("e"))
        .sort(cohort, period)
    )
    x_cells = _cell_design(table[cohort].to_numpy(), table[period].to_numpy(), cells,
                           cohort_levels, period_levels)
    fit = sm.GLM(table["y"].to_numpy().astype(float), x_cells, family=sm.families.Poisson(),
                 offset=np.log(table["e"].to_numpy().astype(float))).fit()
    params = np.asarray(fit.params)

    # Area-level scores and the sandwich, clustered by area.
    x_units = _cell_design(cohorts_u, periods_u, cells, cohort_levels, period_levels)
    y_units = data[count].to_numpy().astype(float)
    mu_units = data[exposure].to_numpy().astype(float) * np.exp(x_units @ params)
    unit_idx = np.unique(data[unit].to_numpy(), return_inverse=True)[1]
    n_clusters = int(unit_idx.max()) + 1
    scores = np.zeros((n_clusters, x_units.shape[1]))
    np.add.at(scores, unit_idx, x_units * (y_units - mu_units)[:, None])
    bread = np.linalg.pinv((x_units * mu_units[:, None]).T @ x_units)
    n_obs, k = y_units.size, x_units.shape[1]
    factor = n_clusters / (n_clusters - 1) * (n_obs - 1) / (n_obs - k)
    vcov = factor * bread @ (scores.T @ scores) @ bread

    first_cell = x_units.shape[1] - len(cells)
    tau = params[first_cell:]
    v_tau = vcov[first_cell:, first_cell:]
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
    treated_rows = cohorts_u > 0
    untreated_mu = mu_units * np.exp(-(x_units[:, first_cell:] @ tau))
    post_mask = np.array([t >= g for g, t in cells])
    cell_weight = (x_units[treated_rows][:, first_cell:] * untreated_mu[treated_rows, None]).sum(0)
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

    treated_post_rows = treated_rows & (periods_u >= cohorts_u)
    avoided = float((untreated_mu[treated_post_rows] - mu_units[treated_post_rows]).sum())
    person_periods = float(data[exposure].to_numpy()[treated_post_rows].sum())
    warnings = []
    if len(set(unit_idx[treated_rows].tolist())) < 5:
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
