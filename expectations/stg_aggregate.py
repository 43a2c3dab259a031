"""Expectation suite for stg_aggregate: monthly event counts per area and measure.

These counts feed the difference-in-differences model directly, so the suite guards what
the model silently relies on: one row per (area, month, measure), months inside the study
window, non-negative counts and a plausible population for the log offset.

``sql_rules`` states the same row-level rules in SQL; ingest runs them on every row of a file
in DuckDB, and the GX suite here validates the staged rows in pandas chunks.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from expectations.contract import (
    AREA_CODE_PATTERN,
    MEASURES,
    POPULATION_MAX,
    STG_AGGREGATE,
    study_window,
)
from expectations.sql_rules import (
    RuleContext,
    SqlRule,
    first_of_month_rule,
    not_after_extract_rules,
    pattern_rule,
    range_rule,
    set_rule,
    site_area_rules,
    text_rules,
    window_rule,
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

CONTRACT = STG_AGGREGATE


def build_suite(*, start: date, end: date) -> gx.ExpectationSuite:
    """The GX suite for stg_aggregate over the study window ``start``..``end`` (whole months).

    ``month`` must be a datetime64 column here; ``validate_aggregate`` converts Python dates.
    """
    gx = import_gx()
    gxe = gx.expectations
    first, after = study_window(start, end)
    key = list(CONTRACT.key)
    expectations = [
        *table_expectations(gx, CONTRACT),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=key,
            description=f"({', '.join(key)}) must be unique: one count per area, month, measure",
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="area_code",
            regex=AREA_CODE_PATTERN,
            description=f"area_code must match {AREA_CODE_PATTERN}",
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
        gxe.ExpectColumnValuesToBeInSet(
            column="measure",
            value_set=list(MEASURES),
            description=f"measure must be one of {', '.join(MEASURES)}",
        ),
        count_expectation(gx),
        gxe.ExpectColumnValuesToBeBetween(
            column="population",
            min_value=0,
            strict_min=True,
            max_value=POPULATION_MAX,
            description=(
                f"population must be > 0 and <= {POPULATION_MAX:,} "
                "(it is the model's log offset and the rate denominator)"
            ),
        ),
    ]
    return gx.ExpectationSuite(
        name=f"{CONTRACT.name}[{first:%Y-%m}..{end:%Y-%m}]", expectations=expectations
    )


def validate_aggregate(df: pd.DataFrame, *, start: date, end: date) -> ValidationResult:
    """Validate one frame of stg_aggregate against the contract and the study window."""
    return run_suite(
        df,
        CONTRACT,
        lambda _prepared: build_suite(start=start, end=end),
        extra_checks=[check_first_of_month("month")],
    )


def sql_rules(ctx: RuleContext) -> list[SqlRule]:
    """Row-level rules of one aggregate file, for DuckDB (the key is checked separately)."""
    return [
        *text_rules(CONTRACT),
        pattern_rule("area_code", AREA_CODE_PATTERN, f"area_code must match {AREA_CODE_PATTERN}"),
        *site_area_rules(ctx),
        window_rule("month", ctx),
        first_of_month_rule("month"),
        *not_after_extract_rules(["month"], ctx),
        set_rule("measure", MEASURES, f"measure must be one of {', '.join(MEASURES)}"),
        range_rule("count", "count must be >= 0 (a count of events cannot be negative)", low=0),
        range_rule(
            "population",
            f"population must be > 0 and <= {POPULATION_MAX:,} "
            "(it is the model's log offset and the rate denominator)",
            low=0, high=POPULATION_MAX, strict_low=True,
        ),
    ]
