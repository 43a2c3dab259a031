"""Risk-stratified cohorts: the honest version of "our most complex patients were admitted less".

A site that picks its heaviest users in one year and counts their admissions the next year
will see a large fall with no intervention at all: people are picked partly for a bad year,
and bad years pass (regression to the mean). The fair question is how much more the site's
cohort fell than a cohort picked by the same rule, on the same dates, in comparison areas.

Steps, each a pure function on polars frames of stg_episodes-like rows (patient_id,
area_code, admission_date, admission_method, primary_diagnosis, age):

    score_patients   every patient with any episode in the baseline window gets a score from
                     prior emergency admissions, age and the number of ICD-10 chapters
                     recorded (weights in the protocol's [claims.cohort])
    select_top       the top `top_pct` % of each area's residents (population from the
                     panel), or of its patients seen when no population is given
    follow_cohort    each cohort member's emergency admissions in the baseline and follow-up
                     windows (a patient with none after go-live counts as zero)
    cohort_did       (a) the site cohort's naive before/after change, (b) the comparison
                     cohort's change (the regression-to-the-mean component), (c) their ratio,
                     the difference-in-differences rate ratio

The estimate (c) is the Poisson model of member x period counts with patient effects and a
period effect per cohort, which reduces to a ratio of ratios of totals. Its interval is
Wald on the log scale from cluster-robust (patient) variances plus, with two or more
comparison areas, a DerSimonian-Laird between-area variance, with Student's t on K - 1
degrees of freedom for K comparison areas: cohorts in different areas regress by different
amounts even with no effect: on five seeded demo draws with no effect, the estimates
spread about twice as widely as the patient-clustered standard error alone says.

Patient identifiers never leave this module's outputs except inside the warehouse step that
calls it: `cohort_did` returns only totals and estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl
from scipy import stats

from expectations.contract import is_emergency_admission
from transforms.months import add_months
from transforms.protocol import ClaimCohort

EPISODE_COLUMNS = ("patient_id", "area_code", "admission_date", "admission_method",
                   "primary_diagnosis", "age")

METHOD = "cohort_poisson_did"
"""Poisson model of cohort member x period counts with patient and group-by-period effects."""

INFERENCE = "cluster_robust_patient"
"""Sandwich (cluster-robust) standard errors with patients as clusters (one comparison area)."""

INFERENCE_AREAS = "cluster_robust_patient_between_area"
"""Patient-clustered variances plus the between-area variance of comparison cohorts, t(K-1)."""


@dataclass(frozen=True)
class CohortRule:
    """How a site picks its highest-risk patients; the same rule is applied to comparators.

    The score is ``admissions * emergency_admissions + age_decades * age / 10 +
    icd10_chapters * chapters``, where admissions are emergency admissions in the baseline
    window, age is the oldest age recorded there and chapters the number of distinct ICD-10
    chapters of the patient's primary diagnoses there.
    """

    top_pct: float = 4.0  # of each area's residents (or of patients seen, see select_top)
    baseline_months: int = 12
    follow_up_months: int = 12
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    @classmethod
    def from_protocol(cls, settings: ClaimCohort) -> CohortRule:
        """The rule pre-registered in the protocol's [claims.cohort]."""
        return cls(top_pct=settings.top_pct, baseline_months=settings.baseline_months,
                   follow_up_months=settings.follow_up_months, weights=dict(settings.weights))

    def windows(self, go_live: date) -> tuple[date, date, date]:
        """Baseline start, go-live (baseline end, exclusive) and follow-up end (exclusive)."""
        return (add_months(go_live, -self.baseline_months), go_live,
                add_months(go_live, self.follow_up_months))


DEFAULT_WEIGHTS: dict[str, float] = {
    "emergency_admissions": 1.0,
    "age_decades": 0.1,
    "icd10_chapters": 0.25,
}


@dataclass(frozen=True)
class CohortResult:
    """The three figures a board needs side by side, as percentages, plus the totals."""

    naive_pct: float
    comparison_pct: float
    did_pct: float
    ci_low: float
    ci_high: float
    p_value: float
    log_rate_ratio: float
    se: float
    n_site: int
    n_comparison: int
    site_baseline: int
    site_follow_up: int
    comparison_baseline: int
    comparison_follow_up: int
    df: int | None = None
    between_area_sd: float = 0.0
    n_comparison_areas: int = 1
    method: str = METHOD
    inference: str = INFERENCE


def _is_emergency() -> pl.Expr:
    return is_emergency_admission("admission_method")


# ICD-10 chapters by the first letter and, where a letter is split, the two digits after it.
_SPLIT_LETTERS = {"D": (50, 2, 3), "H": (60, 7, 8)}
_LETTER_CHAPTER = {
    "A": 1, "B": 1, "C": 2, "E": 4, "F": 5, "G": 6, "I": 9, "J": 10, "K": 11, "L": 12,
    "M": 13, "N": 14, "O": 15, "P": 16, "Q": 17, "R": 18, "S": 19, "T": 19, "U": 22,
    "V": 20, "W": 20, "X": 20, "Y": 20, "Z": 21,
}


def icd10_chapter(column: str = "primary_diagnosis") -> pl.Expr:
    """The ICD-10 chapter (1-22) of a diagnosis code, null when blank or not a code.

    D00-D48 are neoplasms (chapter 2) and D50-D89 blood disorders (3); H00-H59 the eye (7)
    and H60-H95 the ear (8); every other letter maps to one chapter.
    """
    code = pl.col(column).str.strip_chars().str.to_uppercase()
    letter = code.str.slice(0, 1)
    number = code.str.slice(1, 2).cast(pl.Int64, strict=False)
    chapter = letter.replace_strict(_LETTER_CHAPTER, default=None, return_dtype=pl.Int64)
    for split, (boundary, below, above) in _SPLIT_LETTERS.items():
        chapter = (pl.when(letter == split)
                   .then(pl.when(number < boundary).then(below).otherwise(above))
                   .otherwise(chapter))
    valid = code.str.contains(r"^[A-Z][0-9]{2}")
    return pl.when(valid).then(chapter).otherwise(None).cast(pl.Int64)


def check_episodes(episodes: pl.DataFrame, source: str = "episodes") -> None:
    """Fail early, naming the missing columns, rather than deep inside a group-by."""
    missing = [c for c in EPISODE_COLUMNS if c not in episodes.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; cohort selection needs "
                         f"{list(EPISODE_COLUMNS)}")


def score_patients(episodes: pl.DataFrame, rule: CohortRule, go_live: date) -> pl.DataFrame:
    """One row per patient seen in the baseline window, with the parts of the score and it.

    Everyone with any episode (emergency or not) in the baseline window is scored, because
    that is everyone the extract can see. A patient seen in several areas is scored in the
    area of their latest baseline episode.
    """
    check_episodes(episodes)
    unknown = sorted(set(rule.weights) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ValueError(f"cohort weights {unknown} are not score parts; allowed: "
                         f"{sorted(DEFAULT_WEIGHTS)}")
    start, end, _ = rule.windows(go_live)
    weights = {**dict.fromkeys(DEFAULT_WEIGHTS, 0.0), **rule.weights}
    return (
        episodes.filter(pl.col("admission_date").is_between(start, end, closed="left"))
        .sort("admission_date")
        .group_by("patient_id")
        .agg(
            pl.col("area_code").last(),
            _is_emergency().sum().cast(pl.Int64).alias("emergency_admissions"),
            pl.col("age").max().cast(pl.Int64).alias("age"),
            icd10_chapter().drop_nulls().n_unique().cast(pl.Int64).alias("icd10_chapters"),
        )
        .with_columns(
            (weights["emergency_admissions"] * pl.col("emergency_admissions")
             + weights["age_decades"] * pl.col("age") / 10
             + weights["icd10_chapters"] * pl.col("icd10_chapters")).alias("score")
        )
        .sort("area_code", "patient_id")
    )


def select_top(scores: pl.DataFrame, top_pct: float,
               population: pl.DataFrame | None = None) -> pl.DataFrame:
    """The highest-scoring `top_pct` % of each area's people.

    With `population` (area_code, population: residents in the baseline window) the cohort
    is `top_pct` % of the area's residents, as a site targeting "its most complex 4%"
    means; people with no episode have no score and rank below everyone seen, so the
    cohort is capped at the patients seen. Without it, `top_pct` % of the patients seen.
    Ties at the cut are broken by pseudonymous patient id: arbitrary but reproducible.
    """
    if not 0 < top_pct <= 100:
        raise ValueError(f"claims.cohort.top_pct must be in (0, 100], got {top_pct}")
    ranked = scores.sort(["area_code", "score", "patient_id"],
                         descending=[False, True, False])
    if population is None:
        base = pl.len().over("area_code")
    else:
        missing = sorted(set(scores["area_code"]) - set(population["area_code"]))
        if missing:
            raise ValueError(f"cohort selection: no population for area(s) {missing}")
        ranked = ranked.join(population.select("area_code", "population"), on="area_code",
                             how="left")
        base = pl.col("population")
    return (
        ranked.with_columns(
            pl.int_range(1, pl.len() + 1).over("area_code").alias("rank"),
            (base * top_pct / 100).ceil().alias("size"),
        )
        .filter(pl.col("rank") <= pl.col("size"))
        .select(scores.columns)
    )


def follow_cohort(episodes: pl.DataFrame, cohort: pl.DataFrame, rule: CohortRule,
                  go_live: date) -> pl.DataFrame:
    """Emergency admissions per cohort member before (`baseline`) and after (`follow_up`)
    go-live, in any area; members with none after go-live count as zero."""
    check_episodes(episodes)
    start, live, end = rule.windows(go_live)
    in_cohort = episodes.filter(
        pl.col("patient_id").is_in(cohort["patient_id"].implode()) & _is_emergency()
    )
    counts = in_cohort.group_by("patient_id").agg(
        pl.col("admission_date").is_between(start, live, closed="left").sum()
        .cast(pl.Int64).alias("baseline"),
        pl.col("admission_date").is_between(live, end, closed="left").sum()
        .cast(pl.Int64).alias("follow_up"),
    )
    return (
        cohort.select("patient_id", "area_code")
        .join(counts, on="patient_id", how="left")
        .with_columns(pl.col("baseline", "follow_up").fill_null(0))
        .sort("area_code", "patient_id")
    )


def cohort_members(episodes: pl.DataFrame, rule: CohortRule, go_live: date,
                   population: pl.DataFrame | None = None) -> pl.DataFrame:
    """Score, select and follow: the cohort of every area in `episodes` on the same dates."""
    scores = score_patients(episodes, rule, go_live)
    return follow_cohort(episodes, select_top(scores, rule.top_pct, population), rule,
                         go_live)


def _influence(baseline: np.ndarray, follow_up: np.ndarray) -> np.ndarray:
    """Each patient's influence on log(follow-up rate / baseline rate) of their cohort.

    With patient effects and equal months for every member, the Poisson estimate of a
    cohort's period effect is log(sum follow-up / sum baseline) (exposures cancel in the
    difference), and its patient-clustered sandwich variance is the sum of these squared.
    """
    return follow_up / follow_up.sum() - baseline / baseline.sum()


def _pct(log_ratio: float) -> float:
    return 100.0 * math.expm1(log_ratio)


@dataclass(frozen=True)
class CohortChange:
    """One cohort's log change in admissions per member-month, with its patient-clustered
    variance (CR1: G/(G-1) for G members) and the totals behind it."""

    log_change: float
    variance: float
    members: int
    baseline: int
    follow_up: int


def cohort_change(frame: pl.DataFrame, rule: CohortRule, name: str = "cohort",
                  small_sample: bool = True) -> CohortChange:
    """The change from baseline to follow-up of one cohort from `follow_cohort` rows."""
    baseline = frame["baseline"].to_numpy().astype(float)
    follow_up = frame["follow_up"].to_numpy().astype(float)
    if frame.height < 2 or baseline.sum() == 0 or follow_up.sum() == 0:
        raise ValueError(f"{name}: {frame.height} members with {int(baseline.sum())} "
                         f"baseline and {int(follow_up.sum())} follow-up admissions; a rate "
                         "change needs at least two members and admissions in both windows")
    months = math.log(rule.baseline_months / rule.follow_up_months)
    n = frame.height
    factor = n / (n - 1) if small_sample else 1.0
    return CohortChange(
        log_change=math.log(follow_up.sum() / baseline.sum()) + months,
        variance=float(np.sum(_influence(baseline, follow_up) ** 2)) * factor,
        members=n, baseline=int(baseline.sum()), follow_up=int(follow_up.sum()),
    )


def between_area_variance(changes: list[CohortChange]) -> float:
    """DerSimonian-Laird estimate of how much areas' cohort changes differ beyond chance.

    Cohorts in different areas regress to the mean by different amounts (age structure,
    deaths and moves, admission rates), so a site's cohort can differ from its comparators'
    with no effect at all; patient-clustered errors alone miss this and give intervals too
    narrow (see tests/statistical/test_cohort_rtm.py).
    """
    if len(changes) < 2:
        return 0.0
    y = np.array([c.log_change for c in changes])
    w = 1 / np.array([c.variance for c in changes])
    mean = np.sum(w * y) / w.sum()
    q = float(np.sum(w * (y - mean) ** 2))
    scale = w.sum() - np.sum(w**2) / w.sum()
    return max(0.0, (q - (len(changes) - 1)) / scale)


def cohort_did(site: pl.DataFrame, comparison: pl.DataFrame, rule: CohortRule,
               alpha: float = 0.05) -> CohortResult:
    """(a) naive, (b) comparison and (c) difference-in-differences changes, in percent.

    `site` and `comparison` come from `follow_cohort`. Rates are per member-month, so
    baseline and follow-up windows of different lengths compare fairly. (c) is the site
    cohort's log change minus the pooled comparison cohort's. Its variance adds the two
    patient-clustered variances and, when the comparison cohort spans K >= 2 areas, the
    between-area variance tau^2 (DerSimonian-Laird over the comparison areas) once for the
    site's own area draw and tau^2 / K for the comparison mean; the interval then uses
    Student's t with K - 1 degrees of freedom. With one comparison area only patient
    clustering is possible and the result says so in `inference`.
    """
    site_change = cohort_change(site, rule, "site cohort")
    comparison_change = cohort_change(comparison, rule, "comparison cohort")
    per_area = []
    for (area,), rows in comparison.group_by(["area_code"], maintain_order=True):
        per_area.append(cohort_change(rows, rule, f"comparison cohort in area {area}"))
    log_rr = site_change.log_change - comparison_change.log_change
    variance = site_change.variance + comparison_change.variance
    if len(per_area) >= 2:
        tau2 = between_area_variance(per_area)
        variance += tau2 * (1 + 1 / len(per_area))
        df: int | None = len(per_area) - 1
        inference = INFERENCE_AREAS
    else:
        tau2, df, inference = 0.0, None, INFERENCE
    se = math.sqrt(variance)
    dist = stats.t(df) if df else stats.norm()
    crit = float(dist.ppf(1 - alpha / 2))
    p_value = float(2 * dist.sf(abs(log_rr / se))) if se > 0 else float("nan")
    return CohortResult(
        naive_pct=_pct(site_change.log_change),
        comparison_pct=_pct(comparison_change.log_change), did_pct=_pct(log_rr),
        ci_low=_pct(log_rr - crit * se), ci_high=_pct(log_rr + crit * se), p_value=p_value,
        log_rate_ratio=log_rr, se=se, n_site=site.height, n_comparison=comparison.height,
        site_baseline=site_change.baseline, site_follow_up=site_change.follow_up,
        comparison_baseline=comparison_change.baseline,
        comparison_follow_up=comparison_change.follow_up,
        df=df, between_area_sd=math.sqrt(tau2), n_comparison_areas=len(per_area),
        inference=inference,
    )


def evaluate_cohort_claim(episodes: pl.DataFrame, site_areas: list[str],
                          comparison_areas: list[str], rule: CohortRule, go_live: date,
                          alpha: float = 0.05,
                          population: pl.DataFrame | None = None) -> CohortResult:
    """The whole check for one site: the same rule and dates in the site and comparators.

    `population` (area_code, population) makes the cohort a share of residents rather
    than of patients seen; see `select_top`.
    """
    site_rows = episodes.filter(pl.col("area_code").is_in(site_areas))
    comparison_rows = episodes.filter(pl.col("area_code").is_in(comparison_areas))
    for name, rows in (("site", site_rows), ("comparison", comparison_rows)):
        if rows.height == 0:
            raise ValueError(f"cohort {name}: no episodes for areas "
                             f"{site_areas if name == 'site' else comparison_areas}")
    return cohort_did(cohort_members(site_rows, rule, go_live, population),
                      cohort_members(comparison_rows, rule, go_live, population), rule, alpha)
