"""The synthetic demo data: deterministic, internally consistent and realistic enough to test on.

Most tests share one small run (three sites, one patient-level, 40 areas) to stay fast.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import SHARED_REFERENCE
from transforms.demo_data import (
    EMERGENCY_METHODS,
    EXTRACT_DATE,
    HSJ_POPULATION,
    MEASURES,
    TRUE_EFFECTS,
    generate_demo,
)
from transforms.protocol import Protocol

SITES = ["south-somerset", "dudley", "wirral"]
N_AREAS = 60
SEED = 7

AGGREGATE_COLUMNS = ["area_code", "month", "measure", "count", "population"]
EPISODE_COLUMNS = [
    "patient_id",
    "admission_date",
    "discharge_date",
    "admission_method",
    "primary_diagnosis",
    "age",
    "sex",
    "area_code",
]
AGGREGATE_SCHEMA = {
    "area_code": pl.String,
    "month": pl.Date,
    "measure": pl.String,
    "count": pl.Int64,
    "population": pl.Int64,
}
EPISODE_SCHEMA = {
    "patient_id": pl.String,
    "admission_date": pl.Date,
    "discharge_date": pl.Date,
    "admission_method": pl.String,
    "primary_diagnosis": pl.String,
    "age": pl.Int64,
    "sex": pl.String,
    "area_code": pl.String,
}


@pytest.fixture(scope="module")
def small(protocol: Protocol) -> Protocol:
    return protocol.subset(SITES)


@pytest.fixture(scope="module")
def demo(small: Protocol, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    summary = generate_demo(out, seed=SEED, protocol=small, n_areas=N_AREAS)
    assert summary["n_areas"] == N_AREAS
    return out


def _landing(out: Path, group: str, kind: str) -> Path:
    return out / "landing" / group / EXTRACT_DATE / f"{kind}.csv"


def _aggregate(out: Path, group: str) -> pl.DataFrame:
    return pl.read_csv(_landing(out, group, "aggregate"), schema=AGGREGATE_SCHEMA)


def _episodes(out: Path, group: str = "south-somerset") -> pl.DataFrame:
    return pl.read_csv(_landing(out, group, "episodes"), schema=EPISODE_SCHEMA)


def _hashes(out: Path) -> dict[str, str]:
    return {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


def _monthly(frame: pl.DataFrame, measure: str) -> pl.DataFrame:
    """Pooled monthly count, population and rate per 1,000 for one measure."""
    return (
        frame.filter(pl.col("measure") == measure)
        .group_by("month")
        .agg(pl.col("count").sum(), pl.col("population").sum())
        .sort("month")
        .with_columns(rate=pl.col("count") / pl.col("population") * 1000)
    )


def _did_ratio(out: Path, site: str, measure: str, go_live: date) -> float:
    """Ratio of the site's post/pre change in log rate to the comparison pool's."""
    site_rates = _monthly(_aggregate(out, site), measure)
    pool_rates = _monthly(_aggregate(out, "comparison"), measure)
    gap = np.log(site_rates["rate"].to_numpy()) - np.log(pool_rates["rate"].to_numpy())
    post = (site_rates["month"] >= go_live).to_numpy()
    return float(np.exp(gap[post].mean() - gap[~post].mean()))


# Determinism ---------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(demo: Path, small: Protocol, tmp_path: Path):
    summary = generate_demo(tmp_path, seed=SEED, protocol=small, n_areas=N_AREAS)
    first, second = _hashes(demo), _hashes(tmp_path)
    assert len(first) == 4 + 1 + 1 + 1  # 3 sites + comparison, episodes, areas, truth
    assert first == second
    assert summary["n_rows"]["episodes"] == _episodes(tmp_path).height


def test_different_seed_gives_different_data(demo: Path, small: Protocol, tmp_path: Path):
    generate_demo(tmp_path, seed=SEED + 1, protocol=small, n_areas=N_AREAS)
    first, second = _hashes(demo), _hashes(tmp_path)
    assert first.keys() == second.keys()
    differing = {name for name in first if first[name] != second[name]}
    assert differing == set(first)  # every file, truth.json included (it records the seed)


# Shape ---------------------------------------------------------------------------------


def test_writes_expected_files_and_exact_columns(demo: Path, small: Protocol):
    for group in [*SITES, "comparison"]:
        with open(_landing(demo, group, "aggregate")) as handle:
            assert handle.readline().strip().split(",") == AGGREGATE_COLUMNS
    with open(_landing(demo, "south-somerset", "episodes")) as handle:
        assert handle.readline().strip().split(",") == EPISODE_COLUMNS
    assert not _landing(demo, "dudley", "episodes").exists()
    assert not _landing(demo, "wirral", "episodes").exists()
    areas = pl.read_csv(demo / "reference" / "areas.csv")
    assert areas.columns == [
        "area_code",
        "area_name",
        "population_2012",
        "pct_aged_65_plus",
        "imd_score",
    ]
    assert areas["area_code"].to_list() == [f"A{i:03d}" for i in range(1, N_AREAS + 1)]
    assert areas["area_name"][0] == "Area 001"


def test_aggregate_has_one_row_per_area_month_measure(demo: Path, small: Protocol):
    months = small.months
    for group in [*SITES, "comparison"]:
        frame = _aggregate(demo, group)
        expected_areas = (
            sorted(small.site(group).areas)
            if group != "comparison"
            else [
                code
                for code in (f"A{i:03d}" for i in range(1, N_AREAS + 1))
                if code not in small.vanguard_areas
            ]
        )
        assert sorted(frame["area_code"].unique().to_list()) == expected_areas
        assert frame.height == len(expected_areas) * len(months) * len(MEASURES)
        assert frame.select("area_code", "month", "measure").is_unique().all()
        assert set(frame["measure"].unique().to_list()) == set(MEASURES)
        assert frame["month"].min() == date(2012, 4, 1)
        assert frame["month"].max() == date(2019, 3, 1)
        assert frame["count"].min() >= 0
    raw = _landing(demo, "comparison", "aggregate").read_text().splitlines()[1]
    assert raw.split(",")[1] == "2012-04-01"


# Patient-level episodes ----------------------------------------------------------------


def test_episodes_reproduce_the_aggregate_exactly(demo: Path):
    episodes = _episodes(demo)
    emergency = episodes.filter(pl.col("admission_method").is_in(EMERGENCY_METHODS))
    derived = (
        emergency.with_columns(
            month=pl.col("admission_date").dt.truncate("1mo"),
            stay=(pl.col("discharge_date") - pl.col("admission_date")).dt.total_days(),
        )
        .group_by("area_code", "month")
        .agg(
            emergency_admissions=pl.len().cast(pl.Int64),
            mh_emergency_admissions=pl.col("primary_diagnosis")
            .str.starts_with("F")
            .sum()
            .cast(pl.Int64),
            bed_days=pl.col("stay").sum().cast(pl.Int64),
        )
    )
    aggregate = (
        _aggregate(demo, "south-somerset")
        .filter(pl.col("measure") != "ae_attendances")
        .pivot(on="measure", index=["area_code", "month"], values="count")
    )
    joined = aggregate.join(derived, on=["area_code", "month"], how="left", suffix="_ep")
    assert joined.height == 84
    for measure in ("emergency_admissions", "mh_emergency_admissions", "bed_days"):
        from_episodes = joined[f"{measure}_ep"].fill_null(0)
        assert (joined[measure] == from_episodes).all(), measure
    assert joined["emergency_admissions"].sum() > 50_000


def test_episode_fields_look_like_hes(demo: Path):
    episodes = _episodes(demo)
    assert episodes["patient_id"].str.contains(r"^[0-9A-F]{16}$").all()
    assert episodes["primary_diagnosis"].str.contains(r"^[A-Z][0-9]{2}[0-9X]$").all()
    assert episodes["admission_date"].min() >= date(2012, 4, 1)
    assert episodes["discharge_date"].max() <= date(2019, 3, 31)
    stay = (episodes["discharge_date"] - episodes["admission_date"]).dt.total_days()
    assert stay.min() == 0 and 40 <= stay.max() <= 60
    assert stay.median() < stay.mean()  # skewed
    assert episodes["age"].min() >= 0 and episodes["age"].max() <= 104
    sexes = episodes["sex"].value_counts().to_dict(as_series=False)
    sexes = dict(zip(sexes["sex"], sexes["count"], strict=True))
    assert set(sexes) == {"1", "2", "9"} and sexes["9"] < 0.01 * episodes.height
    assert set(episodes["area_code"].unique()) == {"A004"}

    methods = episodes["admission_method"]
    allowed = set(EMERGENCY_METHODS) | {"11", "12", "13", "31", "81"}
    assert set(methods.unique()) <= allowed
    counts = methods.value_counts(sort=True)
    assert counts["admission_method"][0] == "21"
    is_emergency = methods.is_in(EMERGENCY_METHODS)
    elective_ratio = (~is_emergency).sum() / is_emergency.sum()
    assert 0.4 < elective_ratio < 0.6
    mh = episodes.filter(is_emergency & pl.col("primary_diagnosis").str.starts_with("F"))
    assert 0.02 < mh.height / is_emergency.sum() < 0.08
    assert {"F329", "F200", "F102"} <= set(mh["primary_diagnosis"].unique())
    # Maternity and birth-at-home codes only where they make sense.
    maternity = episodes.filter(pl.col("admission_method") == "31")
    assert (maternity["sex"] == "2").all() and maternity["age"].is_between(15, 45).all()
    assert (episodes.filter(pl.col("admission_method") == "2C")["age"] == 0).all()


def test_a_patient_ages_consistently_across_episodes(demo: Path):
    episodes = _episodes(demo).filter(pl.col("age").is_between(1, 103))
    spans = (
        episodes.group_by("patient_id")
        .agg(
            n=pl.len(),
            sexes=pl.col("sex").n_unique(),
            drift=(
                (pl.col("age") - pl.col("age").first())
                - (pl.col("admission_date") - pl.col("admission_date").first()).dt.total_days()
                / 365.25
            )
            .abs()
            .max(),
        )
        .filter(pl.col("n") > 1)
    )
    assert spans.height > 5_000
    assert spans["sexes"].max() == 1
    assert spans["drift"].max() < 1.01


def test_older_patients_have_more_admissions(demo: Path):
    areas = pl.read_csv(demo / "reference" / "areas.csv")
    pct_65 = areas.filter(pl.col("area_code") == "A004")["pct_aged_65_plus"][0] / 100
    emergency = _episodes(demo).filter(pl.col("admission_method").is_in(EMERGENCY_METHODS))
    share_65 = (emergency["age"] >= 65).mean()
    assert 1.8 * pct_65 < share_65 < 0.8


def test_heavy_users_regress_to_the_mean(demo: Path):
    """Top 4% by use in the year before go-live use far less the next year, although the
    site's true effect is only 5%: the fall is mostly selection, not change."""
    assert TRUE_EFFECTS["south-somerset"]["emergency_admissions"] == 0.95
    episodes = _episodes(demo)
    emergency = episodes.filter(pl.col("admission_method").is_in(EMERGENCY_METHODS))

    def use(start: date, end: date, name: str) -> pl.DataFrame:
        window = pl.col("admission_date").is_between(start, end, closed="left")
        return emergency.filter(window).group_by("patient_id").agg(pl.len().alias(name))

    baseline = use(date(2014, 3, 1), date(2015, 3, 1), "baseline")
    following = use(date(2015, 3, 1), date(2016, 3, 1), "following")
    patients = (
        episodes.select("patient_id")
        .unique()
        .join(baseline, on="patient_id", how="left")
        .join(following, on="patient_id", how="left")
        .fill_null(0)
        .sort(["baseline", "patient_id"], descending=[True, False])
    )
    top = patients.head(math.ceil(0.04 * patients.height))
    naive_fall = 1 - top["following"].sum() / top["baseline"].sum()
    assert naive_fall > 0.2
    # The whole area's admissions fell by about the true 5% (plus growth), not by 20%+.
    assert patients["following"].sum() / patients["baseline"].sum() > 0.9


def test_cohort_comparison_areas_get_episodes_and_truth(small: Protocol, tmp_path: Path):
    """Areas listed for a cohort claim get patient-level episodes in the comparison
    extract (those beyond n_areas are skipped), and truth.json records each claim."""
    site = small.subset(["south-somerset"])
    cohort = dataclasses.replace(site.claims.cohort, comparison_areas=("A052", "A150"))
    with_area = dataclasses.replace(site, claims=dataclasses.replace(site.claims,
                                                                     cohort=cohort))
    generate_demo(tmp_path, seed=SEED, protocol=with_area, n_areas=N_AREAS)
    episodes = _episodes(tmp_path, "comparison")
    assert episodes["area_code"].unique().to_list() == ["A052"]
    # Exactly the comparison area's aggregate emergency counts, as for site extracts.
    aggregate = _aggregate(tmp_path, "comparison").filter(
        (pl.col("area_code") == "A052") & (pl.col("measure") == "emergency_admissions"))
    emergency = episodes.filter(pl.col("admission_method").is_in(EMERGENCY_METHODS))
    assert emergency.height == aggregate["count"].sum()
    truth = json.loads((tmp_path / "truth.json").read_text())
    claim = truth["claims"]["south-somerset"]
    assert claim["check"] == "cohort" and claim["comparison_areas"] == ["A052"]
    assert claim["rate_ratio"] == TRUE_EFFECTS["south-somerset"]["emergency_admissions"]
    assert claim["claimed_pct"] == -30.0
    # Without the claim's site in the run, no comparison episodes are written.
    generate_demo(tmp_path / "none", seed=SEED, protocol=small.subset(["dudley"]),
                  n_areas=N_AREAS)
    assert not _landing(tmp_path / "none", "comparison", "episodes").exists()


# Truth ---------------------------------------------------------------------------------


def test_truth_covers_every_site_and_measure(demo: Path, small: Protocol):
    truth = json.loads((demo / "truth.json").read_text())
    assert truth["seed"] == SEED and truth["extract_date"] == EXTRACT_DATE
    assert truth["description"]
    assert list(truth["sites"]) == SITES
    for site in small.sites:
        entry = truth["sites"][site.id]
        assert entry["go_live"] == site.go_live.strftime("%Y-%m")
        assert entry["areas"] == sorted(site.areas)
        assert set(entry["effects"]) == set(MEASURES)
        for measure, effect in entry["effects"].items():
            expected = TRUE_EFFECTS.get(site.id, {}).get(measure, 1.0)
            assert effect["rate_ratio"] == expected
            assert effect["pct_change"] == pytest.approx(100 * (expected - 1))
    assert truth["sites"]["dudley"]["effects"]["emergency_admissions"]["rate_ratio"] == 0.90
    assert truth["sites"]["wirral"]["effects"]["emergency_admissions"]["rate_ratio"] == 1.0


def test_effects_table_names_real_sites_and_is_mostly_null(protocol: Protocol):
    site_ids = {site.id for site in protocol.sites}
    assert set(TRUE_EFFECTS) <= site_ids
    ratios = [r for effects in TRUE_EFFECTS.values() for r in effects.values()]
    assert all(set(effects) <= set(MEASURES) for effects in TRUE_EFFECTS.values())
    assert all(0.8 <= r <= 1.1 and r != 1.0 for r in ratios)
    assert len(ratios) < 0.2 * len(site_ids) * len(MEASURES)
    assert TRUE_EFFECTS["calderdale"] == {"emergency_admissions": 0.92, "bed_days": 0.90}
    assert "harrogate" not in TRUE_EFFECTS


def test_effects_are_applied_from_go_live(demo: Path, small: Protocol):
    go_live = small.site("dudley").go_live
    assert _did_ratio(demo, "dudley", "emergency_admissions", go_live) == pytest.approx(
        0.90, abs=0.04
    )
    assert _did_ratio(demo, "wirral", "emergency_admissions", go_live) == pytest.approx(
        1.0, abs=0.04
    )
    assert _did_ratio(demo, "wirral", "ae_attendances", go_live) == pytest.approx(1.05, abs=0.03)


# Realism -------------------------------------------------------------------------------


def test_populations_and_area_characteristics_in_range(demo: Path):
    areas = pl.read_csv(demo / "reference" / "areas.csv")
    assert areas["population_2012"].is_between(80_000, 900_000).all()
    assert areas["pct_aged_65_plus"].is_between(10, 28).all()
    assert areas["imd_score"].is_between(5, 50).all()
    assert areas["population_2012"].n_unique() == N_AREAS  # no pile-up at the bounds
    somerset = areas.filter(pl.col("area_code") == "A004")["population_2012"][0]
    assert somerset == pytest.approx(132_354, rel=0.03)

    pool = _aggregate(demo, "comparison").filter(pl.col("measure") == "emergency_admissions")
    growth = pool.group_by("area_code").agg(
        (pl.col("population").last() / pl.col("population").first()) ** (12 / 83) - 1
    )
    assert growth["population"].is_between(0.004, 0.011).all()


def test_rates_per_1000_are_realistic(demo: Path):
    pool = _aggregate(demo, "comparison")
    rate = {m: _monthly(pool, m)["rate"].mean() for m in MEASURES}
    assert 7.5 < rate["emergency_admissions"] < 10
    assert 25 < rate["ae_attendances"] < 35
    assert 0.3 < rate["mh_emergency_admissions"] < 0.5
    assert 5 < rate["bed_days"] / rate["emergency_admissions"] < 6


def test_emergency_admissions_peak_in_winter(demo: Path):
    monthly = _monthly(_aggregate(demo, "comparison"), "emergency_admissions")
    by_month = monthly.group_by(pl.col("month").dt.month().alias("m")).agg(pl.col("rate").mean())
    rate = dict(zip(by_month["m"], by_month["rate"], strict=True))
    winter, summer = (rate[12] + rate[1]) / 2, (rate[7] + rate[8]) / 2
    assert 1.1 < winter / summer < 1.35
    assert max(rate, key=rate.get) in (12, 1)


def test_secular_growth_is_about_three_percent_a_year(demo: Path):
    pool = _aggregate(demo, "comparison").filter(pl.col("measure") == "emergency_admissions")
    per_area = pool.with_columns(rate=pl.col("count") / pl.col("population"))
    # Pool all comparison areas: log rate on time with area and calendar-month effects.
    t = np.array([(m.year - 2012) * 12 + m.month - 4 for m in per_area["month"]]) / 12
    area = per_area["area_code"].to_numpy()
    cal = np.array([m.month for m in per_area["month"]])
    design = np.column_stack(
        [t]
        + [(area == a).astype(float) for a in np.unique(area)]
        + [(cal == c).astype(float) for c in range(2, 13)]
    )
    coef, *_ = np.linalg.lstsq(design, np.log(per_area["rate"].to_numpy()), rcond=None)
    assert 0.02 < math.expm1(coef[0]) < 0.04


def test_hsj_populations_match_the_reference_file():
    path = SHARED_REFERENCE / "vanguard_sites_2015.csv"
    if not path.exists():
        pytest.skip("shared reference data not available")
    with open(path, newline="") as handle:
        published = {
            int(row["nhse_vanguard_number"]): round(float(row["hsj_population"]))
            for row in csv.DictReader(handle)
            if row["hsj_population"]
        }
    assert published == HSJ_POPULATION


# Validation ----------------------------------------------------------------------------


def test_rejects_protocol_areas_beyond_n_areas(protocol: Protocol, tmp_path: Path):
    later = protocol.subset(["later-wave-pacs-demo"])  # area A039
    with pytest.raises(ValueError, match="A039"):
        generate_demo(tmp_path, seed=1, protocol=later, n_areas=38)
    assert not (tmp_path / "truth.json").exists()


def test_rejects_area_codes_it_cannot_number(protocol: Protocol, tmp_path: Path):
    site = dataclasses.replace(protocol.site("wirral"), areas=("X001",))
    odd = dataclasses.replace(protocol, sites=(site,))
    with pytest.raises(ValueError, match="X001"):
        generate_demo(tmp_path, seed=1, protocol=odd, n_areas=10)
