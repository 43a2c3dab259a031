"""Synthetic control per site: a weighted average of donor areas that tracks the site before
go-live stands in for the site after it.

Weights are non-negative and sum to one (Abadie, Diamond and Hainmueller 2010), fitted only
on the pre-period outcome series, so the synthetic site interpolates between real areas and
never extrapolates. Inference is in-space: every donor in turn is treated as if it were the
site (the real site areas left out of its donor pool) and the site's post/pre-period RMSPE
ratio is ranked among the placebos'. The ratio, not the post-period gap alone, is ranked so
that a donor the others cannot reproduce before go-live does not look like an effect after.

The confidence interval inverts that same test (Firpo and Possebom 2018): a proportional
effect is kept when, after taking it out of the site's post-period series, the site's ratio
no longer ranks among the most extreme. It assumes the effect is the same proportion in every
post-period month; with fewer than 1/alpha - 1 placebos no effect can be rejected and the
interval is reported as missing rather than as a number.

A site of several areas is fitted as the mean of their series, so each of its placebos is
the mean of as many donors: a single area's noisier series would make the site's smoother
one look extreme for no reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl
from scipy.optimize import nnls

#: Pre-period RMSPE above this share of the site's pre-period mean is flagged as a poor fit:
#: the site then lies outside what any convex mix of donors can reproduce.
POOR_FIT_SHARE = 0.05

#: Weights below this are reported as zero (they are numerical noise of the solver).
WEIGHT_FLOOR = 1e-6


@dataclass(frozen=True)
class SimplexFit:
    """Donor weights and the fitted series of one synthetic control."""

    weights: np.ndarray
    synthetic: np.ndarray
    pre_rmspe: float
    post_rmspe: float


def simplex_weights(donors_pre: np.ndarray, treated_pre: np.ndarray) -> np.ndarray:
    """Weights w >= 0 with sum(w) = 1 minimising ||donors_pre @ w - treated_pre||.

    Solved as non-negative least squares with a heavily weighted extra row asking the
    weights to sum to one: exact, deterministic and fast enough to refit every placebo.
    Both sides are scaled to a unit mean level first so the extra row's weight means the
    same whatever the outcome's units.
    """
    x = np.asarray(donors_pre, dtype=float)
    y = np.asarray(treated_pre, dtype=float)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"donor matrix {x.shape} does not match treated series {y.shape}")
    if x.shape[1] == 0:
        raise ValueError("synthetic control needs at least one donor")
    scale = float(np.abs(y).mean()) or 1.0
    penalty = 1e3 * math.sqrt(x.shape[0])
    design = np.vstack([x / scale, np.full((1, x.shape[1]), penalty)])
    target = np.concatenate([y / scale, [penalty]])
    weights, _ = nnls(design, target, maxiter=50 * x.shape[1])
    weights[weights < WEIGHT_FLOOR] = 0.0
    total = weights.sum()
    if total <= 0:
        raise ValueError("synthetic control weights are all zero; check the donor series")
    return weights / total


def fit_simplex(series: np.ndarray, treated: np.ndarray, n_pre: int) -> SimplexFit:
    """Fit weights on the first `n_pre` periods of `series` (periods x donors) and the
    treated series, and measure the gap before and after."""
    weights = simplex_weights(series[:n_pre], treated[:n_pre])
    synthetic = series @ weights
    gap = treated - synthetic
    return SimplexFit(
        weights=weights,
        synthetic=synthetic,
        pre_rmspe=float(np.sqrt(np.mean(gap[:n_pre] ** 2))),
        post_rmspe=float(np.sqrt(np.mean(gap[n_pre:] ** 2))),
    )


def _ratio(fit: SimplexFit) -> float:
    """Post/pre RMSPE ratio; a perfect pre-period fit gets a tiny floor, not a division by 0."""
    return fit.post_rmspe / max(fit.pre_rmspe, 1e-12 * (1.0 + fit.post_rmspe))


def placebo_ratios(series: np.ndarray, n_pre: int, group_size: int = 1) -> np.ndarray:
    """Each placebo's post/pre RMSPE ratio when it is treated and the other donors are its pool.

    With `group_size` k > 1 (a site of k areas, fitted as their mean) placebo j is the mean of
    donors j..j+k-1 (cyclically), so that it is as smooth as the site's series: a single
    area's noisier series would make the site's ratio look extreme for no reason.
    """
    n_donors = series.shape[1]
    if not 1 <= group_size < n_donors:
        raise ValueError(f"placebo groups of {group_size} need more than {group_size} donors, "
                         f"got {n_donors}")
    ratios = np.empty(n_donors)
    for j in range(n_donors):
        group = [(j + i) % n_donors for i in range(group_size)]
        others = np.delete(series, group, axis=1)
        ratios[j] = _ratio(fit_simplex(others, series[:, group].mean(axis=1), n_pre))
    return ratios


def rank_p_value(statistic: float, placebo: np.ndarray) -> float:
    """Share of units (the site and its placebos) whose ratio is at least the site's."""
    return float((1 + np.sum(placebo >= statistic)) / (len(placebo) + 1))


def proportional_effect_interval(
    treated_post: np.ndarray, synthetic_post: np.ndarray, pre_rmspe: float,
    placebo: np.ndarray, alpha: float,
) -> tuple[float | None, float | None, str]:
    """Percentage effects not rejected by the rank test, assuming the same proportional
    effect every post-period month, and why an end is missing when one is.

    Under an effect of p% the site's series without it is a * observed with a = 1/(1+p/100).
    The test keeps p while the ratio of that adjusted series stays at or below the m-th
    largest placebo ratio, m the fewest placebos that must match or beat the site for the
    p-value to exceed alpha. Post-period MSPE is a quadratic in a, so the kept set is an
    interval in a, solved exactly; a <= 0 (an infinite effect) leaves the upper end open.
    """
    n = len(placebo)
    m = math.floor(alpha * (n + 1) - 1) + 1
    if m <= 0 or m > n:
        return None, None, (f"{n} placebos are too few to reject any effect at "
                            f"alpha = {alpha}; the p-value is reported alone")
    threshold = float(np.sort(placebo)[::-1][m - 1]) * pre_rmspe
    y, s = treated_post, synthetic_post
    qa, qb, qc = np.mean(y * y), -2 * np.mean(y * s), np.mean(s * s) - threshold**2
    disc = qb * qb - 4 * qa * qc
    if qa <= 0 or disc < 0:
        return None, None, ("no constant proportional effect brings the site's post/pre "
                            "RMSPE ratio within the placebos' (the post-period gap changes "
                            "over time); the p-value is reported alone")
    root = math.sqrt(disc)
    a_low, a_high = (-qb - root) / (2 * qa), (-qb + root) / (2 * qa)
    if a_high <= 0:
        return None, None, "the test rejects every finite effect; the p-value is reported alone"
    pct_low = 100.0 * (1.0 / a_high - 1.0)
    if a_low <= 0:
        return pct_low, None, "the interval has no finite upper end"
    return pct_low, 100.0 * (1.0 / a_low - 1.0), ""


@dataclass(frozen=True)
class SyntheticControlResult:
    """One site's synthetic control: effect, inference, fit diagnostics and the weights."""

    treated: tuple[str, ...]
    weights: dict[str, float]
    months: tuple[date, ...]
    observed: tuple[float, ...]
    synthetic: tuple[float, ...]
    n_pre: int
    pre_rmspe: float
    post_rmspe: float
    gap: float
    counterfactual_post_mean: float
    pct_change: float
    p_value: float | None
    pct_ci_low: float | None
    pct_ci_high: float | None
    alpha: float
    n_donors: int
    n_placebo: int
    warnings: tuple[str, ...] = field(default=())

    @property
    def rmspe_ratio(self) -> float:
        return self.post_rmspe / self.pre_rmspe if self.pre_rmspe > 0 else math.inf

    @property
    def weights_json(self) -> str:
        """Non-zero weights, largest first, as a JSON object for the warehouse."""
        ordered = sorted(self.weights.items(), key=lambda kv: (-kv[1], kv[0]))
        return json.dumps({k: round(v, 6) for k, v in ordered})

    def to_dict(self) -> dict:
        """Plain data for JSON and tables (the monthly series are left to the plot)."""
        return {
            "method": "synthetic_control",
            "treated": list(self.treated),
            "pct_change": self.pct_change,
            "gap": self.gap,
            "counterfactual_post_mean": self.counterfactual_post_mean,
            "p_value": self.p_value,
            "pct_ci_low": self.pct_ci_low,
            "pct_ci_high": self.pct_ci_high,
            "alpha": self.alpha,
            "pre_rmspe": self.pre_rmspe,
            "post_rmspe": self.post_rmspe,
            "rmspe_ratio": self.rmspe_ratio,
            "n_pre": self.n_pre,
            "n_post": len(self.months) - self.n_pre,
            "n_donors": self.n_donors,
            "n_placebo": self.n_placebo,
            "weights": json.loads(self.weights_json),
            "warnings": list(self.warnings),
        }


def synthetic_control_matrix(
    treated_series: np.ndarray, donor_series: np.ndarray, donor_ids: list[str], n_pre: int,
    *, placebo: bool = True, group_size: int = 1,
) -> tuple[SimplexFit, np.ndarray | None, dict[str, float]]:
    """The site's fit, the placebo ratios (or None) and the named non-zero weights.

    `group_size` is the number of site areas averaged into `treated_series`.
    """
    if not 2 <= n_pre < len(treated_series):
        raise ValueError(f"need at least 2 pre-period and 1 post-period values, got "
                         f"{n_pre} pre of {len(treated_series)}")
    fit = fit_simplex(donor_series, treated_series, n_pre)
    ratios = None
    if placebo and donor_series.shape[1] > group_size:
        ratios = placebo_ratios(donor_series, n_pre, group_size)
    named = {d: float(w) for d, w in zip(donor_ids, fit.weights, strict=True) if w > 0}
    return fit, ratios, named


def _wide(panel: pl.DataFrame, value: str) -> pl.DataFrame:
    """Months as rows, areas as columns, refusing gaps (a missing month would shift a series)."""
    wide = panel.pivot(on="area_code", index="month", values=value,
                       aggregate_function=None).sort("month")
    holes = [c for c in wide.columns if c != "month" and wide[c].null_count()]
    if holes:
        raise ValueError(f"panel column {value!r} has missing months for areas {holes[:5]}; "
                         "synthetic control needs every area observed every month")
    return wide


def synthetic_control(
    panel: pl.DataFrame,
    treated: list[str],
    donors: list[str],
    go_live: date,
    *,
    value: str = "rate_per_1000",
    alpha: float = 0.05,
    placebo: bool = True,
) -> SyntheticControlResult:
    """Fit a synthetic control for the site's areas (their mean series) from `donors`.

    `panel` has one row per area and month (one outcome) with `value`; every month before
    `go_live` is pre-period. The effect is the post-period mean gap as a percentage of the
    synthetic counterfactual's post-period mean.
    """
    donors = [d for d in donors if d not in set(treated)]
    wanted = panel.filter(pl.col("area_code").is_in(list(treated) + donors))
    wide = _wide(wanted.select("area_code", "month", value), value)
    missing = sorted(set(treated) - set(wide.columns))
    if missing:
        raise ValueError(f"no {value} series for site areas {missing}")
    donors = [d for d in donors if d in wide.columns]
    months = wide["month"].to_list()
    n_pre = sum(m < go_live for m in months)
    y = wide.select(treated).to_numpy().astype(float).mean(axis=1)
    x = wide.select(donors).to_numpy().astype(float)
    fit, ratios, weights = synthetic_control_matrix(y, x, donors, n_pre, placebo=placebo,
                                                    group_size=len(treated))
    post_observed, post_synthetic = y[n_pre:], fit.synthetic[n_pre:]
    counterfactual = float(post_synthetic.mean())
    gap = float(post_observed.mean() - counterfactual)
    warnings: list[str] = []
    pre_mean = float(np.abs(y[:n_pre]).mean())
    if fit.pre_rmspe > POOR_FIT_SHARE * pre_mean:
        warnings.append(
            f"poor pre-period fit: RMSPE {fit.pre_rmspe:.3g} is "
            f"{100 * fit.pre_rmspe / pre_mean:.1f}% of the site's pre-period mean (above "
            f"{100 * POOR_FIT_SHARE:.0f}%); no convex mix of donors tracks the site, so the "
            "synthetic control estimate should not be relied on")
    p_value = ci_low = ci_high = None
    if ratios is not None:
        p_value = rank_p_value(_ratio(fit), ratios)
        ci_low, ci_high, why = proportional_effect_interval(
            post_observed, post_synthetic, fit.pre_rmspe, ratios, alpha)
        if why:
            warnings.append(f"confidence interval: {why}")
    return SyntheticControlResult(
        treated=tuple(treated), weights=weights, months=tuple(months),
        observed=tuple(float(v) for v in y), synthetic=tuple(float(v) for v in fit.synthetic),
        n_pre=n_pre, pre_rmspe=fit.pre_rmspe, post_rmspe=fit.post_rmspe, gap=gap,
        counterfactual_post_mean=counterfactual,
        pct_change=100.0 * gap / counterfactual if counterfactual else math.nan,
        p_value=p_value, pct_ci_low=ci_low, pct_ci_high=ci_high, alpha=alpha,
        n_donors=len(donors), n_placebo=0 if ratios is None else len(ratios),
        warnings=tuple(warnings),
    )
