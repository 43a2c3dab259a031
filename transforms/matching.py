"""Pick comparison areas for a site: nearest neighbours on pre-period characteristics, or on
the logit of a propensity score.

Matching only on the pre-period keeps the choice blind to outcomes after go-live.
Features are standardised over the candidate pool so that a rate per 1,000 and a log
population weigh alike. Propensity matching summarises the same features in one score,
the fitted log-odds of being a site area, and matches on it with a caliper in standard
deviations of that logit (0.2 by Austin's 2011 convention).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from transforms.months import add_months
from transforms.protocol import Comparison, Site

log = logging.getLogger(__name__)

#: Matching features that come from the area descriptors rather than the panel.
AREA_DESCRIPTORS = ("pct_aged_65_plus", "imd_score")

#: The column the propensity method adds to the features and matches on.
LOGIT_COLUMN = "propensity_logit"


class PropensityFitWarning(UserWarning):
    """The logistic model could not be fitted by maximum likelihood (usually because the
    site areas are perfectly separated from the pool) and a penalised fit was used."""


def pre_period_features(
    panel: pl.DataFrame, outcome: str, go_live: date, pre_months: int
) -> pl.DataFrame:
    """Per area: pre-period rate per 1,000, log population and log-rate trend per year."""
    start = add_months(go_live, -pre_months)
    pre = panel.filter(
        (pl.col("outcome") == outcome) & (pl.col("month") >= start) & (pl.col("month") < go_live)
    ).with_columns(
        ((pl.col("month").dt.year() * 12 + pl.col("month").dt.month()) / 12.0).alias("t"),
        pl.col("rate_per_1000").log().alias("log_rate"),
    )
    return (
        pre.group_by("area_code")
        .agg(
            (pl.col("count").sum() / pl.col("population").sum() * 1000.0).alias("pre_rate"),
            pl.col("population").mean().log().alias("log_population"),
            pl.cov("t", "log_rate").truediv(pl.col("t").var()).alias("pre_trend"),
        )
        .sort("area_code")
    )


def _distances(pool_x: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """Distance of each pool row to x: standardised Euclidean or Mahalanobis (both scaled
    by the pool's spread, so units of measurement do not matter)."""
    diff = pool_x - x
    if metric == "mahalanobis":
        inverse = np.linalg.pinv(np.atleast_2d(np.cov(pool_x, rowvar=False)))
        return np.sqrt(np.einsum("ij,jk,ik->i", diff, inverse, diff).clip(min=0))
    scale = pool_x.std(axis=0, ddof=1)
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0
    return np.sqrt(((diff / scale) ** 2).sum(axis=1))


def nearest_neighbours(
    features: pl.DataFrame,
    treated: list[str],
    pool: list[str],
    on: tuple[str, ...],
    k: int,
    *,
    metric: str = "standardised",
    caliper: float | None = None,
    replace: bool = True,
) -> pl.DataFrame:
    """For each treated area the k closest pool areas.

    `caliper` drops candidates further than that distance; `replace=False` stops one pool
    area serving two treated areas of the same site (greedy, in the order given).
    """
    missing = sorted(set(treated) - set(features["area_code"].to_list()))
    if missing:
        raise ValueError(f"no pre-period data for treated areas {missing}")
    candidates = features.filter(pl.col("area_code").is_in(pool))
    if candidates.height < k:
        raise ValueError(f"comparison pool has {candidates.height} areas, fewer than k={k}")
    columns = list(on)
    pool_x = candidates.select(columns).to_numpy().astype(float)
    codes = candidates["area_code"].to_list()
    used: set[str] = set()
    rows = []
    for area in treated:
        x = features.filter(pl.col("area_code") == area).select(columns).to_numpy()[0]
        distance = _distances(pool_x, x.astype(float), metric)
        order = [int(i) for i in np.argsort(distance, kind="stable")
                 if (caliper is None or distance[i] <= caliper)
                 and (replace or codes[int(i)] not in used)][:k]
        if not order:
            raise ValueError(
                f"no comparison area within caliper {caliper} of {area}; widen the caliper"
            )
        for rank, i in enumerate(order, start=1):
            rows.append((area, codes[i], rank, float(distance[i])))
            used.add(codes[i])
    return pl.DataFrame(
        rows, schema=["treated_area", "area_code", "rank", "distance"], orient="row"
    )


def balance_table(
    features: pl.DataFrame, treated: list[str], matched: list[str], pool: list[str],
    on: tuple[str, ...],
) -> pl.DataFrame:
    """Standardised mean differences of each feature, site areas against the whole pool
    (before matching) and against the matched areas (after): |SMD| < 0.1 is the usual aim.

    The denominator is the pool's standard deviation, because a site of one area has no
    spread of its own.
    """
    rows = []
    for column in on:
        values = dict(zip(features["area_code"], features[column], strict=True))
        site = np.array([values[a] for a in treated], dtype=float)
        before = np.array([values[a] for a in pool if a in values], dtype=float)
        after = np.array([values[a] for a in matched if a in values], dtype=float)
        sd = float(before.std(ddof=1)) or 1.0
        rows.append((column, float(site.mean()), float(before.mean()), float(after.mean()),
                     float((site.mean() - before.mean()) / sd),
                     float((site.mean() - after.mean()) / sd)))
    return pl.DataFrame(rows, orient="row", schema=[
        "feature", "mean_site", "mean_pool", "mean_matched", "smd_before", "smd_after"])


@dataclass(frozen=True)
class PropensityScores:
    """Fitted log-odds of being a site area, per area, and how they were fitted."""

    logit: dict[str, float]
    fit: str
    warnings: tuple[str, ...] = ()


#: A coefficient above this (per pool standard deviation of a feature) means the likelihood
#: has no finite maximum: an odds ratio of e^15 per SD is separation, not a finding.
_SEPARATED_COEFFICIENT = 15.0


def firth_logit(x: np.ndarray, y: np.ndarray, max_iter: int = 200,
                tol: float = 1e-8) -> np.ndarray:
    """Firth's penalised-likelihood logistic regression coefficients (`x` holds the constant).

    The penalty, half the log-determinant of the Fisher information, keeps the estimates
    finite when the site areas are separated from the pool (the usual case with one site
    area among a hundred) and removes most of the small-sample bias of rare-event logits.
    Newton steps on the modified score, halved until the penalised likelihood rises.
    """
    from scipy.special import expit

    def penalised(beta: np.ndarray) -> float:
        eta = x @ beta
        p = expit(eta)
        info = x.T @ (x * (p * (1 - p))[:, None])
        logdet = np.linalg.slogdet(info)[1]
        return float(np.sum(y * eta - np.logaddexp(0.0, eta)) + 0.5 * logdet)

    beta = np.zeros(x.shape[1])
    for _ in range(max_iter):
        p = expit(x @ beta)
        w = p * (1 - p)
        inverse = np.linalg.pinv(x.T @ (x * w[:, None]))
        hat = w * np.einsum("ij,jk,ik->i", x, inverse, x)
        step = inverse @ (x.T @ (y - p + hat * (0.5 - p)))
        current, size = penalised(beta), 1.0
        while size > 1e-8 and penalised(beta + size * step) < current - 1e-12:
            size /= 2
        beta = beta + size * step
        if np.max(np.abs(size * step)) < tol:
            break
    return beta


def _maximum_likelihood_logit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray | None, str]:
    """statsmodels' Logit, or None and the reason when the maximum does not exist."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import (
        ConvergenceWarning,
        PerfectSeparationError,
        PerfectSeparationWarning,
    )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sm.Logit(y, x).fit(disp=0, maxiter=100)
        except (PerfectSeparationError, np.linalg.LinAlgError) as exc:
            return None, f"maximum likelihood failed ({exc})"
    trouble = [w for w in caught
               if issubclass(w.category, PerfectSeparationWarning | ConvergenceWarning)]
    params = np.asarray(result.params, dtype=float)
    if trouble:
        return None, f"maximum likelihood failed ({trouble[0].message})"
    if not result.mle_retvals.get("converged", False):
        return None, "maximum likelihood did not converge"
    if not np.all(np.isfinite(params)) or np.max(np.abs(params[1:])) > _SEPARATED_COEFFICIENT:
        return None, "the site areas are perfectly separated from the pool"
    return params, ""


def propensity_scores(
    features: pl.DataFrame, treated: list[str], pool: list[str], on: tuple[str, ...]
) -> PropensityScores:
    """Logit of the probability of being a site area given the features, for the site's
    areas and the pool, from a logistic regression of site membership on the features.

    Features are standardised over the pool first so the separation check and the Firth
    fallback do not depend on units. When maximum likelihood fails (perfect separation is
    common with one or two site areas) Firth's penalised fit is used and a
    PropensityFitWarning says so.
    """
    missing = sorted(set(treated) - set(features["area_code"].to_list()))
    if missing:
        raise ValueError(f"no pre-period data for treated areas {missing}")
    rows = features.filter(pl.col("area_code").is_in(list(treated) + list(pool)))
    codes = rows["area_code"].to_list()
    raw = rows.select(list(on)).to_numpy().astype(float)
    if not np.all(np.isfinite(raw)):
        bad = sorted({codes[i] for i in np.where(~np.isfinite(raw).all(axis=1))[0]})
        raise ValueError(f"propensity features {list(on)} are missing or not finite for "
                         f"areas {bad[:5]}")
    in_pool = np.array([c not in set(treated) for c in codes])
    centre, scale = raw[in_pool].mean(axis=0), raw[in_pool].std(axis=0, ddof=1)
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0
    x = np.column_stack([np.ones(len(codes)), (raw - centre) / scale])
    y = (~in_pool).astype(float)
    params, reason = _maximum_likelihood_logit(x, y)
    notes: tuple[str, ...] = ()
    fit = "maximum likelihood"
    if params is None:
        params, fit = firth_logit(x, y), "Firth penalised likelihood"
        notes = (f"propensity model on {list(on)} for {treated}: {reason}; used Firth's "
                 "penalised likelihood instead",)
        warnings.warn(notes[0], PropensityFitWarning, stacklevel=2)
        log.warning("%s", notes[0])
    return PropensityScores(dict(zip(codes, (x @ params).tolist(), strict=True)), fit, notes)


def propensity_neighbours(
    features: pl.DataFrame,
    treated: list[str],
    pool: list[str],
    on: tuple[str, ...],
    k: int,
    *,
    caliper: float | None = None,
    replace: bool = True,
) -> tuple[pl.DataFrame, PropensityScores]:
    """For each treated area the k pool areas with the closest logit of the propensity score.

    Distances are in standard deviations of the pool's logit, so `caliper=0.2` is Austin's
    recommended width.
    """
    scores = propensity_scores(features, treated, pool, on)
    scored = features.filter(pl.col("area_code").is_in(list(scores.logit))).with_columns(
        pl.col("area_code").replace_strict(scores.logit, return_dtype=pl.Float64)
        .alias(LOGIT_COLUMN))
    matched = nearest_neighbours(scored, treated, pool, (LOGIT_COLUMN,), k,
                                 metric="standardised", caliper=caliper, replace=replace)
    return matched, scores


def site_features(
    panel: pl.DataFrame, site: Site, rule: Comparison, pre_months: int,
    areas: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Pre-period features for the site's go-live, joined to area descriptors (age,
    deprivation) when the protocol matches on them."""
    features = pre_period_features(panel, rule.matching_outcome, site.go_live, pre_months)
    descriptors = [c for c in rule.match_on if c in AREA_DESCRIPTORS]
    if descriptors:
        if areas is None or areas.height == 0:
            raise ValueError(f"matching on {descriptors} needs the area descriptors "
                             "(reference/areas.csv) to be loaded")
        features = features.join(areas.select("area_code", *descriptors), on="area_code",
                                 how="inner")
    return features


def match_site(
    panel: pl.DataFrame,
    site: Site,
    pool: list[str],
    rule: Comparison,
    pre_months: int,
    areas: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The site's matched comparison areas (one row per treated area and comparator) and
    the balance table before and after matching, by the protocol's matching method."""
    features = site_features(panel, site, rule, pre_months, areas)
    if rule.method == "propensity":
        matched, _ = propensity_neighbours(
            features, list(site.areas), pool, rule.match_on, rule.matches_per_area,
            caliper=rule.caliper, replace=rule.replacement,
        )
    else:
        matched = nearest_neighbours(
            features, list(site.areas), pool, rule.match_on, rule.matches_per_area,
            metric=rule.metric, caliper=rule.caliper, replace=rule.replacement,
        )
    balance = balance_table(features, list(site.areas), matched["area_code"].to_list(),
                            pool, rule.match_on)
    site_id = pl.lit(site.id).alias("site_id")
    return (
        matched.with_columns(site_id).select(
            ["site_id", "treated_area", "area_code", "rank", "distance"]),
        balance.with_columns(site_id).select(["site_id", *balance.columns]),
    )
