"""Expectation suite for stg_nhse_ae: NHS England's monthly A&E statistics by provider.

The national file is the comparison data for placebo and pool studies, so the suite guards
what those studies add up: one row per (month, organisation, department type), months inside
the study window, known department types, non-negative counts, and no more 4-hour breaches
than attendances. ``sql_rules`` states the same row-level rules for DuckDB.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from expectations.contract import AE_TYPES, ORG_CODE_PATTERN, STG_NHSE_AE, study_window
from expectations.sql_rules import (
    RuleContext,
    SqlRule,
    first_of_month_rule,
    not_after_extract_rules,
    pattern_rule,
    range_rule,
    set_rule,
    text_rules,
    window_rule,
)
from expectations.validate import (
    ValidationResult,
    check_first_of_month,
    import_gx,
    run_suite,
    table_expectations,
)

if TYPE_CHECKING:
    import great_expectations as gx

CONTRACT = STG_NHSE_AE
COUNTS = ("attendances", "breaches", "admissions")


def build_suite(*, start: date, end: date) -> gx.ExpectationSuite:
    """The GX suite for stg_nhse_ae over the study window ``start``..``end`` (whole months)."""
    gx = import_gx()
    gxe = gx.expectations
    first, after = study_window(start, end)
    key = list(CONTRACT.key)
    expectations = [
        *table_expectations(gx, CONTRACT),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=key,
            description=f"({', '.join(key)}) must be unique: one row per month, organisation "
            "and department type",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="period",
            min_value=pd.Timestamp(first),
            max_value=pd.Timestamp(after),
            strict_max=True,
            description=(
                f"period must lie in the study window {first:%Y-%m} to {end:%Y-%m} (inclusive)"
            ),
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="org_code",
            regex=ORG_CODE_PATTERN,
            description=f"org_code must be an ODS code matching {ORG_CODE_PATTERN}",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="type",
            value_set=list(AE_TYPES),
            description=f"type must be an A&E department type ({', '.join(AE_TYPES)})",
        ),
        *[
            gxe.ExpectColumnValuesToBeBetween(
                column=c, min_value=0, description=f"{c} must be >= 0"
            )
            for c in COUNTS
        ],
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="attendances",
            column_B="breaches",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            description="breaches must not exceed attendances (a breach is an attendance)",
        ),
    ]
    return gx.ExpectationSuite(
        name=f"{CONTRACT.name}[{first:%Y-%m}..{end:%Y-%m}]", expectations=expectations
    )


def validate_nhse_ae(df: pd.DataFrame, *, start: date, end: date) -> ValidationResult:
    """Validate one frame of stg_nhse_ae against the contract and the study window."""
    return run_suite(
        df,
        CONTRACT,
        lambda _prepared: build_suite(start=start, end=end),
        extra_checks=[check_first_of_month("period")],
    )


def sql_rules(ctx: RuleContext) -> list[SqlRule]:
    """Row-level rules of one national A&E file, for DuckDB (the key is checked separately)."""
    return [
        *text_rules(CONTRACT),
        window_rule("period", ctx),
        first_of_month_rule("period"),
        *not_after_extract_rules(["period"], ctx),
        pattern_rule("org_code", ORG_CODE_PATTERN,
                     f"org_code must be an ODS code matching {ORG_CODE_PATTERN}"),
        set_rule("type", AE_TYPES, f"type must be an A&E department type ({', '.join(AE_TYPES)})"),
        *[range_rule(c, f"{c} must be >= 0", low=0) for c in COUNTS],
        SqlRule(
            "expect_column_pair_values_a_to_be_greater_than_b", "attendances, breaches",
            "breaches > attendances",
            "breaches must not exceed attendances (a breach is an attendance)",
            show="CAST(breaches AS VARCHAR) || ' > ' || CAST(attendances AS VARCHAR)",
        ),
    ]
