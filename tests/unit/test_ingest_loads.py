"""Load semantics: every accepted format loads the same rows, loads are idempotent, re-issued
extracts replace earlier ones explicitly, episodes are counted per area and month, refusals
stay visible until dealt with, and the CLI says what happened."""

from __future__ import annotations

import gzip
import json
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from expectations import (
    is_emergency_admission,
    is_mental_health_diagnosis,
    stg_aggregate,
    stg_episodes,
    stg_nhse_ae,
)
from expectations.contract import (
    FILE_CONTRACTS,
    Kind,
    emergency_admission_sql,
    mental_health_diagnosis_sql,
)
from expectations.sql_rules import (
    RuleContext,
    count_breaches,
    count_breaches_by_value,
    sql_list,
)
from expectations.validate import CheckFailure, ValidationResult
from transforms import ingest, warehouse
from transforms.cli import main
from transforms.ingest import REJECTED_SUFFIX, IngestError, ingest_file, landing_files
from transforms.panel import current_counts, select_current

SITE, EPISODE_SITE = "dudley", "south-somerset"
AGG = "area_code,month,measure,count,population\n"
ROWS = [
    "A021,2015-01-01,emergency_admissions,2234,314435\n",
    "A021,2015-02-01,emergency_admissions,2100,314435\n",
    "A021,2015-01-01,bed_days,12000,314435\n",
]
EPI = ("patient_id,admission_date,discharge_date,admission_method,primary_diagnosis,age,sex,"
       "area_code\n")


@pytest.fixture(scope="module")
def small(protocol):
    return protocol.subset([SITE, EPISODE_SITE])


def _drop(root: Path, source: str, extract: str, name: str, data: bytes | str) -> Path:
    path = root / "landing" / source / extract / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def _parquet(text: str, typed: bool) -> bytes:
    frame = pl.read_csv(text.encode(), infer_schema=typed, try_parse_dates=typed)
    sink = pa.BufferOutputStream()
    pq.write_table(frame.to_arrow(), sink)
    return sink.getvalue().to_pybytes()


TEXT = AGG + "".join(ROWS)
FORMATS = {
    "plain CSV": ("aggregate.csv", TEXT.encode()),
    "CSV with a byte-order mark": ("aggregate.csv", b"\xef\xbb\xbf" + TEXT.encode()),
    "CSV with CRLF line ends": ("aggregate.csv", TEXT.replace("\n", "\r\n").encode()),
    "CSV, columns in another order": (
        "aggregate.csv",
        b"month,area_code,population,measure,count\n"
        b"2015-01-01,A021,314435,emergency_admissions,2234\n"
        b"2015-02-01,A021,314435,emergency_admissions,2100\n"
        b"2015-01-01,A021,314435,bed_days,12000\n",
    ),
    "gzip CSV": ("aggregate.csv.gz", gzip.compress(TEXT.encode(), mtime=0)),
    "Parquet with text columns": ("aggregate.parquet", _parquet(TEXT, typed=False)),
    "Parquet with typed columns": ("aggregate.parquet", _parquet(TEXT, typed=True)),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_accepted_format_loads_the_same_rows(tmp_path, small, fmt):
    name, data = FORMATS[fmt]
    db = tmp_path / "w.duckdb"
    outcome = ingest_file(db, SITE, _drop(tmp_path, SITE, "2019-05-15", name, data), small,
                          tmp_path / "q")
    assert (outcome.status, outcome.rows_received, outcome.rows_loaded) == ("loaded", 3, 3)
    rows = warehouse.query(
        db, "SELECT area_code, month, measure, count, population FROM stg_aggregate ORDER BY ALL"
    ).rows()
    assert rows == [
        ("A021", date(2015, 1, 1), "bed_days", 12000, 314435),
        ("A021", date(2015, 1, 1), "emergency_admissions", 2234, 314435),
        ("A021", date(2015, 2, 1), "emergency_admissions", 2100, 314435),
    ]
    checks = warehouse.query(db, "SELECT suite, success FROM validation_results ORDER BY suite")
    assert checks.rows() == [("stg_aggregate", True), ("stg_aggregate[sql]", True)]


def test_the_same_bytes_under_another_name_are_skipped(tmp_path, small):
    db = tmp_path / "w.duckdb"
    first = _drop(tmp_path, SITE, "2019-05-15", "aggregate.csv", TEXT)
    copy = _drop(tmp_path, SITE, "2019-05-16", "renamed.csv", TEXT)
    assert ingest_file(db, SITE, first, small, tmp_path / "q").status == "loaded"
    before = warehouse.query(db, "SELECT * FROM provenance")
    assert ingest_file(db, SITE, copy, small, tmp_path / "q").status == "skipped"
    assert warehouse.query(db, "SELECT * FROM provenance").equals(before)
    assert warehouse.query(db, "SELECT count(*) AS n FROM stg_aggregate")["n"][0] == 3


def _staged(db: Path) -> pl.DataFrame:
    return warehouse.query(
        db,
        "SELECT s.source_id, s.area_code, s.month, s.measure, s.count, s.population, "
        "p.extract_date, p.event_id FROM stg_aggregate s JOIN provenance p USING (event_id)",
    )


def test_reissued_extract_replaces_the_earlier_one_and_both_are_kept(tmp_path, small):
    db = tmp_path / "w.duckdb"
    old = ingest_file(db, SITE, _drop(tmp_path, SITE, "2019-05-15", "aggregate.csv", TEXT),
                      small, tmp_path / "q")
    corrected = TEXT.replace(",2100,", ",2150,")
    new = ingest_file(db, SITE, _drop(tmp_path, SITE, "2019-06-01", "aggregate.csv", corrected),
                      small, tmp_path / "q")
    prov = warehouse.query(db, "SELECT event_id, status, superseded_by FROM provenance "
                               "ORDER BY event_id")
    assert prov.rows() == [(old.event_id, "loaded", new.event_id), (new.event_id, "loaded", None)]
    current = warehouse.query(db, "SELECT event_id FROM current_files")["event_id"].to_list()
    assert current == [new.event_id]
    assert warehouse.query(db, "SELECT count(*) AS n FROM stg_aggregate")["n"][0] == 6
    chosen = select_current(_staged(db), small.vanguard_areas)
    assert chosen.height == 3
    assert chosen.filter(pl.col("month") == date(2015, 2, 1))["count"].to_list() == [2150]


def test_partial_reissue_leaves_both_files_current_and_wins_key_by_key(tmp_path, small):
    db = tmp_path / "w.duckdb"
    ingest_file(db, SITE, _drop(tmp_path, SITE, "2019-05-15", "aggregate.csv", TEXT), small,
                tmp_path / "q")
    one_month = AGG + ROWS[1].replace(",2100,", ",2150,")
    ingest_file(db, SITE, _drop(tmp_path, SITE, "2019-06-01", "feb.csv", one_month), small,
                tmp_path / "q")
    assert warehouse.query(db, "SELECT count(*) AS n FROM current_files")["n"][0] == 2
    chosen = select_current(_staged(db), small.vanguard_areas).sort("month", "measure")
    assert chosen["count"].to_list() == [12000, 2234, 2150]


def test_a_late_older_extract_does_not_replace_a_newer_one(tmp_path, small):
    db = tmp_path / "w.duckdb"
    newer = ingest_file(db, SITE, _drop(tmp_path, SITE, "2019-06-01", "aggregate.csv", TEXT),
                        small, tmp_path / "q")
    older = ingest_file(db, SITE, _drop(tmp_path, SITE, "2019-05-15", "aggregate.csv",
                                        TEXT.replace(",2100,", ",1,")), small, tmp_path / "q")
    prov = dict(warehouse.query(db, "SELECT event_id, superseded_by FROM provenance").rows())
    assert prov == {newer.event_id: None, older.event_id: newer.event_id}
    chosen = select_current(_staged(db), small.vanguard_areas)
    assert 2100 in chosen["count"].to_list()


EPISODES = [
    # patient, admitted, discharged, method, diagnosis, age, sex, area
    ("0C2FB8451E156599", "2015-04-01", "2015-04-03", "21", "I214", 63, "1", "A004"),  # 2 days
    ("1AB662A79E209AEB", "2015-04-02", "2015-04-02", "11", "K409", 69, "2", "A004"),  # elective
    ("2AB662A79E209AEB", "2015-04-10", "2015-04-20", "2A", "F329", 30, "2", "A004"),  # MH, 10
    ("3AB662A79E209AEB", "2015-04-30", "2015-05-02", "28", "", 41, "9", "A004"),  # no diagnosis
    ("4AB662A79E209AEB", "2015-05-01", "2015-05-01", "99", "F05", 88, "0", "A004"),  # not known
    ("5AB662A79E209AEB", "2015-05-03", "2015-05-04", "24", "F05", 88, "1", "A004"),  # MH, 1
]


def _episodes_csv(rows=EPISODES) -> str:
    return EPI + "".join(",".join(str(v) for v in row) + "\n" for row in rows)


def test_episodes_are_counted_per_area_month_and_measure(tmp_path, small):
    db = tmp_path / "w.duckdb"
    ingest_file(db, EPISODE_SITE, _drop(tmp_path, EPISODE_SITE, "2019-05-15", "episodes.csv",
                                        _episodes_csv()), small, tmp_path / "q")
    counts = warehouse.query(
        db, "SELECT month, measure, count FROM area_month_episodes ORDER BY month, measure"
    ).rows()
    april, may = date(2015, 4, 1), date(2015, 5, 1)
    assert counts == [
        (april, "bed_days", 2 + 10 + 2), (april, "emergency_admissions", 3),
        (april, "mh_emergency_admissions", 1),
        (may, "bed_days", 1), (may, "emergency_admissions", 1),
        (may, "mh_emergency_admissions", 1),
    ]
    columns = warehouse.query(db, "SELECT * FROM area_month_episodes LIMIT 0").columns
    assert "patient_id" not in columns


def test_sql_twins_of_the_clinical_fields_agree_with_polars():
    frame = pl.DataFrame({
        "admission_method": ["21", "2A", "28", "11", "99", None, "2a", " 21", ""],
        "primary_diagnosis": ["F32", "J18", None, "F05", "f32", "", " F32", "G30", "F"],
    })
    import duckdb

    con = duckdb.connect()
    con.register("cases", frame.to_arrow())
    sql = con.execute(
        f"SELECT {emergency_admission_sql()} AS e, {mental_health_diagnosis_sql()} AS m "
        "FROM cases"
    ).fetchall()
    polars = frame.select(is_emergency_admission(), is_mental_health_diagnosis()).rows()
    assert sql == polars


def test_episode_counts_take_precedence_within_an_extract_and_need_a_population():
    m1, m2, day = date(2015, 1, 1), date(2015, 2, 1), date(2019, 5, 15)
    columns = ["source_id", "area_code", "month", "measure", "count", "extract_date",
               "event_id"]
    aggregate = pl.DataFrame(
        [("s", "A004", m1, "emergency_admissions", 100, day, 1, 1000),
         ("s", "A004", m1, "ae_attendances", 400, day, 1, 1000)],
        schema=[*columns, "population"], orient="row",
    )
    episodes = pl.DataFrame(
        [("s", "A004", m1, "emergency_admissions", 98, day, 2),
         ("s", "A004", m2, "emergency_admissions", 90, day, 2)],  # no population: left out
        schema=columns, orient="row",
    )
    current = current_counts(aggregate, episodes, {"A004": "s"}).sort("measure")
    assert current.select("measure", "count", "population").rows() == [
        ("ae_attendances", 400, 1000), ("emergency_admissions", 98, 1000)
    ]


@pytest.mark.parametrize("module", [stg_aggregate, stg_episodes, stg_nhse_ae])
def test_every_text_column_has_a_pattern_or_code_list_checked_on_every_row(module):
    """The length and formula rules are skipped in the fast scan; this is why that is safe."""
    contract = module.CONTRACT
    rules = module.sql_rules(RuleContext(date(2012, 4, 1), date(2019, 3, 1)))
    fast = {r.column for r in rules if r.fast and r.rule in (
        "expect_column_values_to_match_regex", "expect_column_values_to_be_in_set")}
    text = {c.name for c in contract.columns if c.kind is Kind.STRING}
    assert text <= fast


def test_rules_judged_per_value_count_the_same_rows_as_per_row():
    import duckdb

    con = duckdb.connect()
    con.execute(
        "CREATE TABLE t AS SELECT * FROM (VALUES "
        "('0C2FB8451E156599', DATE '2015-04-01', DATE '2015-04-03', '21', 'I214', 63, '1', "
        "'A004'), ('bad', DATE '2015-04-01', DATE '2015-03-01', '2E', 'J1', 150, '3', 'a1'), "
        "('0C2FB8451E156599', DATE '2015-04-01', DATE '2015-04-03', '2E', NULL, 1, '1', "
        "'A005')) v(patient_id, admission_date, discharge_date, admission_method, "
        "primary_diagnosis, age, sex, area_code)"
    )
    rules = stg_episodes.sql_rules(
        RuleContext(date(2012, 4, 1), date(2019, 3, 1), date(2019, 5, 15), "s", ("A004",))
    )
    by_row = count_breaches(con, "t", rules)
    assert by_row == count_breaches_by_value(con, "t", rules, FILE_CONTRACTS["episodes"])
    assert sum(by_row) > 8
    assert sql_list(["a'b"]) == "'a''b'"


def test_great_expectations_runs_in_chunks_on_a_bounded_sample(tmp_path, small, monkeypatch):
    monkeypatch.setattr(ingest, "GX_CHUNK_ROWS", 2)
    monkeypatch.setenv("VANGUARD_GX_MAX_ROWS", "4")
    seen: list[int] = []
    real = ingest.VALIDATORS["episodes"]

    def counting(frame, **kwargs):
        seen.append(len(frame))
        return real(frame, **kwargs)

    monkeypatch.setitem(ingest.VALIDATORS, "episodes", counting)
    db = tmp_path / "w.duckdb"
    outcome = ingest_file(db, EPISODE_SITE, _drop(tmp_path, EPISODE_SITE, "2019-05-15",
                                                  "episodes.csv", _episodes_csv()),
                          small, tmp_path / "q")
    assert outcome.rows_loaded == 6
    assert sum(seen) == 4 and max(seen) <= 2
    suites = warehouse.query(db, "SELECT suite FROM validation_results ORDER BY suite")
    assert suites["suite"].to_list() == ["stg_episodes[4 of 6 rows]", "stg_episodes[sql]"]


def test_a_failed_great_expectations_suite_refuses_the_file(tmp_path, small, monkeypatch):
    def failing(frame, **kwargs):
        failure = CheckFailure("expect_column_values_to_be_between", "count", "msg", 1,
                               [-1], [0], "count must be >= 0")
        return ValidationResult("stg_aggregate", False, 7, [failure])

    monkeypatch.setitem(ingest.VALIDATORS, "aggregate", failing)
    db = tmp_path / "w.duckdb"
    path = _drop(tmp_path, SITE, "2019-05-15", "aggregate.csv", TEXT)
    with pytest.raises(IngestError) as raised:
        ingest_file(db, SITE, path, small, tmp_path / "q")
    assert str(path) in str(raised.value)
    assert "column `count` (expect_column_values_to_be_between)" in str(raised.value)
    assert warehouse.query(db, "SELECT count(*) AS n FROM stg_aggregate")["n"][0] == 0
    assert (tmp_path / "q" / SITE / "2019-05-15" / "aggregate.csv").is_file()


def test_a_refusal_stays_loud_until_a_corrected_file_arrives(tmp_path, small):
    db = tmp_path / "w.duckdb"
    bad = TEXT.replace(",2100,", ",-1,")
    path = _drop(tmp_path, SITE, "2019-05-15", "aggregate.csv", bad)
    with pytest.raises(IngestError):
        ingest_file(db, SITE, path, small, tmp_path / "q")
    marker = path.with_name(path.name + REJECTED_SUFFIX)
    assert landing_files(tmp_path / "landing") == [(SITE, marker)]
    assert json.loads(marker.read_text())["rows_received"] == 3

    with pytest.raises(IngestError, match="(?s)refused earlier and moved to .*count must be >= 0"):
        ingest_file(db, SITE, marker, small, tmp_path / "q")
    statuses = warehouse.query(db, "SELECT status, rows_received FROM provenance")
    assert statuses.rows() == [("quarantined", 3), ("quarantined", 3)]

    path.write_text(TEXT)  # the corrected file, sent again under the same name
    assert landing_files(tmp_path / "landing") == [(SITE, path)]
    assert ingest_file(db, SITE, path, small, tmp_path / "q").status == "loaded"
    assert not marker.exists()


def test_landing_lists_every_visible_file_but_uploads_in_progress(tmp_path):
    for name in ("a.csv", "b.csv.gz", "c.parquet", "notes.xlsx", "d.csv.part", ".hidden"):
        _drop(tmp_path, SITE, "2019-05-15", name, "x")
    found = [p.name for _, p in landing_files(tmp_path / "landing")]
    assert found == ["a.csv", "b.csv.gz", "c.parquet", "notes.xlsx"]


def test_cli_ingest_and_status_report_loads_refusals_and_reconciliation(tmp_path, capsys):
    db = tmp_path / "w.duckdb"
    good = _drop(tmp_path, SITE, "2019-05-15", "aggregate.csv", TEXT)
    bad = _drop(tmp_path, SITE, "2019-05-16", "aggregate.csv", TEXT.replace(",2100,", ",-4,"))
    common = ["--db", str(db), "--quarantine", str(tmp_path / "q")]
    assert main(["ingest", *common, "--site", SITE, str(good)]) == 0
    assert main(["ingest", *common, "--site", SITE, str(good), str(bad)]) == 1
    out = capsys.readouterr()
    assert f"skipped: {good}" in out.out
    assert f"QUARANTINED: {bad}" in out.err and "count must be >= 0" in out.err

    assert main(["status", "--db", str(db)]) == 1  # a refusal is outstanding
    text = capsys.readouterr().out
    assert "Files received: 2 (1 loaded" in text and "1 quarantined" in text
    assert "3 =          3 +         0           3  passed" in text
    assert "line 3, column `count`" in text
    assert "Reconciliation: all 2 files reconcile" in text

    fixed = _drop(tmp_path, SITE, "2019-05-16", "aggregate.csv", TEXT.replace(",2100,", ",2101,"))
    assert main(["ingest", *common, "--site", SITE, str(fixed)]) == 0
    assert main(["status", "--db", str(db)]) == 0
    assert "(since loaded again)" in capsys.readouterr().out
