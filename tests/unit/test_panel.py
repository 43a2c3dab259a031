from datetime import date

import polars as pl

from transforms.panel import build_panel, incomplete_areas, select_current
from transforms.protocol import Outcome

M1, M2 = date(2015, 1, 1), date(2015, 2, 1)


def _staged(rows):
    return pl.DataFrame(
        rows,
        schema=["source_id", "area_code", "month", "measure", "count", "population",
                "extract_date", "event_id"],
        orient="row",
    )


def test_site_area_takes_its_own_source_and_latest_extract():
    staged = _staged([
        ("site-a", "A001", M1, "emergency_admissions", 100, 1000, date(2019, 1, 1), 1),
        ("site-a", "A001", M1, "emergency_admissions", 120, 1000, date(2019, 2, 1), 2),
        ("comparison", "A001", M1, "emergency_admissions", 999, 1000, date(2019, 3, 1), 3),
        ("comparison", "B001", M1, "emergency_admissions", 50, 500, date(2019, 3, 1), 3),
        ("site-a", "B001", M1, "emergency_admissions", 1, 500, date(2019, 3, 1), 4),
    ])
    current = select_current(staged, {"A001": "site-a"}).sort("area_code")
    assert current.select("area_code", "count").rows() == [("A001", 120), ("B001", 50)]


def test_build_panel_maps_measures_to_outcomes_and_rates():
    current = _staged([
        ("s", "A001", M1, "emergency_admissions", 85, 10_000, None, 1),
        ("s", "A001", M2, "emergency_admissions", 90, 10_000, None, 1),
        ("s", "A001", M1, "bed_days", 500, 10_000, None, 1),
        ("s", "A001", date(2011, 1, 1), "emergency_admissions", 1, 10_000, None, 1),
    ])
    outcomes = (Outcome("emerg", "Emergency admissions", "emergency_admissions"),)
    panel = build_panel(current, outcomes, [M1, M2])
    assert panel.columns == ["area_code", "month", "outcome", "count", "population",
                             "rate_per_1000"]
    assert panel["outcome"].to_list() == ["emerg", "emerg"]
    assert panel["rate_per_1000"].to_list() == [8.5, 9.0]
    assert incomplete_areas(panel, 2).height == 0
    gaps = incomplete_areas(panel.head(1), 2)
    assert gaps.rows() == [("A001", "emerg", 1)]
