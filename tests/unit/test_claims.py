"""Claim checks: cohort scoring and selection, the before/after windows, q-values, the
protocol's [claims] section and the report section built from claim_checks rows."""

from __future__ import annotations

import dataclasses
import math
from datetime import date

import polars as pl
import pytest

from reports.claims import claim_check_section, claim_sentences
from reports.statistics import benjamini_hochberg
from transforms.claims import (
    CLAIM_CHECK_SCHEMA,
    before_after_check,
    claim_check_rows,
    window_rates,
    with_q_values,
)
from transforms.cohort import CohortRule, icd10_chapter, score_patients, select_top
from transforms.months import add_months, month_range
from transforms.protocol import Claim, Protocol, ProtocolError, parse_protocol

GO_LIVE = date(2015, 3, 1)


# ICD-10 chapters -------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "chapter"), [
    ("A099", 1), ("B349", 1), ("C509", 2), ("D126", 2), ("D489", 2), ("D500", 3),
    ("E86X", 4), ("F329", 5), ("H251", 7), ("H599", 7), ("H600", 8), ("I214", 9),
    ("J189", 10), ("O470", 15), ("S720", 19), ("T819", 19), ("X599", 20), ("Z511", 21),
    ("U071", 22), ("f329", 5), (" J189", 10),
    ("", None), (None, None), ("9999", None), ("R", None), ("RXX1", None),
])
def test_icd10_chapter_case_table(code: str | None, chapter: int | None):
    frame = pl.DataFrame({"primary_diagnosis": [code]}, schema={"primary_diagnosis": pl.String})
    assert frame.select(icd10_chapter())[0, 0] == chapter


# Scoring and selection -------------------------------------------------------------------


def _episodes(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"patient_id": pl.String, "area_code": pl.String, "admission_date": pl.Date,
                "admission_method": pl.String, "primary_diagnosis": pl.String,
                "age": pl.Int64},
        orient="row",
    )


def test_score_counts_baseline_emergencies_chapters_and_oldest_age():
    episodes = _episodes([
        ("P1", "A1", date(2014, 3, 1), "21", "J189", 80),  # first day of the baseline
        ("P1", "A1", date(2014, 9, 1), "2A", "J440", 81),  # same chapter
        ("P1", "A1", date(2014, 10, 1), "11", "F329", 81),  # elective: a chapter, no count
        ("P1", "A1", date(2015, 3, 1), "21", "I214", 81),  # go-live: follow-up, not scored
        ("P2", "A1", date(2014, 2, 28), "21", "J189", 40),  # before the baseline
        ("P2", "A1", date(2014, 6, 1), "11", None, 40),
    ])
    rule = CohortRule(weights={"emergency_admissions": 1.0, "age_decades": 0.1,
                               "icd10_chapters": 0.5})
    scores = score_patients(episodes, rule, GO_LIVE).sort("patient_id")
    assert scores["emergency_admissions"].to_list() == [2, 0]
    assert scores["icd10_chapters"].to_list() == [2, 0]
    assert scores["age"].to_list() == [81, 40]
    assert scores["score"].to_list() == pytest.approx([2 + 0.1 * 8.1 + 0.5 * 2, 0.1 * 4.0])


def test_score_rejects_unknown_weights_and_missing_columns():
    episodes = _episodes([("P1", "A1", date(2014, 6, 1), "21", "J189", 80)])
    with pytest.raises(ValueError, match="frailty"):
        score_patients(episodes, CohortRule(weights={"frailty": 1.0}), GO_LIVE)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['age'\]"):
        score_patients(episodes.drop("age"), CohortRule(), GO_LIVE)


def _scores(area: str, values: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"patient_id": [f"{area}-{i:02d}" for i in range(len(values))],
                         "area_code": area, "score": values})


def test_select_top_per_area_share_of_patients_seen_with_stable_ties():
    scores = pl.concat([_scores("A1", [5.0, 9, 9, 1, 2] * 4), _scores("A2", [3.0] * 10)])
    top = select_top(scores, 10)
    # ceil(10% of 20) = 2 in A1 (the two 9s with the lowest ids), ceil(10% of 10) = 1 in A2.
    assert top.filter(pl.col("area_code") == "A1")["patient_id"].to_list() == ["A1-01",
                                                                                "A1-02"]
    assert top.filter(pl.col("area_code") == "A2")["patient_id"].to_list() == ["A2-00"]


def test_select_top_share_of_residents_is_capped_at_patients_seen():
    scores = _scores("A1", list(range(10)))
    population = pl.DataFrame({"area_code": ["A1"], "population": [100]})
    assert select_top(scores, 4, population).height == 4
    assert select_top(scores, 50, population).height == 10
    with pytest.raises(ValueError, match="no population for area"):
        select_top(scores, 4, population.with_columns(area_code=pl.lit("A9")))
    with pytest.raises(ValueError, match="top_pct"):
        select_top(scores, 0)


# Before/after windows --------------------------------------------------------------------


def _panel(areas: dict[str, tuple[float, float]], outcome: str = "mh") -> pl.DataFrame:
    """Monthly counts per area: `before` a month until go-live, `after` from it."""
    rows = []
    for area, (before, after) in areas.items():
        for month in month_range(date(2014, 1, 1), date(2016, 1, 1)):
            rows.append({"area_code": area, "month": month, "outcome": outcome,
                         "count": int(before if month < GO_LIVE else after),
                         "population": 10_000, "rate_per_1000": 0.0})
    return pl.DataFrame(rows)


def test_window_rates_compare_equal_windows_around_go_live():
    panel = _panel({"A1": (30, 20), "A2": (10, 10)})
    rates = window_rates(panel, ["A1"], "mh", GO_LIVE, 7)
    assert rates.before == pytest.approx(3.0) and rates.after == pytest.approx(2.0)
    assert rates.pct_change == pytest.approx(-100 / 3)
    assert rates.count == 7 * 30 + 7 * 20
    pooled = window_rates(panel, ["A1", "A2"], "mh", GO_LIVE, 7)
    assert pooled.pct_change == pytest.approx(100 * (30 / 40 - 1))


def test_window_rates_name_a_gap():
    panel = _panel({"A1": (30, 20)}).filter(pl.col("month") != add_months(GO_LIVE, 2))
    with pytest.raises(ValueError, match=r"13 rows for areas \['A1'\].*expected 14"):
        window_rates(panel, ["A1"], "mh", GO_LIVE, 7)


CLAIM = Claim(site="s1", check="before_after", outcome="mh", claimed_pct=-33.3,
              claim="a third fewer", window_months=7)
MODEL = {"site_id": "s1", "outcome": "mh", "pct_change": -12.0, "pct_ci_low": -20.0,
         "pct_ci_high": -3.0, "p_value": 0.01, "se": 0.05, "df": 40,
         "estimator": "poisson_twfe", "inference": "placebo_in_space"}


def test_before_after_check_sets_the_quoted_figure_beside_the_did():
    panel = _panel({"A1": (30, 20), "C1": (10, 11), "C2": (10, 11)})
    row = before_after_check(CLAIM, ["A1"], ["C1", "C2"], GO_LIVE, panel, MODEL, "run-1")
    assert row["naive_pct"] == pytest.approx(-100 / 3)
    assert row["comparison_pct"] == pytest.approx(10.0)
    assert (row["did_pct"], row["ci_low"], row["ci_high"]) == (-12.0, -20.0, -3.0)
    assert row["n_site"] == 350 and row["n_comparison"] == 2 * 7 * 21
    # MDE from the standard error with normal quantiles: (1.96 + 0.84) x 0.05 on the log scale.
    assert row["mde_pct"] == pytest.approx(100 * (1 - math.exp(-2.8016 * 0.05)), rel=1e-3)
    assert row["inference"] == "placebo_in_space"
    missing = before_after_check(CLAIM, ["A1"], [], GO_LIVE, panel, None, "run-1")
    assert missing["did_pct"] is None and missing["inference"] == "not_fitted"
    assert missing["comparison_pct"] is None and missing["naive_pct"] is not None


def test_q_values_are_one_family_of_site_outcomes_and_cohort_checks():
    models = pl.DataFrame({"site_id": ["s1", "s1", "s2"], "outcome": ["mh", "em", "em"],
                           "p_value": [0.01, 0.20, 0.04]})
    checks = pl.DataFrame([
        {**dict.fromkeys(CLAIM_CHECK_SCHEMA), "site_id": "s1", "outcome": "mh",
         "check_type": "before_after", "p_value": 0.01},
        {**dict.fromkeys(CLAIM_CHECK_SCHEMA), "site_id": "s2", "outcome": "em",
         "check_type": "cohort", "p_value": 0.03},
    ], schema=CLAIM_CHECK_SCHEMA)
    q = with_q_values(checks, models)["q_value"].to_list()
    expected = benjamini_hochberg([0.01, 0.20, 0.04, 0.03])
    assert q == pytest.approx([expected[0], expected[3]])


def test_claim_check_rows_for_the_crisis_claim(protocol: Protocol):
    subset = protocol.subset(["ne-hampshire-farnham"])
    (area,) = subset.site("ne-hampshire-farnham").areas
    panel = _panel({area: (30, 20), "A150": (10, 10)}, "mh_emergency_admissions")
    comparators = pl.DataFrame({"site_id": ["ne-hampshire-farnham"], "area_code": ["A150"]})
    models = pl.DataFrame([{**MODEL, "site_id": "ne-hampshire-farnham",
                            "outcome": "mh_emergency_admissions"}])
    rows = claim_check_rows(subset, panel, comparators, models, pl.DataFrame(), "run-7")
    assert rows.columns == list(CLAIM_CHECK_SCHEMA)
    assert rows.height == 1
    row = rows.row(0, named=True)
    assert row["claimed_pct"] == -33.3 and row["window_months"] == 7
    assert row["naive_pct"] == pytest.approx(-100 / 3) and row["comparison_pct"] == 0.0
    assert row["q_value"] == pytest.approx(0.01) and row["run_id"] == "run-7"


# Protocol --------------------------------------------------------------------------------


def test_protocol_claims_section_is_loaded(protocol: Protocol):
    cohort = protocol.claims.cohort
    assert cohort.top_pct == 4 and cohort.baseline_months == cohort.follow_up_months == 12
    assert dict(cohort.weights)["emergency_admissions"] == 1.0
    assert not set(cohort.comparison_areas) & set(protocol.vanguard_areas)
    checks = {c.site: c.check for c in protocol.claims.sites}
    assert checks == {"south-somerset": "cohort", "ne-hampshire-farnham": "before_after"}
    rule = CohortRule.from_protocol(cohort)
    assert rule.weights == dict(cohort.weights)


def _with_claims(text: str) -> str:
    from tests.conftest import ROOT

    base = (ROOT / "evaluation.toml").read_text(encoding="utf-8")
    return base[: base.index("[claims.cohort]")] + text


def test_protocol_claims_errors_name_the_key():
    bad_site = _with_claims('[[claims.sites]]\nsite = "nowhere"\ncheck = "cohort"\n'
                            'outcome = "emergency_admissions"\nclaimed_pct = -30\n'
                            'claim = "x"\n')
    with pytest.raises(ProtocolError, match=r"claims.sites\[0\].site: 'nowhere'"):
        parse_protocol(bad_site)
    vanguard = _with_claims('[claims.cohort]\ncomparison_areas = ["A004"]\n')
    with pytest.raises(ProtocolError, match="A004 belongs to site 'south-somerset'"):
        parse_protocol(vanguard)
    bad_check = _with_claims('[[claims.sites]]\nsite = "dudley"\ncheck = "guess"\n'
                             'outcome = "emergency_admissions"\nclaimed_pct = -3\n'
                             'claim = "x"\n')
    with pytest.raises(ProtocolError, match="'guess' is not allowed"):
        parse_protocol(bad_check)
    assert parse_protocol(_with_claims("")).claims.sites == ()


# Report section --------------------------------------------------------------------------


def _check_row(**changes: object) -> dict:
    row = {**dict.fromkeys(CLAIM_CHECK_SCHEMA), "site_id": "south-somerset",
           "claim": "30% fewer unplanned admissions among the most complex 4%",
           "outcome": "emergency_admissions", "check_type": "cohort", "window_months": 12,
           "claimed_pct": -30.0, "naive_pct": -32.0, "comparison_pct": -27.3,
           "did_pct": -6.5, "ci_low": -12.6, "ci_high": 0.0, "p_value": 0.05,
           "q_value": 0.39, "mde_pct": 8.6, "method": "cohort_poisson_did",
           "inference": "cluster_robust_patient_between_area", "n_site": 5342,
           "n_comparison": 24182, "run_id": "run-1"}
    return row | changes


def test_claim_check_section_reads_in_plain_english_with_disclosed_counts():
    rows = pl.DataFrame([_check_row()], schema=CLAIM_CHECK_SCHEMA)
    html = str(claim_check_section(rows, {"emergency_admissions": "Emergency admissions"}))
    assert "The site reported 30% fewer admissions among its highest-risk patients" in html
    assert "Similar patients in comparison areas" in html and "also had 27% fewer" in html
    assert "most of the site&#39;s fall is what happens to any group picked" in html
    assert "attributable to the vanguard is \u22126.5% (95% CI \u221212.6% to 0.0%)" in html
    assert "5,340" in html and "24,180" in html  # rounded to the nearest 5
    assert "5,342" not in html and "24,182" not in html


def test_claim_check_section_suppresses_small_counts_and_escapes_text():
    rows = pl.DataFrame([_check_row(n_site=5, claim="<script>alert(1)</script> & more")],
                        schema=CLAIM_CHECK_SCHEMA)
    html = str(claim_check_section(rows))
    assert "<script>" not in html and "&lt;script&gt;" in html and "&amp; more" in html
    assert "(the top-scoring patients before go-live, * people" in html
    assert ">5<" not in html


def test_claim_check_sentences_when_comparison_cohort_did_not_fall():
    text = " ".join(claim_sentences(_check_row(comparison_pct=4.0, outcome_label="x")))
    assert "had 4% more admissions." in text and "regression to the mean" not in text
    part = " ".join(claim_sentences(_check_row(comparison_pct=-10.0, outcome_label="x")))
    assert "part of the site's fall" in part


def test_claim_check_section_without_rows_or_estimate():
    assert claim_check_section(pl.DataFrame(schema=CLAIM_CHECK_SCHEMA)) is None
    row = _check_row(check_type="before_after", outcome_label="Mental-health admissions",
                     did_pct=None, ci_low=None, ci_high=None, comparison_pct=None,
                     window_months=7)
    text = " ".join(claim_sentences(row))
    assert "in the 7 months after go-live was \u221232.0% against the 7 months before" in text
    assert "No controlled estimate is available" in text


def test_disclosure_is_not_bypassed_for_the_table():
    rows = pl.DataFrame([_check_row(n_site=3, n_comparison=12)], schema=CLAIM_CHECK_SCHEMA)
    html = str(claim_check_section(rows))
    table = html[html.index("<table>"):]
    assert "<td class=\"num\">*</td>" in table and "<td class=\"num\">10</td>" in table


def test_cohort_rule_windows():
    rule = dataclasses.replace(CohortRule(), baseline_months=6, follow_up_months=18)
    assert rule.windows(GO_LIVE) == (date(2014, 9, 1), GO_LIVE, date(2016, 9, 1))


def test_cohort_check_without_comparison_episodes_gives_only_the_naive_figure():
    from tests.statistical.test_cohort_rtm import simulate
    from transforms.claims import cohort_check

    episodes, population = simulate(5, 1.0, n_comparison_areas=0, n_per_area=4_000)
    claim = Claim(site="s1", check="cohort", outcome="emergency_admissions",
                  claimed_pct=-30.0, claim="30% fewer")
    row = cohort_check(claim, ["A000"], ["A100"], GO_LIVE, episodes, population,
                       CohortRule(), "run-1")
    assert row["naive_pct"] < -20 and row["n_site"] == 160
    assert row["did_pct"] is None and row["comparison_pct"] is None
    assert row["inference"] == "no_comparison_cohort"
    with pytest.raises(ValueError, match="no patient-level episodes for areas"):
        cohort_check(claim, ["A999"], ["A000"], GO_LIVE, episodes, population,
                     CohortRule(), "run-1")
