"""Multiplier bootstrap for influence-function based estimates, as R `did::mboot`.

Each draw multiplies every cluster's summed influence function by an independent weight
with mean 0 and variance 1 (Rademacher: +-1, R `did`'s choice; or Mammen's two-point
weights) and averages. One set of draws is shared by all estimates, so the draws also give
joint distributions: the sup-t critical value for uniform confidence bands is the 1 - alpha
quantile over draws of the largest |draw / se| across a family of estimates.

Standard errors are the draws' interquartile range scaled to a normal's, as in R, which is
robust to the odd extreme draw. Clusters are units unless a cluster column is given; cluster
influence functions are sums over their units (R `did` >= 2.2), so the clustered standard
error is the usual sandwich sqrt(sum_c S_c^2) / n.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

_DEGENERATE = np.sqrt(np.finfo(float).eps) * 10
_IQR_NORMAL = float(stats.norm.ppf(0.75) - stats.norm.ppf(0.25))
_CHUNK_ELEMENTS = 8_000_000  # multipliers held in memory at once (64 MB)


def cluster_sums(inf: np.ndarray, cluster: np.ndarray | None) -> np.ndarray:
    """Influence functions (J, n) summed within clusters (J, C); unchanged without clusters."""
    if cluster is None:
        return inf
    order = np.argsort(cluster, kind="stable")
    sorted_codes = cluster[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    return np.add.reduceat(inf[:, order], starts, axis=1)


def _multipliers(rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    if kind == "rademacher":
        return rng.integers(0, 2, size=shape, dtype=np.int8).astype(float) * 2.0 - 1.0
    if kind == "mammen":
        root5 = np.sqrt(5.0)
        low, high = (1.0 - root5) / 2.0, (1.0 + root5) / 2.0
        return np.where(rng.random(shape) < (root5 + 1.0) / (2.0 * root5), low, high)
    raise ValueError(f"unknown multiplier weights {kind!r}; use rademacher or mammen")


def multiplier_draws(blocks: list[np.ndarray], n_units: int, cluster: np.ndarray | None,
                     n_draws: int, kind: str, seed: int | None) -> list[np.ndarray]:
    """Bootstrap draws of (estimate - estimate_hat) for blocks of influence functions.

    Each block is (J_b, n); its draws are (n_draws, J_b). All blocks share the same
    multipliers, so draws are joint across blocks.
    """
    sums = [cluster_sums(block, cluster) for block in blocks]
    n_clusters = sums[0].shape[1]
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n_clusters, 1))
    draws = [np.empty((n_draws, s.shape[0])) for s in sums]
    for start in range(0, n_draws, chunk):
        stop = min(start + chunk, n_draws)
        multipliers = _multipliers(rng, (stop - start, n_clusters), kind)
        for out, block_sums in zip(draws, sums, strict=True):
            out[start:stop] = multipliers @ block_sums.T
    return [d / n_units for d in draws]


def bootstrap_se(draws: np.ndarray) -> np.ndarray:
    """IQR-based standard error of each column; NaN for degenerate (all-zero) columns."""
    q75 = np.quantile(draws, 0.75, axis=0, method="inverted_cdf")
    q25 = np.quantile(draws, 0.25, axis=0, method="inverted_cdf")
    se = (q75 - q25) / _IQR_NORMAL
    degenerate = ~np.isfinite(draws).all(axis=0) | (np.abs(draws).max(axis=0) == 0)
    return np.where(degenerate | (se <= 0), np.nan, se)


def sup_t_critical_value(draws: np.ndarray, se: np.ndarray, alpha: float) -> float:
    """1 - alpha quantile of max_j |draw_j / se_j|: the uniform band's critical value."""
    usable = np.isfinite(se) & (se > 0)
    if not usable.any():
        return float("nan")
    t_max = np.max(np.abs(draws[:, usable] / se[usable]), axis=1)
    return float(np.quantile(t_max, 1.0 - alpha, method="inverted_cdf"))
