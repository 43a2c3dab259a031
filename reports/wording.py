"""Plain-English sentences for board members, from model estimates."""

from __future__ import annotations


def _direction(pct: float) -> str:
    """'4% lower' / '3% higher' / 'no different' for a percentage change."""
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


def evidence_rating(p_value: float, n_treated: int, alpha: float = 0.05) -> str:
    """A coarse rating a board can read, which never outruns the design's weakest point."""
    if p_value >= alpha:
        return "No clear effect"
    if n_treated < 5:
        return "Suggestive (few treated areas)"
    return "Clear effect"
