"""Data-quality suites for the vanguard evaluation tables, built in code with Great Expectations.

One module per table (``stg_aggregate``, ``stg_episodes``, ``stg_nhse_ae``,
``area_month_panel``, ``provider_month_panel``) builds its suite; ``validate`` runs a suite on
a pandas DataFrame and returns plain results that can be stored in the warehouse. The staging
modules also state their row-level rules as SQL (``sql_rules``), which ingest runs in DuckDB
on every row of a file. ``contract`` holds the column names, codes and patterns. Great
Expectations itself is imported on the first validation, so importing this package is cheap.
"""

from expectations.area_month_panel import validate_panel
from expectations.contract import (
    ADMIMETH_CODES,
    AREA_CODE_PATTERN,
    AREA_MONTH_PANEL,
    EMERGENCY_ADMIMETH,
    ICD10_PATTERN,
    MEASURES,
    PATIENT_ID_PATTERN,
    SEX_CODES,
    STG_AGGREGATE,
    STG_EPISODES,
    STG_NHSE_AE,
    is_emergency_admission,
    is_mental_health_diagnosis,
    months_in_window,
    study_window,
)
from expectations.provider_month_panel import validate_provider_panel
from expectations.stg_aggregate import validate_aggregate
from expectations.stg_episodes import validate_episodes
from expectations.stg_nhse_ae import validate_nhse_ae
from expectations.validate import CheckFailure, ValidationResult, validate_in_chunks

__all__ = [
    "ADMIMETH_CODES",
    "AREA_CODE_PATTERN",
    "AREA_MONTH_PANEL",
    "EMERGENCY_ADMIMETH",
    "ICD10_PATTERN",
    "MEASURES",
    "PATIENT_ID_PATTERN",
    "SEX_CODES",
    "STG_AGGREGATE",
    "STG_EPISODES",
    "STG_NHSE_AE",
    "CheckFailure",
    "ValidationResult",
    "is_emergency_admission",
    "is_mental_health_diagnosis",
    "months_in_window",
    "study_window",
    "validate_aggregate",
    "validate_episodes",
    "validate_in_chunks",
    "validate_nhse_ae",
    "validate_panel",
    "validate_provider_panel",
]
