"""NHS England's published A&E statistics load as the `nhse_ae` source and become the
provider-by-month panel, on the real file (274 organisations, April 2016 to March 2019)."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from expectations import validate_provider_panel
from expectations.contract import PROVIDER_OUTCOMES
from tests.conftest import SHARED_REFERENCE
from transforms import pipeline, warehouse
from transforms.demo_data import generate_demo
from transforms.ingest import ingest_file
from transforms.panel import NATIONAL_AE_SOURCE, build_provider_panel

REFERENCE = SHARED_REFERENCE / "nhs_ae_attendances_2016_2019.csv"
ROWS = 12_765  # data rows of the reference file

pytestmark = pytest.mark.skipif(not REFERENCE.is_file(), reason="reference data not present")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, protocol) -> tuple[Path, Path]:
    """A demo landing area for one site plus the real national A&E file, run to the panel."""
    root = tmp_path_factory.mktemp("national")
    small = protocol.subset(["dudley"])
    generate_demo(root, seed=7, protocol=small, n_areas=45)
    landing = root / "landing"
    target = landing / NATIONAL_AE_SOURCE / "2019-05-15" / "ae_attendances.csv"
    target.parent.mkdir(parents=True)
    shutil.copy(REFERENCE, target)
    db = root / "w.duckdb"
    for source, files in pipeline.sources_in(landing, small).items():
        report = pipeline.ingest_source(db, small, source, files, root / "quarantine")
        assert not report.errors, report.errors
    pipeline.build_panel_step(db, small)
    return db, target


def test_the_real_file_loads_every_row(loaded):
    db, path = loaded
    prov = warehouse.query(db, "SELECT * FROM provenance WHERE source_id = 'nhse_ae'")
    row = prov.row(0, named=True)
    assert (row["status"], row["kind"], row["rows_received"], row["rows_loaded"]) == (
        "loaded", "nhse_ae", ROWS, ROWS)
    staged = warehouse.query(
        db, "SELECT count(*) AS n, count(DISTINCT org_code) AS orgs, "
            "count(DISTINCT period) AS months, min(period) AS first, max(period) AS last "
            "FROM stg_nhse_ae",
    ).row(0, named=True)
    assert staged == {"n": ROWS, "orgs": 274, "months": 36, "first": date(2016, 4, 1),
                      "last": date(2019, 3, 1)}
    checks = warehouse.query(
        db, "SELECT suite, success FROM validation_results WHERE event_id = ? ORDER BY suite",
        [row["event_id"]],
    )
    assert checks.rows() == [("stg_nhse_ae", True), ("stg_nhse_ae[sql]", True)]


def test_the_provider_panel_holds_every_count_by_outcome(loaded):
    db, _ = loaded
    panel = warehouse.query(db, "SELECT * FROM provider_month_panel")
    assert panel.height == 3 * ROWS
    assert set(panel["outcome"].unique()) == set(PROVIDER_OUTCOMES)
    rf4 = panel.filter((pl.col("org_code") == "RF4") & (pl.col("month") == date(2017, 3, 1)))
    values = dict(rf4.select("outcome", "count").rows())
    # the first rows of the published file
    assert values["ae_attendances_type1"] == 21289
    assert values["ae_breaches_type1"] == 2879
    assert values["ae_admissions_type1"] == 5060
    assert values["ae_attendances_type2"] == 813
    assert values["ae_attendances_other"] == 2850
    stored = warehouse.query(db, "SELECT success FROM validation_results "
                                 "WHERE target = 'provider_month_panel'")
    assert stored["success"].to_list() == [True]
    # organisations are not areas: the area panel is untouched by the national file
    areas = warehouse.query(db, "SELECT DISTINCT area_code FROM area_month_panel")
    assert "RF4" not in areas["area_code"].to_list()


def test_a_reissued_national_file_wins_row_by_row(loaded, protocol, tmp_path):
    db = tmp_path / "w.duckdb"
    shutil.copy(loaded[0], db)
    corrected = tmp_path / "landing" / NATIONAL_AE_SOURCE / "2019-06-01" / "ae.csv"
    corrected.parent.mkdir(parents=True)
    corrected.write_text("period,org_code,type,attendances,breaches,admissions\n"
                         "2017-03-01,RF4,1,21300,2879,5060\n")
    outcome = ingest_file(db, NATIONAL_AE_SOURCE, corrected, protocol.subset(["dudley"]),
                          tmp_path / "q")
    assert outcome.status == "loaded"
    staged = warehouse.query(
        db, "SELECT n.*, p.extract_date FROM stg_nhse_ae n JOIN provenance p USING (event_id)"
    )
    panel = build_provider_panel(staged, protocol.months)
    rf4 = panel.filter((pl.col("org_code") == "RF4") & (pl.col("month") == date(2017, 3, 1))
                       & (pl.col("outcome") == "ae_attendances_type1"))
    assert rf4["count"].to_list() == [21300]
    assert panel.height == 3 * ROWS
    # the earlier full file is only partly covered, so it stays current
    assert warehouse.query(db, "SELECT count(*) AS n FROM current_files "
                               "WHERE source_id = 'nhse_ae'")["n"][0] == 2


def test_the_provider_panel_suite_catches_bad_rows():
    panel = pl.DataFrame({
        "org_code": ["RF4", "RF4", "rf4"],
        "month": [date(2017, 3, 1), date(2017, 3, 1), date(2017, 4, 15)],
        "outcome": ["ae_attendances_type1", "ae_attendances_type1", "ae_visits"],
        "count": [5, 5, -1],
    })
    result = validate_provider_panel(panel.to_pandas(), start=date(2012, 4, 1),
                                     end=date(2019, 3, 1))
    rules = {(f.rule, f.column) for f in result.failures}
    assert ("expect_compound_columns_to_be_unique", "org_code, month, outcome") in rules
    assert ("expect_column_values_to_match_regex", "org_code") in rules
    assert ("expect_column_values_to_be_in_set", "outcome") in rules
    assert ("expect_column_values_to_be_between", "count") in rules
    assert ("month_is_first_of_month", "month") in rules
