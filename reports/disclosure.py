"""Statistical disclosure control for everything the reports publish.

NHS Digital's rules for HES and ECDS outputs: sub-national counts of 1 to 7 are not shown
(`*`); other counts are rounded to the nearest 5; percentages and rates are computed from
the rounded counts; means and other statistics based on 1 to 7 people are not shown. Model
estimates are exempt.

`disclose` applies the rules to a frame; `publish` turns a frame into a page table through
`disclose`, and the templates render tables only through `publish`'s `Table`, so no table
reaches a page without passing here. Plots of count-based series use `disclose` too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

SUPPRESSED = "*"
SMALL_MIN, SMALL_MAX = 1, 7
ROUND_TO = 5


@dataclass(frozen=True)
class Rate:
    """A rate or percentage computed from disclosed counts: numerator / denominator * per.

    The numerator must be a count column. The denominator is either another count column
    (then its rounded value is used) or an exposure such as population-months.
    """

    numerator: str
    denominator: str
    per: float = 100.0
    decimals: int = 1


@dataclass(frozen=True)
class Statistic:
    """A statistic (mean, median, ...) not shown when based on 1 to 7 people (column `n`)."""

    n: str
    decimals: int = 1


def round_count(n: int) -> int | None:
    """One count under the rules: None (shown as `*`) for 1 to 7, else the nearest 5."""
    if n < 0:
        raise ValueError(f"counts cannot be negative, got {n}")
    if SMALL_MIN <= n <= SMALL_MAX:
        return None
    return (n + ROUND_TO // 2) // ROUND_TO * ROUND_TO


def _check_counts(frame: pl.DataFrame, counts: Sequence[str]) -> None:
    for column in counts:
        if column not in frame.columns:
            raise KeyError(f"count column `{column}` is not in the table; columns: "
                           f"{', '.join(frame.columns)}")
        dtype = frame.schema[column]
        if not dtype.is_integer():
            raise TypeError(f"count column `{column}` has type {dtype}; counts must be whole "
                            "numbers (cast before disclosure, never round a rate back)")
        nulls = frame[column].null_count()
        if nulls:
            raise ValueError(f"count column `{column}` has {nulls} missing values; "
                             "disclosure needs whole counts (fill or drop them first)")
        if frame.height and (frame[column].min() or 0) < 0:  # type: ignore[operator]
            raise ValueError(f"count column `{column}` has negative values")


def disclose(
    frame: pl.DataFrame,
    counts: Sequence[str],
    rates: Mapping[str, Rate] | None = None,
    statistics: Mapping[str, Statistic] | None = None,
) -> pl.DataFrame:
    """A copy of `frame` that is safe to publish: counts rounded, or null where 1 to 7;
    each rate (re)computed from the rounded counts, null where its numerator is suppressed;
    each statistic null where its `n` is 1 to 7. Other columns pass unchanged."""
    rates = dict(rates or {})
    statistics = dict(statistics or {})
    _check_counts(frame, counts)
    for name, rate in rates.items():
        if rate.numerator not in counts:
            raise ValueError(f"rate `{name}`: numerator `{rate.numerator}` must be one of the "
                             f"count columns {list(counts)}, so it is computed after rounding")
        if rate.denominator not in frame.columns:
            raise KeyError(f"rate `{name}`: denominator `{rate.denominator}` is not a column")
    for name, stat in statistics.items():
        if stat.n not in frame.columns or name not in frame.columns:
            raise KeyError(f"statistic `{name}` or its count `{stat.n}` is not a column")

    def rounded(column: str) -> pl.Expr:
        raw = pl.col(column)
        return (
            pl.when(raw.is_between(SMALL_MIN, SMALL_MAX))
            .then(None)
            .otherwise((raw + ROUND_TO // 2) // ROUND_TO * ROUND_TO)
            .cast(pl.Int64)
        )

    # Statistics are judged on the raw number of people, before that count is rounded.
    hidden = [
        pl.when(pl.col(stat.n).is_between(SMALL_MIN, SMALL_MAX) | pl.col(stat.n).is_null())
        .then(None)
        .otherwise(pl.col(name))
        .alias(name)
        for name, stat in statistics.items()
    ]
    safe = frame.with_columns(hidden) if hidden else frame.clone()
    safe = safe.with_columns([rounded(c).alias(c) for c in counts])
    computed = []
    for name, rate in rates.items():
        denominator = pl.col(rate.denominator).cast(pl.Float64)
        computed.append(
            pl.when(denominator > 0)
            .then(pl.col(rate.numerator).cast(pl.Float64) / denominator * rate.per)
            .otherwise(None)
            .alias(name)
        )
    return safe.with_columns(computed) if computed else safe


# -- tables for pages -----------------------------------------------------------------

Formatter = Callable[[object], str]


@dataclass(frozen=True)
class Cell:
    text: str
    href: str | None = None


@dataclass(frozen=True)
class Table:
    """A table ready for a page: headers and cells as text, built only by `publish`."""

    headers: list[str]
    rows: list[list[Cell]]
    numeric: list[bool]
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def widths(self) -> list[float]:
        """Column widths in % from the text they hold, so the table can be laid out in
        one pass (fixed layout) rather than by measuring every cell."""
        wanted = []
        for index, header in enumerate(self.headers):
            longest_word = max((len(w) for w in header.split()), default=1)
            longest_cell = max((len(line) for row in self.rows
                                for line in row[index].text.splitlines()), default=0)
            # Numbers never wrap; text wraps beyond a couple of dozen characters.
            cell = longest_cell if self.numeric[index] else min(longest_cell, 26)
            wanted.append(max(longest_word, cell, 3) + 2)
        total = sum(wanted) or 1
        return [round(100 * w / total, 1) for w in wanted]

    def column(self, header: str) -> list[str]:
        """The text of one column, by header (used by tests and checks)."""
        index = self.headers.index(header)
        return [row[index].text for row in self.rows]


def _number(decimals: int) -> Formatter:
    def format_number(value: object) -> str:
        return f"{value:,.{decimals}f}"  # type: ignore[str-format]
    return format_number


def publish(
    frame: pl.DataFrame,
    columns: Mapping[str, str],
    *,
    counts: Sequence[str] = (),
    rates: Mapping[str, Rate] | None = None,
    statistics: Mapping[str, Statistic] | None = None,
    formats: Mapping[str, Formatter] | None = None,
    links: Mapping[str, str] | None = None,
    caption: str = "",
    notes: Sequence[str] = (),
) -> Table:
    """Disclose `frame`, then lay out `columns` ({column: header}) as text cells.

    Counts print with thousands separators, and suppressed values as `*`; rates and
    statistics print with their own decimals; `formats` give other columns' text and
    `links` name a column holding each cell's link target.
    """
    rates = dict(rates or {})
    statistics = dict(statistics or {})
    safe = disclose(frame, counts, rates, statistics)
    protected: dict[str, Formatter] = {c: _number(0) for c in counts}
    protected |= {name: _number(rate.decimals) for name, rate in rates.items()}
    protected |= {name: _number(stat.decimals) for name, stat in statistics.items()}
    formats = dict(formats or {})
    links = dict(links or {})
    rows = []
    for record in safe.iter_rows(named=True):
        row = []
        for column in columns:
            value = record[column]
            if column in protected:
                text = SUPPRESSED if value is None else protected[column](value)
            elif value is None:
                text = ""
            else:
                text = formats[column](value) if column in formats else str(value)
            href = record[links[column]] if column in links else None
            row.append(Cell(text, href))
        rows.append(row)
    numeric = [c in protected or safe.schema[c].is_numeric() for c in columns]
    return Table(list(columns.values()), rows, numeric, caption, list(notes))
