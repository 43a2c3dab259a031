"""Inference that fits the design: which method, and placebo-in-space permutation.

A vanguard site is usually one or two areas. Cluster-robust standard errors estimate the
treated areas' noise from those areas' own residuals, which the fixed effects have already
pulled towards zero, so with few treated clusters they are too small (on simulated panels
with one treated area, 95% intervals covered the truth about 70% of the time). With few
treated areas the estimate is compared instead with the same estimate for comparable
areas where nothing happened (Conley and Taber 2011; Abadie et al. 2010): its spread is
the sampling error the site's own estimate would have had without an effect. Each
estimate is studentised by its own standard error before the comparison (MacKinnon and
Webb 2020; CR1 with 2-3 treated areas, observation-level robust with one), so that a site
noisier than its placebos, because its areas are small or because an effect has lowered
its counts, is not judged on the placebos' spread, and overlapping placebo sets do not
make the reference distribution too narrow (see `studentising_se`).

The rules (`choose_inference`): 1-3 treated areas and enough placebo draws, placebo-in-
space; otherwise fewer than 10 treated areas or fewer than 30 areas in the model, the
restricted wild cluster bootstrap (transforms/wild_bootstrap.py; Webb weights below 12
areas); otherwise CR1 by area with t on G - 1 degrees of freedom. Each choice carries its
reason and warnings where the inference is fragile.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from transforms.poisson_fe import PoissonFEFit, cluster_robust_se, fit_poisson_fe, robust_se

#: A site with this many treated areas or fewer gets placebo-in-space inference.
FEW_TREATED = 3
#: Fewest placebo draws for a two-sided 5% test to be able to reject at all.
MIN_PLACEBOS = 39
#: Fewer placebo draws than this put the 95% interval's ends on the most extreme placebos.
FEW_PLACEBOS = 79
#: Fewer treated areas than this: CR1 over-rejects whatever the number of clusters; on the real
#: A&E data, 5 treated trusts with 25 comparators rejected a true null 7.9% of the time at 5%
#: with CR1 and 4.9% with the wild cluster bootstrap (bench/placebo.py).
FEW_TREATED_CLUSTERS = 10
#: Fewer clusters (areas) than this: CR1 t-tests over-reject, so wild cluster bootstrap.
FEW_CLUSTERS = 30
#: Fewer clusters than this: Webb's six-point bootstrap weights instead of Rademacher.
VERY_FEW_CLUSTERS = 12

METHODS = ("auto", "cluster_robust", "placebo_in_space", "wild_cluster_bootstrap")


@dataclass(frozen=True)
class InferenceChoice:
    method: str  # cluster_robust | placebo_in_space | wild_cluster_bootstrap
    reason: str
    warnings: tuple[str, ...] = ()


def _fragility(method: str, n_treated: int, n_placebo_possible: int,
               n_clusters: int | None) -> tuple[str, ...]:
    """Plain-words warnings for designs where the chosen inference is fragile."""
    warnings = []
    if method == "cluster_robust" and n_treated <= FEW_TREATED:
        warnings.append(
            f"{n_treated} treated area(s) with cluster-robust errors: the errors are "
            "estimated from so few treated clusters that intervals are likely too narrow"
        )
    if method == "cluster_robust" and n_clusters is not None and n_clusters < FEW_CLUSTERS:
        warnings.append(
            f"only {n_clusters} areas with cluster-robust errors: t-tests over-reject with "
            f"fewer than {FEW_CLUSTERS} clusters"
        )
    if method == "placebo_in_space" and n_placebo_possible < FEW_PLACEBOS:
        warnings.append(
            f"only {n_placebo_possible} possible placebo draws: the interval ends are among "
            "the most extreme placebo estimates and the smallest attainable p is "
            f"1/{n_placebo_possible + 1}"
        )
    if method == "wild_cluster_bootstrap" and n_treated <= FEW_TREATED:
        warnings.append(
            f"{n_treated} treated area(s) with the wild cluster bootstrap: with so few "
            "treated clusters it is conservative and the interval may be unbounded "
            "(MacKinnon and Webb 2017); placebo inference needs more comparable areas"
        )
    if (method == "wild_cluster_bootstrap" and n_clusters is not None
            and n_clusters < VERY_FEW_CLUSTERS):
        warnings.append(
            f"only {n_clusters} areas: Webb six-point bootstrap weights used, and any "
            "method is fragile with so few clusters"
        )
    return tuple(warnings)


def choose_inference(n_treated: int, n_placebo_possible: int,
                     method: str = "auto", n_clusters: int | None = None) -> InferenceChoice:
    """Pick the method the design supports, say why in words a report can print, and
    warn when inference is fragile.

    `n_clusters` is the number of areas in the model (treated and comparison); None means
    "many" and never selects the wild cluster bootstrap. `method` other than "auto" is
    the protocol's explicit choice and is honoured, except that placebo inference with too
    few placebos to reject at 5% is an error.
    """
    if method not in METHODS:
        raise ValueError(f"unknown inference method {method!r}; allowed: {', '.join(METHODS)}")
    chosen, reason = _choose(n_treated, n_placebo_possible, method, n_clusters)
    return InferenceChoice(chosen, reason,
                           _fragility(chosen, n_treated, n_placebo_possible, n_clusters))


def _choose(n_treated: int, n_placebo_possible: int, method: str,
            n_clusters: int | None) -> tuple[str, str]:
    few_clusters = n_clusters is not None and n_clusters < FEW_CLUSTERS
    if method == "cluster_robust":
        return "cluster_robust", "cluster-robust by area, as the protocol sets"
    if method == "wild_cluster_bootstrap":
        return "wild_cluster_bootstrap", "wild cluster bootstrap by area, as the protocol sets"
    if method == "placebo_in_space":
        if n_placebo_possible < MIN_PLACEBOS:
            raise ValueError(
                f"placebo_in_space needs at least {MIN_PLACEBOS} placebo draws; the donors "
                f"allow {n_placebo_possible}"
            )
        return "placebo_in_space", "placebo-in-space, as the protocol sets"
    if n_treated <= FEW_TREATED and n_placebo_possible >= MIN_PLACEBOS:
        return (
            "placebo_in_space",
            f"{n_treated} treated area(s): cluster-robust errors understate uncertainty with "
            "so few treated clusters, so the estimate's t is compared with the same t for "
            f"up to {n_placebo_possible} placebo sets of comparable areas where nothing "
            "happened",
        )
    weights = ("Webb six-point weights" if n_clusters is not None
               and n_clusters < VERY_FEW_CLUSTERS else "Rademacher weights")
    if n_treated <= FEW_TREATED:
        return (
            "wild_cluster_bootstrap",
            f"{n_treated} treated area(s) but too few comparable areas for placebo inference "
            f"(fewer than {MIN_PLACEBOS}): restricted wild cluster bootstrap by area "
            f"({weights}), conservative with so few treated areas",
        )
    if n_treated < FEW_TREATED_CLUSTERS:
        return (
            "wild_cluster_bootstrap",
            f"{n_treated} treated areas, fewer than {FEW_TREATED_CLUSTERS}: cluster-robust "
            "t-tests over-reject when treated clusters are few, whatever the total (MacKinnon "
            "and Webb 2017), so p-values and intervals come from the restricted wild cluster "
            f"bootstrap by area ({weights})",
        )
    if few_clusters:
        return (
            "wild_cluster_bootstrap",
            f"{n_clusters} areas in all, fewer than {FEW_CLUSTERS}: cluster-robust t-tests "
            "over-reject with so few clusters, so p-values and intervals come from the "
            f"restricted wild cluster bootstrap by area ({weights})",
        )
    return (
        "cluster_robust",
        f"{n_treated} treated areas: sandwich errors clustered by area, t with G - 1 degrees "
        "of freedom",
    )


def placebo_sets(donors: list[int], k: int, max_draws: int, seed: int) -> list[tuple[int, ...]]:
    """Sets of k donor rows to pretend were treated: every donor when k = 1, otherwise
    distinct random k-subsets (seeded), at most `max_draws`."""
    if k == 1:
        return [(d,) for d in donors[:max_draws]]
    total = len(list(itertools.islice(itertools.combinations(donors, k), max_draws + 1)))
    if total <= max_draws:
        return list(itertools.combinations(donors, k))
    rng = np.random.default_rng(seed)
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < max_draws:
        chosen.add(tuple(sorted(rng.choice(donors, size=k, replace=False).tolist())))
    return sorted(chosen)


def placebo_statistics(
    y: np.ndarray,
    log_exposure: np.ndarray,
    post: np.ndarray,
    k: int,
    controls: list[int],
    donors: list[int],
    max_draws: int = 400,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The DiD estimate and its studentising standard error (`studentising_se`) for
    placebo sets of k donor rows against the site's own controls.

    `y` and `log_exposure` are areas x months for every row referred to; `post` marks the
    months from go-live. A donor that is also a control is dropped from the controls of
    the draws that treat it.
    """
    estimates, ses = [], []
    for chosen in placebo_sets(donors, k, max_draws, seed):
        rest = [c for c in controls if c not in chosen]
        if len(rest) < 2:
            continue
        rows = list(chosen) + rest
        d = np.zeros((len(rows), y.shape[1]))
        d[: len(chosen)] = post
        fit = fit_poisson_fe(y[rows], log_exposure[rows], d)
        estimates.append(fit.beta)
        ses.append(studentising_se(y[rows], fit, d, k))
    return np.asarray(estimates), np.asarray(ses)


def studentising_se(y: np.ndarray, fit: PoissonFEFit, d: np.ndarray, k: int) -> float:
    """The standard error that turns a site's or a placebo's estimate into a t.

    With two or more treated areas, CR1 by area: its numerator and denominator both come
    from the treated areas' own deviations, so t is close to pivotal and the placebo t's
    stay comparable with the site's even though overlapping placebo sets share areas
    (on the coefficient, 2-area sites' intervals covered 92% in simulation; on CR1 t, 96%).
    With one treated area its cluster score is zero at the estimate and CR1 says nothing
    about it, so the observation-level robust SE is used.
    """
    return cluster_robust_se(y, fit, d) if k >= 2 else robust_se(y, fit, d)


@dataclass(frozen=True)
class PlaceboInference:
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    n_placebo: int


def invert_placebos(estimate: float, placebos: np.ndarray, alpha: float) -> PlaceboInference:
    """Permutation p-value and the interval of effects the placebo spread cannot reject.

    p counts placebo estimates at least as far from zero as the site's (plus one for the
    site itself). The interval subtracts placebo order statistics from the estimate: if the
    site's estimation error is exchangeable with the P placebo errors, its rank among the
    P + 1 is uniform, so the floor(alpha/2 (P+1))-th smallest and ceil((1-alpha/2)(P+1))-th
    smallest placebos bound it with probability at least 1 - alpha. Plain quantiles ignore
    that the site itself is one of the draws and cover too little.
    """
    n = placebos.size
    ordered = np.sort(placebos)
    low_rank = max(1, math.floor(alpha / 2 * (n + 1)))
    high_rank = min(n, math.ceil((1 - alpha / 2) * (n + 1)))
    p = (1 + int(np.sum(np.abs(placebos) >= abs(estimate)))) / (n + 1)
    return PlaceboInference(
        se=float(np.std(placebos, ddof=1)),
        ci_low=float(estimate - ordered[high_rank - 1]),
        ci_high=float(estimate - ordered[low_rank - 1]),
        p_value=float(p),
        n_placebo=n,
    )


def _order_ranks(n: int, alpha: float) -> tuple[int, int]:
    """1-based ranks of the order statistics that bound a 1 - alpha interval from n draws."""
    return (max(1, math.floor(alpha / 2 * (n + 1))),
            min(n, math.ceil((1 - alpha / 2) * (n + 1))))


def invert_studentised_placebos(estimate: float, se: float, placebos: np.ndarray,
                                placebo_ses: np.ndarray, alpha: float) -> PlaceboInference:
    """Permutation inference on t = estimate / se rather than on the estimate itself.

    Each estimate is divided by its own standard error (`studentising_se`), so that a site
    whose areas are noisier than the placebos' (smaller populations, or fewer admissions
    after an effect) is compared on a common scale: the randomisation-t of MacKinnon and
    Webb (2020), which keeps its size when treated and placebo areas differ in size where
    randomisation on the coefficient does not. The interval is
    estimate - se * (placebo t order statistics), by the same rank argument as
    `invert_placebos`; `se` in the result is se times the spread of the placebo t's.
    """
    t = placebos / placebo_ses
    n = t.size
    ordered = np.sort(t)
    low_rank, high_rank = _order_ranks(n, alpha)
    p = (1 + int(np.sum(np.abs(t) >= abs(estimate / se)))) / (n + 1)
    return PlaceboInference(
        se=float(se * np.std(t, ddof=1)),
        ci_low=float(estimate - se * ordered[high_rank - 1]),
        ci_high=float(estimate - se * ordered[low_rank - 1]),
        p_value=float(p),
        n_placebo=n,
    )
