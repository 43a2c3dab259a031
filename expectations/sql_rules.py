"""Row-level contract rules as SQL, so DuckDB can enforce them on every row of a staged file.

Great Expectations validates pandas frames, which takes minutes for ten million rows, so each
file-table module (``stg_aggregate``, ``stg_episodes``, ``stg_nhse_ae``) also states its
row-level rules as SQL predicates (``SqlRule``). Ingest runs them over every staged row in one
DuckDB scan (``count_breaches``); when any rule is broken it re-reads the file as text and
``diagnose`` finds the offending records, their values and the rule, so the error can name
lines. The GX suites check the same rules a second time on pandas chunks.

Rules are written against the typed column names of the contract, so the same predicate runs
on the staging table and on the typed view of the raw text. A predicate is true for a row that
breaks the rule; NULL counts as "not broken", because missing values have their own rule.

Nothing here imports Great Expectations; the SQL is DuckDB's dialect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from expectations.contract import (
    FORMULA_PREFIXES,
    TEXT_MAX_LENGTH,
    Column,
    Kind,
    TableContract,
    study_window,
)
from expectations.validate import EXAMPLE_LIMIT, CheckFailure, ValidationResult, make_failure

#: Rule names for checks that only exist on the text layer or in SQL.
RULE_TYPE = "column_dtype"
RULE_NOT_NULL = "expect_column_values_to_not_be_null"
RULE_UNIQUE = "expect_compound_columns_to_be_unique"
RULE_TEXT_LENGTH = "text_max_length"
RULE_FORMULA = "no_spreadsheet_formula"
RULE_SITE_AREA = "area_belongs_to_site"
RULE_NOT_FUTURE = "date_not_after_extract"

#: Longest example value quoted in a message.
EXAMPLE_CHARS = 40

_INTEGER_TEXT = r"[+-]?[0-9]{1,18}"


@dataclass(frozen=True)
class SqlRule:
    """One row-level rule: ``bad`` is a SQL predicate, true for a row that breaks it.

    A rule whose ``column`` is a single column must read only that column: rules on a code
    column are judged once per distinct value (see ``count_breaches_by_value``).
    """

    rule: str
    column: str
    bad: str
    expected: str
    show: str = ""  # SQL for the value quoted in messages; default: the column itself
    #: False for rules that only make a refusal clearer: a value breaking them also breaks
    #: the column's pattern or code list, so the scan over every staged row can skip them.
    fast: bool = True


@dataclass(frozen=True)
class RuleContext:
    """What the rules of one file depend on besides the file itself."""

    start: date
    end: date
    extract_date: date | None = None
    source_id: str | None = None
    areas: tuple[str, ...] | None = None  # for a site's file: the only area codes allowed


# --- SQL text helpers ----------------------------------------------------------------------


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def sql_list(values: Iterable[str]) -> str:
    return ", ".join(quote(v) for v in values)


def _regex(pattern: str) -> str:
    """A Python contract pattern as RE2 for regexp_full_match (which anchors by itself)."""
    return pattern.removeprefix("^").removesuffix("$")


def typed_sql(column: Column, raw: str) -> str:
    """SQL turning the text ``raw`` into the column's type: NULL when it is blank or invalid.

    Values are taken as written, without trimming, so ' A021' is not an area code. Dates must
    look like YYYY-MM-DD and be real calendar dates. Whole numbers are plain digits with an
    optional sign: DuckDB's own cast would quietly accept '1.5' (rounded), '1e3', '0x10' and
    '1_000'. These are the cheapest tests that are strict, since they run on every row.
    """
    if column.kind is Kind.STRING:
        return f"NULLIF({raw}, '')"
    if column.kind is Kind.DATE:
        return f"CASE WHEN {raw} LIKE '____-__-__' THEN TRY_CAST({raw} AS DATE) END"
    if column.kind is Kind.INTEGER:
        return (
            f"CASE WHEN regexp_full_match({raw}, {quote(_INTEGER_TEXT)}) "
            f"THEN TRY_CAST({raw} AS BIGINT) END"
        )
    return f"TRY_CAST({raw} AS DOUBLE)"


_TYPE_WORDS = {
    Kind.DATE: "dates written YYYY-MM-DD",
    Kind.INTEGER: "whole numbers",
    Kind.FLOAT: "numbers",
}


def _raw(name: str) -> str:
    return ident(f"_raw_{name}")


def typed_view_sql(raw_table: str, contract: TableContract) -> str:
    """SELECT over an all-text table: ``_record`` (0-based), typed columns and the raw text."""
    typed = ", ".join(
        f"{typed_sql(c, ident(c.name))} AS {ident(c.name)}" for c in contract.columns
    )
    raw = ", ".join(f"{ident(c.name)} AS {_raw(c.name)}" for c in contract.columns)
    return f"SELECT rowid AS _record, {typed}, {raw} FROM {raw_table}"


# --- rule builders -------------------------------------------------------------------------


def typing_rules(contract: TableContract) -> list[SqlRule]:
    """Values that are not of the column's type, and missing required values (text layer)."""
    rules = []
    for c in contract.columns:
        name, raw = ident(c.name), _raw(c.name)
        if c.kind is not Kind.STRING:
            rules.append(SqlRule(
                RULE_TYPE, c.name,
                f"{raw} IS NOT NULL AND {raw} <> '' AND {name} IS NULL",
                f"{c.name} values must be {_TYPE_WORDS[c.kind]}",
                show=raw,
            ))
        if not c.nullable:
            rules.append(SqlRule(
                RULE_NOT_NULL, c.name,
                f"({raw} IS NULL OR {raw} = '')",
                f"{c.name} must not be blank",
                show="NULL",
            ))
    return rules


def text_rules(contract: TableContract) -> list[SqlRule]:
    """Length and formula-text rules for every text column.

    Every text column of the contracts also has a pattern or a code list, which rejects the
    same values, so these rules run only when a file is diagnosed (``fast=False``): they make
    the reason plain ("spreadsheet formula text") instead of "does not match the pattern".
    """
    prefixes = sql_list(FORMULA_PREFIXES)
    rules = []
    for c in contract.columns:
        if c.kind is not Kind.STRING:
            continue
        name = ident(c.name)
        rules.append(SqlRule(
            RULE_TEXT_LENGTH, c.name, f"length({name}) > {TEXT_MAX_LENGTH}",
            f"{c.name} must be at most {TEXT_MAX_LENGTH} characters",
            show=f"left({name}, 12) || '... (' || length({name}) || ' characters)'",
            fast=False,
        ))
        rules.append(SqlRule(
            RULE_FORMULA, c.name, f"left({name}, 1) IN ({prefixes})",
            f"{c.name} must not start with {', '.join(FORMULA_PREFIXES)} "
            "(spreadsheet formula text)",
            fast=False,
        ))
    return rules


def pattern_rule(column: str, pattern: str, expected: str) -> SqlRule:
    return SqlRule(
        "expect_column_values_to_match_regex", column,
        f"NOT regexp_full_match({ident(column)}, {quote(_regex(pattern))})", expected,
    )


def set_rule(column: str, values: Iterable[str], expected: str) -> SqlRule:
    return SqlRule(
        "expect_column_values_to_be_in_set", column,
        f"{ident(column)} NOT IN ({sql_list(sorted(values))})", expected,
    )


def range_rule(column: str, expected: str, low: int | None = None, high: int | None = None,
               strict_low: bool = False) -> SqlRule:
    parts = []
    if low is not None:
        parts.append(f"{ident(column)} {'<=' if strict_low else '<'} {low}")
    if high is not None:
        parts.append(f"{ident(column)} > {high}")
    return SqlRule("expect_column_values_to_be_between", column, " OR ".join(parts), expected)


def window_rule(column: str, ctx: RuleContext) -> SqlRule:
    first, after = study_window(ctx.start, ctx.end)
    return SqlRule(
        "expect_column_values_to_be_between", column,
        f"{ident(column)} < DATE '{first}' OR {ident(column)} >= DATE '{after}'",
        f"{column} must lie in the study window {first:%Y-%m} to {ctx.end:%Y-%m} (inclusive)",
    )


def first_of_month_rule(column: str) -> SqlRule:
    return SqlRule(
        "month_is_first_of_month", column, f"day({ident(column)}) <> 1",
        f"{column} must be the first day of a month (monthly data are keyed by it)",
    )


def not_after_extract_rules(columns: Sequence[str], ctx: RuleContext) -> list[SqlRule]:
    """Dates after the extract was taken are impossible (typos, or a swapped day and year)."""
    if ctx.extract_date is None:
        return []
    return [
        SqlRule(
            RULE_NOT_FUTURE, column, f"{ident(column)} > DATE '{ctx.extract_date}'",
            f"{column} must not be after the extract date {ctx.extract_date}",
        )
        for column in columns
    ]


def site_area_rules(ctx: RuleContext) -> list[SqlRule]:
    """A site's extract may only hold that site's member areas."""
    if ctx.areas is None:
        return []
    return [SqlRule(
        RULE_SITE_AREA, "area_code", f"area_code NOT IN ({sql_list(ctx.areas)})",
        f"area_code must be an area of site '{ctx.source_id}' ({', '.join(ctx.areas)}); "
        f"rows for areas outside site '{ctx.source_id}' are not allowed",
    )]


# --- running rules -------------------------------------------------------------------------


def count_breaches(con: Any, relation: str, rules: Sequence[SqlRule],
                   params: Sequence[Any] = ()) -> list[int]:
    """Rows breaking each rule, in one scan of ``relation`` (a table name or subquery)."""
    if not rules:
        return []
    counts = ", ".join(f"count(*) FILTER (WHERE {r.bad})" for r in rules)
    row = con.execute(f"SELECT {counts} FROM {relation}", list(params)).fetchall()[0]
    return [int(n) for n in row]


def _per_value(rule: SqlRule, contract: TableContract) -> bool:
    """Whether a rule can be judged on a column's distinct values instead of on every row."""
    if rule.column not in contract.column_names:
        return False  # a rule over several columns
    column = contract.column(rule.column)
    return column.kind is Kind.STRING and not column.identifier


def count_breaches_by_value(con: Any, relation: str, rules: Sequence[SqlRule],
                            contract: TableContract) -> list[int]:
    """Rows breaking each rule, judging rules on a code column once per distinct value.

    A rule on one text column (a pattern, a code list, the site's areas) gives the same
    verdict for every row holding the same value, so those rules run on the column's distinct
    values with their row counts (one GROUPING SETS scan), and the other rules row by row.
    On ten million episodes this is several times cheaper than a regex on every row.
    Identifier columns (pseudonyms) have as many values as rows, so they stay row by row.
    """
    by_value = [r for r in rules if _per_value(r, contract)]
    by_row = [r for r in rules if not _per_value(r, contract)]
    found = dict(zip(by_row, count_breaches(con, relation, by_row), strict=True))
    if by_value:
        columns = sorted({r.column for r in by_value})
        sets = ", ".join(f"({ident(c)})" for c in columns)
        grouped = ", ".join(f"{ident(c)}, grouping({ident(c)}) AS {ident('_g_' + c)}"
                            for c in columns)
        counts = ", ".join(
            f"coalesce(sum(_n) FILTER (WHERE {ident('_g_' + r.column)} = 0 AND ({r.bad})), 0)"
            for r in by_value
        )
        row = con.execute(
            f"SELECT {counts} FROM (SELECT {grouped}, count(*) AS _n FROM {relation} "
            f"GROUP BY GROUPING SETS ({sets}))"
        ).fetchall()[0]
        found.update(zip(by_value, (int(n) for n in row), strict=True))
    return [found[r] for r in rules]


def count_duplicates(con: Any, relation: str, key: Sequence[str],
                     params: Sequence[Any] = ()) -> int:
    """Rows that share their key with another row of ``relation``."""
    if not key:
        return 0
    cols = ", ".join(ident(k) for k in key)
    (n,) = con.execute(
        f"SELECT coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM {relation} "
        f"GROUP BY {cols} HAVING count(*) > 1)",
        list(params),
    ).fetchall()[0]
    return int(n)


def _shown(rule: SqlRule, contract: TableContract) -> str:
    if rule.show:
        return rule.show
    column = contract.column(rule.column) if rule.column in contract.column_names else None
    name = ident(rule.column)
    if column is not None and column.identifier:
        return f"left({name}, 3) || '... (' || length({name}) || ' characters)'"
    return name


def diagnose(con: Any, raw_table: str, contract: TableContract,
             rules: Sequence[SqlRule]) -> list[CheckFailure]:
    """Every broken rule in an all-text table, with counts, example values and 0-based records.

    ``raw_table`` holds the file's columns as text in file order; its rowid is the record.
    """
    typed = f"({typed_view_sql(raw_table, contract)})"
    every = [*typing_rules(contract), *rules]
    failures = []
    for rule, n in zip(every, count_breaches(con, typed, every), strict=True):
        if not n:
            continue
        found = con.execute(
            f"SELECT _record, left(CAST({_shown(rule, contract)} AS VARCHAR), {EXAMPLE_CHARS}) "
            f"FROM {typed} WHERE {rule.bad} ORDER BY _record LIMIT {EXAMPLE_LIMIT}"
        ).fetchall()
        failures.append(make_failure(
            rule.rule, rule.column, rule.expected, unexpected_count=n,
            examples=[value for _, value in found], rows=[record for record, _ in found],
        ))
    failures.extend(_diagnose_duplicates(con, typed, contract))
    return failures


def _diagnose_duplicates(con: Any, typed: str, contract: TableContract) -> list[CheckFailure]:
    if not contract.key:
        return []
    key = list(contract.key)
    cols = ", ".join(ident(k) for k in key)
    total = count_duplicates(con, typed, key)
    if not total:
        return []
    groups = con.execute(
        f"SELECT {cols}, list(_record ORDER BY _record) FROM {typed} GROUP BY {cols} "
        f"HAVING count(*) > 1 ORDER BY min(_record) LIMIT {EXAMPLE_LIMIT}"
    ).fetchall()
    examples = [
        {k: (v.isoformat() if isinstance(v, date) else v) for k, v in zip(key, g, strict=False)}
        for g in groups
    ]
    records = sorted(r for g in groups for r in g[-1][:2])[:EXAMPLE_LIMIT]
    return [make_failure(
        RULE_UNIQUE, ", ".join(key),
        f"({', '.join(key)}) must be unique: one row per key", unexpected_count=total,
        examples=examples, rows=records,
    )]


def result(contract: TableContract, rules: Sequence[SqlRule],
           failures: list[CheckFailure]) -> ValidationResult:
    """The SQL checks of one file as a storable ValidationResult (suite ``<table>[sql]``)."""
    evaluated = len(typing_rules(contract)) + len(rules) + (1 if contract.key else 0)
    return ValidationResult(f"{contract.name}[sql]", not failures, evaluated, failures)
