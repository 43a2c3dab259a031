"""What a nightly run takes from the landing area and which sites it re-fits."""

from datetime import date, datetime
from pathlib import Path

import pytest

from transforms.pipeline import extracts_between, stale_sites

LANDING = Path("landing")


def _files(*paths: str) -> dict[str, list[Path]]:
    grouped: dict[str, list[Path]] = {}
    for path in paths:
        grouped.setdefault(path.split("/")[0], []).append(LANDING / path)
    return grouped


GROUPED = _files(
    "dudley/2019-05-14/aggregate.csv",
    "dudley/2019-05-15/aggregate.csv",
    "dudley/2019-05-15/aggregate.csv.rejected.json",
    "wirral/2019-05-16/episodes.csv",
    "wirral/undated/aggregate.csv",
    "comparison/2019-13-01/aggregate.csv",
)


def _names(kept: dict[str, list[Path]]) -> set[str]:
    return {str(p.relative_to(LANDING)) for paths in kept.values() for p in paths}


def test_interval_takes_its_own_extract_dates_end_exclusive():
    kept = extracts_between(GROUPED, date(2019, 5, 15), date(2019, 5, 16))
    assert _names(kept) == {
        "dudley/2019-05-15/aggregate.csv", "dudley/2019-05-15/aggregate.csv.rejected.json",
        # folders that are not dates go to every run, where ingest refuses them loudly
        "wirral/undated/aggregate.csv", "comparison/2019-13-01/aggregate.csv",
    }


def test_day_without_extracts_takes_only_undated_files():
    kept = extracts_between(GROUPED, date(2019, 5, 17), date(2019, 5, 18))
    assert _names(kept) == {"wirral/undated/aggregate.csv", "comparison/2019-13-01/aggregate.csv"}


def test_no_window_takes_everything():
    assert _names(extracts_between(GROUPED, None, None)) == _names(GROUPED)


def test_consecutive_days_partition_the_dated_files():
    undated = {"wirral/undated/aggregate.csv", "comparison/2019-13-01/aggregate.csv"}
    days = [date(2019, 5, d) for d in range(13, 18)]
    seen: list[str] = []
    for start, end in zip(days, days[1:], strict=False):
        seen += sorted(_names(extracts_between(GROUPED, start, end)) - undated)
    assert sorted(seen) == sorted(_names(GROUPED) - undated)  # each file on exactly one day


T = [datetime(2019, 5, 15, h) for h in range(6)]
SITES = ["dudley", "wirral", "calderdale"]
SITE_SOURCES = {"dudley", "wirral", "calderdale", "harrogate"}


def test_only_sites_with_newer_data_are_refitted():
    fitted = {"dudley": T[2], "wirral": T[2], "calderdale": T[2]}
    loaded = {"dudley": T[3], "wirral": T[1], "comparison": T[1], "harrogate": T[4]}
    assert stale_sites(SITES, SITE_SOURCES, fitted, loaded) == ["dudley"]


def test_new_comparison_data_refits_every_site():
    fitted = {"dudley": T[2], "wirral": T[2], "calderdale": T[2]}
    loaded = {"dudley": T[1], "comparison": T[3]}
    assert stale_sites(SITES, SITE_SOURCES, fitted, loaded) == SITES


def test_unfitted_sites_and_force():
    fitted = {"dudley": T[2], "wirral": T[2]}
    loaded = {"dudley": T[1], "comparison": T[1]}
    assert stale_sites(SITES, SITE_SOURCES, fitted, loaded) == ["calderdale"]
    assert stale_sites(SITES, SITE_SOURCES, fitted, loaded, force=True) == SITES


@pytest.mark.parametrize("when", [T[0], T[2]])
def test_nothing_new_means_nothing_to_do(when):
    fitted = dict.fromkeys(SITES, T[2])
    assert stale_sites(SITES, SITE_SOURCES, fitted, {"dudley": when, "comparison": when}) == []
