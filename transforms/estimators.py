"""Difference-in-differences for admission counts: Poisson with a population offset.

Admissions are counts over populations, so the model is log-linear in the rate:

    E[count_at] = population_at * exp(alpha_a + gamma_t + beta * D_at)

with area effects alpha_a, month effects gamma_t and D_at = 1 for a site's areas from
go-live on. exp(beta) is the rate ratio. The Poisson quasi-likelihood stays consistent
under over-dispersion; standard errors are cluster-robust by area (every month of an
area shares a cluster) with t intervals on G - 1 degrees of freedom, G the number of
areas; with fewer than 30 areas they come from the restricted wild cluster bootstrap
(transforms/wild_bootstrap.py), and for sites with few treated areas from
placebo-in-space permutation (transforms/inference.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np
import polars as pl
from scipy import stats

from transforms.inference import (
    PlaceboInference,
    choose_inference,
    invert_studentised_placebos,
    placebo_statistics,
    studentising_se,
)
from transforms.poisson_fe import fit_poisson_fe
from transforms.wild_bootstrap import DRAWS, WildBootstrapInference, wild_cluster_bootstrap

Diagnostic = float | int | str | bool


@dataclass(frozen=True)
class DidEstimate:
    """One site-outcome estimate as plain data, ready for a table, JSON or a plot.

    The interval is on the log rate-ratio scale; `inference` names how it was obtained and
    `inference_reason` says why that method suits this design; `warnings` say when that
    inference is fragile; `diagnostics` hold the inference's own figures (draws, weights,
    the CR1 standard error and p for comparison).
    """

    log_rate_ratio: float
    se: float
    ci_low_log: float
    ci_high_log: float
    p_value: float
    alpha: float
    n_obs: int
    n_treated_areas: int
    n_comparison_areas: int
    df: int
    inference: str
    inference_reason: str
    n_placebo: int = 0
    estimator: str = "poisson_twfe"
    warnings: tuple[str, ...] = field(default_factory=tuple)
    diagnostics: Mapping[str, Diagnostic] = field(default_factory=dict)

    @property
    def method(self) -> str:
        """The estimator, named as in the protocol."""
        return self.estimator

    @property
    def ci_log(self) -> tuple[float, float]:
        return (self.ci_low_log, self.ci_high_log)

    @property
    def rate_ratio(self) -> float:
        return math.exp(self.log_rate_ratio)

    @property
    def pct_change(self) -> float:
        return 100.0 * (self.rate_ratio - 1.0)

    @property
    def pct_ci(self) -> tuple[float, float]:
        """Confidence interval for the percentage change (transformed from the log scale)."""
        return (
            100.0 * (math.exp(self.ci_low_log) - 1.0),
            100.0 * (math.exp(self.ci_high_log) - 1.0),
        )

    def to_dict(self) -> dict:
        low, high = self.pct_ci
        return {
            **asdict(self),
            "diagnostics": dict(self.diagnostics),
            "method": self.method,
            "rate_ratio": self.rate_ratio,
            "pct_change": self.pct_change,
            "pct_ci_low": low,
            "pct_ci_high": high,
        }

    def tidy(self) -> pl.DataFrame:
        """One row in the broom/pyfixest layout, plus the rate-ratio scale and inference."""
        low, high = self.pct_ci
        return pl.DataFrame({
            "term": ["treated_post"],
            "estimate": [self.log_rate_ratio],
            "std_error": [self.se],
            "conf_low": [self.ci_low_log],
            "conf_high": [self.ci_high_log],
            "p_value": [self.p_value],
            "rate_ratio": [self.rate_ratio],
            "pct_change": [self.pct_change],
            "pct_ci_low": [low],
            "pct_ci_high": [high],
            "n_obs": [self.n_obs],
            "n_treated_areas": [self.n_treated_areas],
            "n_comparison_areas": [self.n_comparison_areas],
            "method": [self.method],
            "inference": [self.inference],
            "inference_reason": [self.inference_reason],
            "warnings": ["; ".join(self.warnings)],
        })


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


def wide(frame: pl.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Areas, counts and log populations as areas x months arrays, and the months.

    The panel is balanced (validated upstream), so a reshape is enough.
    """
    data = frame.sort(["area_code", "month"])
    areas = data["area_code"].unique(maintain_order=True).to_list()
    n_months = data.height // len(areas)
    if n_months * len(areas) != data.height:
        raise ValueError("placebo inference needs a balanced panel (every area, every month)")
    y = data["count"].to_numpy().astype(float).reshape(len(areas), n_months)
    log_e = np.log(data["population"].to_numpy().astype(float)).reshape(len(areas), n_months)
    return areas, y, log_e, data["month"].to_numpy()[:n_months]


def _placebo_inference(
    frame: pl.DataFrame, donors: pl.DataFrame, treated: list[str], go_live: date,
    beta: float, alpha: float, seed: int,
) -> PlaceboInference:
    """Studentised placebo-in-space: the site's t against the placebos' t's."""
    extra = donors.filter(~pl.col("area_code").is_in(frame["area_code"].unique().to_list()))
    both = pl.concat([frame.select(donors.columns), extra])
    areas, y, log_e, months = wide(both)
    row = {area: i for i, area in enumerate(areas)}
    site_rows = [row[a] for a in sorted(set(frame["area_code"].to_list()))]
    controls = [row[a] for a in frame["area_code"].unique().to_list() if a not in treated]
    donor_rows = [row[a] for a in donors["area_code"].unique().sort().to_list()
                  if a not in treated]
    post = (months >= np.datetime64(go_live)).astype(float)
    d = np.outer(np.isin(np.asarray(areas)[site_rows], treated), post)
    fit = fit_poisson_fe(y[site_rows], log_e[site_rows], d)
    se = studentising_se(y[site_rows], fit, d, len(treated))
    placebos, placebo_ses = placebo_statistics(y, log_e, post, len(treated), sorted(controls),
                                               donor_rows, seed=seed)
    return invert_studentised_placebos(beta, se, placebos, placebo_ses, alpha)


def _bootstrap_inference(data: pl.DataFrame, treated: list[str], go_live: date, beta: float,
                         se: float, alpha: float, seed: int) -> WildBootstrapInference:
    """Restricted wild cluster bootstrap on the model's own areas (needs a balanced panel)."""
    areas, y, log_e, months = wide(data)
    d = np.outer(np.isin(areas, treated), months >= np.datetime64(go_live)).astype(float)
    return wild_cluster_bootstrap(y, log_e, d, beta, se, alpha, draws=DRAWS, seed=seed)


def fit_poisson_did(
    frame: pl.DataFrame,
    treated_areas: list[str],
    go_live: date,
    alpha: float = 0.05,
    donors: pl.DataFrame | None = None,
    seed: int = 0,
    method: str = "auto",
) -> DidFit:
    """Fit the two-way fixed-effects Poisson DiD on one site's areas and comparators.

    `frame` has columns area_code, month, count, population for the site's areas and its
    comparison areas over the study window. `donors`, in the same shape, are comparable
    areas where nothing happened; with few treated areas they give placebo-in-space
    inference in place of cluster-robust errors. `method` is "auto" (let the design
    decide: transforms.inference.choose_inference), "cluster_robust", "placebo_in_space"
    or "wild_cluster_bootstrap".
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
    treated = sorted(set(treated_areas) & set(data["area_code"].to_list()))
    n_donors = 0 if donors is None else donors.filter(
        ~pl.col("area_code").is_in(treated))["area_code"].n_unique()
    choice = choose_inference(len(treated), _possible_draws(n_donors, len(treated)), method,
                              n_clusters=n_clusters)
    cr1_p = float(2 * stats.t.sf(abs(beta / se), df)) if se > 0 else float("nan")
    diagnostics: dict[str, Diagnostic] = {"n_clusters": n_clusters, "cr1_se": se,
                                          "cr1_p_value": cr1_p}
    warnings = list(choice.warnings)
    n_placebo = 0
    if choice.method == "placebo_in_space" and donors is not None:
        placebo = _placebo_inference(data, donors, treated, go_live, beta, alpha, seed)
        low, high, p_value, spread = placebo.ci_low, placebo.ci_high, placebo.p_value, placebo.se
        n_placebo = placebo.n_placebo
        diagnostics |= {"n_placebo": n_placebo, "placebo_sd": placebo.se,
                        "smallest_p": 1 / (n_placebo + 1)}
    elif choice.method == "wild_cluster_bootstrap":
        boot = _bootstrap_inference(data, treated, go_live, beta, se, alpha, seed)
        low, high, p_value, spread = boot.ci_low, boot.ci_high, boot.p_value, se
        diagnostics |= {"bootstrap_weights": boot.weights, "bootstrap_draws": boot.n_draws,
                        "bootstrap_enumerated": boot.enumerated,
                        "bootstrap_score_t": boot.statistic}
        if not boot.bounded:
            warnings.append("the wild cluster bootstrap cannot bound the interval on at least "
                            "one side: the data cannot rule out large effects")
    else:
        half = float(stats.t.ppf(1 - alpha / 2, df)) * se
        low, high, spread, p_value = beta - half, beta + half, se, cr1_p
    estimate = DidEstimate(
        log_rate_ratio=beta, se=spread, ci_low_log=low, ci_high_log=high, p_value=p_value,
        alpha=alpha, n_obs=data.height, n_treated_areas=len(treated),
        n_comparison_areas=n_clusters - len(treated), df=df, inference=choice.method,
        inference_reason=choice.reason, n_placebo=n_placebo, warnings=tuple(warnings),
        diagnostics=diagnostics,
    )
    linear = x @ result.params + offset
    counterfactual = np.exp(linear - beta * x[:, 0])
    return DidFit(estimate, _series(data, counterfactual, treated_areas))


def _possible_draws(n_donors: int, k: int) -> int:
    """How many distinct placebo sets of size k the donors allow."""
    return math.comb(n_donors, k) if n_donors >= k else 0


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
