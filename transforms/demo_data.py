"""Seeded synthetic demo data shaped like the real extracts, with known true effects.

Real patient data are not public, so the pipeline is developed, tested and demonstrated on
synthetic data that have the shape and the awkward features of the real thing:

* monthly aggregate counts per area (CCG-like populations of 80k-900k) for every site and for
  a national comparison pool, with winter seasonality, a secular trend common to all areas,
  area effects driven by age structure and deprivation, over-dispersion and Poisson noise;
* HES-like patient-level episodes for the sites flagged `patient_level` in the protocol, and
  for the comparison areas listed in the protocol's `[claims.cohort]` when a cohort claim's
  site is in the run, exactly consistent with those areas' aggregate counts;
* individual risk that persists but decays (gamma frailty with a yearly autoregressive
  component), so the heaviest users in one year use less in the next even with no
  intervention: the regression to the mean that flatters naive before/after evaluations;
* a `truth.json` recording the multiplicative effect applied to each site and measure, so an
  estimator can be checked against the answer it should find.

Every area draws from its own random stream, derived from the seed and the area number, and
every file is written in a fixed order, so the same seed and protocol give byte-identical
files, and an area's data depend only on the seed, its number and the site it belongs to
(not on how many other areas or sites there are).

Stays are censored at the end of the study window (discharge dates never fall after it), in
patient-level and aggregate-only areas alike, so emergency bed days in the last month or two
are lower everywhere; month effects absorb this, as they would in a real extract.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from transforms.months import add_months, months_between
from transforms.protocol import Protocol, Site

EXTRACT_DATE = "2019-05-15"
"""The landing folder's extract date: fixed, not today's date, so output is deterministic."""

MEASURES: tuple[str, ...] = (
    "emergency_admissions",
    "ae_attendances",
    "bed_days",
    "mh_emergency_admissions",
)

TRUE_EFFECTS: dict[str, dict[str, float]] = {
    # Clearly non-zero effects (rate ratios, applied from go-live onward).
    "dudley": {"emergency_admissions": 0.90, "bed_days": 0.98},  # avoided stays were short
    "calderdale": {"emergency_admissions": 0.92, "bed_days": 0.90},
    "ne-hampshire-farnham": {"mh_emergency_admissions": 0.85},
    "sutton-care-homes": {"emergency_admissions": 0.93, "bed_days": 0.92},
    "wirral": {"ae_attendances": 1.05},
    # Small: South Somerset's claimed fall was mostly regression to the mean. Every
    # patient's rate falls by 5%, so the true effect in its highest-risk cohort is also
    # 0.95, while that cohort's naive before/after fall is about 30%.
    "south-somerset": {"emergency_admissions": 0.95},
    # A few small effects in either direction, as in the published evaluations.
    "fylde-coast": {"emergency_admissions": 1.02},
    "tower-hamlets": {"ae_attendances": 0.98},
    "later-wave-mcp-demo": {"bed_days": 0.98},
}
"""True rate ratios by site and measure; every site x measure not listed is exactly 1.0.

Fixed rather than random so that tests and demonstrations know which sites are null. Most
effects are null or small, in line with the published national evaluation (Morciano et al.
2020), so an estimator that finds large effects everywhere is wrong.
"""

HSJ_POPULATION: dict[int, int] = {
    3: 132_354,  # South Somerset
    8: 162_254,  # Harrogate
    10: 220_162,  # Calderdale
    16: 318_492,  # Dudley
    22: 101_375,  # Lakeside
}
"""Published populations by NHS England vanguard number (shared/reference/vanguard_sites_2015.csv).

Used as the 2012 population of single-area sites so the demo's denominators resemble the
sites the real evaluation reported on.
"""

EMERGENCY_METHODS: tuple[str, ...] = ("21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28")
"""HES ADMIMETH codes that count as emergency admissions."""

# Rates per person per month at the start of the window (geometric mean over the year).
_EMERGENCY_RATE = 7.5 / 1000
_AE_RATE = 29.0 / 1000
_MH_SHARE = 0.047  # share of emergency admissions with a mental-health primary diagnosis
_LOS_MEAN = 5.7  # emergency bed days per emergency admission
_LOS_SHAPE = 0.7  # negative-binomial shape: about a fifth of stays are zero-day
_LOS_CAP = 60
_ELECTIVE_RATIO = 0.5  # elective (and other non-emergency) episodes per emergency admission

# Yearly growth common to every area (never area-specific: difference-in-differences
# relies on common trends).
_EMERGENCY_GROWTH = 0.03
_AE_GROWTH = 0.02
_ELECTIVE_GROWTH = 0.02
_LOS_GROWTH = -0.01

# Seasonal log-amplitudes and peak months (emergency admissions peak between Dec and Jan).
_EMERGENCY_SEASON = 0.10
_AE_SEASON = 0.04  # A&E attendances peak in early summer
_LOS_SEASON = 0.03

# Coefficients of variation of the month-to-month multiplicative gamma noise.
_NOISE_CV = {"emergency": 0.04, "ae": 0.03, "mh": 0.05, "los": 0.03}

# Patient risk: persistent gamma frailty and a yearly AR(1) log-normal component.
# A small shape gives a few very heavy users whose high risk persists, as in real extracts;
# with these values the top 4% of patients seen in a year have about 30% fewer emergency
# admissions the next year with no intervention (regression to the mean).
_FRAILTY_SHAPE = 0.05
_AR_SIGMA = 0.3
_AR_RHO = 0.6

_AGGREGATE_SCHEMA = {
    "area_code": pl.String,
    "month": pl.Date,
    "measure": pl.String,
    "count": pl.Int64,
    "population": pl.Int64,
}
_EPISODE_SCHEMA = {
    "patient_id": pl.String,
    "admission_date": pl.Date,
    "discharge_date": pl.Date,
    "admission_method": pl.String,
    "primary_diagnosis": pl.String,
    "age": pl.Int64,
    "sex": pl.String,
    "area_code": pl.String,
}

_STREAM_AREA, _STREAM_COUNTS, _STREAM_PATIENTS, _STREAM_PSEUDONYM = 1, 2, 3, 4
_AREA_CODE = re.compile(r"^A(\d{3})$")

_EMERGENCY_METHOD_P = (0.68, 0.12, 0.005, 0.03, 0.005, 0.04, 0.03, 0.002, 0.05, 0.038)
_MH_METHOD_P = (0.62, 0.08, 0.0, 0.01, 0.15, 0.03, 0.04, 0.0, 0.04, 0.03)
_ELECTIVE_METHODS = ("11", "12", "13", "31", "81")
_ELECTIVE_METHOD_P = (0.55, 0.2, 0.2, 0.025, 0.025)

# ICD-10 primary diagnoses (4 characters, no dot) with relative frequencies, by group.
_DIAGNOSES: dict[str, str] = {
    "child": "J219 12 J069 10 R509 9 A099 8 J459 6 S099 5 B349 6 K358 3 R104 5 J189 3 N390 2",
    "adult": "R104 12 R074 10 R073 4 L039 5 N390 4 J189 5 K359 3 R55X 4 R51X 3 G409 3 N23X 3 "
    "I214 3 J459 3 S525 2 K802 3 A099 3",
    "older": "J189 12 N390 9 I214 5 R074 6 J440 5 J441 4 I500 6 S720 5 R296 3 R55X 4 L039 4 "
    "E86X 3 A099 3 I489 4 J22X 4 K590 2 R410 3 I639 3",
    "mh_adult": "F329 10 F200 8 F102 7 F419 5 F431 5 F603 4 F311 3 F332 3 F209 3 F259 2 F192 2 "
    "F101 2",
    "mh_older": "F059 10 F03X 8 F329 6 F102 3 F200 2 F419 2 F051 3",
    "elective": "K802 6 H251 8 M171 5 M161 4 Z511 9 C509 3 K409 3 N40X 2 I251 3 K635 4 D126 3 "
    "K219 3 Z098 3",
    "maternity": "O470 3 O234 1",
}

# Relative risk by age (piecewise linear between the knots) for mental-health emergency
# admissions and for elective admissions; lengths of stay by age likewise.
_MH_AGE = ([0, 11, 16, 20, 60, 70, 80, 95], [0.02, 0.05, 0.6, 1, 1, 0.6, 0.9, 0.9])
_ELECTIVE_AGE = ([0, 5, 20, 40, 60, 75, 85, 104], [0.3, 0.15, 0.3, 0.6, 1.2, 2.0, 1.8, 1.0])
_LOS_AGE = ([0, 16, 45, 65, 80, 95], [0.35, 0.4, 0.6, 1.0, 1.5, 1.7])

# Unimodal age profiles (relative numbers present at each age) of a young and an old area;
# each area's profile mixes the two to match its share aged 65+ (about 9% and 33%).
_YOUNG_PROFILE = ([0, 20, 40, 60, 70, 85, 100], [1.0, 1.1, 1.05, 0.7, 0.35, 0.08, 0.0])
_OLD_PROFILE = ([0, 20, 35, 55, 70, 85, 95, 105], [0.55, 0.55, 0.6, 0.9, 1.0, 0.6, 0.2, 0.0])
_AGE_GRID = np.linspace(0, 105, 2101)


@dataclass(frozen=True)
class _Area:
    """One area's fixed characteristics, drawn once from its own stream."""

    number: int
    population_2012: int
    growth: float
    pct_65: float  # percent, 10-28
    imd: float  # index of multiple deprivation score, 5-50
    emergency_mult: float
    ae_mult: float
    mh_share: float
    los_mean: float

    @property
    def code(self) -> str:
        return f"A{self.number:03d}"


@dataclass(frozen=True)
class _Calendar:
    """The study window as arrays: month index, calendar month, first day, length."""

    months: list[date]
    t: np.ndarray  # 0..T-1
    calendar_month: np.ndarray  # 1..12
    first_day: np.ndarray  # datetime64[D]
    days: np.ndarray  # days in the month
    last_day: np.datetime64  # last day of the window

    @classmethod
    def from_protocol(cls, protocol: Protocol) -> _Calendar:
        months = protocol.months
        bounds = np.array(months + [add_months(months[-1], 1)], dtype="datetime64[D]")
        return cls(
            months=months,
            t=np.arange(len(months)),
            calendar_month=np.array([m.month for m in months]),
            first_day=bounds[:-1],
            days=np.diff(bounds).astype(np.int64),
            last_day=bounds[-1] - np.timedelta64(1, "D"),
        )

    @property
    def n(self) -> int:
        return len(self.months)

    def season(self, peak_month: float) -> np.ndarray:
        """A cosine seasonal shape (+1 at `peak_month`, -1 six months later)."""
        return np.cos(2 * np.pi * (self.calendar_month - peak_month) / 12)

    def days_left(self, month: np.ndarray, day: np.ndarray) -> np.ndarray:
        """Days from an admission day to the last day of the window (censoring limit)."""
        admitted = self.first_day[month] + day
        return (self.last_day - admitted).astype(np.int64)


def _rng(seed: int, stream: int, number: int = 0) -> np.random.Generator:
    """An independent generator for one stream of one area, derived from the seed alone."""
    return np.random.default_rng([seed, stream, number])


def _gamma_noise(rng: np.random.Generator, cv: float, n: int) -> np.ndarray:
    """Mean-one multiplicative month-to-month noise (over-dispersion beyond Poisson)."""
    shape = 1 / cv**2
    return rng.gamma(shape, 1 / shape, n)


def _truncated_normal(
    rng: np.random.Generator, mean: float, sd: float, low: float, high: float
) -> float:
    """A normal draw restricted to [low, high] by rejection (no pile-up at the bounds)."""
    for _ in range(1000):
        value = float(rng.normal(mean, sd))
        if low <= value <= high:
            return value
    return float(np.clip(mean, low, high))


def _draw_area(seed: int, number: int, hsj_population: int | None) -> _Area:
    """Population, age structure, deprivation and the area effects that follow from them."""
    rng = _rng(seed, _STREAM_AREA, number)
    z = rng.standard_normal(5)
    growth = float(rng.uniform(0.005, 0.01))
    population = np.exp(_truncated_normal(rng, np.log(250_000), 0.55, np.log(8e4), np.log(9e5)))
    if hsj_population is not None:
        population = hsj_population * float(np.exp(0.01 * z[0]))
    imd = float(np.exp(_truncated_normal(rng, np.log(20), 0.45, np.log(5), np.log(50))))
    pct_65 = _truncated_normal(rng, 18 - 0.12 * (imd - 21), 3.0, 10, 28)
    p65 = pct_65 / 100
    # People aged 65+ have about 3.5 times the emergency admission rate of younger people.
    age_factor = ((1 - p65) + 3.5 * p65) / (0.82 + 3.5 * 0.18)
    area_effect = 0.08 * z[1]
    emergency_mult = age_factor * np.exp(0.008 * (imd - 21) + area_effect)
    ae_age = ((1 - p65) + 1.6 * p65) / (0.82 + 1.6 * 0.18)
    ae_mult = ae_age * np.exp(0.012 * (imd - 21) + 0.6 * area_effect + 0.06 * z[2])
    mh_share = _MH_SHARE * np.exp(0.015 * (imd - 21) - 4.0 * (p65 - 0.18) + 0.15 * z[3])
    los_mean = _LOS_MEAN * (1 + 1.5 * (p65 - 0.18)) * np.exp(0.08 * z[4])
    return _Area(
        number=number,
        population_2012=int(round(population)),
        growth=growth,
        pct_65=pct_65,
        imd=imd,
        emergency_mult=float(emergency_mult),
        ae_mult=float(ae_mult),
        mh_share=float(min(mh_share, 0.2)),
        los_mean=float(los_mean),
    )


def _rate_ratios(site: Site | None, calendar: _Calendar, start: date) -> dict[str, np.ndarray]:
    """Per-month true rate ratio for each measure: 1 before go-live, the effect after."""
    ratios = {measure: np.ones(calendar.n) for measure in MEASURES}
    if site is None:
        return ratios
    live = calendar.t >= months_between(start, site.go_live)
    for measure, ratio in TRUE_EFFECTS.get(site.id, {}).items():
        ratios[measure] = np.where(live, ratio, 1.0)
    return ratios


def _negbin_los(rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
    """Skewed lengths of stay (days) with the given means, capped."""
    los = rng.negative_binomial(_LOS_SHAPE, _LOS_SHAPE / (_LOS_SHAPE + mean))
    return np.minimum(los, _LOS_CAP)


@dataclass
class _Counts:
    population: np.ndarray
    emergency: np.ndarray
    ae: np.ndarray
    mh: np.ndarray
    bed_days: np.ndarray
    los_mean: np.ndarray  # expected length of stay of an emergency admission, by month


def _area_counts(seed: int, area: _Area, cal: _Calendar, rr: dict[str, np.ndarray]) -> _Counts:
    """Monthly counts for one area from its rates, noise and the true effects."""
    rng = _rng(seed, _STREAM_COUNTS, area.number)
    years = cal.t / 12
    population = np.round(area.population_2012 * (1 + area.growth) ** years).astype(np.int64)

    winter = cal.season(0.5)  # peak between December and January
    emergency_rate = (
        _EMERGENCY_RATE
        * area.emergency_mult
        * np.exp(_EMERGENCY_SEASON * winter + np.log1p(_EMERGENCY_GROWTH) * years)
        * _gamma_noise(rng, _NOISE_CV["emergency"], cal.n)
        * rr["emergency_admissions"]
    )
    ae_rate = (
        _AE_RATE
        * area.ae_mult
        * np.exp(_AE_SEASON * cal.season(6.5) + np.log1p(_AE_GROWTH) * years)
        * _gamma_noise(rng, _NOISE_CV["ae"], cal.n)
        * rr["ae_attendances"]
    )
    # Mental-health admissions are a thinned share of emergency admissions: half as seasonal,
    # with their own effect relative to the emergency effect.
    mh_share = np.minimum(
        area.mh_share
        * np.exp(-0.5 * _EMERGENCY_SEASON * winter)
        * _gamma_noise(rng, _NOISE_CV["mh"], cal.n)
        * rr["mh_emergency_admissions"]
        / rr["emergency_admissions"],
        1.0,
    )
    los_mean = (
        area.los_mean
        * np.exp(_LOS_SEASON * winter + np.log1p(_LOS_GROWTH) * years)
        * _gamma_noise(rng, _NOISE_CV["los"], cal.n)
        * rr["bed_days"]
        / rr["emergency_admissions"]
    )
    emergency = rng.poisson(population * emergency_rate)
    ae = rng.poisson(population * ae_rate)
    mh = rng.binomial(emergency, mh_share)

    # Bed days: a sum of negative-binomial stays is negative binomial with summed shape.
    p = _LOS_SHAPE / (_LOS_SHAPE + los_mean)
    bed_days = rng.negative_binomial(np.maximum(emergency * _LOS_SHAPE, 1e-9), p)
    bed_days = np.where(emergency > 0, bed_days, 0).astype(np.int64)
    # Months whose stays can run past the window are simulated stay by stay and censored
    # at its end, exactly as patient-level episodes are.
    late = np.flatnonzero(cal.first_day + cal.days - 1 + _LOS_CAP > cal.last_day)
    month = np.repeat(late, emergency[late])
    day = np.floor(rng.random(month.size) * cal.days[month]).astype(np.int64)
    stays = np.minimum(_negbin_los(rng, los_mean[month]), cal.days_left(month, day))
    bed_days[late] = np.bincount(month, weights=stays, minlength=cal.n)[late].astype(np.int64)
    return _Counts(population, emergency, ae, mh, bed_days, los_mean)


def _choice(rng: np.random.Generator, group: str, n: int) -> np.ndarray:
    """`n` diagnoses drawn from one group of `_DIAGNOSES`."""
    parts = _DIAGNOSES[group].split()
    codes = np.array(parts[0::2])
    weights = np.array(parts[1::2], dtype=float)
    return codes[rng.choice(codes.size, size=n, p=weights / weights.sum())]


def _draw(
    rng: np.random.Generator, codes: tuple[str, ...], p: tuple[float, ...], n: int
) -> np.ndarray:
    """`n` codes drawn with probabilities proportional to `p`."""
    probs = np.array(p) / np.sum(p)
    return np.array(codes)[rng.choice(len(codes), size=n, p=probs)]


def _age_risk(age: np.ndarray) -> np.ndarray:
    """Relative emergency admission risk by age: high in infancy, rising steeply in old age."""
    return 0.5 + 1.5 * np.exp(-age / 2) + 0.8 * np.exp((age - 65) / 16)


def _share_65(profile: tuple[Sequence[float], Sequence[float]]) -> float:
    g = np.interp(_AGE_GRID, *profile)
    return float(g[_AGE_GRID >= 65].sum() / g.sum())


def _residents(
    rng: np.random.Generator, p65: float, population: np.ndarray, window_years: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Everyone who lives in the area at some time in the window: an open, stationary population.

    Residents are born at uniformly distributed times and are present from an entry age (birth
    or moving in) to a leaving age (death or moving out). Each resident's interval is the set
    of ages at which the area's age profile exceeds a uniformly drawn level, so the number
    present at each age is proportional to the profile at every moment: people age one by one
    while the area's age structure, and so the age mix of its admissions, stays steady.
    Returns birth time (years from the window start), entry age and leaving age.
    """
    p_young, p_old = _share_65(_YOUNG_PROFILE), _share_65(_OLD_PROFILE)
    w_old = float(np.clip((p65 - p_young) / (p_old - p_young), 0, 1))
    present = population[population.size // 2]
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for profile, weight in ((_YOUNG_PROFILE, 1 - w_old), (_OLD_PROFILE, w_old)):
        g = np.interp(_AGE_GRID, *profile)
        mode = int(np.argmax(g))
        rising = np.maximum.accumulate(g[: mode + 1])
        falling_reversed = g[mode:][::-1]
        years_present = g.mean() / g.max() * _AGE_GRID[-1]
        n = int(round(weight * present / years_present * (_AGE_GRID[-1] + window_years)))
        level = rng.random(n) * g.max()
        entry = _AGE_GRID[np.searchsorted(rising, level, side="right")]
        leave = _AGE_GRID[g.size - np.searchsorted(falling_reversed, level, side="right")]
        birth = rng.uniform(-_AGE_GRID[-1], window_years, n)
        keep = (birth + leave > 0) & (birth + entry < window_years)
        parts.append((birth[keep], entry[keep], leave[keep]))
    birth, entry, leave = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    return birth, entry, leave


def _pseudonyms(seed: int, area_number: int, person: np.ndarray) -> np.ndarray:
    """16 upper-case hex pseudonyms: a bijective 64-bit mix of (area, person), so never reused."""
    key = _rng(seed, _STREAM_PSEUDONYM).integers(0, 2**63, dtype=np.uint64)
    z = key ^ ((np.uint64(area_number) << np.uint64(40)) | person.astype(np.uint64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hex(ids: np.ndarray) -> np.ndarray:
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = ((ids[:, None] >> shifts) & np.uint64(15)).astype(np.uint8)
    chars = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)[nibbles]
    return np.ascontiguousarray(chars).view("S16").ravel().astype("U16")


def _patient_episodes(
    seed: int, area: _Area, cal: _Calendar, counts: _Counts
) -> tuple[pl.DataFrame, np.ndarray]:
    """Episodes for one area that reproduce its emergency and mental-health counts exactly.

    Each resident has a persistent gamma frailty and a yearly log-normal AR(1) component, and
    an age-dependent risk. Given a month's count, which residents are admitted is a
    multinomial draw with those risks (a Poisson count per resident, conditioned on the
    total), so the aggregate effects carry through to the episodes unchanged. Returns the
    episodes and the emergency bed days by month.
    """
    rng = _rng(seed, _STREAM_PATIENTS, area.number)
    birth, entry, leave = _residents(rng, area.pct_65 / 100, counts.population, cal.n / 12)
    n_pool = birth.size
    sex = _draw(rng, ("1", "2", "9"), (0.4905, 0.5085, 0.001), n_pool)
    frailty = rng.gamma(_FRAILTY_SHAPE, 1 / _FRAILTY_SHAPE, n_pool)
    mh_trait = rng.gamma(0.5, 2.0, n_pool)
    elective_trait = frailty**0.4 * rng.gamma(2.0, 0.5, n_pool)

    n_years = -(-cal.n // 12)
    kinds = ("emergency", "mh", "elective")
    month_lists: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    person_lists: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    elective_mean = (
        _ELECTIVE_RATIO
        * _EMERGENCY_RATE
        * area.emergency_mult
        * counts.population
        * np.exp(np.log1p(_ELECTIVE_GROWTH) * cal.t / 12)
    )
    n_by_kind = {
        "emergency": counts.emergency - counts.mh,
        "mh": counts.mh,
        "elective": rng.poisson(elective_mean),
    }
    ar = rng.standard_normal(n_pool)
    for year in range(n_years):
        if year > 0:
            ar = _AR_RHO * ar + np.sqrt(1 - _AR_RHO**2) * rng.standard_normal(n_pool)
        transient = np.exp(_AR_SIGMA * ar - _AR_SIGMA**2 / 2)
        months = cal.t[year * 12 : (year + 1) * 12]
        age = (months.mean() + 0.5) / 12 - birth
        alive = (age >= entry) & (age < leave)
        weights = {
            "emergency": _age_risk(age) * frailty * transient,
            "mh": np.interp(age, *_MH_AGE) * mh_trait * np.sqrt(frailty) * transient,
            "elective": np.interp(age, *_ELECTIVE_AGE) * elective_trait,
        }
        for group, weight in weights.items():
            cdf = np.cumsum(np.where(alive, weight, 0.0))
            n_month = n_by_kind[group][months]
            draws = rng.random(int(n_month.sum())) * cdf[-1]
            person = np.minimum(np.searchsorted(cdf, draws, side="right"), n_pool - 1)
            month_lists[group].append(np.repeat(months, n_month))
            person_lists[group].append(person)

    month = np.concatenate([np.concatenate(month_lists[k]) for k in kinds])
    person = np.concatenate([np.concatenate(person_lists[k]) for k in kinds])
    kind = np.concatenate(
        [
            np.full(sum(a.size for a in month_lists[k]), i, dtype=np.int8)
            for i, k in enumerate(kinds)
        ]
    )
    n = month.size
    emergency = kind < 2

    day = np.floor(rng.random(n) * cal.days[month]).astype(np.int64)
    exact_age = (month + (day + 0.5) / cal.days[month]) / 12 - birth[person]
    age = np.clip(np.floor(exact_age), 0, 104).astype(np.int64)
    episode_sex = sex[person]

    # Lengths of stay: longer for older patients, scaled so each month's mean is unchanged.
    los_age = np.interp(age, *_LOS_AGE)
    los_age_mean = np.bincount(month[emergency], weights=los_age[emergency], minlength=cal.n)
    los_age = los_age / np.maximum(los_age_mean / np.maximum(counts.emergency, 1), 1e-9)[month]
    stay = np.where(
        emergency,
        _negbin_los(rng, counts.los_mean[month] * los_age),
        np.where(rng.random(n) < 0.65, 0, 1 + rng.negative_binomial(1.0, 1 / 3.0, n)),
    )
    stay = np.minimum(np.minimum(stay, _LOS_CAP), cal.days_left(month, day))

    method = np.where(
        kind == 0,
        _draw(rng, EMERGENCY_METHODS, _EMERGENCY_METHOD_P, n),
        np.where(
            kind == 1,
            _draw(rng, EMERGENCY_METHODS, _MH_METHOD_P, n),
            _draw(rng, _ELECTIVE_METHODS, _ELECTIVE_METHOD_P, n),
        ),
    )
    method = np.where((method == "2C") & (age > 0), "21", method)  # born at home: babies only
    childbearing = (episode_sex == "2") & (age >= 15) & (age <= 45)
    method = np.where((method == "31") & ~childbearing, "11", method)

    physical = np.where(
        age < 16,
        _choice(rng, "child", n),
        np.where(age < 65, _choice(rng, "adult", n), _choice(rng, "older", n)),
    )
    mental = np.where(age < 65, _choice(rng, "mh_adult", n), _choice(rng, "mh_older", n))
    planned = np.where(method == "31", _choice(rng, "maternity", n), _choice(rng, "elective", n))
    diagnosis = np.where(kind == 0, physical, np.where(kind == 1, mental, planned))

    # Exact agreement with the aggregate counts is the contract; check it here.
    emergency_by_month = np.bincount(month[emergency], minlength=cal.n)
    mh_by_month = np.bincount(month[kind == 1], minlength=cal.n)
    if not (
        np.array_equal(emergency_by_month, counts.emergency)
        and np.array_equal(mh_by_month, counts.mh)
    ):
        raise RuntimeError(f"episodes for {area.code} do not reproduce its counts")
    bed_days = np.bincount(month[emergency], weights=stay[emergency], minlength=cal.n)

    ids = _pseudonyms(seed, area.number, person)
    admitted = cal.first_day[month] + day
    order = np.lexsort((ids, admitted))
    episodes = pl.DataFrame(
        {
            "patient_id": _hex(ids[order]),
            "admission_date": admitted[order],
            "discharge_date": (admitted + stay)[order],
            "admission_method": method[order],
            "primary_diagnosis": diagnosis[order],
            "age": age[order],
            "sex": episode_sex[order],
            "area_code": np.full(n, area.code),
        },
        schema=_EPISODE_SCHEMA,
    )
    return episodes, np.round(bed_days).astype(np.int64)


def _aggregate_frame(area: _Area, cal: _Calendar, counts: _Counts) -> pl.DataFrame:
    """Long rows (area x month x measure) in a fixed order."""
    by_measure = {
        "emergency_admissions": counts.emergency,
        "ae_attendances": counts.ae,
        "bed_days": counts.bed_days,
        "mh_emergency_admissions": counts.mh,
    }
    values = np.stack([by_measure[measure] for measure in MEASURES], axis=1)
    n_measures = len(MEASURES)
    return pl.DataFrame(
        {
            "area_code": [area.code] * (cal.n * n_measures),
            "month": np.repeat(cal.first_day, n_measures),
            "measure": list(MEASURES) * cal.n,
            "count": values.ravel().astype(np.int64),
            "population": np.repeat(counts.population, n_measures),
        },
        schema=_AGGREGATE_SCHEMA,
    )


def _area_number(code: str) -> int:
    match = _AREA_CODE.match(code)
    if not match:
        raise ValueError(f"area code {code!r} is not of the form A001..A999")
    return int(match.group(1))


def _hsj_population(site: Site) -> int | None:
    if len(site.areas) != 1 or site.nhse_vanguard_number is None:
        return None
    return HSJ_POPULATION.get(site.nhse_vanguard_number)


def _claims_truth(protocol: Protocol, cohort_areas: list[str]) -> dict[str, Any]:
    """The true effect behind each site claim in the run.

    Effects act on every patient of a site alike (a month's admissions are shared out by
    fixed individual weights), so a cohort's true rate ratio is its site's.
    """
    in_run = {site.id for site in protocol.sites}
    outcomes = {o.id: o.measure for o in protocol.outcomes}
    truth: dict[str, Any] = {}
    for claim in protocol.claims.sites:
        if claim.site not in in_run:
            continue
        ratio = TRUE_EFFECTS.get(claim.site, {}).get(outcomes[claim.outcome], 1.0)
        entry: dict[str, Any] = {
            "check": claim.check,
            "outcome": claim.outcome,
            "claimed_pct": claim.claimed_pct,
            "rate_ratio": ratio,
            "pct_change": round(100 * (ratio - 1), 6),
        }
        if claim.check == "cohort":
            entry["comparison_areas"] = cohort_areas
        truth[claim.site] = entry
    return truth


def _cohort_areas(protocol: Protocol, n_areas: int) -> list[str]:
    """Comparison areas that get patient-level episodes: those listed for cohort claims,
    when a cohort claim's site is in the run, within A001..A<n_areas>, never vanguard areas.

    Areas beyond `n_areas` are skipped rather than refused, so small test demos stay small.
    """
    in_run = {site.id for site in protocol.sites}
    if not any(c.check == "cohort" and c.site in in_run for c in protocol.claims.sites):
        return []
    vanguard = protocol.vanguard_areas
    return sorted(a for a in protocol.claims.cohort.comparison_areas
                  if a not in vanguard and _area_number(a) <= n_areas)


def _truth(seed: int, protocol: Protocol, cohort_areas: list[str]) -> dict[str, Any]:
    sites: dict[str, Any] = {}
    for site in protocol.sites:
        effects = {}
        for measure in MEASURES:
            ratio = TRUE_EFFECTS.get(site.id, {}).get(measure, 1.0)
            effects[measure] = {"rate_ratio": ratio, "pct_change": round(100 * (ratio - 1), 6)}
        sites[site.id] = {
            "go_live": site.go_live.strftime("%Y-%m"),
            "areas": sorted(site.areas),
            "effects": effects,
        }
    return {
        "seed": seed,
        "extract_date": EXTRACT_DATE,
        "sites": sites,
        "claims": _claims_truth(protocol, cohort_areas),
        "description": (
            "Synthetic demo data. Each effect is a multiplicative rate ratio applied to every "
            "area of the site from its go-live month onward (constant after go-live); 1.0 "
            "means no effect. Counts are Poisson around rates with winter seasonality, a "
            "secular trend common to all areas, area effects from age structure and "
            "deprivation and month-to-month gamma noise. Patient-level episodes reproduce "
            "their site's aggregate counts exactly and include regression to the mean from "
            "persistent but decaying individual risk. `claims` gives the true effect behind "
            "each site claim checked; a cohort's true rate ratio is its site's, since effects "
            "act on every patient of the site alike."
        ),
    }


def generate_demo(out_dir: Path, *, seed: int, protocol: Protocol, n_areas: int = 200) -> dict:
    """Write a complete synthetic demo dataset for `protocol` under `out_dir`.

    Writes landing extracts (`landing/<site>/<EXTRACT_DATE>/aggregate.csv`, plus
    `episodes.csv` for patient-level sites, and `landing/comparison/...` for every area in no
    site), `reference/areas.csv` and `truth.json`. Areas are A001..A<n_areas>; every area
    named in the protocol must be among them. Returns a summary with row counts and paths.
    """
    if not 1 <= n_areas <= 999:
        raise ValueError(f"n_areas must be between 1 and 999, got {n_areas}")
    owner = protocol.site_areas
    too_high = sorted(code for code in owner if _area_number(code) > n_areas)
    if too_high:
        raise ValueError(
            f"protocol areas {', '.join(too_high)} are beyond n_areas={n_areas} "
            f"(areas are A001..A{n_areas:03d})"
        )
    unknown = sorted({o.measure for o in protocol.outcomes} - set(MEASURES))
    if unknown:
        raise ValueError(f"cannot generate measures {unknown}; available: {list(MEASURES)}")

    out_dir = Path(out_dir)
    cal = _Calendar.from_protocol(protocol)
    sites = {site.id: site for site in protocol.sites}
    hsj = {
        _area_number(site.areas[0]): pop
        for site in protocol.sites
        if (pop := _hsj_population(site)) is not None
    }
    areas = [_draw_area(seed, number, hsj.get(number)) for number in range(1, n_areas + 1)]

    frames: dict[str, list[pl.DataFrame]] = {}
    episode_frames: dict[str, list[pl.DataFrame]] = {}
    left_out = set(protocol.vanguard_areas) - set(owner)
    cohort_areas = _cohort_areas(protocol, n_areas)
    for area in areas:
        if area.code in left_out:  # a vanguard site outside this subset: not a comparator
            continue
        site = sites.get(owner.get(area.code, ""))
        counts = _area_counts(seed, area, cal, _rate_ratios(site, cal, protocol.start))
        group = site.id if site is not None else "comparison"
        if (site is not None and site.patient_level) or area.code in cohort_areas:
            episodes, counts.bed_days = _patient_episodes(seed, area, cal, counts)
            episode_frames.setdefault(group, []).append(episodes)
        frames.setdefault(group, []).append(_aggregate_frame(area, cal, counts))

    paths: dict[str, Any] = {"aggregate": [], "episodes": []}
    n_rows = {"aggregate": 0, "episodes": 0, "areas": n_areas}
    for group in [site.id for site in protocol.sites] + ["comparison"]:
        folder = out_dir / "landing" / group / EXTRACT_DATE
        folder.mkdir(parents=True, exist_ok=True)
        if group in frames:
            aggregate = pl.concat(frames[group])
        else:
            aggregate = pl.DataFrame(schema=_AGGREGATE_SCHEMA)
        aggregate.write_csv(folder / "aggregate.csv")
        paths["aggregate"].append(str(folder / "aggregate.csv"))
        n_rows["aggregate"] += aggregate.height
        if group in episode_frames:
            episodes = pl.concat(episode_frames[group])
            episodes.write_csv(folder / "episodes.csv")
            paths["episodes"].append(str(folder / "episodes.csv"))
            n_rows["episodes"] += episodes.height

    reference = out_dir / "reference"
    reference.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "area_code": [a.code for a in areas],
            "area_name": [f"Area {a.number:03d}" for a in areas],
            "population_2012": [a.population_2012 for a in areas],
            "pct_aged_65_plus": [round(a.pct_65, 1) for a in areas],
            "imd_score": [round(a.imd, 2) for a in areas],
        }
    ).write_csv(reference / "areas.csv")
    paths["areas"] = str(reference / "areas.csv")

    truth_path = out_dir / "truth.json"
    truth = _truth(seed, protocol, cohort_areas)
    truth_path.write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    paths["truth"] = str(truth_path)
    return {
        "seed": seed,
        "n_areas": n_areas,
        "n_sites": len(protocol.sites),
        "n_comparison_areas": n_areas - len(owner),
        "n_rows": n_rows,
        "paths": paths,
    }
