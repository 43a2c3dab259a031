"""The rendered papers from a small hand-made warehouse: sections, escaping, disclosure,
offline pages, optional inputs (claims, event study) and byte-for-byte reproducibility."""

from __future__ import annotations

import base64
import re
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from reports import render_reports
from reports.disclosure import SUPPRESSED
from transforms import warehouse

GENERATED = datetime(2019, 6, 1, 12, 0, tzinfo=UTC)
MONTHS = [date(2014 + (3 + m) // 12, (3 + m) % 12 + 1, 1) for m in range(24)]  # Apr 14 on
GO_LIVE = date(2015, 4, 1)
AREAS = [f"A{i:02d}" for i in range(1, 11)]
SITES = {
    "alpha": {"name": "Alpha Vanguard", "model_type": "PACS", "areas": ["A01"], "number": 3,
              "comparators": ["A04", "A05"]},
    "beta": {"name": "<script>alert(1)</script>", "model_type": "care-home",
             "areas": ["A02", "A03"], "number": None, "comparators": ["A06", "A07"]},
}
OUTCOMES = [("emergency_admissions", "Emergency admissions"),
            ("rare_admissions", "Rare admissions")]


def _insert(con, table: str, rows: list[dict]) -> None:
    """Insert rows by column name; required columns these tests do not know about (added
    to the warehouse later) get a neutral value, so the fixture keeps up with the schema."""
    frame = pl.DataFrame(rows)
    defaults = {"VARCHAR": "''", "BOOLEAN": "false", "DATE": "DATE '2019-01-01'",
                "TIMESTAMP": "TIMESTAMP '2019-01-01'"}
    extra = [
        f"{defaults.get(kind, '0')}::{kind} AS {name}"
        for name, kind, nullable, *_ in con.execute(f"DESCRIBE {table}").fetchall()
        if nullable == "NO" and name not in frame.columns
    ]
    con.register("_rows", frame.to_arrow())
    con.execute(f"INSERT INTO {table} BY NAME SELECT *{''.join(', ' + e for e in extra)} "
                "FROM _rows")
    con.unregister("_rows")


def build_warehouse(db: Path, event_study: bool = True) -> None:
    """Two sites, two outcomes (one with counts of 0 to 9 a month), ten areas, 24 months."""
    with warehouse.connect(db) as con:
        panel = []
        for i, area in enumerate(AREAS):
            for m, month in enumerate(MONTHS):
                population = 100_000 + 1_000 * i
                panel.append({"area_code": area, "month": month,
                              "outcome": "emergency_admissions", "count": 700 + 5 * i + m % 7,
                              "population": population, "rate_per_1000": 7.0})
                panel.append({"area_code": area, "month": month, "outcome": "rare_admissions",
                              "count": (i + m) % 10, "population": population,
                              "rate_per_1000": 0.05})
        _insert(con, "area_month_panel", panel)
        _insert(con, "ref_areas", [
            {"area_code": a, "area_name": f"Area {a}", "population_2012": 100_000 + 1_000 * i,
             "pct_aged_65_plus": 15.0 + i, "imd_score": 20.0 + 2 * i}
            for i, a in enumerate(AREAS)])
        _insert(con, "runs", [{
            "run_id": "run-test", "started_at": datetime(2019, 6, 1, 11), "status": "success",
            "finished_at": datetime(2019, 6, 1, 11, 5), "code_version": "0.1.0+gtest",
            "protocol_name": "Test protocol", "protocol_sha256": "a" * 64,
            "data_sha256": "b" * 64, "study_start": MONTHS[0], "study_end": MONTHS[-1],
            "orchestrator": "cli"}])
        for n, (site_id, site) in enumerate(SITES.items()):
            _insert(con, "sites", [{
                "site_id": site_id, "name": site["name"], "model_type": site["model_type"],
                "go_live": GO_LIVE, "announced": GO_LIVE,
                "nhse_vanguard_number": site["number"], "areas": site["areas"]}])
            _insert(con, "comparison_areas", [
                {"site_id": site_id, "treated_area": t, "area_code": c, "rank": r + 1,
                 "distance": 0.1 * (r + 1)}
                for t in site["areas"] for r, c in enumerate(site["comparators"])])
            _insert(con, "model_results", [{
                "site_id": site_id, "outcome": outcome, "outcome_label": label,
                "measure": outcome, "outcome_order": order, "estimator": "poisson_twfe",
                "inference": "cluster_robust_area_t",
                "inference_reason": "sandwich errors clustered by area",
                "warnings": "only 1 treated area(s): intervals may be too narrow",
                "log_rate_ratio": -0.05, "se": 0.02, "df": 3, "p_value": 0.01 + 0.2 * order,
                "rate_ratio": 0.95, "pct_change": -4.9 + n, "pct_ci_low": -8.7,
                "pct_ci_high": -1.0 + 3 * order, "n_obs": 72, "n_treated_areas": 1,
                "n_comparison_areas": 2, "pre_rate_per_1000": 7.0, "post_rate_per_1000": 7.1,
                "run_id": "run-test", "fitted_at": datetime(2019, 6, 1, 11, 4)}
                for order, (outcome, label) in enumerate(OUTCOMES)])
            _insert(con, "model_series", [
                {"site_id": site_id, "outcome": outcome, "month": month,
                 "observed_rate": 7.0, "counterfactual_rate": 7.2, "comparison_rate": 7.1}
                for outcome, _ in OUTCOMES for month in MONTHS])
            event = 10 * n + 1
            _insert(con, "provenance", [{
                "event_id": event, "source_id": site_id, "kind": "episodes",
                "path": f"/landing/{site_id}/2019-05-15/<b>episodes</b>.csv",
                "extract_date": date(2019, 5, 15), "sha256": "c" * 64, "rows_received": 1234,
                "rows_loaded": 0, "rows_quarantined": 1234, "status": "quarantined",
                "message": "column `patient_id` has bad values, e.g. 'PATIENT0001SECRET'",
                "loaded_at": datetime(2019, 6, 1, 11, 1), "code_version": "0.1.0+gtest"}])
            _insert(con, "validation_results", [{
                "event_id": event, "target": f"/landing/{site_id}/episodes.csv",
                "suite": "stg_episodes", "success": False, "evaluated": 12,
                "result_json": '{"failures": [{"rule": "expect_match", "column": "patient_id",'
                               ' "message": "bad id PATIENT0001SECRET", "unexpected_count": 3,'
                               ' "examples": ["PATIENT0001SECRET"]}]}',
                "validated_at": datetime(2019, 6, 1, 11, 1)}])
    if event_study:
        with warehouse.connect(db) as con:
            _insert(con, "event_study", [
                {"site_id": "alpha", "outcome": "emergency_admissions", "e": e,
                 "estimate": 0.5 * e if e >= 0 else 0.1, "ci_low": -1.0, "ci_high": 1.0,
                 "p_pretrend": 0.43, "inference": "placebo_in_space"}
                for e in range(-4, 4)])


def write_reference(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vanguard_sites_2015.csv").write_text(
        "nhse_vanguard_number,vanguard_name,hsj_pct_change_emerg_adm_rate_1415_to_12m_sep2017\n"
        "3,Alpha,15.6\n8,Other,7.0\n")
    (folder / "morciano2020_table1.csv").write_text(
        "site_type,window,outcome,did_estimate,ci95_low,ci95_high,source\n"
        'population-based,1st-3rd year,emerg_adm_rate_per_1000_month,-0.004,-0.032,0.024,"M"\n'
        'care home,1st-3rd year,emerg_adm_rate_per_1000_month,-0.042,-0.082,-0.002,"M"\n')
    return folder


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("reports")
    db = root / "w.duckdb"
    build_warehouse(db)
    reference = write_reference(root / "reference")
    written = render_reports(db, root / "out", generated_at=GENERATED, workers=1,
                             reference=reference)
    return db, root / "out", written


def _page(out: Path, name: str) -> str:
    return (out / name).read_text(encoding="utf-8")


class _Tables(HTMLParser):
    """Every table on a page as header -> column cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._headers: list[str] = []
        self._rows: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._headers, self._rows = [], []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if not self._headers:
                self._headers = self._row
            else:
                self._rows.append(self._row)
            self._row = None
        elif tag == "table":
            self.tables.append({h: [r[i] for r in self._rows]
                                for i, h in enumerate(self._headers)})


def tables_of(html: str) -> list[dict[str, list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def test_every_file_is_written(rendered):
    _, out, written = rendered
    names = sorted(str(p.relative_to(out)) for p in written)
    assert names == ["index.html", "programme.pdf", "sites/alpha.html", "sites/alpha.pdf",
                     "sites/beta.html", "sites/beta.pdf"]
    for pdf in out.rglob("*.pdf"):
        assert pdf.read_bytes().startswith(b"%PDF-")


def test_site_paper_has_every_section(rendered):
    _, out, _ = rendered
    page = _page(out, "sites/alpha.html")
    assert ("Emergency admissions were 5% lower (95% CI 9% lower to 1% lower) than in matched "
            "comparison areas; the difference is statistically significant.") in page
    for section in ("What we found", "Claimed and estimated", "Observed and expected",
                    "Estimates", "Event study", "Comparison areas and balance",
                    "Appendix A: data quality", "Appendix B: methods", "Inference used and why",
                    "Assumptions", "Caveats", "Provenance"):
        assert section in page, section
    assert "Outside our 95% CI (above it)" in page  # the +15.6% claim against -4.9%
    for fact in ("run-test", "0.1.0+gtest", "a" * 12, "b" * 12, "2019-06-01 12:00 UTC"):
        assert fact in page


def test_claims_are_loaded_into_the_warehouse(rendered):
    db, _, _ = rendered
    claims = warehouse.query(db, "SELECT site_id, outcome, claimed_pct_change FROM claims")
    assert claims.rows() == [("alpha", "emergency_admissions", 15.6)]


def test_event_study_is_drawn_only_where_estimated(rendered):
    _, out, _ = rendered
    page = _page(out, "sites/alpha.html")
    assert "Event-study chart for emergency admissions at Alpha Vanguard" in page
    assert ("Before go-live the site and its comparison areas moved together (test of "
            "parallel trends p = 0.43).") in page
    charts = [base64.b64decode(src).decode() for src in
              re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)]
    event_chart = next(svg for svg in charts if "event study for Alpha Vanguard" in svg)
    assert "Go-live" in event_chart and "parallel trends p = 0.43" in event_chart
    assert "Not yet estimated" in _page(out, "sites/beta.html")


def test_event_study_table_from_an_older_warehouse_still_renders(tmp_path):
    """Warehouses whose event_study table the reports created, before the pipeline wrote
    it with its pre-trend test, gain the new columns and render."""
    import duckdb

    db = tmp_path / "w.duckdb"
    build_warehouse(db, event_study=False)
    with warehouse.connect(db) as con:
        con.execute("DROP TABLE event_study")
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE event_study (site_id VARCHAR NOT NULL, outcome VARCHAR NOT "
                "NULL, e INTEGER NOT NULL, estimate DOUBLE NOT NULL, ci_low DOUBLE NOT NULL, "
                "ci_high DOUBLE NOT NULL)")
    con.execute("INSERT INTO event_study VALUES ('alpha', 'emergency_admissions', -1, 0, 0, "
                "0), ('alpha', 'emergency_admissions', 0, -3, -6, 0)")
    con.close()
    render_reports(db, tmp_path / "out", generated_at=GENERATED, workers=1,
                   reference=tmp_path / "nowhere")
    page = (tmp_path / "out" / "sites" / "alpha.html").read_text()
    assert "Event-study chart for emergency admissions" in page
    assert "test of parallel trends before go-live could not be run" in page
    columns = warehouse.query(db, "DESCRIBE event_study")["column_name"].to_list()
    assert {"p_pretrend", "inference"} <= set(columns)


def test_untrusted_text_renders_as_text(rendered):
    _, out, _ = rendered
    for name in ("index.html", "sites/beta.html"):
        page = _page(out, name)
        assert "<script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<b>episodes</b>" not in page
    # Inside the charts too (site names are drawn as SVG text).
    charts = [base64.b64decode(src).decode() for src in
              re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', _page(out, "index.html"))]
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in svg for svg in charts)
    assert not any("<script" in svg for svg in charts)


def test_patient_level_messages_are_withheld(rendered):
    _, out, _ = rendered
    for page in out.rglob("*.html"):
        assert "PATIENT0001SECRET" not in page.read_text()


def test_published_counts_are_rounded_or_suppressed(rendered):
    _, out, _ = rendered
    seen = 0
    for page in out.rglob("*.html"):
        for table in tables_of(page.read_text()):
            for header in ("Before go-live", "After go-live", "Rows received", "Rows refused",
                           "Rows affected"):
                for cell in table.get(header, []):
                    seen += 1
                    if cell != SUPPRESSED:
                        value = int(cell.replace(",", ""))
                        assert value % 5 == 0 and not 1 <= value <= 7, (page, header, cell)
    assert seen > 10
    assert "1,235" in _page(out, "sites/alpha.html")  # 1,234 rows received, rounded
    assert ">*<" in _page(out, "sites/alpha.html")  # 3 rows failing a check


def test_every_chart_has_alt_text_and_pages_are_self_contained(rendered):
    _, out, _ = rendered
    for page in out.rglob("*.html"):
        html = page.read_text()
        images = re.findall(r"<img [^>]*>", html)
        assert images, page
        for image in images:
            alt = re.search(r'alt="([^"]*)"', image)
            assert alt and len(alt.group(1)) > 30, image[:80]
        assert not re.search(r'(src|href)="(https?:)?//', html), page
        assert "url(http" not in html and "<script" not in html and "<link" not in html


def test_tables_are_only_written_through_disclosure():
    templates = Path(__file__).resolve().parents[2] / "reports" / "templates"
    for template in templates.glob("*.html"):
        if template.name != "macros.html":
            assert "<table" not in template.read_text(), template.name


def test_programme_page_shows_q_values_and_published_reference(rendered):
    _, out, _ = rendered
    page = _page(out, "index.html")
    assert "Morciano et al. 2020" in page
    # On the forest plot's % scale, against the mean pre-go-live rate of the sites here
    # (7.0 per 1,000 a month in this warehouse): -0.004 per 1,000 is -0.06%.
    assert "as a % of the mean pre-go-live rate" in page
    assert "Population-based (PACS, MCP): 1st-3rd year: -0.1% (-0.5% to +0.3%)" in page
    assert "7.00 per 1,000 a month over 1 site(s)" in page
    assert re.search(r"p 0\.010 · q 0\.020", page)  # BH over the four p-values
    assert 'href="sites/alpha.pdf"' in page and 'href="sites/beta.html"' in page


def test_reports_are_reproducible(rendered, tmp_path):
    db, out, _ = rendered
    again = tmp_path / "again"
    render_reports(db, again, generated_at=GENERATED, workers=1,
                   reference=write_reference(tmp_path / "reference"))
    for path in out.rglob("*.*"):
        assert (again / path.relative_to(out)).read_bytes() == path.read_bytes(), path


def test_missing_reference_data_is_not_fatal(tmp_path):
    db = tmp_path / "w.duckdb"
    build_warehouse(db, event_study=False)
    written = render_reports(db, tmp_path / "out", generated_at=GENERATED, workers=1,
                             reference=tmp_path / "nowhere")
    assert len(written) == 6
    page = (tmp_path / "out" / "sites" / "alpha.html").read_text()
    assert "No published before-and-after claim" in page and "Not yet estimated" in page
