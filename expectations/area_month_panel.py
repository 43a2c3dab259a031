"""Expectation suite for area_month_panel: the long area-by-month-by-outcome analysis panel.

The two-way fixed-effects model assumes a balanced panel. A missing area-month does not make
the model fail; it quietly changes what the fixed effects absorb. So besides value checks the
suite proves balance: keys unique, exactly ``n_months`` distinct months, and
areas x outcomes x months rows in total. Unique keys plus that row count leave no room for a
gap. A pandas check then names the (area, outcome) pairs with gaps, which GX cannot do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from expectations.contract import AREA_CODE_PATTERN, AREA_MONTH_PANEL, RATE_PER_1000_MAX
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
        extra_checks=[check_first_of_month("month"), check_every_month(n_months)],
    )
