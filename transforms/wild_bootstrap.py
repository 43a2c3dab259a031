"""Wild cluster bootstrap for the Poisson DiD slope: the restricted score bootstrap.

With fewer than about 30 areas, cluster-robust (CR1) t-tests reject a true null too often:
the sandwich is estimated from few cluster scores. The wild cluster bootstrap restricted
(WCR) fixes most of that by comparing the t-statistic with its distribution when the null
is imposed and each cluster's residuals are multiplied by one random sign. A Poisson
model cannot be refitted on wild-bootstrap data (the counts could go negative), so the
bootstrap perturbs the clusters' scores instead (Kline and Santos 2012, "A score based
approach to wild bootstrap inference"; Roodman, MacKinnon, Nielsen and Webb 2019, "Fast
and wild", section on the score bootstrap):

1. impose beta = b: fit only the area and month effects with b * D in the offset;
2. each area's score for beta, after partialling out the fixed effects, is s_g;
3. the statistic is t = sum_g s_g / sqrt(sum_g s_g^2); a draw is
   t* = sum_g w_g s_g / sqrt(sum_g (w_g s_g)^2) with w_g Rademacher (+1/-1) or, with very
   few clusters, Webb's six-point weights (Rademacher has only 2^G distinct draws);
4. p(b) is the share of draws with |t*| >= |t|; the interval is every b with p(b) > alpha,
   found by bisection on each side (test inversion).

The same weights are used for every b, so p(b) is a deterministic function of the data and
the seed. When 2^G is no larger than the number of draws asked for, every Rademacher sign
vector is enumerated and the p-value has no simulation error.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from transforms.poisson_fe import fixed_effects, partial_out

#: Fewer clusters than this get Webb's six-point weights (Webb 2014, "Reworking wild
#: bootstrap based inference for clustered errors"): Rademacher gives too few distinct draws.
WEBB_BELOW = 12
#: Default number of bootstrap draws; B + 1 = 10,000 puts alpha (B + 1) on an integer.
DRAWS = 9999
_WEBB_POINTS = np.array([-math.sqrt(1.5), -1.0, -math.sqrt(0.5),
                         math.sqrt(0.5), 1.0, math.sqrt(1.5)])


def weight_kind(n_clusters: int) -> str:
    """Rademacher, or Webb when clusters are too few for Rademacher to resolve a 5% test."""
    return "webb" if n_clusters < WEBB_BELOW else "rademacher"


def bootstrap_weights(n_clusters: int, draws: int, kind: str, seed: int) -> np.ndarray:
    """Draws x clusters matrix of cluster weights, seeded.

    Rademacher with 2^G <= draws enumerates every sign vector once (exact). Webb draws
    uniformly from its six points, each with mean 0 and variance 1.
    """
    if kind == "rademacher":
        if 2**n_clusters <= draws:
            return np.array(list(itertools.product([-1.0, 1.0], repeat=n_clusters)))
        rng = np.random.default_rng(seed)
        return rng.choice([-1.0, 1.0], size=(draws, n_clusters))
    if kind == "webb":
        rng = np.random.default_rng(seed)
        return rng.choice(_WEBB_POINTS, size=(draws, n_clusters))
    raise ValueError(f"unknown bootstrap weights {kind!r}; expected 'rademacher' or 'webb'")


def restricted_scores(y: np.ndarray, log_exposure: np.ndarray, d: np.ndarray,
                      b: float) -> np.ndarray:
    """Each unit's (row's) score for the slope with the slope fixed at b.

    The fixed effects are refitted under the null, and D is partialled out of them with
    the fitted means as weights, so the scores are free of the nuisance parameters.
    """
    mu = fixed_effects(y, np.exp(log_exposure + b * d))
    d_tilde = partial_out(d, mu)
    return (d_tilde * (y - mu)).sum(axis=1)


@dataclass(frozen=True)
class ScoreTest:
    statistic: float
    p_value: float


def score_test(scores: np.ndarray, weights: np.ndarray) -> ScoreTest:
    """Bootstrap-t p-value of the studentised score against its wild-bootstrap draws."""
    total = float(scores.sum())
    scale = math.sqrt(float((scores**2).sum()))
    if scale == 0.0:
        return ScoreTest(0.0, 1.0)
    t = total / scale
    boot = weights @ scores
    boot_scale = np.sqrt((weights**2) @ scores**2)
    t_star = np.divide(boot, boot_scale, out=np.zeros_like(boot), where=boot_scale > 0)
    # A small tolerance so that draws equal to t (ties under enumeration) count as extreme.
    p = float(np.mean(np.abs(t_star) >= abs(t) - 1e-12))
    return ScoreTest(t, p)


@dataclass(frozen=True)
class WildBootstrapInference:
    """Bootstrap-t p-value for beta = 0 and the test-inversion interval for beta."""

    ci_low: float
    ci_high: float
    p_value: float
    statistic: float
    n_clusters: int
    n_draws: int
    weights: str  # rademacher | webb
    enumerated: bool  # every Rademacher sign vector used: no simulation error

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)


def _bound(p_at, beta: float, step: float, direction: float, alpha: float,
           max_steps: int = 12, iterations: int = 40) -> float:
    """The edge of {b: p(b) > alpha} on one side of beta, or +/-inf if it never closes.

    Doubles the distance from beta until the test rejects, then bisects.
    """
    inside, distance = 0.0, step
    for _ in range(max_steps):
        if p_at(beta + direction * distance) <= alpha:
            break
        inside, distance = distance, 2 * distance
    else:
        return direction * math.inf
    outside = distance
    for _ in range(iterations):
        middle = (inside + outside) / 2
        if p_at(beta + direction * middle) > alpha:
            inside = middle
        else:
            outside = middle
        if outside - inside < 1e-7 * step:
            break
    return beta + direction * (inside + outside) / 2


def wild_cluster_bootstrap(
    y: np.ndarray,
    log_exposure: np.ndarray,
    d: np.ndarray,
    beta: float,
    se: float,
    alpha: float = 0.05,
    draws: int = DRAWS,
    weights: str = "auto",
    seed: int = 0,
) -> WildBootstrapInference:
    """Restricted wild cluster (score) bootstrap for the slope, clustered by unit (row).

    `y`, `log_exposure` and `d` are units x times; `beta` and `se` are the fitted slope and
    its cluster-robust standard error (used only to scale the interval search).
    `weights` is "auto" (Webb below WEBB_BELOW clusters, else Rademacher), "rademacher"
    or "webb".
    """
    y = np.asarray(y, dtype=float)
    log_exposure = np.asarray(log_exposure, dtype=float)
    d = np.asarray(d, dtype=float)
    n_clusters = y.shape[0]
    kind = weight_kind(n_clusters) if weights == "auto" else weights
    w = bootstrap_weights(n_clusters, draws, kind, seed)
    enumerated = kind == "rademacher" and w.shape[0] == 2**n_clusters

    def p_at(b: float) -> float:
        return score_test(restricted_scores(y, log_exposure, d, b), w).p_value

    at_zero = score_test(restricted_scores(y, log_exposure, d, 0.0), w)
    step = se if math.isfinite(se) and se > 0 else max(abs(beta), 0.01)
    return WildBootstrapInference(
        ci_low=_bound(p_at, beta, step, -1.0, alpha),
        ci_high=_bound(p_at, beta, step, 1.0, alpha),
        p_value=at_zero.p_value,
        statistic=at_zero.statistic,
        n_clusters=n_clusters,
        n_draws=int(w.shape[0]),
        weights=kind,
        enumerated=enumerated,
    )
