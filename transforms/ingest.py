"""Ingest extract files into staging: check, stage, validate, then commit all-or-nothing.

A file is one batch, loaded in one DuckDB transaction, so a board number never rests on a
half-loaded file. The steps, and what each one checks:

    scan      (Python, before the warehouse is touched) the content hash; empty files, NUL
              bytes, truncated or corrupt gzip, unreadable Parquet; the header against the
              contracts (missing, extra, renamed or duplicated columns, wrong delimiter)
    stage     INSERT INTO stg_<table> SELECT <typed columns> FROM read_csv/read_parquet:
              DuckDB parses every line (field counts, quoting, UTF-8, line length) and types
              every value (dates YYYY-MM-DD, whole numbers); blanks in required columns fail
              the table's NOT NULL constraints
    SQL rules every row-level rule of the contract on every staged row (``sql_rules`` in
              expectations/stg_*.py; code columns judged once per distinct value), and
              duplicate keys over the whole file
    GX suite  the table's Great Expectations suite on staged rows in pandas chunks: every
              row of files up to GX_MAX_ROWS rows, GX_MAX_ROWS rows of larger ones (the SQL
              rules have already covered every row; this is a second, independent
              implementation of the same contract)
    derive    episodes counted per area, month and measure (aggregates only)
    record    provenance with the reconciliation (received = loaded + quarantined) and the
              code version, the validation results, and which earlier files this one replaces

When the stage or the SQL rules fail, the transaction is rolled back and the file is read
again as text to find the offending lines, values and rules. A refused file is moved to
``quarantine/<source>/<extract_date>/`` with ``<name>.reason.json`` beside it, and a marker
``<name>.rejected.json`` is left where it was, so every later run reports the refusal until
someone removes the marker or sends a corrected file. Loading the same bytes twice for the
same source changes nothing.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, cast

import duckdb
import polars as pl

from expectations import sql_rules as sql
from expectations import stg_aggregate, stg_episodes, stg_nhse_ae
from expectations.contract import FILE_CONTRACTS, TableContract
from expectations.validate import CheckFailure, ValidationResult, make_failure, warm_up
from transforms import warehouse
from transforms.panel import COMPARISON_SOURCE, NATIONAL_AE_SOURCE, episode_counts_sql
from transforms.protocol import Protocol
from transforms.version import code_version

log = logging.getLogger(__name__)

__all__ = [
    "COMPARISON_SOURCE",
    "NATIONAL_AE_SOURCE",
    "IngestError",
    "IngestOutcome",
    "ingest_file",
    "landing_files",
    "load_reference_areas",
]

#: Which file contracts each kind of source may send.
SITE_KINDS = ("aggregate", "episodes")
NATIONAL_KINDS = ("nhse_ae",)
SUITES = {"aggregate": stg_aggregate, "episodes": stg_episodes, "nhse_ae": stg_nhse_ae}
VALIDATORS = {
    "aggregate": stg_aggregate.validate_aggregate,
    "episodes": stg_episodes.validate_episodes,
    "nhse_ae": stg_nhse_ae.validate_nhse_ae,
}

#: Left where a refused file was; later runs report the refusal until it is removed.
REJECTED_SUFFIX = ".rejected.json"
#: Landing files still being written by the sender (renamed when complete).
IN_PROGRESS_SUFFIXES = (".part", ".tmp")

#: Longest CSV line accepted; the longest valid line of any contract is under 200 bytes.
MAX_LINE_BYTES = 1 << 20
#: Rows per pandas chunk handed to Great Expectations.
GX_CHUNK_ROWS = 100_000
#: Rows of one file validated by GX (0: every row), unless $VANGUARD_GX_MAX_ROWS says otherwise.
GX_MAX_ROWS = 100_000

_DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SOURCE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_BLOCK = 1 << 22

# DuckDB errors that mean "this file is bad", not "this program is wrong".
_DATA_ERRORS = (
    duckdb.InvalidInputException,
    duckdb.ConversionException,
    duckdb.ConstraintException,
    duckdb.IOException,
    duckdb.OutOfRangeException,
)


class IngestError(ValueError):
    """A file broke the data contract; the message names the file, line or column, and rule.

    ``validation`` holds the failed checks as stored in validation_results.
    """

    def __init__(self, message: str, validation: ValidationResult | None = None) -> None:
        super().__init__(message)
        self.validation = validation


class _Refused(Exception):
    """Carries a refusal, with the rows received, out of the load transaction."""

    def __init__(self, error: IngestError, received: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.received = received


class _NeedsDiagnosis(Exception):
    """The fast path found a problem; the rows must be located in the file as text."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


@dataclass(frozen=True)
class IngestOutcome:
    source_id: str
    path: str
    kind: str
    sha256: str
    status: str  # loaded | skipped | quarantined
    rows_received: int
    rows_loaded: int
    rows_quarantined: int
    message: str = ""
    event_id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FileScan:
    """What the first pass over a file found: its hash, format and header."""

    path: Path
    sha256: str
    size: int
    fmt: str  # csv | parquet
    compression: str  # none | gzip
    columns: tuple[str, ...]

    @property
    def unit(self) -> str:
        """How records are located in messages: CSV lines, or Parquet rows."""
        return "row" if self.fmt == "parquet" else "line"


# --- small helpers -----------------------------------------------------------------------


def _reject(path: Path, rule: str, detail: str, column: str | None = None,
            suite: str = "file") -> IngestError:
    """An IngestError for a whole-file problem, with a one-failure validation result."""
    failure = make_failure(rule, column, detail)
    return IngestError(
        f"{path}: {detail} (rule: {rule})",
        ValidationResult(f"{suite}[read]", False, 1, [failure]),
    )


def sha256_of(path: Path) -> str:
    """Content hash, so a re-sent identical file is recognised whatever its name."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_date_of(path: Path) -> date | None:
    """The extract date from `landing/<source>/<YYYY-MM-DD>/file`, if the path has one."""
    name = path.parent.name
    if not _DATE_DIR.match(name):
        return None
    try:
        return date.fromisoformat(name)
    except ValueError:
        raise _reject(path, "extract_date_folder",
                      f"the extract-date folder '{name}' is not a real date (YYYY-MM-DD)") from None


def gx_max_rows() -> int:
    value = os.environ.get("VANGUARD_GX_MAX_ROWS")
    return int(value) if value else GX_MAX_ROWS


def check_source(source_id: str, protocol: Protocol, path: Path) -> None:
    """The source must be a protocol site, the national comparison pool or national A&E."""
    known = {s.id for s in protocol.sites} | {COMPARISON_SOURCE, NATIONAL_AE_SOURCE}
    if source_id not in known:
        raise _reject(path, "known_source",
                      f"unknown source '{source_id}'; allowed: {', '.join(sorted(known))}")


def allowed_kinds(source_id: str) -> tuple[str, ...]:
    return NATIONAL_KINDS if source_id == NATIONAL_AE_SOURCE else SITE_KINDS


# --- scan: the first pass, before the warehouse -------------------------------------------


def _format_of(path: Path, head: bytes) -> tuple[str, str]:
    """(format, compression) from the name, checked against the first bytes."""
    name = path.name.lower()
    if head.startswith(_PARQUET_MAGIC) or name.endswith(".parquet"):
        if not head.startswith(_PARQUET_MAGIC):
            raise _reject(path, "parquet_readable",
                          "is named .parquet but does not start with the Parquet magic bytes")
        return "parquet", "none"
    if head.startswith(_GZIP_MAGIC):
        return "csv", "gzip"
    if name.endswith(".gz"):
        raise _reject(path, "gzip_readable", "is named .gz but is not gzip-compressed")
    if name.endswith(".csv"):
        return "csv", "none"
    kind = "a spreadsheet (zip)" if head.startswith(b"PK") else f"'{path.suffix or path.name}'"
    raise _reject(path, "file_type",
                  f"is {kind}; expected CSV (.csv, .csv.gz) or Parquet (.parquet)")


@contextmanager
def _open_bytes(path: Path, compression: str) -> Iterator[BinaryIO]:
    if compression == "gzip":
        with gzip.open(path, "rb") as unzipped:
            yield cast(BinaryIO, unzipped)
    else:
        with path.open("rb") as handle:
            yield handle


def _line_of_offset(path: Path, compression: str, offset: int) -> int:
    """1-based line number of a byte offset in the (decompressed) text."""
    seen, lines = 0, 1
    with _open_bytes(path, compression) as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            if seen + len(block) > offset:
                return lines + block.count(b"\n", 0, offset - seen)
            lines += block.count(b"\n")
            seen += len(block)
    return lines


def _hash_and_check_bytes(path: Path, compression: str) -> str:
    """SHA-256 of the file; NUL bytes and broken gzip streams are refused on the way."""
    digest = hashlib.sha256()
    nul_at = -1
    offset = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
            if compression == "none" and nul_at < 0:
                found = block.find(b"\0")
                if found >= 0:
                    nul_at = offset + found
            offset += len(block)
    if compression == "gzip":
        offset = 0
        try:
            with gzip.open(path, "rb") as stream:
                for block in iter(lambda: stream.read(_BLOCK), b""):
                    found = block.find(b"\0")
                    if found >= 0 and nul_at < 0:
                        nul_at = offset + found
                    offset += len(block)
        except (EOFError, OSError, zlib.error) as exc:
            raise _reject(path, "gzip_readable",
                          f"is a truncated or corrupt gzip file ({exc}); send the complete "
                          "file") from exc
    if nul_at >= 0:
        line = _line_of_offset(path, compression, nul_at)
        raise _reject(path, "no_nul_bytes",
                      f"line {line} contains a NUL byte (0x00); text files must not hold "
                      "binary data")
    return digest.hexdigest()


def _csv_header(path: Path, compression: str) -> tuple[str, ...]:
    with _open_bytes(path, compression) as handle:
        first = handle.readline(MAX_LINE_BYTES + 1)
    if len(first) > MAX_LINE_BYTES:
        raise _reject(path, "max_line_size", "line 1 (the header) is longer than 1 MB")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _reject(path, "utf8_encoding",
                      f"line 1 (the header) is not UTF-8 ({exc.reason} at byte {exc.start}); "
                      "save the file as UTF-8") from exc
    text = text.rstrip("\r\n")
    if not text.strip():
        raise _reject(path, "header_present",
                      "line 1 is blank; the first line must be the header")
    if "\r" in text:
        raise _reject(path, "csv_line_endings",
                      "line 1 (the header) holds a carriage return (CR) that does not end the "
                      "line; save the file with LF or CRLF line ends")
    try:
        return tuple(name.strip() for name in next(csv.reader([text])))
    except csv.Error as exc:
        raise _reject(path, "csv_readable",
                      f"line 1 (the header) cannot be parsed as CSV ({exc})") from exc


def _parquet_columns(path: Path) -> tuple[str, ...]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return tuple(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise _reject(path, "parquet_readable",
                      f"is not a readable Parquet file ({exc})") from exc


def scan_file(path: Path) -> FileScan:
    """Hash the file and read its header, refusing what cannot be a contract file."""
    if not path.is_file():
        raise _reject(path, "file_exists", "no such file")
    size = path.stat().st_size
    if size == 0:
        raise _reject(path, "file_not_empty", "the file is empty (0 bytes)")
    with path.open("rb") as handle:
        head = handle.read(4)
    fmt, compression = _format_of(path, head)
    if fmt == "parquet":
        columns = _parquet_columns(path)
        sha = sha256_of(path)
    else:
        sha = _hash_and_check_bytes(path, compression)
        columns = _csv_header(path, compression)
    return FileScan(path, sha, size, fmt, compression, columns)


def detect_kind(columns: Iterable[str], path: Path) -> str:
    """Which contract the header matches; otherwise say what is missing and unexpected."""
    columns = list(columns)
    given = set(columns)
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise _reject(path, "expect_table_columns_to_match_set",
                      f"header repeats columns {duplicated[:10]}",
                      column=", ".join(duplicated[:10]))
    if len(columns) == 1:
        for delimiter, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if delimiter in columns[0]:
                raise _reject(path, "comma_delimited",
                              f"line 1 (the header) has one column and looks {label}-delimited "
                              f"({columns[0][:60]!r}); the contract needs comma-separated "
                              "values")
    for kind, contract in FILE_CONTRACTS.items():
        if given == set(contract.column_names):
            return kind
    kind, contract = max(
        FILE_CONTRACTS.items(), key=lambda kv: len(given & set(kv[1].column_names))
    )
    expected = list(contract.column_names)
    missing = [c for c in expected if c not in given]
    extra = sorted(given - set(expected))
    hints = []
    for name in extra:
        close = difflib.get_close_matches(name, missing, n=1, cutoff=0.5)
        if not close and len(extra) == len(missing) == 1:
            close = missing
        if close:
            hints.append(f"is '{name}' the column '{close[0]}' renamed?")
    shown = [name[:40] for name in extra[:10]] + ([f"... {len(extra) - 10} more"]
                                                  if len(extra) > 10 else [])
    detail = (
        f"header does not match the {kind} contract: "
        f"missing columns {missing or 'none'}, unexpected columns {shown or 'none'}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f"; expected exactly {expected}"
    )
    raise _reject(path, "expect_table_columns_to_match_set", detail,
                  column=", ".join(missing + shown) or None)


# --- stage: DuckDB reads and types the file ------------------------------------------------


def _reader_sql(scan: FileScan) -> str:
    """The table function reading the file; its path is the query's first `?` after the select."""
    if scan.fmt == "parquet":
        return "read_parquet(?)"
    columns = "{" + ", ".join(f"{sql.quote(c)}: 'VARCHAR'" for c in scan.columns) + "}"
    return (
        "read_csv(?, header = true, delim = ',', quote = '\"', escape = '\"', "
        f"auto_detect = false, columns = {columns}, strict_mode = true, "
        f"max_line_size = {MAX_LINE_BYTES}, compression = '{scan.compression}', "
        "ignore_errors = false)"
    )


def _raw_sql(scan: FileScan, column: str) -> str:
    """A column as text: CSV is read as text already; Parquet values are cast to text."""
    name = sql.ident(column)
    return name if scan.fmt == "csv" else f"CAST({name} AS VARCHAR)"


def _stage(con: duckdb.DuckDBPyConnection, scan: FileScan, contract: TableContract,
           event_id: int, source_id: str) -> int:
    """Insert every row, typed, into the staging table; returns the number of rows."""
    columns = ", ".join(sql.ident(c) for c in contract.column_names)
    typed = ", ".join(sql.typed_sql(c, _raw_sql(scan, c.name)) for c in contract.columns)
    (rows,) = con.execute(
        f"INSERT INTO {contract.name} (event_id, source_id, {columns}) "
        f"SELECT {event_id}, ?, {typed} FROM {_reader_sql(scan)}",
        [source_id, str(scan.path)],
    ).fetchall()[0]
    return int(rows)


_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
_FIELDS = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")


def _read_error(scan: FileScan, exc: duckdb.Error) -> IngestError:
    """A DuckDB parse error as a message naming the file, line and rule (never the whole line)."""
    text = str(exc)
    found = _CSV_LINE.search(text)
    where = f"line {found.group(1)}" if found else "the file"
    fields = _FIELDS.search(text)
    if fields:
        return _reject(scan.path, "csv_field_count",
                       f"{where} has {fields.group(2)} fields but the header has "
                       f"{fields.group(1)} (a missing or extra comma, or an unquoted comma "
                       "inside a value)")
    if "unterminated quote" in text:
        return _reject(scan.path, "csv_quoting", f"{where} opens a quoted value that never closes")
    if "Maximum line size" in text:
        return _reject(scan.path, "max_line_size",
                       f"{where} is longer than {MAX_LINE_BYTES // (1 << 20)} MB; no value in "
                       f"the contract needs more than {sql.TEXT_MAX_LENGTH} characters")
    if "unicode" in text.lower() or "utf-8" in text.lower():
        return _reject(scan.path, "utf8_encoding",
                       f"{where} holds bytes that are not UTF-8; save the file as UTF-8")
    if scan.fmt == "parquet":
        return _reject(scan.path, "parquet_readable",
                       f"cannot be read as Parquet: {text.splitlines()[0][:300]}")
    mixed = _mixed_line_ending(scan)
    if mixed is not None:
        return _reject(scan.path, "csv_line_endings", mixed)
    return _reject(scan.path, "csv_readable",
                   f"{where} cannot be parsed as CSV: {text.splitlines()[0][:300]}")


def _mixed_line_ending(scan: FileScan) -> str | None:
    """Where a file first changes between CRLF and LF line ends, which DuckDB cannot parse."""
    first: bytes | None = None
    with _open_bytes(scan.path, scan.compression) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break  # the last line, without an end
            ending = b"\r\n" if line.endswith(b"\r\n") else b"\n"
            if first is None:
                first = ending
            elif ending != first:
                names = {b"\r\n": "CRLF", b"\n": "LF"}
                return (f"line {number} ends with {names[ending]} but line 1 with "
                        f"{names[first]}; save the file with one kind of line end")
    return None


# --- diagnose: where exactly a file breaks the contract -------------------------------------


def _diagnose(con: duckdb.DuckDBPyConnection, scan: FileScan, contract: TableContract,
              rules: list[sql.SqlRule], cause: str) -> tuple[IngestError, int]:
    """Re-read the file as text, find each broken rule's lines and values; return the error
    and the number of rows received."""
    raw = ", ".join(f"{_raw_sql(scan, c)} AS {sql.ident(c)}" for c in contract.column_names)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _raw AS SELECT {raw} FROM {_reader_sql(scan)}",
            [str(scan.path)],
        )
    except _DATA_ERRORS as exc:
        return _read_error(scan, exc), count_records(scan)
    try:
        (received,) = con.execute("SELECT count(*) FROM _raw").fetchall()[0]
        failures = sql.diagnose(con, "_raw", contract, rules)
    finally:
        con.execute("DROP TABLE IF EXISTS _raw")
    if not failures:  # the diagnosis found nothing the fast path did: report DuckDB's words
        return _reject(scan.path, "load", cause.splitlines()[0][:300], suite=contract.name), \
            int(received)
    failures = locate(scan, failures)
    validation = sql.result(contract, rules, failures)
    return IngestError(describe(scan, contract.name, failures), validation), int(received)


def record_lines(scan: FileScan, records: Iterable[int]) -> dict[int, int]:
    """The 1-based line where each 0-based record starts.

    A quoted value may hold a line break, so a record can span lines; blank lines are not
    records (DuckDB skips them too). Reading stops after the last record asked for.
    """
    wanted = sorted(set(records))
    if not wanted or scan.fmt != "csv":
        return {}
    found: dict[int, int] = {}
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, 2 * MAX_LINE_BYTES))
    try:
        with _open_bytes(scan.path, scan.compression) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            reader = csv.reader(text)
            next(reader, None)
            targets = iter(wanted)
            target = next(targets, None)
            record, line = 0, reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num
                if not row:
                    continue
                if record == target:
                    found[record] = start
                    target = next(targets, None)
                    if target is None:
                        break
                record += 1
    except csv.Error:
        pass  # the lines found so far still help
    finally:
        csv.field_size_limit(limit)
    return found


def locate(scan: FileScan, failures: list[CheckFailure]) -> list[CheckFailure]:
    """Failures with file line numbers (CSV) or 1-based row numbers (Parquet) filled in."""
    lines = record_lines(scan, (r for f in failures for r in f.rows))
    if scan.fmt == "parquet":
        return [replace(f, lines=[r + 1 for r in f.rows]) for f in failures]
    return [replace(f, lines=[lines[r] for r in f.rows if r in lines]) for f in failures]


def _value(v: Any) -> str:
    if isinstance(v, dict | tuple | list):
        values = v.values() if isinstance(v, dict) else v
        return "(" + ", ".join(str(x) for x in values) + ")"
    return repr(v)


def describe(scan: FileScan, suite: str, failures: list[CheckFailure]) -> str:
    """The rejection message: the file, then one line per broken rule with its lines."""
    lines = [
        f"{scan.path}: rejected, {len(failures)} rule(s) of the {suite} contract broken; "
        "nothing was loaded:"
    ]
    for f in failures:
        parts = []
        if f.lines:
            word = scan.unit if len(f.lines) == 1 else f"{scan.unit}s"
            more = f.unexpected_count - len(f.lines)
            shown = ", ".join(str(n) for n in f.lines)
            parts.append(f"{word} {shown}" + (f" and {more:,} more" if more > 0 else ""))
        parts.append(f"column `{f.column}`" if f.column else "table")
        text = f"  - {', '.join(parts)} ({f.rule}): {f.expected or f.message}"
        if f.unexpected_count:
            text += f"; {f.unexpected_count:,} bad row(s)"
        shown_values = [_value(v) for v in f.examples if v is not None]
        if shown_values:
            text += "; first values: " + ", ".join(shown_values)
        lines.append(text)
    return "\n".join(lines)


def count_records(scan: FileScan) -> int:
    """Data records in a file that could not be parsed: non-blank lines after the header."""
    try:
        if scan.fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(scan.path).metadata.num_rows)
        count = 0
        with _open_bytes(scan.path, scan.compression) as handle:
            for line in handle:
                if line.strip():
                    count += 1
        return max(count - 1, 0)
    except Exception:  # noqa: BLE001 - a count for the record only; the error is reported
        return 0


# --- validate with Great Expectations ------------------------------------------------------


def _validate_gx(con: duckdb.DuckDBPyConnection, kind: str, event_id: int, rows: int,
                 ctx: sql.RuleContext) -> ValidationResult:
    """The table's GX suite on staged rows, streamed in pandas chunks of GX_CHUNK_ROWS."""
    from expectations import validate_in_chunks

    contract = FILE_CONTRACTS[kind]
    columns = ", ".join(sql.ident(c) for c in contract.column_names)
    limit = gx_max_rows()
    batches = con.sql(
        f"SELECT {columns} FROM {contract.name} WHERE event_id = {event_id}"
        + (f" LIMIT {limit}" if limit > 0 else "")
    ).to_arrow_reader(GX_CHUNK_ROWS)
    validator = partial(VALIDATORS[kind], start=ctx.start, end=ctx.end)
    frames = (batch.to_pandas() for batch in batches)
    result = validate_in_chunks(frames, validator)
    if 0 < limit < rows:
        result = replace(result, suite=f"{result.suite}[{limit:,} of {rows:,} rows]")
    return result


# --- record --------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _record(con: duckdb.DuckDBPyConnection, outcome: IngestOutcome, event_id: int,
            extract: date | None, validations: list[ValidationResult]) -> None:
    """Insert the provenance row and validation results inside the caller's transaction."""
    now = _now()
    con.execute(
        "INSERT INTO provenance (event_id, source_id, kind, path, extract_date, sha256, "
        "rows_received, rows_loaded, rows_quarantined, status, message, loaded_at, "
        "code_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            event_id, outcome.source_id, outcome.kind, outcome.path, extract, outcome.sha256,
            outcome.rows_received, outcome.rows_loaded, outcome.rows_quarantined,
            outcome.status, outcome.message, now, code_version(),
        ],
    )
    for validation in validations:
        con.execute(
            "INSERT INTO validation_results VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                event_id, outcome.path, validation.suite, validation.success,
                validation.evaluated, json.dumps(validation.to_dict(), default=str), now,
            ],
        )


_KEYS_SQL = {
    "aggregate": "SELECT DISTINCT area_code, month, measure FROM stg_aggregate "
                 "WHERE event_id = {e}",
    "episodes": "SELECT DISTINCT area_code, month FROM area_month_episodes WHERE event_id = {e}",
    "nhse_ae": "SELECT DISTINCT period, org_code, type FROM stg_nhse_ae WHERE event_id = {e}",
}


def _supersede(con: duckdb.DuckDBPyConnection, event_id: int, source_id: str, kind: str,
               extract: date | None) -> list[int]:
    """Mark loaded files of the same source and kind that this file (or a later one) replaces.

    A file is replaced when a file with a later (extract date, load order) covers every one of
    its keys: (area, month, measure) for aggregates, (area, admission month) for episodes,
    (month, organisation, type) for national A&E. Partly covered files stay current; the
    panel then takes each key from the latest extract. Returns the replaced event ids.
    """
    others = con.execute(
        "SELECT event_id, extract_date FROM provenance WHERE source_id = ? AND kind = ? "
        "AND status = 'loaded' AND superseded_by IS NULL AND event_id <> ?",
        [source_id, kind, event_id],
    ).fetchall()
    replaced = []
    mine = (extract or date.min, event_id)
    for other_id, other_extract in others:
        theirs = (other_extract or date.min, other_id)
        older, newer = (other_id, event_id) if theirs < mine else (event_id, other_id)
        (uncovered,) = con.execute(
            f"SELECT count(*) FROM ({_KEYS_SQL[kind].format(e=older)} "
            f"EXCEPT {_KEYS_SQL[kind].format(e=newer)})"
        ).fetchall()[0]
        if uncovered == 0:
            con.execute("UPDATE provenance SET superseded_by = ? WHERE event_id = ?",
                        [newer, older])
            replaced.append(older)
    return replaced


# --- quarantine ----------------------------------------------------------------------------


def rejected_marker(path: Path) -> Path:
    return path.with_name(path.name + REJECTED_SUFFIX)


def quarantine(path: Path, source_id: str, reason: dict, quarantine_dir: Path) -> Path:
    """Move the bad file to quarantine/<source>/<extract_date>/ with a JSON reason beside it,
    and leave a marker where it was. Falls back to a copy if the landing area is read-only."""
    safe_source = source_id if _SOURCE_ID.fullmatch(source_id) else "_unknown"
    folder = path.parent.name if _DATE_DIR.match(path.parent.name) else "undated"
    target_dir = quarantine_dir / safe_source / folder
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / path.name
    if target.exists() and reason.get("sha256") and sha256_of(target) != reason["sha256"]:
        target = target_dir / f"{reason['sha256'][:12]}-{path.name}"  # keep both versions
    (target_dir / f"{target.name}.reason.json").write_text(
        json.dumps({**reason, "quarantined_to": str(target)}, indent=2, default=str)
    )
    if path.is_file():
        try:
            shutil.move(path, target)
            rejected_marker(path).write_text(json.dumps(
                {**reason, "quarantined_to": str(target),
                 "note": "remove this marker once the refusal has been dealt with"},
                indent=2, default=str,
            ))
        except OSError as exc:
            log.warning("%s: cannot move to quarantine (%s); copied instead", path, exc)
            shutil.copy2(path, target)
    return target


# --- ingest one file -----------------------------------------------------------------------


def _refuse(con: duckdb.DuckDBPyConnection, exc: IngestError, *, source_id: str, path: Path,
            kind: str, sha: str, extract: date | None, received: int,
            quarantine_dir: Path | None) -> IngestOutcome:
    """Quarantine the file and record the refusal in its own transaction."""
    outcome = IngestOutcome(source_id, str(path), kind, sha, "quarantined", received, 0,
                            received, str(exc))
    if quarantine_dir is not None:
        validation = exc.validation.to_dict() if exc.validation else None
        quarantine(path, source_id, {**outcome.to_dict(), "validation": validation},
                   quarantine_dir)
    with warehouse.transaction(con):
        (event_id,) = con.execute("SELECT nextval('provenance_event_id')").fetchall()[0]
        _record(con, replace(outcome, event_id=event_id), event_id, extract,
                [exc.validation] if exc.validation else [])
    log.error("%s", exc)
    return outcome


def _rules_for(kind: str, source_id: str, protocol: Protocol,
               extract: date | None) -> sql.RuleContext:
    areas = None
    if kind != "nhse_ae" and source_id not in (COMPARISON_SOURCE, NATIONAL_AE_SOURCE):
        areas = tuple(protocol.site(source_id).areas)
    return sql.RuleContext(protocol.start, protocol.end, extract, source_id, areas)


def _load(con: duckdb.DuckDBPyConnection, scan: FileScan, kind: str, source_id: str,
          extract: date | None, ctx: sql.RuleContext) -> IngestOutcome:
    """Stage, check, validate, derive and record one file inside the caller's transaction."""
    contract = FILE_CONTRACTS[kind]
    rules = SUITES[kind].sql_rules(ctx)
    (event_id,) = con.execute("SELECT nextval('provenance_event_id')").fetchall()[0]
    started = time.perf_counter()
    log.info("%s: staging into %s as event %d", scan.path, contract.name, event_id)
    try:
        received = _stage(con, scan, contract, event_id, source_id)
    except (duckdb.ConversionException, duckdb.ConstraintException,
            duckdb.OutOfRangeException) as exc:
        raise _NeedsDiagnosis(str(exc)) from exc
    except _DATA_ERRORS as exc:
        raise _Refused(_read_error(scan, exc), count_records(scan)) from exc
    if received == 0:
        raise _Refused(_reject(scan.path, "expect_table_row_count_to_be_between",
                               "has a header but no data rows", suite=contract.name), 0)
    log.info("%s: %d rows staged, checking every row against the contract", scan.path,
             received)
    staged = f"(SELECT * FROM {contract.name} WHERE event_id = {event_id})"
    breaches = sql.count_breaches_by_value(con, staged, [r for r in rules if r.fast], contract)
    duplicates = sql.count_duplicates(con, staged, contract.key)
    if any(breaches) or duplicates:
        raise _NeedsDiagnosis("the SQL rules found breaches")
    checked = time.perf_counter()
    gx_result = _validate_gx(con, kind, event_id, received, ctx)
    if not gx_result.success:
        # Staged rows are not in file order, so GX row positions are not file lines.
        error = IngestError(describe(scan, gx_result.suite, gx_result.failures), gx_result)
        raise _Refused(error, received)
    validated = time.perf_counter()
    if kind == "episodes":
        con.execute(
            f"INSERT INTO area_month_episodes SELECT {event_id}, ?, area_code, month, measure, "
            f"count FROM ({episode_counts_sql(staged)})",
            [source_id],
        )
    outcome = IngestOutcome(source_id, str(scan.path), kind, scan.sha256, "loaded", received,
                            received, 0, event_id=event_id)
    _record(con, outcome, event_id, extract, [sql.result(contract, rules, []), gx_result])
    replaced = _supersede(con, event_id, source_id, kind, extract)
    log.info(
        "%s: loaded %d %s rows for %s (stage + SQL rules %.1f s, GX %.1f s)%s",
        scan.path, received, kind, source_id, checked - started, validated - checked,
        f"; replaces events {replaced}" if replaced else "",
    )
    return outcome


def _already_loaded(con: duckdb.DuckDBPyConnection, source_id: str, sha: str) -> bool:
    (n,) = con.execute(
        "SELECT count(*) FROM provenance WHERE source_id = ? AND sha256 = ? "
        "AND status = 'loaded'",
        [source_id, sha],
    ).fetchall()[0]
    return bool(n)


def _report_marker(db: Path, source_id: str, marker: Path) -> NoReturn:
    """A file refused earlier: record the refusal again and raise, so the run stays loud."""
    try:
        earlier = json.loads(marker.read_text())
    except (OSError, ValueError) as unreadable:
        earlier = {"message": f"unreadable marker ({unreadable})"}
    original = marker.with_name(marker.name.removesuffix(REJECTED_SUFFIX))
    received = int(earlier.get("rows_received") or 0)
    reason = str(earlier.get("message") or "no reason recorded").removeprefix(f"{original}: ")
    exc = IngestError(
        f"{original}: refused earlier and moved to {earlier.get('quarantined_to', 'quarantine')}"
        f" (rule: refused_earlier; remove {marker.name} once it has been dealt with). "
        f"Reason: {reason}",
        ValidationResult("file[read]", False, 1, [make_failure(
            "refused_earlier", None, f"refused earlier: {reason.splitlines()[0][:300]}")]),
    )
    with warehouse.connect(db) as con:
        _refuse(con, exc, source_id=source_id, path=original,
                kind=str(earlier.get("kind") or "unknown"),
                sha=str(earlier.get("sha256") or ""), extract=extract_date_of(original),
                received=received, quarantine_dir=None)
    raise exc


def ingest_file(
    db: str | Path,
    source_id: str,
    path: str | Path,
    protocol: Protocol,
    quarantine_dir: str | Path,
) -> IngestOutcome:
    """Load one file for one source all-or-nothing, or quarantine it and raise IngestError."""
    db, path, quarantine_dir = Path(db), Path(path), Path(quarantine_dir)
    if path.name.endswith(REJECTED_SUFFIX):
        _report_marker(db, source_id, path)
    kind, sha, extract, scan = "unknown", "", None, None
    try:
        check_source(source_id, protocol, path)
        extract = extract_date_of(path)
        scan = scan_file(path)
        sha = scan.sha256
        kind = detect_kind(scan.columns, path)
        if kind not in allowed_kinds(source_id):
            raise _reject(path, "kind_allowed_for_source",
                          f"has the header of the {kind} contract, which source "
                          f"'{source_id}' may not send (allowed: "
                          f"{', '.join(allowed_kinds(source_id))})")
    except IngestError as exc:
        if not sha and path.is_file():
            sha = sha256_of(path)
        received = count_records(scan) if scan is not None else 0
        with warehouse.connect(db) as con:
            _refuse(con, exc, source_id=source_id, path=path, kind=kind, sha=sha,
                    extract=extract, received=received, quarantine_dir=quarantine_dir)
        raise

    ctx = _rules_for(kind, source_id, protocol, extract)
    warm_up()  # seconds of imports, better spent before taking the write lock
    with warehouse.connect(db) as con:
        if _already_loaded(con, source_id, scan.sha256):
            log.info("%s: already loaded for %s (sha256 %s), skipped", path, source_id, sha[:12])
            return IngestOutcome(source_id, str(path), kind, sha, "skipped", 0, 0, 0,
                                 "already loaded")
        try:
            try:
                # Row order in staging carries no meaning; letting DuckDB append in parallel
                # avoids re-sorting and rewriting the new row groups at the next checkpoint.
                con.execute("SET preserve_insertion_order = false")
                with warehouse.transaction(con):
                    outcome = _load(con, scan, kind, source_id, extract, ctx)
            except _NeedsDiagnosis as needs:
                rules = SUITES[kind].sql_rules(ctx)
                error, received = _diagnose(con, scan, FILE_CONTRACTS[kind], rules, needs.cause)
                raise _Refused(error, received) from None
            finally:
                con.execute("RESET preserve_insertion_order")
        except _Refused as refused:
            _refuse(con, refused.error, source_id=source_id, path=path, kind=kind, sha=sha,
                    extract=extract, received=refused.received, quarantine_dir=quarantine_dir)
            raise refused.error from None
    rejected_marker(path).unlink(missing_ok=True)  # a corrected file replaces its refusal
    return outcome


# --- landing area --------------------------------------------------------------------------


def landing_files(landing: str | Path) -> list[tuple[str, Path]]:
    """Every (source_id, file) under `landing/<source>/<extract_date>/`, oldest extract first.

    Every visible file counts, so a spreadsheet or a misnamed file is refused loudly rather
    than ignored; files still being written (*.part, *.tmp) wait for the next run. A refusal
    marker is listed only while the refused file has not been sent again.
    """
    found = []
    for path in Path(landing).glob("*/*/*"):
        name = path.name
        if not path.is_file() or name.startswith(".") or name.endswith(IN_PROGRESS_SUFFIXES):
            continue
        if name.endswith(REJECTED_SUFFIX) and path.with_name(
            name.removesuffix(REJECTED_SUFFIX)
        ).exists():
            continue
        found.append((path.parent.parent.name, path))
    return sorted(found, key=lambda sp: (sp[0], sp[1].parent.name, sp[1].name))


def load_reference_areas(db: str | Path, path: str | Path) -> int:
    """Replace the area descriptors with the given CSV (small, whole-table refresh)."""
    frame = pl.read_csv(path, schema_overrides={"area_code": pl.String, "area_name": pl.String})
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "ref_areas", frame, "true", [])
    return frame.height
