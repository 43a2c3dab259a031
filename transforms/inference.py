"""Inference that fits the design: which method, and placebo-in-space permutation.

A vanguard site is usually one or two areas. Cluster-robust standard errors estimate the
treated areas' noise from those areas' own residuals, which the fixed effects have already
pulled towards zero, so with few treated clusters they are too small (on simulated panels
with one treated area, 95% intervals covered the truth about 70% of the time). With few
treated areas the estimate is compared instead with the same estimate for comparable
areas where nothing happened (Conley and Taber 2011; Abadie et al. 2010): its spread is
the sampling error the site's own estimate would have had without an effect.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from transforms.poisson_fe import fit_poisson_fe

#: A site with this many treated areas or fewer gets placebo-in-space inference.
FEW_TREATED = 3
#: Fewest placebo draws for a two-sided 5% test to be able to reject at all.
MIN_PLACEBOS = 39


@dataclass(frozen=True)
class InferenceChoice:
    method: str  # cluster_robust | placebo_in_space
    reason: str


def choose_inference(n_treated: int, n_placebo_possible: int,
                     method: str = "auto") -> InferenceChoice:
    """Pick the method the design supports, and say why in words a report can print.

    `method` other than "auto" is the protocol's explicit choice and is honoured, except
    that placebo inference with too few placebos to reject at 5% is an error.
    """
    if method == "cluster_robust":
        return InferenceChoice("cluster_robust", "cluster-robust by area, as the protocol sets")
    if method == "placebo_in_space":
        if n_placebo_possible < MIN_PLACEBOS:
            raise ValueError(
                f"placebo_in_space needs at least {MIN_PLACEBOS} placebo draws; the donors "
                f"allow {n_placebo_possible}"
            )
        return InferenceChoice("placebo_in_space", "placebo-in-space, as the protocol sets")
    if method != "auto":
        raise ValueError(f"unknown inference method {method!r}")
    if n_treated <= FEW_TREATED and n_placebo_possible >= MIN_PLACEBOS:
        return InferenceChoice(
            "placebo_in_space",
            f"{n_treated} treated area(s): cluster-robust errors understate uncertainty with "
            "so few treated clusters, so the estimate is compared with the same estimate for "
            f"{n_placebo_possible} or more comparable areas where nothing happened",
        )
    if n_treated <= FEW_TREATED:
        return InferenceChoice(
            "cluster_robust",
            f"{n_treated} treated area(s) but too few comparable areas for placebo inference "
            f"(fewer than {MIN_PLACEBOS}); cluster-robust errors used and likely too narrow",
        )
    return InferenceChoice(
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


def placebo_estimates(
    y: np.ndarray,
    log_exposure: np.ndarray,
    post: np.ndarray,
    k: int,
    controls: list[int],
    donors: list[int],
    max_draws: int = 400,
    seed: int = 0,
) -> np.ndarray:
    """The DiD estimate for placebo sets of k donor rows against the site's own controls.

    `y` and `log_exposure` are areas x months for every row referred to; `post` marks the
    months from go-live. A donor that is also a control is dropped from the controls of
    the draws that treat it.
    """
    estimates = []
    for chosen in placebo_sets(donors, k, max_draws, seed):
        rest = [c for c in controls if c not in chosen]
        if len(rest) < 2:
            continue
        rows = list(chosen) + rest
        d = np.zeros((len(rows), y.shape[1]))
        d[: len(chosen)] = post
        estimates.append(fit_poisson_fe(y[rows], log_exposure[rows], d).beta)
    return np.asarray(estimates)


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
