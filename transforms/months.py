"""Calendar months, the panel's unit of time.

Months are carried as `date` objects on the first of the month so they sort, compare and
store in DuckDB as DATE without a custom type.
"""

from __future__ import annotations

import re
from datetime import date

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])(-01)?$")


def parse_month(text: str) -> date:
    """Parse 'YYYY-MM' or 'YYYY-MM-01' into the first day of that month."""
    match = _MONTH.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a month; expected YYYY-MM or YYYY-MM-01")
    return date(int(match.group(1)), int(match.group(2)), 1)


def add_months(month: date, n: int) -> date:
    """The first of the month `n` months after (or before, if negative) `month`."""
    index = month.year * 12 + (month.month - 1) + n
    return date(index // 12, index % 12 + 1, 1)


def months_between(start: date, end: date) -> int:
    """Whole months from `start` to `end` (0 when they are the same month)."""
    return (end.year - start.year) * 12 + (end.month - start.month)


def month_range(start: date, end: date) -> list[date]:
    """Every month from `start` to `end`, both included."""
    return [add_months(start, i) for i in range(months_between(start, end) + 1)]
