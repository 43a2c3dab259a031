"""Disclosure control: no published count is 1 to 7 or unrounded, whatever the data.

The rules are NHS Digital's for HES and ECDS outputs: sub-national counts of 1 to 7 show
as `*`, other counts round to the nearest 5, rates come from the rounded counts, and
statistics based on 1 to 7 people are not shown.
"""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports.disclosure import SUPPRESSED, Rate, Statistic, disclose, publish, round_count
from reports.pages import activity_table, series_panels

counts = st.integers(min_value=0, max_value=10_000_000)
small_or_any = st.one_of(st.integers(min_value=0, max_value=20), counts)


def is_safe_cell(text: str) -> bool:
    """A published count cell: `*`, or a whole number that is a multiple of 5 and not 1-7."""
    if text == SUPPRESSED:
        return True
    value = int(text.replace(",", ""))
    return value % 5 == 0 and not 1 <= value <= 7


@pytest.mark.parametrize(("raw", "shown"), [
    (0, 0), (1, None), (7, None), (8, 10), (12, 10), (13, 15), (17, 15), (18, 20),
    (1_234_567, 1_234_565),
])
def test_round_count_follows_the_rules(raw, shown):
    assert round_count(raw) == shown


@given(small_or_any)
def test_round_count_is_never_small_and_never_far(raw):
    shown = round_count(raw)
    if 1 <= raw <= 7:
        assert shown is None
    else:
        assert shown is not None and shown % 5 == 0 and abs(shown - raw) <= 2
        assert not 1 <= shown <= 7


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(small_or_any, small_or_any, st.integers(1, 10_000_000)),
                min_size=0, max_size=30))
def test_disclose_rounds_suppresses_and_recomputes_rates(rows):
    frame = pl.DataFrame(rows, schema={"a": pl.Int64, "b": pl.Int64, "exposure": pl.Int64},
                         orient="row")
    before = frame.clone()
    safe = disclose(frame, ["a", "b"],
                    rates={"a_rate": Rate("a", "exposure", per=1000.0),
                           "share": Rate("a", "b", per=100.0)})
    assert frame.equals(before), "the input frame must not change"
    for raw, out in zip(frame.iter_rows(named=True), safe.iter_rows(named=True), strict=True):
        for column in ("a", "b"):
            assert out[column] == round_count(raw[column])
        if out["a"] is None:
            assert out["a_rate"] is None and out["share"] is None
        else:
            assert out["a_rate"] == pytest.approx(out["a"] / raw["exposure"] * 1000.0)
            if out["b"]:
                assert out["share"] == pytest.approx(100.0 * out["a"] / out["b"])
            else:
                assert out["share"] is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(small_or_any, st.floats(0, 100, allow_nan=False)), max_size=30))
def test_statistics_about_one_to_seven_people_are_hidden(rows):
    frame = pl.DataFrame(rows, schema={"n": pl.Int64, "mean_age": pl.Float64}, orient="row")
    safe = disclose(frame, ["n"], statistics={"mean_age": Statistic("n")})
    for raw, out in zip(frame.iter_rows(named=True), safe.iter_rows(named=True), strict=True):
        if 1 <= raw["n"] <= 7:
            assert out["mean_age"] is None
        else:
            assert out["mean_age"] == raw["mean_age"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), small_or_any, small_or_any,
                          st.integers(1, 10**8)), max_size=25))
def test_no_published_count_cell_is_small_or_unrounded(rows):
    frame = pl.DataFrame(rows, schema={"label": pl.String, "before": pl.Int64,
                                       "after": pl.Int64, "exposure": pl.Int64}, orient="row")
    table = publish(frame, {"label": "Label", "before": "Before", "after": "After",
                            "rate": "Rate"},
                    counts=["before", "after"],
                    rates={"rate": Rate("after", "exposure", per=1000.0, decimals=2)})
    for header, column in (("Before", "before"), ("After", "after")):
        for cell, raw in zip(table.column(header), frame[column], strict=True):
            assert is_safe_cell(cell), cell
            assert (cell == SUPPRESSED) == (1 <= raw <= 7)
    for cell, raw in zip(table.column("Rate"), frame.iter_rows(named=True), strict=True):
        shown = round_count(raw["after"])
        expected = SUPPRESSED if shown is None else f"{shown / raw['exposure'] * 1000:,.2f}"
        assert cell == expected


def test_disclose_refuses_what_it_cannot_make_safe():
    frame = pl.DataFrame({"n": [3, 9], "rate": [0.5, 1.5], "missing": [1, None]})
    with pytest.raises(TypeError, match="`rate` has type"):
        disclose(frame, ["rate"])
    with pytest.raises(ValueError, match="`missing` has 1 missing"):
        disclose(frame, ["missing"])
    with pytest.raises(KeyError, match="`nope`"):
        disclose(frame, ["nope"])
    with pytest.raises(ValueError, match="negative"):
        disclose(pl.DataFrame({"n": [-1]}), ["n"])
    with pytest.raises(ValueError, match="numerator `rate` must be one of the count"):
        disclose(frame, ["n"], rates={"r": Rate("rate", "n")})


def _panel(counts_by_month: list[int], months: list[date]) -> pl.DataFrame:
    """A one-outcome panel: site area S1 with the given counts, comparator C1 with 100s."""
    rows = []
    for month, count in zip(months, counts_by_month, strict=True):
        rows.append(("S1", month, "emergency_admissions", count, 50_000))
        rows.append(("C1", month, "emergency_admissions", 100, 60_000))
    return pl.DataFrame(rows, schema={"area_code": pl.String, "month": pl.Date,
                                      "outcome": pl.String, "count": pl.Int64,
                                      "population": pl.Int64}, orient="row")


MONTHS = [date(2015, m, 1) for m in range(1, 13)]
RESULTS = [{"outcome": "emergency_admissions", "outcome_label": "Emergency admissions"}]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=12, max_size=12))
def test_site_tables_and_series_publish_only_disclosed_counts(monthly):
    panel = _panel(monthly, MONTHS)
    table, change = activity_table(panel, RESULTS, ["S1"], date(2015, 7, 1))
    before, after = sum(monthly[:6]), sum(monthly[6:])
    assert table.column("Before go-live") == [
        SUPPRESSED if round_count(before) is None else f"{round_count(before):,}"]
    for header in ("Before go-live", "After go-live"):
        assert all(is_safe_cell(c) for c in table.column(header))
    series = pl.DataFrame({"outcome": "emergency_admissions", "month": MONTHS,
                           "counterfactual_rate": [1.0] * 12})
    (panel_out,) = series_panels(panel, series, RESULTS, ["S1"], ["C1"])
    for raw, rate in zip(monthly, panel_out.observed, strict=True):
        shown = round_count(raw)
        if shown is None:
            assert rate is None, "a month with 1 to 7 events must not be drawn"
        else:
            assert rate == pytest.approx(shown / 50_000 * 1000)
    if round_count(before) and round_count(after) is not None:
        assert change["emergency_admissions"] == pytest.approx(
            100 * ((round_count(after) / 300_000) / (round_count(before) / 300_000) - 1))
