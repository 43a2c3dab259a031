"""Unit tests for the expectations package: contract helpers, suites and result handling.

Great Expectations is slow to import and each validation costs ~0.1-0.2 s, so each bad frame
carries one defect per rule on its own row, is validated once per module, and the
parametrised tests assert on the failure each defect must produce (rule, column, row, value).
"""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import polars as pl
import pytest

from expectations import (
    EMERGENCY_ADMIMETH,
    MEASURES,
    CheckFailure,
    ValidationResult,
    is_emergency_admission,
    is_mental_health_diagnosis,
    months_in_window,
    study_window,
    validate_aggregate,
    validate_episodes,
    validate_in_chunks,
    validate_panel,
)

START = date(2015, 1, 1)
END = date(2015, 3, 1)
MONTHS = pd.date_range("2015-01-01", periods=3, freq="MS")
AREAS = ["A001", "A004"]


def only_failure(result: ValidationResult, rule: str, column: str) -> CheckFailure:
    """The single failure for (rule, column), with a readable assertion message otherwise."""
    found = [f for f in result.failures if f.rule == rule and f.column == column]
    assert len(found) == 1, f"expected one {rule} failure on {column}; got:\n{result.summary()}"
    failure = found[0]
    assert rule in failure.message
    for name in column.split(", "):
        assert name in failure.message
    return failure


# --- contract helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("21", True),  # emergency: A&E
        ("2A", True),  # emergency: letter-suffixed code
        ("28", True),  # emergency: other means
        ("11", False),  # elective waiting list
        ("31", False),  # maternity
        ("99", False),  # not known
        (None, False),  # missing
        ("2a", False),  # erroneous: lower case is not a HES code
        (" 21", False),  # erroneous: padded
        ("", False),  # edge: empty string
    ],
)
def test_is_emergency_admission(code: str | None, expected: bool) -> None:
    frame = pl.DataFrame({"admission_method": [code]}, schema={"admission_method": pl.String})
    assert frame.select(is_emergency_admission()).item() is expected


def test_is_emergency_admission_covers_every_emergency_code_and_other_column_names() -> None:
    codes = sorted(EMERGENCY_ADMIMETH) + ["12", "81", None]
    out = pl.DataFrame({"m": codes}).select(is_emergency_admission("m")).to_series()
    assert out.to_list() == [True] * len(EMERGENCY_ADMIMETH) + [False, False, False]
    assert out.null_count() == 0


@pytest.mark.parametrize(
    ("diagnosis", "expected"),
    [
        ("F32", True),  # depressive episode, three characters
        ("F329", True),  # four characters
        ("F32.9", True),  # dotted form
        ("J189", False),  # pneumonia
        ("G30", False),  # dementia in Alzheimer's is chapter G, not F
        (None, False),  # missing diagnosis
        ("f32", False),  # erroneous: lower case
        (" F32", False),  # erroneous: padded
        ("", False),  # edge: empty string
    ],
)
def test_is_mental_health_diagnosis(diagnosis: str | None, expected: bool) -> None:
    frame = pl.DataFrame(
        {"primary_diagnosis": [diagnosis]}, schema={"primary_diagnosis": pl.String}
    )
    assert frame.select(is_mental_health_diagnosis()).item() is expected


def test_study_window_is_half_open_over_whole_months() -> None:
    assert study_window(date(2012, 4, 15), date(2019, 3, 1)) == (date(2012, 4, 1), date(2019, 4, 1))
    assert study_window(date(2015, 1, 1), date(2015, 12, 31)) == (
        date(2015, 1, 1),
        date(2016, 1, 1),
    )
    assert months_in_window(date(2012, 4, 1), date(2019, 3, 1)) == 84
    assert months_in_window(START, END) == 3
    with pytest.raises(ValueError, match="before it starts"):
        study_window(date(2015, 2, 1), date(2015, 1, 31))


# --- stg_aggregate -------------------------------------------------------------------------


def good_aggregate() -> pd.DataFrame:
    rows = [
        (area, month, measure, 10 + i, 250_000)
        for area in AREAS
        for month in MONTHS
        for i, measure in enumerate(MEASURES)
    ]
    return pd.DataFrame(rows, columns=["area_code", "month", "measure", "count", "population"])


def bad_aggregate() -> pd.DataFrame:
    df = good_aggregate()  # rows 0-3: A001, 2015-01, the four measures
    df.loc[1, "count"] = -3
    df.loc[2, "measure"] = "elective_admissions"
    df.loc[3, "month"] = pd.Timestamp("2014-12-01")
    df.loc[4, "month"] = pd.Timestamp("2015-02-15")
    df.loc[5, "population"] = None
    df.loc[6, "area_code"] = "a01"
    df.loc[7, "population"] = 6_000_000
    df.loc[8, "count"] = None
    return pd.concat([df, df.iloc[[10]]], ignore_index=True)  # row 24 duplicates row 10


@pytest.fixture(scope="module")
def aggregate_result() -> ValidationResult:
    return validate_aggregate(bad_aggregate(), start=START, end=END)


def test_good_aggregate_passes() -> None:
    result = validate_aggregate(good_aggregate(), start=START, end=END)
    assert result.success, result.summary()
    assert result.failures == []
    assert result.evaluated > 10
    assert "passed" in result.summary()


def test_aggregate_accepts_python_dates_and_any_index() -> None:
    df = good_aggregate()
    df["month"] = df["month"].dt.date
    df.index = df.index + 100
    result = validate_aggregate(df, start=START, end=END)
    assert result.success, result.summary()


@pytest.mark.parametrize(
    ("rule", "column", "rows", "example"),
    [
        ("expect_column_values_to_be_between", "count", [1], -3),
        ("expect_column_values_to_not_be_null", "count", [8], None),
        ("expect_column_values_to_not_be_null", "population", [5], None),
        ("expect_column_values_to_be_between", "population", [7], 6_000_000),
        ("expect_column_values_to_be_in_set", "measure", [2], "elective_admissions"),
        ("expect_column_values_to_be_between", "month", [3], date(2014, 12, 1)),
        ("month_is_first_of_month", "month", [4], date(2015, 2, 15)),
        ("expect_column_values_to_match_regex", "area_code", [6], "a01"),
        ("expect_compound_columns_to_be_unique", "area_code, month, measure", [10, 24], None),
    ],
)
def test_bad_aggregate_reports_rule_column_and_rows(
    aggregate_result: ValidationResult, rule: str, column: str, rows: list[int], example: object
) -> None:
    failure = only_failure(aggregate_result, rule, column)
    assert failure.unexpected_count == len(rows)
    assert failure.rows == rows
    if example is not None:
        assert failure.examples == [example]
        assert str(example) in failure.message
    assert "at rows (0-based): " + ", ".join(map(str, rows)) in failure.message


def test_bad_aggregate_fails_nothing_else(aggregate_result: ValidationResult) -> None:
    assert not aggregate_result.success
    assert len(aggregate_result.failures) == 9, aggregate_result.summary()


def test_duplicate_key_examples_name_the_key(aggregate_result: ValidationResult) -> None:
    failure = only_failure(
        aggregate_result, "expect_compound_columns_to_be_unique", "area_code, month, measure"
    )
    assert failure.examples[0] == {
        "area_code": "A001",
        "month": date(2015, 3, 1),
        "measure": "bed_days",
    }


def test_summary_names_suite_columns_and_rules(aggregate_result: ValidationResult) -> None:
    text = aggregate_result.summary()
    assert text.splitlines()[0].startswith("stg_aggregate: FAILED with 9 failure(s)")
    assert len(text.splitlines()) == 1 + len(aggregate_result.failures)
    for failure in aggregate_result.failures:
        assert failure.rule in text
        assert f"'{failure.column}'" in text or f"({failure.column})" in text


def test_to_dict_is_json_serialisable(aggregate_result: ValidationResult) -> None:
    data = json.loads(json.dumps(aggregate_result.to_dict()))
    assert data["suite"] == "stg_aggregate"
    assert data["success"] is False
    assert data["evaluated"] == aggregate_result.evaluated
    by_rule = {(f["rule"], f["column"]): f for f in data["failures"]}
    assert by_rule[("expect_column_values_to_be_between", "month")]["examples"] == ["2014-12-01"]
    assert by_rule[("expect_column_values_to_be_between", "count")]["unexpected_count"] == 1


def test_missing_column_is_reported_without_running_gx() -> None:
    df = good_aggregate().drop(columns="population")
    result = validate_aggregate(df, start=START, end=END)
    assert not result.success
    failure = only_failure(result, "expect_table_columns_to_match_set", "population")
    assert "missing" in failure.message
    assert result.evaluated == 1


def test_extra_column_is_reported() -> None:
    df = good_aggregate().assign(rate=1.0)
    result = validate_aggregate(df, start=START, end=END)
    assert not result.success
    failure = only_failure(result, "expect_table_columns_to_match_set", "rate")
    assert "not part of stg_aggregate" in failure.message
    assert len(result.failures) == 1


def test_wrong_dtype_is_reported_instead_of_value_failures() -> None:
    df = good_aggregate()
    df["count"] = df["count"].astype(str)
    result = validate_aggregate(df, start=START, end=END)
    failure = only_failure(result, "column_dtype", "count")
    assert "expected integer" in failure.message
    assert [f.column for f in result.failures] == ["count"], result.summary()


def test_empty_aggregate_fails() -> None:
    result = validate_aggregate(good_aggregate().iloc[:0], start=START, end=END)
    assert not result.success
    assert [f.rule for f in result.failures] == ["expect_table_row_count_to_be_between"]
    assert result.failures[0].column is None


# --- stg_episodes --------------------------------------------------------------------------


def good_episodes() -> pd.DataFrame:
    """Valid edge cases: window ends, same-day discharge, null diagnosis, age 0 and 120."""
    return pd.DataFrame(
        {
            "patient_id": ["0123456789ABCDEF", "FEDCBA9876543210", "00000000000000AA"] * 2,
            "admission_date": [
                date(2015, 1, 1),
                date(2015, 3, 31),
                date(2015, 2, 10),
                date(2015, 2, 11),
                date(2015, 2, 12),
                date(2015, 2, 13),
            ],
            "discharge_date": [
                date(2015, 1, 1),
                date(2015, 4, 3),
                date(2015, 2, 12),
                date(2015, 2, 11),
                date(2015, 2, 20),
                date(2015, 2, 13),
            ],
            "admission_method": ["21", "2A", "11", "99", "31", "81"],
            "primary_diagnosis": ["J189", "J18.9", "F32", None, "R69X", "O80"],
            "age": [0, 120, 45, 30, 29, 80],
            "sex": ["1", "2", "9", "0", "2", "1"],
            "area_code": ["A004", "A004", "B12345678", "A004", "A001", "A001"],
        }
    )


def bad_episodes() -> pd.DataFrame:
    """One defect per row from row 1 on; date columns as datetime64 this time."""
    n = 10
    df = pd.DataFrame(
        {
            "patient_id": ["0123456789ABCDEF"] * n,
            "admission_date": pd.to_datetime(["2015-02-01"] * n),
            "discharge_date": pd.to_datetime(["2015-02-03"] * n),
            "admission_method": ["21"] * n,
            "primary_diagnosis": ["J189"] * n,
            "age": [40] * n,
            "sex": ["1"] * n,
            "area_code": ["A004"] * n,
        }
    )
    df.loc[1, "patient_id"] = "0123456789abcdef"
    df.loc[2, "primary_diagnosis"] = "J1"
    df.loc[3, "discharge_date"] = pd.Timestamp("2015-01-30")
    df.loc[4, "admission_method"] = "2E"
    df.loc[5, "age"] = 121
    df.loc[6, "sex"] = "3"
    df.loc[7, ["admission_date", "discharge_date"]] = pd.Timestamp("2014-12-31")
    df.loc[8, "discharge_date"] = pd.NaT
    df.loc[9, "area_code"] = "1AB"
    return df


EPISODE_DEFECTS = [
    ("expect_column_values_to_match_regex", "patient_id", 1, "0123456789abcdef"),
    ("expect_column_values_to_match_regex", "primary_diagnosis", 2, "J1"),
    (
        "expect_column_pair_values_a_to_be_greater_than_b",
        "discharge_date, admission_date",
        3,
        (date(2015, 1, 30), date(2015, 2, 1)),
    ),
    ("expect_column_values_to_be_in_set", "admission_method", 4, "2E"),
    ("expect_column_values_to_be_between", "age", 5, 121),
    ("expect_column_values_to_be_in_set", "sex", 6, "3"),
    ("expect_column_values_to_be_between", "admission_date", 7, date(2014, 12, 31)),
    ("expect_column_values_to_not_be_null", "discharge_date", 8, None),
    ("expect_column_values_to_match_regex", "area_code", 9, "1AB"),
]


@pytest.fixture(scope="module")
def episodes_result() -> ValidationResult:
    return validate_episodes(bad_episodes(), start=START, end=END)


def test_good_episodes_pass() -> None:
    result = validate_episodes(good_episodes(), start=START, end=END)
    assert result.success, result.summary()


@pytest.mark.parametrize(("rule", "column", "row", "example"), EPISODE_DEFECTS)
def test_bad_episodes_report_rule_column_and_row(
    episodes_result: ValidationResult, rule: str, column: str, row: int, example: object
) -> None:
    failure = only_failure(episodes_result, rule, column)
    assert failure.unexpected_count == 1
    assert failure.rows == [row]
    if example is not None:
        assert failure.examples == [example]


def test_bad_episodes_fail_nothing_else(episodes_result: ValidationResult) -> None:
    assert len(episodes_result.failures) == len(EPISODE_DEFECTS), episodes_result.summary()


def test_discharge_before_admission_message_is_readable(episodes_result: ValidationResult) -> None:
    failure = only_failure(
        episodes_result,
        "expect_column_pair_values_a_to_be_greater_than_b",
        "discharge_date, admission_date",
    )
    assert "discharge_date must be on or after admission_date" in failure.message
    assert "(2015-01-30, 2015-02-01)" in failure.message


# --- validate_in_chunks --------------------------------------------------------------------


def test_validate_in_chunks_merges_counts_examples_and_row_numbers() -> None:
    bad = bad_episodes()
    chunks = [bad.iloc[:5], bad.iloc[:0], bad.iloc[5:].reset_index(drop=True)]
    calls = []

    def validator(frame: pd.DataFrame) -> ValidationResult:
        calls.append(len(frame))
        return validate_episodes(frame, start=START, end=END)

    merged = validate_in_chunks(chunks, validator)
    assert calls == [5, 5]  # the empty chunk is skipped
    assert merged.suite == "stg_episodes"
    assert not merged.success
    assert len(merged.failures) == len(EPISODE_DEFECTS), merged.summary()
    for rule, column, row, _ in EPISODE_DEFECTS:
        assert only_failure(merged, rule, column).rows == [row]


def test_validate_in_chunks_sums_the_same_failure_across_chunks() -> None:
    def fake(frame: pd.DataFrame) -> ValidationResult:
        failure = CheckFailure(
            rule="expect_column_values_to_be_between",
            column="count",
            message="",
            unexpected_count=2,
            examples=[frame["count"].iloc[0], frame["count"].iloc[1]],
            rows=[0, 1],
            expected="count must be >= 0",
        )
        return ValidationResult("stg_aggregate", False, 7, [failure])

    frames = [pd.DataFrame({"count": [-1, -2, 5]}), pd.DataFrame({"count": [-3, -4]})]
    merged = validate_in_chunks(frames, fake)
    (failure,) = merged.failures
    assert failure.unexpected_count == 4
    assert failure.rows == [0, 1, 3, 4]
    assert failure.examples == [-1, -2, -3, -4]
    assert "4 bad row(s)" in failure.message
    assert "count must be >= 0" in failure.message
    assert merged.evaluated == 7


def test_validate_in_chunks_needs_a_frame() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        validate_in_chunks([], lambda frame: ValidationResult("x", True, 0, []))


# --- area_month_panel ----------------------------------------------------------------------


def good_panel() -> pd.DataFrame:
    rows = [
        (area, month, outcome, 20, 250_000, 20 / 250_000 * 1000)
        for area in AREAS
        for outcome in ["emergency_admissions", "bed_days"]
        for month in MONTHS
    ]
    columns = ["area_code", "month", "outcome", "count", "population", "rate_per_1000"]
    return pd.DataFrame(rows, columns=columns)


def test_good_panel_passes() -> None:
    result = validate_panel(good_panel(), n_months=3)
    assert result.success, result.summary()


def test_panel_with_a_missing_month_fails() -> None:
    panel = good_panel()
    gap = panel[
        (panel["area_code"] == "A004")
        & (panel["outcome"] == "bed_days")
        & (panel["month"] == pd.Timestamp("2015-02-01"))
    ].index
    result = validate_panel(panel.drop(index=gap), n_months=3)
    assert not result.success
    failure = only_failure(result, "panel_has_every_month", "area_code, outcome, month")
    assert failure.unexpected_count == 1
    assert failure.examples == ["A004/bed_days: 2 of 3 months, missing 2015-02-01"]
    assert "1 bad pair(s)" in failure.message
    row_count = [f for f in result.failures if f.rule == "expect_table_row_count_to_equal"]
    assert len(row_count) == 1
    assert "= 12 rows; observed 11" in row_count[0].message


def test_panel_shorter_than_the_window_fails() -> None:
    result = validate_panel(good_panel(), n_months=4)
    failure = only_failure(result, "expect_column_unique_value_count_to_be_between", "month")
    assert "exactly 4 distinct values" in failure.message
    assert "observed 3" in failure.message
    assert result.failures_for(rule="panel_has_every_month")[0].unexpected_count == 4


def test_panel_value_rules() -> None:
    panel = good_panel()
    panel.loc[0, "count"] = -1
    panel.loc[1, "rate_per_1000"] = 10_000.0
    panel.loc[2, "population"] = 0
    panel = pd.concat([panel, panel.iloc[[5]]], ignore_index=True)
    result = validate_panel(panel, n_months=3)
    assert only_failure(result, "expect_column_values_to_be_between", "count").rows == [0]
    assert only_failure(result, "expect_column_values_to_be_between", "rate_per_1000").rows == [1]
    assert only_failure(result, "expect_column_values_to_be_between", "population").rows == [2]
    duplicate = only_failure(
        result, "expect_compound_columns_to_be_unique", "area_code, month, outcome"
    )
    assert duplicate.rows == [5, 12]
