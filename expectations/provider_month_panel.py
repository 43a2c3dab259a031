"""Expectation suite for provider_month_panel: national A&E counts by organisation and month.

Organisations open, merge and close, so unlike the area panel this one is not balanced and
the suite does not ask for every month. It guards what a placebo study sums: one row per
(organisation, month, outcome), known outcomes, months inside the study window, counts >= 0.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from expectations.contract import (
    ORG_CODE_PATTERN,
    PROVIDER_MONTH_PANEL,
    PROVIDER_OUTCOMES,
    study_window,
)
from expectations.validate import (
    ValidationResult,
    check_first_of_month,
    count_expectation,
    import_gx,
    run_suite,
    table_expectations,
)

if TYPE_CHECKING:
    import great_expectations as gx

CONTRACT = PROVIDER_MONTH_PANEL


def build_suite(*, start: date, end: date) -> gx.ExpectationSuite:
    """The GX suite for the provider panel over the study window ``start``..``end``."""
    gx = import_gx()
    gxe = gx.expectations
    first, after = study_window(start, end)
    key = list(CONTRACT.key)
    expectations = [
        *table_expectations(gx, CONTRACT),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=key,
            description=f"({', '.join(key)}) must be unique: one row per organisation, month, "
            "outcome",
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="org_code",
            regex=ORG_CODE_PATTERN,
            description=f"org_code must be an ODS code matching {ORG_CODE_PATTERN}",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="outcome",
            value_set=list(PROVIDER_OUTCOMES),
            description=f"outcome must be one of {', '.join(PROVIDER_OUTCOMES)}",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="month",
            min_value=pd.Timestamp(first),
            max_value=pd.Timestamp(after),
            strict_max=True,
            description=(
                f"month must lie in the study window {first:%Y-%m} to {end:%Y-%m} (inclusive)"
            ),
        ),
        count_expectation(gx),
    ]
    return gx.ExpectationSuite(
        name=f"{CONTRACT.name}[{first:%Y-%m}..{end:%Y-%m}]", expectations=expectations
    )


def validate_provider_panel(df: pd.DataFrame, *, start: date, end: date) -> ValidationResult:
    """Validate the provider-month panel against its contract and the study window."""
    return run_suite(
        df,
        CONTRACT,
        lambda _prepared: build_suite(start=start, end=end),
        extra_checks=[check_first_of_month("month")],
    )
