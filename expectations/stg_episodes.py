"""Expectation suite for stg_episodes: HES-like patient-level hospital episodes.

Episodes are aggregated into monthly counts, so a bad code here becomes a wrong count later
without any error: an unknown admission method drops out of the emergency measure, a
malformed diagnosis drops out of the mental-health measure, an admission outside the window
shifts counts between periods. The suite catches those before aggregation.
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
