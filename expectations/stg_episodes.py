"""Expectation suite for stg_episodes: HES-like patient-level hospital episodes.

Episodes are aggregated into monthly counts, so a bad code here becomes a wrong count later
without any error: an unknown admission method drops out of the emergency measure, a
malformed diagnosis drops out of the mental-health measure, an admission outside the window
shifts counts between periods. The suite catches those before aggregation.

``sql_rules`` states the same row-level rules in SQL; ingest runs them on every row of a file
in DuckDB (files of millions of rows), and the GX suite here validates staged rows in chunks.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pandas as pd

from expectations.contract import (
    ADMIMETH_CODES,
    AGE_MAX,
    AGE_MIN,
    AREA_CODE_PATTERN,
    ICD10_PATTERN,
    PATIENT_ID_PATTERN,
    SEX_CODES,
    STG_EPISODES,
    study_window,
)
from expectations.sql_rules import (
    RuleContext,
    SqlRule,
    not_after_extract_rules,
    pattern_rule,
    range_rule,
    set_rule,
    site_area_rules,
    text_rules,
    window_rule,
)
from expectations.validate import ValidationResult, import_gx, run_suite, table_expectations

if TYPE_CHECKING:
    import great_expectations as gx

CONTRACT = STG_EPISODES


def build_suite(*, start: date, end: date) -> gx.ExpectationSuite:
    """The GX suite for stg_episodes over the study window ``start``..``end`` (whole months).

    Date columns must be datetime64 here; ``validate_episodes`` converts Python dates.
    """
    gx = import_gx()
    gxe = gx.expectations
    first, after = study_window(start, end)
    admimeth = sorted(ADMIMETH_CODES)
    expectations = [
        *table_expectations(gx, CONTRACT),
        gxe.ExpectColumnValuesToMatchRegex(
            column="patient_id",
            regex=PATIENT_ID_PATTERN,
            description="patient_id must be a pseudonym of 16 upper-case hex characters",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="admission_date",
            min_value=pd.Timestamp(first),
            max_value=pd.Timestamp(after),
            strict_max=True,
            description=(
                f"admission_date must lie in the study window {first:%Y-%m} to {end:%Y-%m} "
                "(inclusive)"
            ),
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="discharge_date",
            column_B="admission_date",
            or_equal=True,
            ignore_row_if="either_value_is_missing",
            description="discharge_date must be on or after admission_date",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="admission_method",
            value_set=admimeth,
            description=f"admission_method must be a HES ADMIMETH code ({', '.join(admimeth)})",
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="primary_diagnosis",
            regex=ICD10_PATTERN,
            description=(
                "primary_diagnosis must be an ICD-10 code such as J18, J189 or J18.9 "
                f"({ICD10_PATTERN})"
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="age",
            min_value=AGE_MIN,
            max_value=AGE_MAX,
            description=f"age must be between {AGE_MIN} and {AGE_MAX} years",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="sex",
            value_set=sorted(SEX_CODES),
            description=f"sex must be a HES sex code ({', '.join(sorted(SEX_CODES))})",
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column="area_code",
            regex=AREA_CODE_PATTERN,
            description=f"area_code must match {AREA_CODE_PATTERN}",
        ),
    ]
    return gx.ExpectationSuite(
        name=f"{CONTRACT.name}[{first:%Y-%m}..{end:%Y-%m}]", expectations=expectations
    )


def validate_episodes(df: pd.DataFrame, *, start: date, end: date) -> ValidationResult:
    """Validate one frame of stg_episodes against the contract and the study window."""
    return run_suite(df, CONTRACT, lambda _prepared: build_suite(start=start, end=end))


def sql_rules(ctx: RuleContext) -> list[SqlRule]:
    """Row-level rules of one episodes file, for DuckDB."""
    admimeth = sorted(ADMIMETH_CODES)
    return [
        *text_rules(CONTRACT),
        pattern_rule(
            "patient_id", PATIENT_ID_PATTERN,
            "patient_id must be a pseudonym of 16 upper-case hex characters",
        ),
        window_rule("admission_date", ctx),
        SqlRule(
            "expect_column_pair_values_a_to_be_greater_than_b", "discharge_date, admission_date",
            "discharge_date < admission_date",
            "discharge_date must be on or after admission_date",
            show="CAST(discharge_date AS VARCHAR) || ' < ' || CAST(admission_date AS VARCHAR)",
        ),
        *not_after_extract_rules(["admission_date", "discharge_date"], ctx),
        set_rule(
            "admission_method", admimeth,
            f"admission_method must be a HES ADMIMETH code ({', '.join(admimeth)})",
        ),
        pattern_rule(
            "primary_diagnosis", ICD10_PATTERN,
            "primary_diagnosis must be an ICD-10 code such as J18, J189 or J18.9 "
            f"({ICD10_PATTERN})",
        ),
        range_rule("age", f"age must be between {AGE_MIN} and {AGE_MAX} years",
                   low=AGE_MIN, high=AGE_MAX),
        set_rule("sex", SEX_CODES, f"sex must be a HES sex code ({', '.join(sorted(SEX_CODES))})"),
        pattern_rule("area_code", AREA_CODE_PATTERN, f"area_code must match {AREA_CODE_PATTERN}"),
        *site_area_rules(ctx),
    ]
