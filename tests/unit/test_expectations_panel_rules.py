"""The panel rules that guard the model's input: implausible month-on-month jumps in counts
and populations, on top of balance, ranges and keys (tests/unit/test_expectations.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from expectations import validate_panel
from expectations.area_month_panel import RULE_COUNT_JUMP, RULE_POPULATION_JUMP

MONTHS = pd.date_range("2015-01-01", periods=6, freq="MS")


def panel(counts: list[int], populations: list[int] | None = None,
          outcome: str = "emergency_admissions") -> pd.DataFrame:
    populations = populations or [250_000] * len(counts)
    return pd.DataFrame({
        "area_code": ["A001"] * len(counts),
        "month": MONTHS[: len(counts)],
        "outcome": [outcome] * len(counts),
        "count": counts,
        "population": populations,
        "rate_per_1000": [c / p * 1000 for c, p in zip(counts, populations, strict=True)],
    })


def test_ordinary_variation_passes():
    result = validate_panel(panel([1200, 1350, 1100, 1500, 1250, 1180]), n_months=6)
    assert result.success, result.summary()


def test_a_tripled_month_is_an_implausible_jump():
    result = validate_panel(panel([1200, 1250, 3900, 1210, 1190, 1230]), n_months=6)
    (failure,) = result.failures_for(rule=RULE_COUNT_JUMP)
    assert failure.unexpected_count == 2  # up into March, and down out of it
    assert failure.examples[0] == "A001/emergency_admissions 2015-03: 1,250 -> 3,900"
    assert "factor of 3" in failure.message


def test_a_lost_month_is_an_implausible_jump_too():
    result = validate_panel(panel([1200, 1250, 90, 1210, 1190, 1230]), n_months=6)
    assert result.failures_for(rule=RULE_COUNT_JUMP)[0].unexpected_count == 2


@pytest.mark.parametrize("counts", [[3, 12, 2, 9, 4, 11], [0, 40, 0, 45, 10, 30]])
def test_small_numbers_are_not_jumps(counts):
    result = validate_panel(panel(counts, outcome="mh_emergency_admissions"), n_months=6)
    assert not result.failures_for(rule=RULE_COUNT_JUMP), result.summary()


def test_a_population_jump_is_a_join_or_units_error():
    result = validate_panel(
        panel([1200] * 6, [250_000, 250_100, 2_501_000, 250_300, 250_400, 250_500]), n_months=6
    )
    (failure,) = result.failures_for(rule=RULE_POPULATION_JUMP)
    assert failure.unexpected_count == 2
    assert "factor of 1.5" in failure.message
