"""Plain-English sentences for board members, from model estimates."""

from __future__ import annotations

ESTIMATORS = {
    "poisson_twfe": "Poisson regression of monthly counts with area and month fixed effects "
                    "(two-way fixed-effects difference-in-differences) and log population as "
                    "the exposure",
}
INFERENCE = {
    "cluster_robust_area_t": "cluster-robust standard errors by area, with t intervals on "
                             "one fewer degree of freedom than there are areas",
    "cluster_robust": "cluster-robust standard errors by area",
    "placebo_in_space": "placebo-in-space inference: the site's estimate is set against the "
                        "same estimate for comparable areas where nothing happened",
}
MODEL_TYPES = {"PACS": "Primary and acute care system (PACS)",
               "MCP": "Multispecialty community provider (MCP)",
               "care-home": "Enhanced health in care homes"}


def _direction(pct: float) -> str:
    """'4% lower' / '3% higher' / '0.3% lower' for a percentage change."""
    if round(abs(pct)) == 0:
        return f"{abs(pct):.1f}% {'lower' if pct < 0 else 'higher'}"
    return f"{abs(pct):.0f}% {'lower' if pct < 0 else 'higher'}"


def headline(label: str, pct: float, low: float, high: float, p_value: float,
             alpha: float = 0.05) -> str:
    """One sentence: the estimate, its interval, and whether chance is a fair explanation."""
    significant = p_value < alpha
    verdict = (
        "the difference is statistically significant"
        if significant
        else "the difference is not statistically significant"
    )
    level = round(100 * (1 - alpha))
    return (
        f"{label} were {_direction(pct)} ({level}% CI {_direction(low)} to {_direction(high)}) "
        f"than in matched comparison areas; {verdict}."
    )


def evidence_rating(p_value: float, n_treated: int, q_value: float | None = None,
                    alpha: float = 0.05) -> str:
    """A coarse rating a board can read, which never outruns the design's weakest point:
    chance, chance across the many estimates in the programme (q), or few treated areas."""
    if p_value >= alpha:
        return "No clear effect"
    if q_value is not None and q_value >= alpha:
        return "Suggestive (may be chance among many comparisons)"
    if n_treated < 5:
        return "Suggestive (few treated areas)"
    return "Clear effect"


def signed_pct(value: float, decimals: int = 1) -> str:
    """'+4.2%' or '\u22124.2%' (a true minus sign reads better in print)."""
    text = f"{value:+.{decimals}f}"
    if float(text) == 0:
        text = f"{0:.{decimals}f}"  # no sign on a change that rounds to nothing
    return f"{text}%".replace("-", "\u2212")


def interval(low: float, high: float) -> str:
    return f"{signed_pct(low)} to {signed_pct(high)}"


def claim_verdict(claimed: float, low: float, high: float) -> str:
    """Whether a site's own claimed change lies inside the controlled estimate's 95% CI."""
    if low <= claimed <= high:
        return "Within our 95% CI"
    side = "above" if claimed > high else "below"
    return f"Outside our 95% CI ({side} it)"


def claim_sentence(label: str, claimed: float, estimate: float, low: float,
                   high: float) -> str:
    """The claim and the controlled estimate side by side, in one sentence."""
    way = "rise" if claimed > 0 else "fall"
    return (
        f"Published before-and-after figures for this site show a {abs(claimed):.1f}% {way} "
        f"in {label.lower()}; against matched comparison areas we estimate "
        f"{_direction(estimate)} (95% CI {_direction(low)} to {_direction(high)})."
    )


def describe_estimator(code: str) -> str:
    return ESTIMATORS.get(code, code)


def describe_inference(code: str) -> str:
    return INFERENCE.get(code, code.replace("_", " "))


def describe_model_type(code: str) -> str:
    return MODEL_TYPES.get(code, code)
