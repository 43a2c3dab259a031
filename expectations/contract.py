"""The data contract for the staging tables and the analysis panel, as plain constants.

Column names, code lists and patterns live here once so that the validation suites, the
transforms and the tests all agree on them. Nothing in this module imports Great Expectations,
so it is cheap to import from anywhere in the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

import polars as pl

# --- identifiers and codes -----------------------------------------------------------------

#: Area codes: one upper-case letter then 2-8 upper-case letters or digits (e.g. "A004").
AREA_CODE_PATTERN = r"^[A-Z][A-Z0-9]{2,8}$"

#: Patient pseudonyms: exactly 16 upper-case hexadecimal characters.
PATIENT_ID_PATTERN = r"^[0-9A-F]{16}$"

#: ICD-10 codes as HES records them, with or without the dot: "J18", "J189", "J18.9", "R69X".
ICD10_PATTERN = r"^[A-Z][0-9]{2}(?:\.?[0-9X]{1,2})?$"

#: Measures carried by the aggregate monthly counts.
MEASURES: tuple[str, ...] = (
    "emergency_admissions",
    "ae_attendances",
    "bed_days",
    "mh_emergency_admissions",
)

#: HES admission method (ADMIMETH) codes, grouped as HES groups them.
ELECTIVE_ADMIMETH = frozenset({"11", "12", "13"})
EMERGENCY_ADMIMETH = frozenset({"21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28"})
MATERNITY_ADMIMETH = frozenset({"31", "32"})
OTHER_ADMIMETH = frozenset({"81", "82", "83"})
UNKNOWN_ADMIMETH = frozenset({"99"})
ADMIMETH_CODES = (
    ELECTIVE_ADMIMETH | EMERGENCY_ADMIMETH | MATERNITY_ADMIMETH | OTHER_ADMIMETH | UNKNOWN_ADMIMETH
)

#: HES sex codes: 0 not known, 1 male, 2 female, 9 not specified.
SEX_CODES = frozenset({"0", "1", "2", "9"})

AGE_MIN = 0
AGE_MAX = 120

#: Largest plausible population of one area; larger values signal a units or join error.
POPULATION_MAX = 5_000_000

#: Exclusive upper bound of a rate per 1,000 population (a rate of 10,000 would be 10 per head).
RATE_PER_1000_MAX = 10_000

#: A panel count that changes by more than this factor from one month to the next is implausible
#: (a lost or doubled extract, a units error) once the larger of the two months has at least
#: PANEL_JUMP_MIN_COUNT events; below that, small-number noise makes large ratios ordinary.
PANEL_JUMP_FACTOR = 3.0
PANEL_JUMP_MIN_COUNT = 50

#: An area's population changes slowly; a month-on-month change by more than this factor is a
#: join or units error, not demography.
POPULATION_JUMP_FACTOR = 1.5

#: Longest text any contract column may hold. Every code in the contracts is far shorter, so a
#: longer value is a shifted column, pasted free text or an attack, never data.
TEXT_MAX_LENGTH = 64

#: First characters that make a spreadsheet treat a cell as a formula (CSV injection).
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@")

#: NHS ODS organisation codes as NHS England's A&E statistics carry them: trusts ("RF4"),
#: their sites ("NLO12") and independent or GP-led units ("Y02572").
ORG_CODE_PATTERN = r"^[A-Z0-9]{3,6}$"

#: A&E department types: 1 major (consultant-led, 24 hour), 2 single specialty, "other" minor
#: units (walk-in centres, urgent treatment centres).
AE_TYPES: tuple[str, ...] = ("1", "2", "other")

#: The counts NHS England publishes per organisation, month and department type.
AE_MEASURES: tuple[str, ...] = ("attendances", "breaches", "admissions")


def provider_outcome(measure: str, ae_type: str) -> str:
    """Outcome id in provider_month_panel, e.g. ('attendances', '1') -> 'ae_attendances_type1'."""
    suffix = "other" if ae_type == "other" else f"type{ae_type}"
    return f"ae_{measure}_{suffix}"


#: Outcomes of provider_month_panel: one per A&E measure and department type.
PROVIDER_OUTCOMES: tuple[str, ...] = tuple(
    provider_outcome(m, t) for m in AE_MEASURES for t in AE_TYPES
)


# --- table shapes --------------------------------------------------------------------------


class Kind(StrEnum):
    """Logical type of a column, independent of the pandas dtype that carries it."""

    STRING = "string"
    DATE = "date"
    INTEGER = "integer"
    FLOAT = "float"


@dataclass(frozen=True)
class Column:
    """One column of a table contract."""

    name: str
    kind: Kind
    nullable: bool = False
    #: True for person-level identifiers: messages never quote their values in full.
    identifier: bool = False


@dataclass(frozen=True)
class TableContract:
    """Columns and key of one table; the column names are a public contract."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


STG_AGGREGATE = TableContract(
    name="stg_aggregate",
    columns=(
        Column("area_code", Kind.STRING),
        Column("month", Kind.DATE),
        Column("measure", Kind.STRING),
        Column("count", Kind.INTEGER),
        Column("population", Kind.INTEGER),
    ),
    key=("area_code", "month", "measure"),
)

# A patient can have several episodes on one day, so episodes have no unique key.
# primary_diagnosis is the only nullable column: HES leaves it blank for some episodes, and
# is_mental_health_diagnosis treats a blank as "not mental health".
STG_EPISODES = TableContract(
    name="stg_episodes",
    columns=(
        Column("patient_id", Kind.STRING, identifier=True),
        Column("admission_date", Kind.DATE),
        Column("discharge_date", Kind.DATE),
        Column("admission_method", Kind.STRING),
        Column("primary_diagnosis", Kind.STRING, nullable=True),
        Column("age", Kind.INTEGER),
        Column("sex", Kind.STRING),
        Column("area_code", Kind.STRING),
    ),
)

# NHS England's monthly A&E statistics by provider, as published: one row per month,
# organisation and department type.
STG_NHSE_AE = TableContract(
    name="stg_nhse_ae",
    columns=(
        Column("period", Kind.DATE),
        Column("org_code", Kind.STRING),
        Column("type", Kind.STRING),
        Column("attendances", Kind.INTEGER),
        Column("breaches", Kind.INTEGER),
        Column("admissions", Kind.INTEGER),
    ),
    key=("period", "org_code", "type"),
)

AREA_MONTH_PANEL = TableContract(
    name="area_month_panel",
    columns=(
        Column("area_code", Kind.STRING),
        Column("month", Kind.DATE),
        Column("outcome", Kind.STRING),
        Column("count", Kind.INTEGER),
        Column("population", Kind.INTEGER),
        Column("rate_per_1000", Kind.FLOAT),
    ),
    key=("area_code", "month", "outcome"),
)


# Organisations are not areas (they have no resident population), so the national A&E data
# form their own long panel of counts, read by placebo and comparison studies.
PROVIDER_MONTH_PANEL = TableContract(
    name="provider_month_panel",
    columns=(
        Column("org_code", Kind.STRING),
        Column("month", Kind.DATE),
        Column("outcome", Kind.STRING),
        Column("count", Kind.INTEGER),
    ),
    key=("org_code", "month", "outcome"),
)

#: File contracts by the `kind` recorded in provenance.
FILE_CONTRACTS: dict[str, TableContract] = {
    "aggregate": STG_AGGREGATE,
    "episodes": STG_EPISODES,
    "nhse_ae": STG_NHSE_AE,
}


# --- study window --------------------------------------------------------------------------


def month_start(d: date) -> date:
    """First day of the month containing ``d`` (a datetime is reduced to its date)."""
    return date(d.year, d.month, 1)


def next_month_start(d: date) -> date:
    """First day of the month after the one containing ``d``."""
    return date(d.year + 1, 1, 1) if d.month == 12 else date(d.year, d.month + 1, 1)


def study_window(start: date, end: date) -> tuple[date, date]:
    """The study window as a half-open date range ``[first, after)``.

    The protocol states the window in whole months, so ``start`` and ``end`` may be any day of
    the first and last month: the window runs from the first day of ``start``'s month up to,
    but not including, the first day of the month after ``end``'s month. Half-open bounds keep
    episodes admitted late on the last day of the window inside it.
    """
    if month_start(end) < month_start(start):
        raise ValueError(f"study window ends ({end}) before it starts ({start})")
    return month_start(start), next_month_start(end)


def months_in_window(start: date, end: date) -> int:
    """Number of calendar months in the study window, counting both end months."""
    first, _ = study_window(start, end)
    return (end.year - first.year) * 12 + end.month - first.month + 1


# --- polars helpers ------------------------------------------------------------------------


def is_emergency_admission(col: str = "admission_method") -> pl.Expr:
    """True where the admission method is an emergency ADMIMETH code.

    Codes are compared exactly as HES writes them (upper-case, no padding). Null, "99" (not
    known) and anything outside EMERGENCY_ADMIMETH give False, never null, so the result can
    be summed or used as a filter without further null handling.
    """
    return pl.col(col).cast(pl.String).is_in(sorted(EMERGENCY_ADMIMETH)).fill_null(False)


def is_mental_health_diagnosis(col: str = "primary_diagnosis") -> pl.Expr:
    """True where the primary diagnosis is in ICD-10 chapter F (mental and behavioural).

    Chapter F is every code starting with upper-case "F". A null diagnosis gives False, so
    episodes without a recorded diagnosis are counted as not mental health.
    """
    return pl.col(col).cast(pl.String).str.starts_with("F").fill_null(False)


# --- DuckDB twins of the clinical fields ---------------------------------------------------
# Large episode files are aggregated inside DuckDB; these give the same answers as the polars
# expressions above (tests/unit/test_ingest_episodes.py compares them on a case table).


def emergency_admission_sql(col: str = "admission_method") -> str:
    """SQL twin of ``is_emergency_admission``: false, never null, outside the emergency codes."""
    codes = ", ".join(f"'{code}'" for code in sorted(EMERGENCY_ADMIMETH))
    return f"coalesce({col} IN ({codes}), false)"


def mental_health_diagnosis_sql(col: str = "primary_diagnosis") -> str:
    """SQL twin of ``is_mental_health_diagnosis``: ICD-10 chapter F, false when blank."""
    return f"coalesce(starts_with({col}, 'F'), false)"
