"""Ingest site extracts into staging: read, type, validate, then load all-or-nothing.

A file is one batch. Either every row lands in staging together with its provenance
record, or none does and the file is copied to quarantine with a machine-readable reason.
Loading the same bytes twice for the same source changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from expectations.validate import ValidationResult
from transforms import warehouse
from transforms.protocol import Protocol
from transforms.version import code_version

log = logging.getLogger(__name__)

COMPARISON_SOURCE = "comparison"

AGGREGATE_COLUMNS: dict[str, type[pl.DataType]] = {
    "area_code": pl.String,
    "month": pl.Date,
    "measure": pl.String,
    "count": pl.Int64,
    "population": pl.Int64,
}
EPISODE_COLUMNS: dict[str, type[pl.DataType]] = {
    "patient_id": pl.String,
    "admission_date": pl.Date,
    "discharge_date": pl.Date,
    "admission_method": pl.String,
    "primary_diagnosis": pl.String,
    "age": pl.Int16,
    "sex": pl.String,
    "area_code": pl.String,
}
CONTRACTS = {"aggregate": AGGREGATE_COLUMNS, "episodes": EPISODE_COLUMNS}
TABLES = {"aggregate": "stg_aggregate", "episodes": "stg_episodes"}
_DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class IngestError(ValueError):
    """A file broke the data contract; the message names the file, column or row, and rule."""


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

    def to_dict(self) -> dict:
        return asdict(self)


def sha256_of(path: Path) -> str:
    """Content hash, so a re-sent identical file is recognised whatever its name."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_date_of(path: Path) -> date | None:
    """The extract date from `landing/<source>/<YYYY-MM-DD>/file`, if the path has one."""
    name = path.parent.name
    return date.fromisoformat(name) if _DATE_DIR.match(name) else None


def detect_kind(columns: list[str], path: Path) -> str:
    """Which contract the header matches; otherwise say what is missing and unexpected."""
    given = set(columns)
    for kind, contract in CONTRACTS.items():
        if given == set(contract):
            return kind
    kind, contract = max(CONTRACTS.items(), key=lambda kv: len(given & set(kv[1])))
    missing = [c for c in contract if c not in given]
    extra = sorted(given - set(contract))
    raise IngestError(
        f"{path}: header does not match the {kind} contract: "
        f"missing columns {missing or 'none'}, unexpected columns {extra or 'none'}; "
        f"expected exactly {list(contract)}"
    )


def read_raw(path: Path) -> pl.DataFrame:
    """Read a CSV as text columns, so typing errors can be reported by row."""
    try:
        return pl.read_csv(path, infer_schema=False, encoding="utf8")
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, UnicodeDecodeError) as exc:
        raise IngestError(f"{path}: cannot be read as UTF-8 CSV: {exc}") from exc


def cast_columns(
    raw: pl.DataFrame, contract: dict[str, type[pl.DataType]], path: Path
) -> pl.DataFrame:
    """Cast text columns to the contract's types, naming the first bad value of each column."""
    problems: list[str] = []
    typed: dict[str, pl.Series] = {}
    for column, dtype in contract.items():
        text = raw[column].str.strip_chars()
        if dtype == pl.Date:
            cast = text.str.strptime(pl.Date, "%Y-%m-%d", strict=False)
            expected = "dates (YYYY-MM-DD)"
        elif dtype == pl.String:
            cast = text
            expected = "text"
        else:
            cast = text.cast(dtype, strict=False)
            expected = "whole numbers"
        bad = (text.is_not_null() & cast.is_null()).arg_true()
        if bad.len():
            first = int(bad[0])
            problems.append(
                f"column `{column}` has {bad.len()} values that are not {expected}, "
                f"first at line {first + 2}: {text[first]!r}"
            )
        typed[column] = cast
    if problems:
        raise IngestError(f"{path}: " + "; ".join(problems))
    return pl.DataFrame(typed)


def check_areas(frame: pl.DataFrame, source_id: str, protocol: Protocol, path: Path) -> None:
    """A site's extract may only hold that site's member areas."""
    if source_id == COMPARISON_SOURCE:
        return
    allowed = set(protocol.site(source_id).areas)
    foreign = frame.filter(~pl.col("area_code").is_in(sorted(allowed)))
    if foreign.height:
        codes = sorted(set(foreign["area_code"].drop_nulls().to_list()))[:5]
        raise IngestError(
            f"{path}: column `area_code` has {foreign.height} rows for areas outside site "
            f"'{source_id}' (e.g. {codes}); the protocol lists {sorted(allowed)}"
        )


def check_source(source_id: str, protocol: Protocol) -> None:
    """The source must be a protocol site or the national comparison pool."""
    known = {s.id for s in protocol.sites} | {COMPARISON_SOURCE}
    if source_id not in known:
        raise IngestError(
            f"unknown source '{source_id}'; allowed: {', '.join(sorted(known))}"
        )


def validate_typed(frame: pl.DataFrame, kind: str, protocol: Protocol) -> ValidationResult:
    """Run the Great Expectations suite for this kind of file."""
    from expectations import validate_aggregate, validate_episodes

    validator = validate_aggregate if kind == "aggregate" else validate_episodes
    return validator(frame.to_pandas(), start=protocol.start, end=protocol.end)


def already_loaded(db: Path, source_id: str, sha: str) -> bool:
    found = warehouse.query(
        db,
        "SELECT count(*) AS n FROM provenance WHERE source_id = ? AND sha256 = ? "
        "AND status = 'loaded'",
        [source_id, sha],
    )
    return bool(found["n"][0])


def quarantine(path: Path, source_id: str, reason: dict, quarantine_dir: Path) -> Path:
    """Copy the bad file aside with a JSON reason next to it; the landing copy is untouched."""
    safe_source = source_id if re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", source_id) else "_unknown"
    extract = extract_date_of(path)
    target_dir = quarantine_dir / safe_source / (extract.isoformat() if extract else "undated")
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / path.name
    shutil.copy2(path, target)
    (target_dir / f"{path.name}.reason.json").write_text(json.dumps(reason, indent=2, default=str))
    return target


def _record(
    con, outcome: IngestOutcome, extract: date | None, validation: dict | None
) -> int:
    """Insert the provenance row (and validation result) inside the caller's transaction."""
    event_id = con.execute("SELECT nextval('provenance_event_id')").fetchone()[0]
    now = datetime.now(UTC).replace(tzinfo=None)
    con.execute(
        "INSERT INTO provenance VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            event_id, outcome.source_id, outcome.kind, outcome.path, extract, outcome.sha256,
            outcome.rows_received, outcome.rows_loaded, outcome.rows_quarantined,
            outcome.status, outcome.message, now, code_version(),
        ],
    )
    if validation is not None:
        con.execute(
            "INSERT INTO validation_results VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                event_id, outcome.path, validation["suite"], validation["success"],
                validation["evaluated"], json.dumps(validation, default=str), now,
            ],
        )
    return event_id


def ingest_file(
    db: str | Path,
    source_id: str,
    path: str | Path,
    protocol: Protocol,
    quarantine_dir: str | Path,
) -> IngestOutcome:
    """Load one file for one source, or quarantine it and raise IngestError."""
    db, path = Path(db), Path(path)
    sha = sha256_of(path)
    extract = extract_date_of(path)
    if db.exists() and already_loaded(db, source_id, sha):
        log.info("%s: already loaded for %s (sha256 %s), skipped", path, source_id, sha[:12])
        return IngestOutcome(source_id, str(path), "", sha, "skipped", 0, 0, 0, "already loaded")

    kind, received, validation = "unknown", 0, None
    try:
        check_source(source_id, protocol)
        raw = read_raw(path)
        received = raw.height
        if received == 0:
            raise IngestError(f"{path}: has a header but no data rows")
        kind = detect_kind(raw.columns, path)
        typed = cast_columns(raw, CONTRACTS[kind], path)
        check_areas(typed, source_id, protocol, path)
        result = validate_typed(typed, kind, protocol)
        validation = result.to_dict()
        if not result.success:
            raise IngestError(f"{path}: failed validation\n{result.summary()}")
    except IngestError as exc:
        outcome = IngestOutcome(source_id, str(path), kind, sha, "quarantined",
                                received, 0, received, str(exc))
        quarantine(path, source_id, {**outcome.to_dict(), "validation": validation},
                   Path(quarantine_dir))
        with warehouse.connect(db) as con, warehouse.transaction(con):
            _record(con, outcome, extract, validation)
        log.error("%s", exc)
        raise

    outcome = IngestOutcome(source_id, str(path), kind, sha, "loaded", received, received, 0)
    with warehouse.connect(db) as con, warehouse.transaction(con):
        event_id = _record(con, outcome, extract, validation)
        staged = typed.with_columns(
            pl.lit(event_id, pl.Int64).alias("event_id"),
            pl.lit(source_id).alias("source_id"),
        )
        con.register("_staged", staged.to_arrow())
        columns = ", ".join(staged.columns)
        con.execute(f"INSERT INTO {TABLES[kind]} ({columns}) SELECT {columns} FROM _staged")
        con.unregister("_staged")
    log.info("%s: loaded %d %s rows for %s", path, received, kind, source_id)
    return outcome


def landing_files(landing: str | Path) -> list[tuple[str, Path]]:
    """Every (source_id, file) under `landing/<source>/<extract_date>/`, oldest extract first."""
    found = []
    for path in sorted(Path(landing).glob("*/*/*.csv")):
        found.append((path.parent.parent.name, path))
    return sorted(found, key=lambda sp: (sp[0], sp[1].parent.name, sp[1].name))


def load_reference_areas(db: str | Path, path: str | Path) -> int:
    """Replace the area descriptors with the given CSV (small, whole-table refresh)."""
    frame = pl.read_csv(path, schema_overrides={"area_code": pl.String, "area_name": pl.String})
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "ref_areas", frame, "true", [])
    return frame.height
