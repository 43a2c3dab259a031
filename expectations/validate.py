"""Run a Great Expectations suite on a pandas DataFrame and return plain, storable results.

Great Expectations result objects are large, version-specific and awkward to store, so this
module turns them into two small frozen dataclasses: ``CheckFailure`` (one broken rule) and
``ValidationResult`` (one table). Checks that GX has no expectation for (column presence,
column dtypes, first-of-month dates, panel completeness) run here in pandas and report in the
same shape, so callers see one list of failures per table.

Importing GX takes several seconds, so it happens on first use, not at import of this module.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from expectations.contract import Kind, TableContract

if TYPE_CHECKING:
    import great_expectations as gx

# GX reads these when it is first imported; set them before that happens anywhere.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logging.getLogger("great_expectations").setLevel(logging.WARNING)

#: How many bad values and row numbers a failure keeps.
EXAMPLE_LIMIT = 5

#: Rule names of the checks that run in pandas rather than in GX.
RULE_COLUMNS = "expect_table_columns_to_match_set"
RULE_DTYPE = "column_dtype"
RULE_NOT_EVALUATED = "rule_not_evaluated"

ExtraCheck = Callable[[pd.DataFrame], "list[CheckFailure]"]
SuiteFactory = Callable[[pd.DataFrame], "gx.ExpectationSuite"]


def table_expectations(gx_module: Any, contract: TableContract) -> list:
    """Rules every table shares: exactly the contract's columns, at least one row, and no
    nulls in the columns the contract says are required."""
    gxe = gx_module.expectations
    columns = list(contract.column_names)
    return [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=columns,
            exact_match=True,
            description=f"columns must be exactly {', '.join(columns)}",
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, description="the table must not be empty (an empty load is a failure)"
        ),
        *[
            gxe.ExpectColumnValuesToNotBeNull(
                column=c.name, description=f"{c.name} must not be null"
            )
            for c in contract.columns
            if not c.nullable
        ],
    ]


def count_expectation(gx_module: Any) -> Any:
    """Counts of events cannot be negative (aggregate extracts and the panel alike)."""
    return gx_module.expectations.ExpectColumnValuesToBeBetween(
        column="count",
        min_value=0,
        description="count must be >= 0 (a count of events cannot be negative)",
    )


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckFailure:
    """One rule that some rows (or the table as a whole) broke, as plain data.

    ``unexpected_count`` counts the offending rows; it is 0 for rules about the whole table
    (column set, row count) and counts (area, outcome) groups for panel completeness.
    ``rows`` are 0-based row positions in the validated frame, where the rule can name them.
    ``expected`` says what the rule requires; ``message`` is the full sentence for people.
    ``lines`` are 1-based line numbers in the source file, when the failure came from a file
    (ingest fills them in; a CSV record can span lines, so they are not ``rows + 2``).
    """

    rule: str
    column: str | None
    message: str
    unexpected_count: int
    examples: list = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    expected: str = ""
    lines: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "column": self.column,
            "message": self.message,
            "unexpected_count": self.unexpected_count,
            "examples": [_jsonable(v) for v in self.examples],
            "rows": list(self.rows),
            "expected": self.expected,
            "lines": list(self.lines),
        }


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of validating one table: passed or not, and every rule that failed.

    Plain data so it can be logged, asserted on in tests and stored in the warehouse
    (``to_dict`` is JSON-serialisable) without Great Expectations installed at read time.
    """

    suite: str
    success: bool
    evaluated: int
    failures: list[CheckFailure]

    def summary(self) -> str:
        """Multi-line text naming the suite and, per failure, the column and rule."""
        if self.success:
            return f"{self.suite}: passed all {self.evaluated} checks"
        lines = [
            f"{self.suite}: FAILED with {len(self.failures)} failure(s) "
            f"from {self.evaluated} check(s)"
        ]
        lines += [f"  - {f.message}" for f in self.failures]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "success": self.success,
            "evaluated": self.evaluated,
            "failures": [f.to_dict() for f in self.failures],
        }

    def failures_for(
        self, column: str | None = None, rule: str | None = None
    ) -> list[CheckFailure]:
        """Failures matching a column and/or rule (a multi-column failure matches each column)."""
        return [
            f
            for f in self.failures
            if (column is None or (f.column is not None and column in _split_columns(f.column)))
            and (rule is None or f.rule == rule)
        ]


def _split_columns(column: str) -> list[str]:
    return [c.strip() for c in column.split(",")]


def make_failure(
    rule: str,
    column: str | None,
    expected: str,
    *,
    unexpected_count: int = 0,
    examples: Sequence[Any] = (),
    rows: Sequence[int] = (),
    observed: Any = None,
    unit: str = "row",
) -> CheckFailure:
    """Build a CheckFailure with a message in the one house style.

    ``unit`` names what ``unexpected_count`` counts ("row", or e.g. "pair" for group checks).
    """
    examples = [_plain(v) for v in list(examples)[:EXAMPLE_LIMIT]]
    rows = [int(r) for r in list(rows)[:EXAMPLE_LIMIT]]
    return CheckFailure(
        rule=rule,
        column=column,
        message=_message(rule, column, expected, unexpected_count, examples, rows, observed, unit),
        unexpected_count=int(unexpected_count),
        examples=examples,
        rows=rows,
        expected=expected,
    )


def _message(
    rule: str,
    column: str | None,
    expected: str,
    unexpected_count: int,
    examples: list,
    rows: list[int],
    observed: Any = None,
    unit: str = "row",
) -> str:
    if column is None:
        subject = "Table"
    elif "," in column:
        subject = f"Columns ({column})"
    else:
        subject = f"Column '{column}'"
    text = f"{subject} failed {rule}: {expected}"
    if observed is not None:
        text += f"; observed {_fmt(_plain(observed))}"
    if unexpected_count:
        text += f"; {unexpected_count} bad {unit}(s)"
    shown = [v for v in examples if v is not None]
    if shown:
        text += "; first bad values: " + ", ".join(_fmt(v) for v in shown)
    if rows:
        text += "; at rows (0-based): " + ", ".join(str(r) for r in rows)
    return text + "."


def _plain(v: Any) -> Any:
    """Plain Python value: numpy scalars unwrapped, missing values as None, midnight as date."""
    if v is None:
        return None
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, np.datetime64):
        v = pd.Timestamp(v)
    if isinstance(v, np.generic):
        v = v.item()
    if v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, datetime):
        if isinstance(v, pd.Timestamp):
            v = v.to_pydatetime()
        if v.tzinfo is None and (v.hour, v.minute, v.second, v.microsecond) == (0, 0, 0, 0):
            return v.date()
        return v
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return "(" + ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()) + ")"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, date):
        return v.isoformat()
    return repr(v)


def _jsonable(v: Any) -> Any:
    v = _plain(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, date):
        return v.isoformat()
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


# --- the GX context ------------------------------------------------------------------------

_LOCK = threading.RLock()
_DATASOURCE = "vanguard_eval"


def import_gx() -> Any:
    """Import Great Expectations quietly (no analytics, no INFO logs) and return the module."""
    import great_expectations as gx

    _quiet_gx_loggers()
    return gx


def _quiet_gx_loggers() -> None:
    """Raise every GX logger to WARNING: some GX modules set their own logger to INFO."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or logger.level == logging.NOTSET:
            continue
        in_gx = name == "great_expectations" or name.startswith("great_expectations.")
        if in_gx and logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


@functools.lru_cache(maxsize=1)
def _context() -> Any:
    """One ephemeral GX context per process: building it is slow, and nothing is persisted."""
    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.data_sources.add_pandas(_DATASOURCE)
    _quiet_gx_loggers()
    return context


def warm_up() -> None:
    """Import Great Expectations and build its context now.

    That takes seconds; ingest calls this before it takes the warehouse's write lock, so
    other processes are not kept waiting while a library loads.
    """
    _context()


@functools.cache
def _batch_definition(table: str) -> Any:
    """A whole-dataframe batch definition per table, created once and reused."""
    datasource = _context().data_sources.get(_DATASOURCE)
    asset = datasource.add_dataframe_asset(name=table)
    return asset.add_batch_definition_whole_dataframe(f"{table}_whole")


def _run_gx(df: pd.DataFrame, table: str, suite: gx.ExpectationSuite) -> Any:
    """Validate ``df`` against ``suite``; the suite is not registered, so names never clash.

    The pandas execution engine caches the last batch it loaded; that cache is emptied
    afterwards so a validated frame is not kept alive until the next validation.
    """
    with _LOCK:
        batch_definition = _batch_definition(table)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        try:
            return batch.validate(
                suite,
                result_format={
                    "result_format": "SUMMARY",
                    "partial_unexpected_count": EXAMPLE_LIMIT,
                },
            )
        finally:
            try:
                engine = batch_definition.data_asset.datasource.get_execution_engine()
                engine.batch_manager.batch_data_cache.pop(batch.id, None)
                engine.batch_manager.reset_batch_cache()
            except AttributeError:  # internal layout changed; only memory is at stake
                pass


# --- pandas-side checks --------------------------------------------------------------------


def check_columns(df: pd.DataFrame, contract: TableContract) -> list[CheckFailure]:
    """One failure per missing or unexpected column (order does not matter)."""
    expected = list(contract.column_names)
    present = [str(c) for c in df.columns]
    failures = []
    for name in expected:
        if name not in present:
            failures.append(
                make_failure(
                    RULE_COLUMNS,
                    name,
                    f"column '{name}' is missing; {contract.name} needs exactly "
                    f"{', '.join(expected)}",
                )
            )
    for name in present:
        if name not in expected:
            failures.append(
                make_failure(
                    RULE_COLUMNS,
                    name,
                    f"column '{name}' is not part of {contract.name}; expected exactly "
                    f"{', '.join(expected)}",
                )
            )
    duplicated = sorted({c for c in present if present.count(c) > 1})
    for name in duplicated:
        failures.append(make_failure(RULE_COLUMNS, name, f"column '{name}' appears more than once"))
    return failures


def _is_naive_datetime64(s: pd.Series) -> bool:
    return pd.api.types.is_datetime64_dtype(s.dtype) and not isinstance(s.dtype, pd.DatetimeTZDtype)


def prepare(df: pd.DataFrame, contract: TableContract) -> tuple[pd.DataFrame, list[CheckFailure]]:
    """Check each column's dtype against its Kind and normalise what GX needs normalised.

    Date columns may arrive as datetime64, pyarrow dates or Python ``date`` objects; they are
    converted to datetime64 so one set of Timestamp bounds works for all of them. The index is
    reset so GX's row indexes are row positions. Both are cheap: pandas copies lazily.
    """
    failures = []
    index = df.index
    positional = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
    out = df if positional else df.reset_index(drop=True)
    converted: dict[str, pd.Series] = {}
    for col in contract.columns:
        s = out[col.name]
        problem = _dtype_problem(s, col.kind)
        if problem is None and col.kind is Kind.DATE and not _is_naive_datetime64(s):
            try:
                s = pd.to_datetime(s)
            except (TypeError, ValueError) as exc:
                problem = f"cannot be read as dates ({exc})"
            else:
                if not _is_naive_datetime64(s):
                    problem = "holds time-zone aware datetimes; expected plain dates"
                else:
                    converted[col.name] = s
        if problem is not None:
            failures.append(
                make_failure(
                    RULE_DTYPE, col.name, f"expected {col.kind.value} values, but {problem}"
                )
            )
    if converted:
        out = out.assign(**converted)
    return out, failures


def _dtype_problem(s: pd.Series, kind: Kind) -> str | None:
    dtype = s.dtype
    types = pd.api.types
    if kind is Kind.STRING:
        if isinstance(dtype, pd.StringDtype):
            return None
        if types.is_object_dtype(dtype):
            inferred = types.infer_dtype(s, skipna=True)
            return None if inferred in ("string", "empty") else f"object column holds {inferred}"
        if isinstance(dtype, pd.ArrowDtype) and types.is_string_dtype(dtype):
            return None
        return f"dtype is {dtype}"
    if kind is Kind.DATE:
        if types.is_datetime64_any_dtype(dtype):
            return None
        if types.is_object_dtype(dtype):
            inferred = types.infer_dtype(s, skipna=True)
            if inferred in ("date", "datetime", "datetime64", "empty"):
                return None
            return f"object column holds {inferred}"
        return f"dtype is {dtype}"
    if kind is Kind.INTEGER:
        if types.is_integer_dtype(dtype) and not types.is_bool_dtype(dtype):
            return None
        if types.is_float_dtype(dtype):
            # numpy has no integer NaN: one null turns an integer column into float64. Whole
            # numbers are accepted so the nulls are reported once, by the not-null rule.
            values = s.dropna()
            fractional = values[values != values.round()]
            if fractional.empty:
                return None
            return f"dtype is {dtype} with non-whole values such as {fractional.iloc[0]!r}"
        return f"dtype is {dtype}"
    if kind is Kind.FLOAT:
        if types.is_numeric_dtype(dtype) and not types.is_bool_dtype(dtype):
            return None
        return f"dtype is {dtype}"
    raise ValueError(f"unknown column kind {kind!r}")


def check_first_of_month(column: str) -> ExtraCheck:
    """A check that every (non-null) date in ``column`` is midnight on the 1st of a month."""

    def check(df: pd.DataFrame) -> list[CheckFailure]:
        s = df[column]
        if not _is_naive_datetime64(s):
            return []  # already reported as a dtype failure
        bad = s.notna() & (s != s.dt.to_period("M").dt.to_timestamp())
        if not bad.any():
            return []
        positions = np.flatnonzero(bad.to_numpy())
        return [
            make_failure(
                "month_is_first_of_month",
                column,
                f"{column} must be the first day of a month (monthly data are keyed by it)",
                unexpected_count=len(positions),
                examples=s.iloc[positions[:EXAMPLE_LIMIT]].tolist(),
                rows=positions[:EXAMPLE_LIMIT].tolist(),
            )
        ]

    return check


# --- GX results to failures ----------------------------------------------------------------


def _exception_message(r: Any) -> str | None:
    info = r.exception_info or {}
    if "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    messages = [
        v.get("exception_message")
        for v in info.values()
        if isinstance(v, dict) and v.get("raised_exception")
    ]
    return "; ".join(dict.fromkeys(m for m in messages if m)) or None


def _failure_column(kwargs: dict[str, Any]) -> str | None:
    if "column" in kwargs:
        return kwargs["column"]
    if "column_list" in kwargs:
        return ", ".join(kwargs["column_list"])
    if "column_A" in kwargs:
        return f"{kwargs['column_A']}, {kwargs['column_B']}"
    return None


#: Rules whose verdict does not depend on the values having the right type.
_DTYPE_INDEPENDENT_RULES = frozenset(
    {"expect_column_values_to_not_be_null", "expect_compound_columns_to_be_unique"}
)


def _gx_failures(gx_result: Any, skip_columns: set[str]) -> list[CheckFailure]:
    """Failed GX expectations as CheckFailures.

    Failures of value rules on a column that already failed its dtype check are dropped:
    comparing strings with dates or numbers gives errors or arbitrary verdicts, not findings.
    """
    failures = []
    for r in gx_result.results:
        if r.success:
            continue
        config = r.expectation_config
        rule = config.type
        column = _failure_column(config.kwargs)
        expected = config.description or rule
        if (
            rule not in _DTYPE_INDEPENDENT_RULES
            and column is not None
            and set(_split_columns(column)) & skip_columns
        ):
            continue  # values of the wrong type: the dtype failure says what to fix first
        error = _exception_message(r)
        if error is not None:
            failures.append(
                make_failure(RULE_NOT_EVALUATED, column, f"{rule} could not be evaluated: {error}")
            )
            continue
        result = r.result or {}
        failures.append(
            make_failure(
                rule,
                column,
                expected,
                unexpected_count=result.get("unexpected_count") or 0,
                examples=result.get("partial_unexpected_list") or [],
                rows=result.get("partial_unexpected_index_list") or [],
                observed=result.get("observed_value"),
            )
        )
    return failures


# --- entry points --------------------------------------------------------------------------


def run_suite(
    df: pd.DataFrame,
    contract: TableContract,
    suite_factory: SuiteFactory,
    extra_checks: Sequence[ExtraCheck] = (),
) -> ValidationResult:
    """Validate one frame: column set, dtypes, extra pandas checks, then the GX suite.

    A frame whose columns do not match the contract is not passed to GX at all: every rule
    would fail or raise, and the missing/unexpected columns are the one thing to fix.
    ``suite_factory`` receives the prepared frame, so suites may depend on its contents
    (the panel's expected row count does).
    """
    column_failures = check_columns(df, contract)
    if column_failures:
        return ValidationResult(contract.name, False, 1, column_failures)

    prepared, failures = prepare(df, contract)
    evaluated = len(contract.columns)
    for check in extra_checks:
        failures.extend(check(prepared))
        evaluated += 1

    suite = suite_factory(prepared)
    gx_result = _run_gx(prepared, contract.name, suite)
    bad_dtype = {f.column for f in failures if f.rule == RULE_DTYPE and f.column}
    failures.extend(_gx_failures(gx_result, bad_dtype))
    evaluated += len(gx_result.results)

    return ValidationResult(contract.name, not failures, evaluated, failures)


def validate_in_chunks(
    frames: Iterable[pd.DataFrame],
    validator: Callable[[pd.DataFrame], ValidationResult],
) -> ValidationResult:
    """Validate a table chunk by chunk and merge the results, keeping memory bounded.

    ``validator`` is one of the ``validate_*`` functions with its parameters bound, e.g.
    ``functools.partial(validate_aggregate, start=..., end=...)``. Per rule and column the
    bad-row counts are summed and the first examples kept; row numbers are positions in the
    concatenated table. ``evaluated`` is the number of checks per chunk.

    Rules that compare rows with each other only see one chunk at a time: duplicates split
    across chunks are not found, and whole-table rules (row counts, panel completeness) are
    judged per chunk, so do not use this for the panel. Empty chunks are skipped unless every
    chunk is empty, in which case the table is reported as empty.
    """
    merged: dict[tuple[str, str | None, str], CheckFailure] = {}
    suite: str | None = None
    evaluated = 0
    offset = 0
    seen_rows = False
    last_empty: pd.DataFrame | None = None
    for frame in frames:
        if len(frame) == 0:
            last_empty = frame
            continue
        seen_rows = True
        result = validator(frame)
        suite = suite or result.suite
        evaluated = max(evaluated, result.evaluated)
        for f in result.failures:
            _merge_failure(merged, f, offset)
        offset += len(frame)
    if not seen_rows:
        if last_empty is None:
            raise ValueError("validate_in_chunks needs at least one frame")
        return validator(last_empty)
    failures = list(merged.values())
    return ValidationResult(suite or "", not failures, evaluated, failures)


def _merge_failure(
    merged: dict[tuple[str, str | None, str], CheckFailure], f: CheckFailure, offset: int
) -> None:
    rows = [r + offset for r in f.rows]
    key = (f.rule, f.column, f.expected if f.unexpected_count else f.message)
    if key not in merged:
        merged[key] = replace(f, rows=rows, message=_remessage(f, f.examples, rows, None))
        return
    old = merged[key]
    count = old.unexpected_count + f.unexpected_count
    examples = (old.examples + f.examples)[:EXAMPLE_LIMIT]
    rows = (old.rows + rows)[:EXAMPLE_LIMIT]
    merged[key] = replace(
        old,
        unexpected_count=count,
        examples=examples,
        rows=rows,
        message=_remessage(old, examples, rows, count),
    )


def _remessage(f: CheckFailure, examples: list, rows: list[int], count: int | None) -> str:
    if not f.unexpected_count:
        return f.message  # table-level failure: nothing to re-count
    return _message(
        f.rule,
        f.column,
        f.expected,
        f.unexpected_count if count is None else count,
        examples,
        rows,
    )
