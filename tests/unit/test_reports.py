"""Report building blocks: wording, q-values, balance, claims, charts and escaping."""

from __future__ import annotations

import base64
import math
import xml.etree.ElementTree as ET
from datetime import date

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports import plots
from reports.inputs import HSJ_SOURCE, claims_from_reference
from reports.pages import event_study_figures, page_name, published_on_our_scale
from reports.statistics import benjamini_hochberg, standardised_differences
from reports.svg import Canvas, nice_ticks, tick_label, wrap
from reports.wording import (
    claim_verdict,
    evidence_rating,
    headline,
    p_text,
    pretrend_sentence,
    signed_pct,
)


def test_headline_reads_as_a_sentence():
    text = headline("Emergency admissions", -4.2, -9.1, 1.2, p_value=0.12)
    assert text == (
        "Emergency admissions were 4% lower (95% CI 9% lower to 1% higher) than in matched "
        "comparison areas; the difference is not statistically significant."
    )
    assert "is statistically significant" in headline("A&E attendances", 5, 2, 8, 0.001)
    assert "0.3% lower" in headline("Bed days", -0.3, -1.0, 0.4, 0.5)


def test_evidence_rating_never_outruns_the_design():
    assert evidence_rating(0.2, 10) == "No clear effect"
    assert evidence_rating(0.001, 1) == "Suggestive (few treated areas)"
    assert evidence_rating(0.001, 8) == "Clear effect"
    assert evidence_rating(0.001, 8, q_value=0.2).startswith("Suggestive (may be chance")
    assert evidence_rating(0.001, 8, q_value=0.01) == "Clear effect"


def test_signed_percentages_and_claim_verdicts():
    assert signed_pct(4.26) == "+4.3%"
    assert signed_pct(-3.0) == "\u22123.0%"
    assert signed_pct(-0.01) == "0.0%"
    assert claim_verdict(15.6, -4.9, -1.6) == "Outside our 95% CI (above it)"
    assert claim_verdict(-2.0, -4.9, -1.6) == "Within our 95% CI"


# -- q-values -------------------------------------------------------------------------


def test_benjamini_hochberg_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216, 0.5, 0.9]
    expected = multipletests(p, method="fdr_bh")[1]
    assert benjamini_hochberg(p) == pytest.approx(list(expected), abs=1e-12)


def test_benjamini_hochberg_by_hand_and_with_gaps():
    # m = 4: q = min over j >= i of p_(j) * 4 / j.
    assert benjamini_hochberg([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.04] * 4)
    assert benjamini_hochberg([0.01, None, float("nan"), 0.5]) == [0.02, None, None, 0.5]
    assert benjamini_hochberg([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([1.2])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_q_values_are_ordered_bounded_and_no_smaller_than_p(p):
    q = benjamini_hochberg(p)
    for pi, qi in zip(p, q, strict=True):
        assert qi is not None and pi - 1e-12 <= qi <= 1.0
    ranked = sorted(zip(p, q, strict=True))
    assert all(a[1] <= b[1] + 1e-12 for a, b in zip(ranked, ranked[1:], strict=False))


# -- balance --------------------------------------------------------------------------


def test_standardised_differences_use_the_pool_spread():
    features = pl.DataFrame({
        "area_code": ["S1", "P1", "P2", "P3", "P4"],
        "imd_score": [30.0, 10.0, 20.0, 30.0, 40.0],
        "pct_aged_65_plus": [None, 15.0, 15.0, 15.0, 15.0],
    })
    smd = standardised_differences(features, ["S1"], ["P3", "P4", "P3"], ["P1", "P2", "P3", "P4"])
    imd = smd.filter(pl.col("covariate") == "imd_score").row(0, named=True)
    sd = math.sqrt(((10 - 25) ** 2 + (20 - 25) ** 2 + (30 - 25) ** 2 + (40 - 25) ** 2) / 3)
    assert imd["smd_before"] == pytest.approx((30 - 25) / sd)
    # A comparator matched twice counts twice, as in the model.
    assert imd["matched_mean"] == pytest.approx((30 + 40 + 30) / 3)
    assert imd["smd_after"] == pytest.approx((30 - 100 / 3) / sd)
    age = smd.filter(pl.col("covariate") == "pct_aged_65_plus").row(0, named=True)
    assert age["smd_before"] is None  # no site value and no spread: not made up


# -- claims ---------------------------------------------------------------------------


def test_claims_match_on_vanguard_number_and_keep_the_sign():
    sites = pl.DataFrame({"site_id": ["a", "b", "c"], "nhse_vanguard_number": [3, 8, None]},
                         schema_overrides={"nhse_vanguard_number": pl.Int32})
    reference = pl.DataFrame({
        "nhse_vanguard_number": ["3", "8", "9"],
        "hsj_pct_change_emerg_adm_rate_1415_to_12m_sep2017": ["15.6", "", "-7.0"],
    })
    claims = claims_from_reference(sites, reference)
    assert claims.to_dicts() == [{"site_id": "a", "outcome": "emergency_admissions",
                                  "claimed_pct_change": 15.6, "source": HSJ_SOURCE}]


def test_shared_reference_claims_are_read(tmp_path):
    from tests.conftest import SHARED_REFERENCE

    path = SHARED_REFERENCE / "vanguard_sites_2015.csv"
    if not path.is_file():
        pytest.skip("shared reference data not available")
    reference = pl.read_csv(path, infer_schema_length=0)
    sites = pl.DataFrame({"site_id": ["south-somerset", "dudley"],
                          "nhse_vanguard_number": [3, 16]})
    claims = claims_from_reference(sites, reference)
    assert dict(zip(claims["site_id"], claims["claimed_pct_change"], strict=True)) == {
        "south-somerset": 15.6, "dudley": 10.8}


# -- charts ---------------------------------------------------------------------------


def _svg(figure: plots.Figure) -> ET.Element:
    assert figure.src.startswith("data:image/svg+xml;base64,")
    return ET.fromstring(base64.b64decode(figure.src.split(",", 1)[1]))


@settings(max_examples=100, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_ticks_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= min(low, high) + 1e-6 and ticks[-1] >= max(low, high) - 1e-6
    assert 2 <= len(ticks) <= 14
    assert ticks == sorted(ticks)


def test_tick_labels_use_the_steps_decimals():
    assert [tick_label(t, [0, 0.25]) for t in (0, 0.25, -0.5)] == ["0.00", "0.25", "\u22120.50"]
    assert tick_label(-0.0, [0, 5], "%") == "0%"


def test_chart_text_is_escaped_and_described():
    canvas = Canvas(100, 50, title="A & <b>")
    canvas.text(1, 1, "<script>alert(1)</script>")
    svg = canvas.to_svg()
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert ET.fromstring(svg).find("{http://www.w3.org/2000/svg}title").text == "A & <b>"


def test_charts_are_valid_svg_with_alt_text():
    months = [date(2014, m, 1) for m in range(1, 13)] + [date(2015, m, 1) for m in range(1, 13)]
    panel = plots.SeriesPanel("Emergency admissions", months, [1.0] * 11 + [None] + [2.0] * 12,
                              [1.0] * 24, [1.5] * 24)
    rows = [plots.Interval("<script>x</script>", -4.0, -9.0, 1.0, "PACS"),
            plots.Interval("Site B", 2.0, 0.5, 3.5, "care-home")]
    figures = [
        plots.observed_vs_counterfactual([panel, panel], date(2015, 1, 1), "Site A"),
        plots.forest(rows, "Emergency admissions", "% change", "emergency admissions"),
        plots.forest(rows, "With published", "% change", "emergency admissions",
                     reference=[plots.Interval("Population-based: 1st-3rd year", -0.5, -3.8,
                                               2.8)],
                     note="Diamonds: published estimates converted to % of a baseline."),
        plots.love_plot([("Log population", 0.4, 0.05), ("IMD", None, None)], "Site A"),
        plots.event_study([(-2, 0.1, -0.5, 0.6), (-1, 0.0, -0.4, 0.4), (0, -3.0, -5.0, -1.0)],
                          "Emergency admissions", "Site A"),
    ]
    for figure in figures:
        root = _svg(figure)
        assert root.get("role") == "img"
        assert len(figure.alt) > 40
    forest_svg = base64.b64decode(figures[1].src.split(",", 1)[1]).decode()
    assert "&lt;script&gt;x&lt;/script&gt;" in forest_svg
    assert "0 sites have intervals wholly below zero" in figures[1].alt
    assert "and 1 wholly above zero" in figures[1].alt


def test_page_names_are_safe_file_names():
    assert page_name("south-somerset") == "south-somerset"
    unsafe = page_name("../../etc/passwd")
    assert unsafe.startswith("site-") and "/" not in unsafe and "." not in unsafe


def test_check_messages_are_published_without_data_values():
    from reports.pages import safe_message

    aggregate = "column `count` has 2 values below 0, first at row 5: '-4'; e.g. ['3', \"7\"]"
    assert safe_message("aggregate", aggregate) == (
        "column `count` has 2 values below 0, first at row 5: '\u2026'; e.g. ['\u2026', '\u2026']")
    assert "A1B2C3" not in safe_message("episodes", "bad patient_id 'A1B2C3'")
    assert safe_message("aggregate", None) == ""


def test_pretrend_sentence_is_plain_english():
    assert pretrend_sentence(0.43) == ("Before go-live the site and its comparison areas "
                                       "moved together (test of parallel trends p = 0.43).")
    failed = pretrend_sentence(0.004)
    assert "did not move together" in failed and "p = 0.004" in failed
    assert "could not be run" in pretrend_sentence(None)
    assert "could not be run" in pretrend_sentence(math.nan)
    assert p_text(0.0001) == "p < 0.001"
    assert "did not move together" in pretrend_sentence(0.04, alpha=0.05)
    assert "moved together (" in pretrend_sentence(0.04, alpha=0.01)


def test_wrap_breaks_at_spaces_within_the_limit():
    text = "the quick brown fox jumps over the lazy dog " * 5
    lines = wrap(text, 20)
    assert " ".join(lines) == text.strip()
    assert all(len(line) <= 20 for line in lines) and len(lines) > 5
    assert wrap("a" * 30, 10) == ["a" * 30]
    assert wrap("", 10) == []


def _decoded(figure: plots.Figure) -> str:
    return base64.b64decode(figure.src.split(",", 1)[1]).decode()


def test_event_study_chart_marks_reference_go_live_and_the_pretrend_test():
    points = [(-3, 1.0, -2.0, 4.0), (-2, -0.5, -3.0, 2.0), (-1, 0.0, 0.0, 0.0),
              (0, -4.0, -7.0, -1.0), (1, -6.0, -9.0, -3.0)]
    note = pretrend_sentence(0.43)
    figure = plots.event_study(points, "Emergency admissions", "Site A", note=note)
    svg = _decoded(figure)
    assert "Go-live" in svg and "Reference (0)" in svg
    assert "moved together" in svg  # the note is printed with the chart
    assert '%</text>' in svg  # a % scale
    assert "2 of 2 pre-go-live intervals include zero" in figure.alt
    assert "2 of 2 intervals after go-live lie wholly below zero" in figure.alt
    assert figure.alt.endswith(note)
    # The reference quarter is an open circle without an interval, not an estimate.
    root = _svg(figure)
    rings = [c for c in root.iter("{http://www.w3.org/2000/svg}circle") if c.get("fill") == "#fff"]
    assert len(rings) == 1


def test_event_study_figures_read_the_pretrend_p_and_skip_missing_outcomes():
    table = pl.DataFrame({
        "site_id": ["s"] * 3, "outcome": ["emergency_admissions"] * 3, "e": [-2, -1, 0],
        "estimate": [0.5, 0.0, -5.0], "ci_low": [-2.0, 0.0, -8.0], "ci_high": [3.0, 0.0, -2.0],
        "p_pretrend": [0.012] * 3, "inference": ["placebo_in_space"] * 3,
    })
    results = [{"outcome": "emergency_admissions", "outcome_label": "Emergency admissions"},
               {"outcome": "bed_days", "outcome_label": "Bed days"}]
    figures = event_study_figures(table, results, "Site A")
    assert len(figures) == 1
    assert "did not move together (test of parallel trends p = 0.01)" in figures[0].alt
    assert "comparable areas where nothing happened" in figures[0].alt
    old = table.drop("p_pretrend", "inference")  # a warehouse from before the test existed
    assert "could not be run" in event_study_figures(old, results, "Site A")[0].alt


MORCIANO = pl.DataFrame({
    "site_type": ["population-based", "population-based", "care home"],
    "window": ["1st-3rd year", "3rd year", "1st-3rd year"],
    "outcome": ["emerg_adm_rate_per_1000_month"] * 3,
    "did_estimate": [-0.004, -0.031, -0.042], "ci95_low": [-0.032, -0.062, -0.082],
    "ci95_high": [0.024, -0.001, -0.002], "source": ["Morciano et al. 2020"] * 3,
})


def test_published_estimates_are_converted_to_percent_of_our_baseline():
    results = pl.DataFrame({
        "outcome": ["emergency_admissions"] * 4,
        "model_type": ["PACS", "MCP", "care-home", "care-home"],
        "pre_rate_per_1000": [8.0, 10.0, 7.0, 7.0],
    })
    rows, note = published_on_our_scale(MORCIANO, results, "emergency_admissions")
    by_label = {r.label: r for r in rows}
    overall = by_label["Population-based (PACS, MCP): 1st-3rd year"]
    # -0.004 per 1,000 a month on a baseline of (8 + 10) / 2 = 9 per 1,000 a month.
    assert overall.estimate == pytest.approx(100 * -0.004 / 9)
    assert (overall.low, overall.high) == pytest.approx((100 * -0.032 / 9, 100 * 0.024 / 9))
    care = by_label["Care homes: 1st-3rd year"]
    assert care.estimate == pytest.approx(100 * -0.042 / 7)
    assert "9.00 per 1,000 a month over 2 site(s)" in note
    assert "ignores the baseline's own uncertainty" in note
    # Nothing to convert: an outcome Morciano did not report, or no sites of that kind.
    assert published_on_our_scale(MORCIANO, results, "ae_attendances") == ([], "")
    pacs_only = results.filter(pl.col("model_type") == "PACS")
    rows, _ = published_on_our_scale(MORCIANO, pacs_only, "emergency_admissions")
    assert {r.label.split(":")[0] for r in rows} == {"Population-based (PACS, MCP)"}


def test_bed_days_are_rescaled_from_per_100_to_per_1000():
    morciano = MORCIANO.with_columns(pl.lit("bed_days_rate_per_100_month").alias("outcome"))
    results = pl.DataFrame({"outcome": ["bed_days"], "model_type": ["PACS"],
                            "pre_rate_per_1000": [40.0]})
    rows, note = published_on_our_scale(morciano, results, "bed_days")
    assert rows[0].estimate == pytest.approx(100 * -0.004 * 10 / 40)
    assert "per 100 people per month" in note


def test_design_mde_reads_the_standard_error_the_inference_used():
    from reports.pages import design_mde, with_q_values

    # (1.960 + 0.842) x 0.1 = 0.2802 on the log scale: 1 - exp(-0.2802) = 24.4% (Bloom 1995)
    placebo = {"se": 0.1, "df": 5, "inference": "placebo_in_space"}
    assert design_mde(placebo) == pytest.approx(24.43, abs=0.01)
    # Cluster-robust intervals use t on the fit's df, so the MDE widens with few clusters.
    assert design_mde(placebo | {"inference": "cluster_robust"}) > design_mde(placebo) + 5
    assert design_mde({"se": float("nan"), "df": 5, "inference": "cluster_robust"}) is None
    results = pl.DataFrame({"p_value": [0.01, 0.5], "se": [0.1, 0.2], "df": [5, 5],
                            "inference": ["placebo_in_space"] * 2})
    out = with_q_values(results)
    assert out["mde_pct"].to_list()[0] == pytest.approx(24.43, abs=0.01)
    assert out["mde_pct"][1] > out["mde_pct"][0]


def test_failed_steps_of_the_latest_run_are_listed_and_fit_to_publish():
    from reports.pages import data_quality, failed_steps_table

    steps = pl.DataFrame({
        "task": ["ingest", "fit", "fit"],
        "item": ["south-somerset", "dudley", "wirral"],
        "status": ["failed", "failed", "success"],
        "attempt": [1, 3, 1],
        "message": ["episodes.csv row 4: patient_id '0123456789ABCDEF' is duplicated",
                    "dudley: no comparison areas with count '3' in month", None],
    })
    table = failed_steps_table(steps)
    assert table is not None
    text = " ".join(cell.text for row in table.rows for cell in row)
    assert "0123456789ABCDEF" not in text  # a refusal reason is only pointed to
    assert "see the files tables" in text
    assert "'3'" not in text and "dudley" in text  # quoted values are blanked out
    assert "wirral" not in text  # steps that succeeded are not listed
    assert failed_steps_table(steps.filter(pl.col("status") == "success")) is None
    assert failed_steps_table(pl.DataFrame()) is None
    files = pl.DataFrame(schema={"event_id": pl.Int64, "source_id": pl.String,
                                 "file": pl.String, "extract_date": pl.Date,
                                 "kind": pl.String, "rows_received": pl.Int64,
                                 "rows_loaded": pl.Int64, "rows_quarantined": pl.Int64,
                                 "status": pl.String, "message": pl.String})
    validations = pl.DataFrame(schema={"event_id": pl.Int64, "suite": pl.String,
                                       "success": pl.Boolean, "evaluated": pl.Int64,
                                       "result_json": pl.String, "source_id": pl.String,
                                       "kind": pl.String, "file": pl.String})
    quality = data_quality(files, validations, "this site", run_steps=steps)
    assert quality.steps is not None and len(quality.steps.rows) == 2
