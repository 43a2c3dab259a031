"""Minimum detectable effect of a site's design: can a null result be read as "no effect"?

A wide interval around zero means "could not have seen one", not "no effect". The minimum
detectable effect (MDE) says how large a change the site's design would have detected
with the stated power in a two-sided test at level alpha:

    MDE (log rate ratio) = (q_{1 - alpha/2} + q_{power}) x spread

where the spread is the standard error of the log rate ratio (cluster-robust inference
and the wild cluster bootstrap) or the spread of the placebo estimates (placebo-in-space
inference); `DidEstimate.se` holds whichever applies. The quantiles are standard normal,
or t on `df` degrees of freedom when the interval used a t reference (cluster-robust,
G - 1).

Why the spread and not the placebo quantiles themselves: with 40 placebos the 97.5%
quantile rests on the one or two most extreme draws, while the standard deviation uses
all of them, so the spread-based MDE is far steadier from site to site. The placebo test
rejects only beyond the placebo extremes, which for 40 normal placebos lie about 2.2
standard deviations out rather than 1.96, so for placebo inference the spread-based MDE is
a slight understatement; `placebo_minimum_detectable_effect` gives the distribution-based
figure for comparison.

An effect on the log scale is symmetric; as a percentage it is not, so both the
reduction and the increase the design could detect are returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MinimumDetectableEffect:
    """The smallest effect detectable with the stated power, on both scales."""

    log_rate_ratio: float  # always positive: the detectable |log rate ratio|
    alpha: float
    power: float
    basis: str  # "standard_error" | "placebo_distribution"

    @property
    def pct_reduction(self) -> float:
        """The smallest fall detectable, as a positive percentage (e.g. 12.3 = 12.3% fewer)."""
        return 100.0 * (1.0 - math.exp(-self.log_rate_ratio))

    @property
    def pct_increase(self) -> float:
        """The smallest rise detectable, as a positive percentage."""
        return 100.0 * (math.exp(self.log_rate_ratio) - 1.0)


def _check_levels(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie strictly between 0 and 1, got {power}")


def minimum_detectable_effect(se_or_placebo_spread: float, alpha: float = 0.05,
                              power: float = 0.8,
                              df: int | None = None) -> MinimumDetectableEffect:
    """(q_{1-alpha/2} + q_power) x spread, from a standard error or a placebo spread.

    `df` switches the normal quantiles to t quantiles on that many degrees of freedom, to
    match a t-based interval (the cluster-robust one uses G - 1).
    """
    _check_levels(alpha, power)
    spread = float(se_or_placebo_spread)
    if not math.isfinite(spread) or spread <= 0:
        raise ValueError(f"the standard error or placebo spread must be a positive number, "
                         f"got {se_or_placebo_spread}")
    if df is not None and df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    reference = stats.norm if df is None else stats.t(df)
    multiplier = float(reference.ppf(1 - alpha / 2) + reference.ppf(power))
    return MinimumDetectableEffect(multiplier * spread, alpha, power, "standard_error")


def placebo_minimum_detectable_effect(placebos: np.ndarray, alpha: float = 0.05,
                                      power: float = 0.8) -> MinimumDetectableEffect:
    """The MDE read off the placebo estimates themselves, without assuming normality.

    The test rejects when |estimate| exceeds c, the (1 - alpha) quantile of |placebo|. A
    true effect b shifts the estimate to b + e, e drawn like a placebo, so a fall is
    detected with probability `power` when b = -(c + q_power(-e)): c plus the power
    quantile of the placebo errors (the two tails are averaged, to give one figure). The
    placebos are not centred, as the production p-value (transforms.inference) does not
    centre them either.
    """
    _check_levels(alpha, power)
    values = np.asarray(placebos, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        raise ValueError(f"need at least 2 placebo estimates, got {values.size}")
    critical = float(np.quantile(np.abs(values), 1 - alpha))
    shift = float((np.quantile(values, power) + np.quantile(-values, power)) / 2)
    return MinimumDetectableEffect(critical + shift, alpha, power, "placebo_distribution")
