from datetime import date

import pytest

from transforms.months import add_months, month_range, months_between, parse_month


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2015-03", date(2015, 3, 1)),
        ("2015-03-01", date(2015, 3, 1)),
        (" 2019-12 ", date(2019, 12, 1)),
    ],
)
def test_parse_month(text, expected):
    assert parse_month(text) == expected


@pytest.mark.parametrize("text", ["2015-13", "2015-3", "2015-03-02", "March 2015", ""])
def test_parse_month_rejects(text):
    with pytest.raises(ValueError, match="expected YYYY-MM"):
        parse_month(text)


def test_add_months_crosses_years():
    assert add_months(date(2015, 11, 1), 3) == date(2016, 2, 1)
    assert add_months(date(2015, 1, 1), -1) == date(2014, 12, 1)
    assert months_between(date(2012, 4, 1), date(2019, 3, 1)) == 83
    assert len(month_range(date(2012, 4, 1), date(2019, 3, 1))) == 84
