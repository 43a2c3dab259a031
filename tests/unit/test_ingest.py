"""Ingest: good files load once, bad files are quarantined with a clear reason and the
warehouse is left exactly as it was."""

import json
from pathlib import Path

import pytest

from transforms import warehouse
from transforms.ingest import IngestError, ingest_file

HEADER = "area_code,month,measure,count,population\n"
GOOD_ROWS = (
    "A021,2015-01-01,emergency_admissions,2234,314435\n"
    "A021,2015-02-01,emergency_admissions,2100,314435\n"
    "A021,2015-01-01,bed_days,12000,314435\n"
)


@pytest.fixture
def small(protocol):
    return protocol.subset(["dudley", "south-somerset"])


def _drop(root: Path, source: str, text: str, name: str = "aggregate.csv") -> Path:
    path = root / "landing" / source / "2019-05-15" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _counts(db: Path) -> dict:
    return {
        table: warehouse.query(db, f"SELECT count(*) AS n FROM {table}")["n"][0]
        for table in ("stg_aggregate", "stg_episodes", "provenance", "validation_results")
    }


def test_good_file_loads_once_and_reconciles(tmp_path, small):
    db = tmp_path / "w.duckdb"
    path = _drop(tmp_path, "dudley", HEADER + GOOD_ROWS)
    first = ingest_file(db, "dudley", path, small, tmp_path / "q")
    assert (first.status, first.rows_received, first.rows_loaded) == ("loaded", 3, 3)
    again = ingest_file(db, "dudley", path, small, tmp_path / "q")
    assert again.status == "skipped"
    assert _counts(db)["stg_aggregate"] == 3
    prov = warehouse.query(db, "SELECT * FROM provenance").row(0, named=True)
    assert prov["rows_received"] == prov["rows_loaded"] + prov["rows_quarantined"] == 3
    assert prov["extract_date"].isoformat() == "2019-05-15" and len(prov["sha256"]) == 64
    assert prov["code_version"]


def test_episodes_file_loads_into_its_own_table(tmp_path, small):
    db = tmp_path / "w.duckdb"
    text = (
        "patient_id,admission_date,discharge_date,admission_method,primary_diagnosis,age,sex,"
        "area_code\n"
        "0C2FB8451E156599,2015-04-01,2015-04-03,21,I214,63,1,A004\n"
        "1AB662A79E209AEB,2015-04-02,2015-04-02,11,K409,69,2,A004\n"
    )
    path = _drop(tmp_path, "south-somerset", text, "episodes.csv")
    assert ingest_file(db, "south-somerset", path, small, tmp_path / "q").kind == "episodes"
    assert _counts(db)["stg_episodes"] == 2


BAD_CASES = {
    "negative count": (
        HEADER + GOOD_ROWS + "A021,2015-03-01,emergency_admissions,-5,314435\n",
        ["count"],
    ),
    "not a number": (HEADER + "A021,2015-03-01,emergency_admissions,lots,314435\n",
                     ["`count`", "line 2", "'lots'", "whole numbers"]),
    "bad date": (HEADER + "A021,2015-13-01,emergency_admissions,5,314435\n",
                 ["`month`", "line 2", "'2015-13-01'"]),
    "missing column": ("area_code,month,measure,count\nA021,2015-01-01,bed_days,5\n",
                       ["missing columns ['population']"]),
    "unknown measure": (HEADER + "A021,2015-03-01,deaths,5,314435\n", ["measure"]),
    "other site's area": (HEADER + "A004,2015-03-01,bed_days,5,314435\n",
                          ["area_code", "outside site 'dudley'"]),
    "outside study window": (HEADER + "A021,2011-03-01,bed_days,5,314435\n", ["month"]),
    "header only": (HEADER, ["no data rows"]),
    "duplicate key": (HEADER + GOOD_ROWS + GOOD_ROWS.splitlines(keepends=True)[0],
                      ["area_code, month, measure"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_file_is_quarantined_and_warehouse_unchanged(tmp_path, small, case):
    db = tmp_path / "w.duckdb"
    good = _drop(tmp_path, "dudley", HEADER + GOOD_ROWS)
    ingest_file(db, "dudley", good, small, tmp_path / "q")
    before = warehouse.query(db, "SELECT * FROM stg_aggregate ORDER BY ALL")

    text, expected = BAD_CASES[case]
    bad = _drop(tmp_path / "second", "dudley", text, "aggregate_v2.csv")
    with pytest.raises(IngestError) as err:
        ingest_file(db, "dudley", bad, small, tmp_path / "q")
    message = str(err.value)
    assert str(bad) in message
    for fragment in expected:
        assert fragment in message, message

    assert warehouse.query(db, "SELECT * FROM stg_aggregate ORDER BY ALL").equals(before)
    prov = warehouse.query(db, "SELECT * FROM provenance WHERE status = 'quarantined'")
    assert prov.height == 1
    row = prov.row(0, named=True)
    assert row["rows_loaded"] == 0 and row["rows_quarantined"] == row["rows_received"]
    copied = tmp_path / "q" / "dudley" / "2019-05-15" / "aggregate_v2.csv"
    assert copied.read_text() == text
    reason = json.loads(copied.with_name("aggregate_v2.csv.reason.json").read_text())
    assert reason["status"] == "quarantined" and reason["message"] == message


def test_unknown_source_is_rejected(tmp_path, small):
    path = _drop(tmp_path, "nowhere", HEADER + GOOD_ROWS)
    with pytest.raises(IngestError, match="unknown source 'nowhere'"):
        ingest_file(tmp_path / "w.duckdb", "nowhere", path, small, tmp_path / "q")
    assert (tmp_path / "q" / "nowhere" / "2019-05-15" / "aggregate.csv").is_file()


def test_path_like_source_is_quarantined_under_unknown(tmp_path, small):
    path = _drop(tmp_path, "dudley", HEADER + GOOD_ROWS)
    with pytest.raises(IngestError, match="unknown source"):
        ingest_file(tmp_path / "w.duckdb", "../../etc", path, small, tmp_path / "q")
    assert (tmp_path / "q" / "_unknown" / "2019-05-15" / "aggregate.csv").is_file()
    assert not (tmp_path / "etc").exists()
