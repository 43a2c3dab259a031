"""Every malformed input is refused with a message naming the file, the line or column and
the rule, is moved to quarantine with a machine-readable reason, and leaves every data table
of the warehouse exactly as it was.

Each case is one small file with one defect, ingested into a copy of a warehouse that already
holds good files for a site (aggregate), a patient-level site (episodes) and national A&E.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms import warehouse
from transforms.ingest import REJECTED_SUFFIX, IngestError, ingest_file

SITE, EPISODE_SITE = "dudley", "south-somerset"  # areas A021 and A004
EXTRACT = "2019-05-15"

AGG = "area_code,month,measure,count,population\n"
AGG_ROWS = (
    "A021,2015-01-01,emergency_admissions,2234,314435\n"
    "A021,2015-02-01,emergency_admissions,2100,314435\n"
    "A021,2015-01-01,bed_days,12000,314435\n"
)
EPI = ("patient_id,admission_date,discharge_date,admission_method,primary_diagnosis,age,sex,"
       "area_code\n")
EPI_ROW = "0C2FB8451E156599,2015-04-01,2015-04-03,21,I214,63,1,A004\n"
AE = "period,org_code,type,attendances,breaches,admissions\n"
AE_ROWS = "2017-03-01,RF4,1,21289,2879,5060\n2017-03-01,RF4,2,813,22,0\n"

DATA_TABLES = (
    "stg_aggregate", "stg_episodes", "stg_nhse_ae", "area_month_episodes",
    "area_month_panel", "provider_month_panel", "ref_areas",
)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _parquet(columns: dict[str, list]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def _good_parquet() -> bytes:
    return _parquet({
        "area_code": ["A021"], "month": ["2015-03-01"], "measure": ["bed_days"],
        "count": [5], "population": [314435],
    })


@dataclass(frozen=True)
class Case:
    """One malformed file: where it lands, what it holds, and what the refusal must say."""

    id: str
    content: bytes | Callable[[], bytes]
    rule: str
    fragments: tuple[str, ...] = ()
    source: str = SITE
    name: str = "extract.csv"
    folder: str = EXTRACT

    def data(self) -> bytes:
        return self.content() if callable(self.content) else self.content


def agg(*rows: str) -> bytes:
    return (AGG + "".join(rows)).encode()


def epi(*rows: str) -> bytes:
    return (EPI + "".join(rows)).encode()


ROW = "A021,2015-03-01,bed_days,5,314435\n"

CASES = [
    # -- the file as a whole
    Case("empty file", b"", "file_not_empty", ("empty (0 bytes)",)),
    Case("header only", agg(), "expect_table_row_count_to_be_between", ("no data rows",)),
    Case("blank first line", b"\n" + agg(ROW), "header_present", ("line 1 is blank",)),
    Case("spreadsheet saved as xlsx", b"PK\x03\x04" + b"\0" * 64, "file_type",
         ("spreadsheet",), name="extract.xlsx"),
    Case("not gzip despite its name", agg(ROW), "gzip_readable", ("not gzip-compressed",),
         name="extract.csv.gz"),
    Case("truncated gzip", lambda: _gzip(agg(*[ROW] * 400))[:-40], "gzip_readable",
         ("truncated or corrupt gzip",), name="extract.csv.gz"),
    Case("corrupt parquet", b"PAR1" + b"\x15\x00garbage" * 20 + b"PAR1", "parquet_readable",
         ("not a readable Parquet file",), name="extract.parquet"),
    Case("truncated parquet", lambda: _good_parquet()[:-30], "parquet_readable", (),
         name="extract.parquet"),
    Case("NUL bytes", agg(ROW) + b"A0\x0021,2015-04-01,bed_days,5,314435\n", "no_nul_bytes",
         ("line 3 contains a NUL byte",)),
    Case("non-UTF-8 bytes in a row", agg(ROW) + b"A021,2015-04-01,bed_d\xe5ys,5,314435\n",
         "utf8_encoding", ("line 3", "not UTF-8")),
    Case("non-UTF-8 header", AGG.replace("count", "cöunt").encode("latin-1") + ROW.encode(),
         "utf8_encoding", ("line 1 (the header) is not UTF-8",)),
    Case("a 10 MB field", agg(ROW) + b"A021,2015-04-01," + b"x" * (10 << 20) + b",5,314435\n",
         "max_line_size", ("line 3", "longer than 1 MB")),
    Case("invalid extract-date folder", agg(ROW), "extract_date_folder",
         ("'2019-13-45' is not a real date",), folder="2019-13-45"),
    # -- the header
    Case("semicolon delimiter", agg(ROW).replace(b",", b";"), "comma_delimited",
         ("line 1", "semicolon-delimited")),
    Case("tab delimiter", agg(ROW).replace(b",", b"\t"), "comma_delimited", ("tab-delimited",)),
    Case("missing column", b"area_code,month,measure,count\nA021,2015-01-01,bed_days,5\n",
         "expect_table_columns_to_match_set", ("missing columns ['population']",)),
    Case("extra column", AGG.replace("\n", ",notes\n").encode() + ROW.replace("\n", ",x\n")
         .encode(), "expect_table_columns_to_match_set", ("unexpected columns ['notes']",)),
    Case("renamed column", AGG.replace("population", "pop").encode() + ROW.encode(),
         "expect_table_columns_to_match_set", ("is 'pop' the column 'population' renamed?",)),
    Case("repeated column", AGG.replace("population", "count").encode() + ROW.encode(),
         "expect_table_columns_to_match_set", ("repeats columns ['count']",)),
    # -- the CSV structure
    Case("extra field on a row", agg(AGG_ROWS, "A021,2015-03-01,bed_days,5,314435,9\n"),
         "csv_field_count", ("line 5", "6 fields", "header has 5")),
    Case("missing field on a row", agg("A021,2015-03-01,bed_days,5\n"), "csv_field_count",
         ("line 2", "4 fields")),
    Case("mixed line ends", agg(ROW.replace("\n", "\r\n"), ROW), "csv_line_endings",
         ("line 2 ends with CRLF but line 1 with LF",)),
    Case("old Mac line ends", agg(ROW, ROW).replace(b"\n", b"\r"), "csv_line_endings",
         ("line 1 (the header) holds a carriage return",)),
    Case("unterminated quote", agg(ROW, 'A021,2015-04-01,"bed_days,5,314435\n', ROW),
         "csv_quoting", ("never closes",)),
    # -- types
    Case("text in a number column", agg("A021,2015-03-01,emergency_admissions,lots,314435\n"),
         "column_dtype", ("line 2", "`count`", "'lots'", "whole numbers")),
    Case("decimal in a count", agg(ROW, "A021,2015-04-01,bed_days,12.5,314435\n"),
         "column_dtype", ("line 3", "`count`", "'12.5'")),
    Case("impossible date", agg("A021,2015-02-30,bed_days,5,314435\n"), "column_dtype",
         ("line 2", "`month`", "'2015-02-30'", "YYYY-MM-DD")),
    Case("date in another format", agg("A021,01/02/2015,bed_days,5,314435\n"), "column_dtype",
         ("`month`", "'01/02/2015'")),
    Case("blank required value", agg("A021,,bed_days,5,314435\n"),
         "expect_column_values_to_not_be_null", ("line 2", "`month`", "must not be blank")),
    Case("padded code", agg(" A021,2015-03-01,bed_days,5,314435\n"),
         "expect_column_values_to_match_regex", ("`area_code`", "' A021'")),
    # -- values
    Case("negative count", agg(AGG_ROWS, "A021,2015-03-01,emergency_admissions,-5,314435\n"),
         "expect_column_values_to_be_between", ("line 5", "count must be >= 0", "'-5'")),
    Case("zero population", agg("A021,2015-03-01,bed_days,5,0\n"),
         "expect_column_values_to_be_between", ("line 2", "population must be > 0")),
    Case("month not the first", agg("A021,2015-02-15,bed_days,5,314435\n"),
         "month_is_first_of_month", ("line 2", "first day of a month")),
    Case("months outside the study window",
         agg("A021,2011-03-01,bed_days,5,314435\n", "A021,2020-01-01,bed_days,5,314435\n"),
         "expect_column_values_to_be_between", ("lines 2, 3", "study window 2012-04 to 2019-03")),
    Case("unknown measure", agg("A021,2015-03-01,deaths,5,314435\n"),
         "expect_column_values_to_be_in_set", ("`measure`", "'deaths'")),
    Case("another site's area", agg("A004,2015-03-01,bed_days,5,314435\n"),
         "area_belongs_to_site", ("line 2", "outside site 'dudley'", "'A004'")),
    Case("duplicate keys", agg(AGG_ROWS, AGG_ROWS.splitlines(keepends=True)[0]),
         "expect_compound_columns_to_be_unique",
         ("lines 2, 5", "(A021, 2015-01-01, emergency_admissions)")),
    Case("SQL-looking text", agg("A021,2015-03-01,\"bed_days'); DROP TABLE stg_aggregate; --\","
                                 "5,314435\n"),
         "expect_column_values_to_be_in_set", ("`measure`", "DROP TABLE")),
    Case("spreadsheet formula", agg('"=HYPERLINK(""http://evil.example"",""x"")",2015-03-01,'
                                    'bed_days,5,314435\n'),
         "no_spreadsheet_formula", ("line 2", "`area_code`", "=HYPERLINK")),
    Case("quoted line break before a bad row",
         agg('A021,2015-01-01,"emergency\nadmissions",5,314435\n',
             "A021,2015-02-01,bed_days,-1,314435\n"),
         "expect_column_values_to_be_between", ("line 4", "count must be >= 0", "line 2")),
    Case("bad row in a gzip file", lambda: _gzip(agg(ROW, "A021,2015-04-01,bed_days,-1,9\n")),
         "expect_column_values_to_be_between", ("line 3",), name="extract.csv.gz"),
    Case("bad row after a byte-order mark",
         b"\xef\xbb\xbf" + agg("A021,2015-04-01,bed_days,-1,9\n"),
         "expect_column_values_to_be_between", ("line 2",)),
    Case("bad row in a CRLF file", agg(ROW, "A021,2015-04-01,bed_days,x,9\n")
         .replace(b"\n", b"\r\n"), "column_dtype", ("line 3", "'x'")),
    # -- sources
    Case("path-like site id", agg(ROW), "known_source", ("unknown source '../../etc'",),
         source="../../etc"),
    Case("unknown site", agg(ROW), "known_source", ("unknown source 'nowhere'",),
         source="nowhere"),
    Case("national file sent by a site", (AE + AE_ROWS).encode(), "kind_allowed_for_source",
         ("nhse_ae contract", "source 'dudley'")),
    Case("site file sent as national data", agg(ROW), "kind_allowed_for_source",
         ("aggregate contract", "source 'nhse_ae'"), source="nhse_ae"),
    # -- patient-level episodes
    Case("future admission date", epi(EPI_ROW.replace("2015-04-01,2015-04-03",
                                                      "2031-01-01,2031-01-02")),
         "date_not_after_extract", ("line 2", "`admission_date`", "after the extract date"),
         source=EPISODE_SITE),
    Case("discharge before admission", epi(EPI_ROW.replace("2015-04-03", "2015-03-30")),
         "expect_column_pair_values_a_to_be_greater_than_b",
         ("line 2", "discharge_date must be on or after admission_date"), source=EPISODE_SITE),
    Case("malformed pseudonym", epi(EPI_ROW.replace("0C2FB8451E156599", "0c2fb8451e156599")),
         "expect_column_values_to_match_regex", ("`patient_id`", "16 upper-case hex"),
         source=EPISODE_SITE),
    Case("unknown admission method", epi(EPI_ROW.replace(",21,", ",2E,")),
         "expect_column_values_to_be_in_set", ("`admission_method`", "'2E'"),
         source=EPISODE_SITE),
    Case("malformed ICD-10 code", epi(EPI_ROW.replace("I214", "J1")),
         "expect_column_values_to_match_regex", ("`primary_diagnosis`", "'J1'"),
         source=EPISODE_SITE),
    Case("impossible age", epi(EPI_ROW.replace(",63,", ",150,")),
         "expect_column_values_to_be_between", ("`age`", "'150'"), source=EPISODE_SITE),
    # -- Parquet and national A&E
    Case("parquet with fractional counts", lambda: _parquet({
        "area_code": ["A021", "A021"], "month": ["2015-03-01", "2015-04-01"],
        "measure": ["bed_days", "bed_days"], "count": [5.0, 1.5], "population": [9, 9],
    }), "column_dtype", ("rows 1, 2", "`count`", "'1.5'"), name="extract.parquet"),
    Case("parquet with a 10 MB value", lambda: _parquet({
        "area_code": ["A" * (10 << 20)], "month": ["2015-03-01"], "measure": ["bed_days"],
        "count": [5], "population": [9],
    }), "text_max_length", ("row 1", "`area_code`", "at most 64 characters"),
        name="extract.parquet"),
    Case("more breaches than attendances", (AE + "2017-03-01,RF4,1,100,101,5\n").encode(),
         "expect_column_pair_values_a_to_be_greater_than_b", ("line 2", "breaches"),
         source="nhse_ae"),
    Case("unknown A&E department type", (AE + "2017-03-01,RF4,major,100,1,5\n").encode(),
         "expect_column_values_to_be_in_set", ("`type`", "'major'"), source="nhse_ae"),
    Case("duplicate national rows", (AE + AE_ROWS + AE_ROWS.splitlines(True)[0]).encode(),
         "expect_compound_columns_to_be_unique", ("period, org_code, type",),
         source="nhse_ae"),
]


def _write(root: Path, source: str, folder: str, name: str, data: bytes) -> Path:
    path = root / "landing" / source / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def small(protocol):
    return protocol.subset([SITE, EPISODE_SITE])


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, small) -> Path:
    """A warehouse already holding good aggregate, episode and national files."""
    root = tmp_path_factory.mktemp("baseline")
    db = root / "w.duckdb"
    for source, name, data in [
        (SITE, "aggregate.csv", agg(AGG_ROWS)),
        (EPISODE_SITE, "episodes.csv", epi(EPI_ROW)),
        ("nhse_ae", "ae.csv", (AE + AE_ROWS).encode()),
    ]:
        path = _write(root, source, "2019-05-01", name, data)
        assert ingest_file(db, source, path, small, root / "q").status == "loaded"
    return db


def snapshot(db: Path) -> dict[str, list[tuple]]:
    """Every row of every data table, and the files recorded as loaded."""
    with warehouse.connect(db, read_only=True) as con:
        tables = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                  for t in DATA_TABLES}
        tables["loaded"] = con.execute(
            "SELECT event_id, sha256, superseded_by FROM provenance WHERE status = 'loaded' "
            "ORDER BY event_id"
        ).fetchall()
    return tables


def test_there_are_at_least_thirty_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_file_is_refused_and_the_warehouse_is_unchanged(
    case: Case, baseline: Path, small, tmp_path: Path
) -> None:
    db = tmp_path / "w.duckdb"
    shutil.copy(baseline, db)
    before = snapshot(db)
    events_before = warehouse.query(db, "SELECT event_id FROM provenance")["event_id"].to_list()
    data = case.data()
    path = _write(tmp_path, SITE if case.source.startswith("..") else case.source,
                  case.folder, case.name, data)

    with pytest.raises(IngestError) as raised:
        ingest_file(db, case.source, path, small, tmp_path / "quarantine")

    message = str(raised.value)
    assert message.startswith(str(path)), message
    assert case.rule in message, message
    for fragment in case.fragments:
        assert fragment in message, message
    assert len(message) < 4_000  # a 10 MB value is never echoed back

    assert snapshot(db) == before
    refused = warehouse.query(
        db, "SELECT * FROM provenance WHERE NOT list_contains(?, event_id)", [events_before]
    )
    assert refused.height == 1
    row = refused.row(0, named=True)
    assert row["status"] == "quarantined" and row["message"] == message
    assert row["rows_loaded"] == 0 and row["rows_quarantined"] == row["rows_received"]
    assert row["code_version"]
    stored = warehouse.query(db, "SELECT result_json FROM validation_results WHERE event_id = ?",
                             [row["event_id"]])
    failures = json.loads(stored["result_json"][0])["failures"]
    assert case.rule in {f["rule"] for f in failures}

    source_dir = "_unknown" if case.source.startswith("..") else case.source
    moved = tmp_path / "quarantine" / source_dir / case.folder / case.name
    assert moved.read_bytes() == data
    reason = json.loads(moved.with_name(case.name + ".reason.json").read_text())
    assert reason["message"] == message and reason["status"] == "quarantined"
    assert not path.exists()
    assert path.with_name(case.name + REJECTED_SUFFIX).is_file()
    assert not (tmp_path.parent / "etc").exists()


def test_messages_never_quote_a_pseudonym_in_full(baseline: Path, small, tmp_path: Path):
    db = tmp_path / "w.duckdb"
    shutil.copy(baseline, db)
    path = _write(tmp_path, EPISODE_SITE, EXTRACT, "episodes.csv",
                  epi(EPI_ROW.replace("0C2FB8451E156599", "0c2fb8451e156599")))
    with pytest.raises(IngestError) as raised:
        ingest_file(db, EPISODE_SITE, path, small, tmp_path / "quarantine")
    assert "0c2fb8451e156599" not in str(raised.value)
    assert "'0c2... (16 characters)'" in str(raised.value)


def test_sql_text_is_data_not_sql(baseline: Path, small, tmp_path: Path):
    """Values never reach SQL text, so an injection attempt is one more bad value."""
    db = tmp_path / "w.duckdb"
    shutil.copy(baseline, db)
    evil = "x'); DROP TABLE provenance; --"
    path = _write(tmp_path, SITE, EXTRACT, "evil.csv", agg(f'"{evil}",2015-03-01,bed_days,5,9\n'))
    with pytest.raises(IngestError):
        ingest_file(db, SITE, path, small, tmp_path / "quarantine")
    tables = set(warehouse.query(db, "SHOW TABLES")["name"].to_list())
    assert {"provenance", "stg_aggregate"} <= tables


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from([AGG.encode(), EPI.encode(), b""]),
       body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_are_loaded_or_refused_and_never_crash(
    baseline: Path, small, tmp_path_factory, header: bytes, body: bytes
) -> None:
    root = tmp_path_factory.mktemp("fuzz")
    db = root / "w.duckdb"
    shutil.copy(baseline, db)
    before = snapshot(db)
    path = _write(root, SITE, EXTRACT, "extract.csv", header + body)
    try:
        outcome = ingest_file(db, SITE, path, small, root / "quarantine")
    except IngestError as exc:
        assert str(exc).startswith(str(path))
        assert snapshot(db) == before
    else:
        assert outcome.rows_loaded == outcome.rows_received
