"""Render the board papers: an HTML page and an A4 PDF per site, and the programme page.

    warehouse ──inputs.load_report_data──► pages.site_page / pages.programme_page
              ──templates (Jinja, autoescaped)──► DIR/sites/<site>.html, DIR/index.html
              ──pdf.PdfRenderer (WeasyPrint)──► DIR/sites/<site>.pdf, DIR/programme.pdf

Pages embed their charts and styles, so every page works offline. Output depends only on
the warehouse, the reference data and the generation time, so it can be snapshot-tested.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from reports import inputs, pages, pdf
from reports.statistics import area_features

log = logging.getLogger(__name__)


def _environment() -> Environment:
    # Autoescape: site names, file names and data values are untrusted text.
    return Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
    )


def generation_time() -> datetime:
    """Now, unless SOURCE_DATE_EPOCH fixes it (reproducible output for snapshot tests)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.fromtimestamp(int(epoch), UTC)
    return datetime.now(UTC).replace(microsecond=0)


def provenance(run: dict, generated_at: datetime) -> dict:
    """The footer of every page: what produced these numbers, from what, and when."""
    return {
        "run_id": run.get("run_id", "none"),
        "run_status": run.get("status", "unknown"),
        "code_version": run.get("code_version", "unknown"),
        "protocol_sha256": (run.get("protocol_sha256") or "")[:12] or "unknown",
        "data_sha256": (run.get("data_sha256") or "")[:12] or "unknown",
        "generated_at": generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        "generated_iso": generated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def render_site(env: Environment, page: pages.SitePage, footer: dict) -> str:
    return env.get_template("site.html").render(page=page, provenance=footer)


def render_index(env: Environment, page: pages.ProgrammePage, footer: dict) -> str:
    return env.get_template("index.html").render(page=page, provenance=footer)


def _refresh_inputs(db: Path, reference: Path) -> None:
    """Make sure the report-only tables exist, and load the sites' published claims."""
    inputs.ensure_report_tables(db)
    claims = reference / inputs.SITES_REFERENCE
    if claims.is_file():
        inputs.load_claims(db, claims)
    else:
        log.warning("reports: %s not found; claims in the warehouse left as they are", claims)


def render_reports(db: str | Path, out: str | Path, *, generated_at: datetime | None = None,
                   workers: int | None = None, reference: Path | None = None) -> list[Path]:
    """Write DIR/index.html, DIR/programme.pdf and DIR/sites/<site>.html and .pdf for
    every fitted site; return the paths written (HTML pages, then PDFs)."""
    started = time.perf_counter()
    db, out = Path(db), Path(out)
    reference = reference or inputs.reference_dir()
    (out / "sites").mkdir(parents=True, exist_ok=True)
    _refresh_inputs(db, reference)
    data = inputs.load_report_data(db, reference)
    generated_at = generated_at or generation_time()
    footer = provenance(data.run, generated_at)
    env = _environment()
    results = pages.with_q_values(data.results)
    fitted = set(results["site_id"].to_list())
    sites = [site for site in data.sites.to_dicts() if site["site_id"] in fitted]

    vanguard_areas = {a for areas in data.sites["areas"].to_list() for a in areas}
    all_areas = data.panel["area_code"].unique().sort().to_list()
    pool = [a for a in all_areas if a not in vanguard_areas]
    features: dict = {}
    written = []
    with pdf.PdfRenderer(generated_at, len(sites) + 1, workers) as renderer:
        # The programme page first: it is the largest PDF, so it should start earliest.
        index = out / "index.html"
        index.write_text(render_index(env, pages.programme_page(data, results), footer),
                         encoding="utf-8")
        written.append(index)
        renderer.submit(index, out / "programme.pdf", cost=1 + len(sites) / 5)
        for site in sites:
            if site["go_live"] not in features:
                features[site["go_live"]] = area_features(data.panel, data.ref_areas,
                                                          site["go_live"], all_areas)
            page = pages.site_page(data, site, results, features[site["go_live"]], pool)
            html = out / "sites" / f"{page.page}.html"
            html.write_text(render_site(env, page, footer), encoding="utf-8")
            written.append(html)
            renderer.submit(html, html.with_suffix(".pdf"))
        log.info("reports: %d HTML pages in %.1f s", len(written), time.perf_counter() - started)
    written += renderer.written
    log.info("reports: wrote %d files under %s in %.1f s", len(written), out,
             time.perf_counter() - started)
    return written
