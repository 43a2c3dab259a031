"""Difference-in-differences for admission counts: Poisson with a population offset.

Admissions are counts over populations, so the model is log-linear in the rate:

    E[count_at] = population_at * exp(alpha_a + gamma_t + beta * D_at)

with area effects alpha_a, month effects gamma_t and D_at = 1 for a site's areas from
go-live on. exp(beta) is the rate ratio. The Poisson quasi-likelihood stays consistent
under over-dispersion; standard errors are cluster-robust by area (every month of an
area shares a cluster) and confidence intervals use a t distribution with G - 1 degrees
of freedom, G the number of areas, because few clusters make normal critical values
too narrow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np
import polars as pl
from scipy import stats


@dataclass(frozen=True)
class DidEstimate:
    """One site-outcome estimate as plain data, ready for a table, JSON or a plot."""

    log_rate_ratio: float
    se: float
    df: int
    p_value: float
    alpha: float
    n_obs: int
    n_treated_areas: int
    n_comparison_areas: int
    estimator: str = "poisson_twfe"
    inference: str = "cluster_robust_area_t"
    inference_reason: str = "sandwich errors clustered by area allow serial correlation"
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def critical_value(self) -> float:
        return float(stats.t.ppf(1 - self.alpha / 2, self.df))

    @property
    def rate_ratio(self) -> float:
        return math.exp(self.log_rate_ratio)

    @property
    def pct_change(self) -> float:
        return 100.0 * (self.rate_ratio - 1.0)

    @property
    def pct_ci(self) -> tuple[float, float]:
        """Confidence interval for the percentage change (transformed from the log scale)."""
        half = self.critical_value * self.se
        return (
            100.0 * (math.exp(self.log_rate_ratio - half) - 1.0),
            100.0 * (math.exp(self.log_rate_ratio + half) - 1.0),
        )

    def to_dict(self) -> dict:
        low, high = self.pct_ci
        return {
            **asdict(self),
            "rate_ratio": self.rate_ratio,
            "pct_change": self.pct_change,
            "pct_ci_low": low,
            "pct_ci_high": high,
        }


@dataclass(frozen=True)
class DidFit:
    estimate: DidEstimate
    series: pl.DataFrame  # month, observed_rate, counterfactual_rate, comparison_rate


def _design(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns: treatment indicator, one dummy per area, one per month after the first."""
    areas = frame["area_code"].to_numpy()
    months = frame["month"].to_numpy()
    area_levels, area_idx = np.unique(areas, return_inverse=True)
    month_levels, month_idx = np.unique(months, return_inverse=True)
    n = frame.height
    x = np.zeros((n, 1 + len(area_levels) + len(month_levels) - 1))
    x[:, 0] = frame["treated_post"].to_numpy()
    x[np.arange(n), 1 + area_idx] = 1.0
    later = month_idx > 0
    x[np.arange(n)[later], len(area_levels) + month_idx[later]] = 1.0
    return x, area_idx, month_idx


def fit_poisson_did(
    frame: pl.DataFrame, treated_areas: list[str], go_live: date, alpha: float = 0.05
) -> DidFit:
    """Fit the two-way fixed-effects Poisson DiD on one site's areas and comparators.

    `frame` has columns area_code, month, count, population for the site's areas and its
    comparison areas over the study window.
    """
    import statsmodels.api as sm

    data = frame.sort(["area_code", "month"]).with_columns(
        (pl.col("area_code").is_in(treated_areas) & (pl.col("month") >= go_live))
        .cast(pl.Float64)
        .alias("treated_post")
    )
    if data["treated_post"].sum() == 0:
        raise ValueError("no treated area-months after go-live: nothing to estimate")
    x, area_idx, _ = _design(data)
    y = data["count"].to_numpy().astype(float)
    offset = np.log(data["population"].to_numpy().astype(float))
    model = sm.GLM(y, x, family=sm.families.Poisson(), offset=offset)
    result = model.fit(cov_type="cluster", cov_kwds={"groups": area_idx})
    n_clusters = int(area_idx.max()) + 1
    beta, se = float(result.params[0]), float(result.bse[0])
    df = n_clusters - 1
    p_value = float(2 * stats.t.sf(abs(beta / se), df)) if se > 0 else float("nan")
    n_treated = len(set(treated_areas) & set(data["area_code"].to_list()))
    warnings = []
    if n_treated < 5:
        warnings.append(
            f"only {n_treated} treated area(s): cluster-robust standard errors are known to "
            "understate uncertainty when few clusters are treated; read the interval as a "
            "lower bound on the uncertainty"
        )
    estimate = DidEstimate(
        log_rate_ratio=beta,
        se=se,
        df=df,
        p_value=p_value,
        alpha=alpha,
        n_obs=data.height,
        n_treated_areas=n_treated,
        n_comparison_areas=n_clusters - n_treated,
        warnings=tuple(warnings),
    )
    linear = x @ result.params + offset
    counterfactual = np.exp(linear - beta * x[:, 0])
    return DidFit(estimate, _series(data, counterfactual, treated_areas))


def _series(data: pl.DataFrame, counterfactual: np.ndarray, treated: list[str]) -> pl.DataFrame:
    """Monthly rates per 1,000: the site observed, its counterfactual, and the comparators."""
    frame = data.with_columns(
        pl.Series("counterfactual", counterfactual),
        pl.col("area_code").is_in(treated).alias("is_treated"),
    )
    site = (
        frame.filter(pl.col("is_treated"))
        .group_by("month")
        .agg(
            (pl.col("count").sum() / pl.col("population").sum() * 1000).alias("observed_rate"),
            (pl.col("counterfactual").sum() / pl.col("population").sum() * 1000).alias(
                "counterfactual_rate"
            ),
        )
    )
    comparison = (
        frame.filter(~pl.col("is_treated"))
        .group_by("month")
        .agg((pl.col("count").sum() / pl.col("population").sum() * 1000).alias("comparison_rate"))
    )
    return site.join(comparison, on="month").sort("month")


def pre_post_rates(frame: pl.DataFrame, treated: list[str], go_live: date) -> tuple[float, float]:
    """The site's crude rate per 1,000 per month before and after go-live (descriptive)."""
    site = frame.filter(pl.col("area_code").is_in(treated))
    pre = site.filter(pl.col("month") < go_live)
    post = site.filter(pl.col("month") >= go_live)

    def rate(part: pl.DataFrame) -> float:
        return 1000.0 * float(part["count"].sum()) / float(part["population"].sum())

    return rate(pre), rate(post)
