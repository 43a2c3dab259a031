"""Expectation suite for area_month_panel: the long area-by-month-by-outcome analysis panel.

The two-way fixed-effects model assumes a balanced panel. A missing area-month does not make
the model fail; it quietly changes what the fixed effects absorb. So besides value checks the
suite proves balance: keys unique, exactly ``n_months`` distinct months, and
areas x outcomes x months rows in total. Unique keys plus that row count leave no room for a
gap. A pandas check then names the (area, outcome) pairs with gaps, which GX cannot do.

Two more pandas checks catch what a lost, doubled or mis-scaled extract looks like in a panel
that is otherwise well formed: counts that jump by more than PANEL_JUMP_FACTOR from one month
to the next, and populations that jump by more than POPULATION_JUMP_FACTOR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from expectations.contract import (
    AREA_CODE_PATTERN,
    AREA_MONTH_PANEL,
    PANEL_JUMP_FACTOR,
    PANEL_JUMP_MIN_COUNT,
    POPULATION_JUMP_FACTOR,
    RATE_PER_1000_MAX,
)
from expectations.validate import (
    EXAMPLE_LIMIT,
    CheckFailure,
    ExtraCheck,
    ValidationResult,
    check_first_of_month,
    count_expectation,
    import_gx,
    make_failure,
    run_suite,
    table_expectations,
)

if TYPE_CHECKING:
    import great_expectations as gx

CONTRACT = AREA_MONTH_PANEL
RULE_EVERY_MONTH = "panel_has_every_month"
RULE_COUNT_JUMP = "no_implausible_month_on_month_jump"
RULE_POPULATION_JUMP = "no_implausible_population_jump"


def build_suite(*, n_months: int, n_areas: int, n_outcomes: int) -> gx.ExpectationSuite:
    """The GX suite for a panel of ``n_areas`` x ``n_outcomes`` x ``n_months`` rows.

    ``validate_panel`` takes ``n_areas`` and ``n_outcomes`` from the data (distinct values)
    and ``n_months`` from the study window, so a gap anywhere shows up as a row-count shortfall.
    """
    gx = import_gx()
    gxe = gx.expectations
    key = list(CONTRACT.key)
    n_rows = n_areas * n_outcomes * n_months
    expectations = [
        *table_expectations(gx, CONTRACT),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=key,
            description=f"({', '.join(key)}) must be unique: one row per area, month, outcome",
        ),
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column="month",
            min_value=n_months,
            max_value=n_months,
            description=f"month must take exactly {n_months} distinct values (the study window)",
        ),
        gxe.ExpectTableRowCountToEqual(
            value=n_rows,
            description=(
                f"a balanced panel has areas x outcomes x months = {n_areas} x {n_outcomes} x "
                f"{n_months} = {n_rows} rows"
            ),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="area_code",
            regex=AREA_CODE_PATTERN,
            description=f"area_code must match {AREA_CODE_PATTERN}",
        ),
        count_expectation(gx),
        gxe.ExpectColumnValuesToBeBetween(
            column="population",
            min_value=0,
            strict_min=True,
            description="population must be > 0 (it is the model's log offset)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="rate_per_1000",
            min_value=0,
            max_value=RATE_PER_1000_MAX,
            strict_max=True,
            description=f"rate_per_1000 must be >= 0 and < {RATE_PER_1000_MAX:,}",
        ),
    ]
    return gx.ExpectationSuite(name=f"{CONTRACT.name}[{n_months}m]", expectations=expectations)


def check_every_month(n_months: int) -> ExtraCheck:
    """A check naming each (area_code, outcome) pair that lacks some of the ``n_months``."""

    def check(df: pd.DataFrame) -> list[CheckFailure]:
        months = df.groupby(["area_code", "outcome"], sort=True)["month"].nunique()
        short = months[months != n_months]
        if short.empty:
            return []
        dated = pd.api.types.is_datetime64_dtype(df["month"].dtype)
        all_months = pd.Index(df["month"].dropna().unique())
        examples = []
        for area, outcome in short.index[:EXAMPLE_LIMIT]:
            text = f"{area}/{outcome}: {short[(area, outcome)]} of {n_months} months"
            mask = (df["area_code"] == area) & (df["outcome"] == outcome)
            missing = all_months.difference(df.loc[mask, "month"].dropna().unique()).sort_values()
            if dated and len(missing):
                text += ", missing " + ", ".join(f"{m:%Y-%m-%d}" for m in missing[:3])
                text += ", ..." if len(missing) > 3 else ""
            examples.append(text)
        return [
            make_failure(
                RULE_EVERY_MONTH,
                "area_code, outcome, month",
                f"every (area_code, outcome) needs all {n_months} months of the study window; "
                f"{len(short)} of {len(months)} pairs do not",
                unexpected_count=len(short),
                examples=examples,
                unit="pair",
            )
        ]

    return check


def check_month_on_month(
    column: str, factor: float, min_count: int, rule: str
) -> ExtraCheck:
    """A check for ``column`` changing by more than ``factor`` between consecutive months.

    Pairs where the larger value is below ``min_count`` are ignored (small-number noise), as
    are negative and missing values, which other rules report.
    """

    def check(df: pd.DataFrame) -> list[CheckFailure]:
        if not pd.api.types.is_numeric_dtype(df[column].dtype):
            return []  # already reported as a dtype failure
        ordered = df.sort_values(["area_code", "outcome", "month"], kind="stable")
        value = ordered[column].astype("float64")
        previous = ordered.groupby(["area_code", "outcome"], sort=False)[column].shift()
        previous = previous.astype("float64")
        high = np.fmax(value, previous)
        low = np.fmin(value, previous)
        jump = (low >= 0) & (high >= min_count) & (high > factor * low)
        if not jump.any():
            return []
        bad = ordered[jump.to_numpy()]
        before = previous[jump.to_numpy()]
        examples = [
            f"{r.area_code}/{r.outcome} {_month(r.month)}: {b:,.0f} -> {getattr(r, column):,.0f}"
            for r, b in zip(bad.head(EXAMPLE_LIMIT).itertuples(), before.head(EXAMPLE_LIMIT),
                            strict=True)
        ]
        return [
            make_failure(
                rule,
                column,
                f"{column} must not change by more than a factor of {factor:g} from one month "
                f"to the next (checked where the larger month has at least {min_count:,})",
                unexpected_count=len(bad),
                examples=examples,
                rows=[int(i) for i in bad.index[:EXAMPLE_LIMIT]],
            )
        ]

    return check


def _month(value: object) -> str:
    try:
        return f"{pd.Timestamp(value):%Y-%m}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def validate_panel(df: pd.DataFrame, *, n_months: int) -> ValidationResult:
    """Validate the area-month panel, including that it is balanced over ``n_months`` months."""
    if n_months < 1:
        raise ValueError(f"n_months must be at least 1, got {n_months}")

    def suite(prepared: pd.DataFrame) -> gx.ExpectationSuite:
        return build_suite(
            n_months=n_months,
            n_areas=int(prepared["area_code"].nunique()),
            n_outcomes=int(prepared["outcome"].nunique()),
        )

    return run_suite(
        df,
        CONTRACT,
        suite,
        extra_checks=[
            check_first_of_month("month"),
            check_every_month(n_months),
            check_month_on_month("count", PANEL_JUMP_FACTOR, PANEL_JUMP_MIN_COUNT, RULE_COUNT_JUMP),
            check_month_on_month("population", POPULATION_JUMP_FACTOR, 1, RULE_POPULATION_JUMP),
        ],
    )
