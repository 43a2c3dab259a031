"""Plain-English sentences for board members, from model estimates."""

from __future__ import annotations

import math

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
    "wild_cluster_bootstrap": "a restricted wild cluster bootstrap by area: p-values and "
                              "intervals come from re-weighting each area's contribution "
                              "at random many thousands of times with no effect imposed, "
                              "which stays honest when few areas were treated",
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


def p_text(p_value: float) -> str:
    """A p-value for a sentence: 'p = 0.43', 'p = 0.004', 'p < 0.001'."""
    if p_value < 0.001:
        return "p < 0.001"
    return f"p = {p_value:.3f}" if p_value < 0.01 else f"p = {p_value:.2f}"


def pretrend_sentence(p_value: float | None, alpha: float = 0.05) -> str:
    """Whether the site and its comparison areas moved together before go-live, the
    assumption every estimate against comparison areas rests on, in one sentence."""
    if p_value is None or math.isnan(p_value):
        return ("The test of parallel trends before go-live could not be run, so it is "
                "unknown whether the site and its comparison areas moved together.")
    if p_value >= alpha:
        return (f"Before go-live the site and its comparison areas moved together (test of "
                f"parallel trends {p_text(p_value)}).")
    return (f"Before go-live the site and its comparison areas did not move together (test "
            f"of parallel trends {p_text(p_value)}): the comparison may be biased, so read "
            "the estimates with caution.")


def describe_pretrend_test(inference: str | None) -> str:
    """How the pre-trend test was done, as a sentence for a chart's caption."""
    if inference == "placebo_in_space":
        return ("The test sets the site's pre-go-live estimates against the same estimates "
                "for comparable areas where nothing happened.")
    return ("The test is a joint Wald test of the pre-go-live estimates, with a wild "
            "cluster bootstrap by area.")
