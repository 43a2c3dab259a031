"""The pipeline's stages as I/O steps: read the warehouse, call a pure step, write back.

The Airflow DAG and the `vanguard run` command call these same functions, so a run
through either gives the same warehouse. Every step rewrites its own partition (a site,
or the whole panel) inside one transaction, so re-running a step is harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from transforms import warehouse
from transforms.estimators import fit_poisson_did, pre_post_rates
from transforms.ingest import IngestError, IngestOutcome, ingest_file, landing_files
from transforms.matching import match_site, nearest_neighbours, site_features
from transforms.panel import build_panel, incomplete_areas
from transforms.protocol import Protocol
from transforms.version import code_version

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A stage cannot go on; the message says which input is at fault."""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- runs ---------------------------------------------------------------------------


def start_run(db: Path, protocol: Protocol, orchestrator: str, run_id: str | None = None) -> str:
    """Record the start of a run; its id ties results and reports together."""
    run_id = run_id or f"run-{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    with warehouse.connect(db) as con, warehouse.transaction(con):
        con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        con.execute(
            "INSERT INTO runs VALUES (?, ?, NULL, 'running', ?, ?, ?, NULL, ?, ?, ?)",
            [run_id, now(), code_version(), protocol.name, protocol.sha256,
             protocol.start, protocol.end, orchestrator],
        )
    return run_id


def finish_run(db: Path, run_id: str) -> str:
    """Close the run with the hash of the data it used (the loaded files' hashes).

    The run is 'partial' when any file was quarantined while it ran, so a board paper
    built on it says that some data were refused.
    """
    with warehouse.connect(db) as con, warehouse.transaction(con):
        (refused,) = con.execute(
            "SELECT count(*) FROM provenance p, runs r WHERE r.run_id = ? "
            "AND p.status = 'quarantined' AND p.loaded_at >= r.started_at",
            [run_id],
        ).fetchone() or (0,)
        status = "partial" if refused else "success"
        hashes = con.execute(
            "SELECT sha256 FROM provenance WHERE status = 'loaded' ORDER BY sha256"
        ).fetchall()
        data_sha = hashlib.sha256("".join(h[0] for h in hashes).encode()).hexdigest()
        con.execute(
            "UPDATE runs SET finished_at = ?, status = ?, data_sha256 = ? WHERE run_id = ?",
            [now(), status, data_sha, run_id],
        )
    return status


# -- stages --------------------------------------------------------------------------


def record_sites(db: Path, protocol: Protocol) -> None:
    """Copy the protocol's sites into the warehouse so reports need only the database."""
    frame = pl.DataFrame(
        {
            "site_id": [s.id for s in protocol.sites],
            "name": [s.name for s in protocol.sites],
            "model_type": [s.model_type for s in protocol.sites],
            "go_live": [s.go_live for s in protocol.sites],
            "announced": [s.announced for s in protocol.sites],
            "nhse_vanguard_number": [s.nhse_vanguard_number for s in protocol.sites],
            "areas": [list(s.areas) for s in protocol.sites],
        },
        schema_overrides={"nhse_vanguard_number": pl.Int32},
    )
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "sites", frame, "true", [])


@dataclass(frozen=True)
class IngestReport:
    outcomes: list[IngestOutcome]
    errors: list[str]


def ingest_source(
    db: Path, protocol: Protocol, source_id: str, files: list[Path], quarantine_dir: Path
) -> IngestReport:
    """Ingest one source's files; a bad file is quarantined and the rest carry on."""
    outcomes, errors = [], []
    for path in files:
        try:
            outcomes.append(ingest_file(db, source_id, path, protocol, quarantine_dir))
        except IngestError as exc:
            errors.append(str(exc))
    loaded = sum(o.rows_loaded for o in outcomes)
    log.info("%s: %d file(s) loaded or already loaded (%d rows), %d refused",
             source_id, len(outcomes), loaded, len(errors))
    return IngestReport(outcomes, errors)


def sources_in(landing: Path, protocol: Protocol) -> dict[str, list[Path]]:
    """Landing files grouped by source id, leaving out sites excluded from this run.

    Unknown sources stay in, so that ingest rejects them loudly. Markers of files refused by
    an earlier run are listed too, so the refusal is reported until it is dealt with.
    """
    skipped = {site.id for site in protocol.excluded_sites}
    grouped: dict[str, list[Path]] = {}
    for source_id, path in landing_files(landing):
        if source_id in skipped:
            log.info("%s: site not in this run, %s left for a later run", source_id, path)
            continue
        grouped.setdefault(source_id, []).append(path)
    return grouped


_STAGED_AGGREGATE = (
    "SELECT s.source_id, s.area_code, s.month, s.measure, s.count, s.population, "
    "p.extract_date, p.event_id FROM stg_aggregate s JOIN provenance p USING (event_id)"
)
_STAGED_EPISODE_COUNTS = (
    "SELECT e.source_id, e.area_code, e.month, e.measure, e.count, p.extract_date, p.event_id "
    "FROM area_month_episodes e JOIN provenance p USING (event_id)"
)
_STAGED_NATIONAL_AE = (
    "SELECT n.period, n.org_code, n.type, n.attendances, n.breaches, n.admissions, "
    "p.extract_date, p.event_id FROM stg_nhse_ae n JOIN provenance p USING (event_id)"
)


def build_panel_step(db: Path, protocol: Protocol) -> int:
    """Rebuild the area-month panel and the national provider-month panel from current
    staging, validate both, and store them together."""
    from expectations import validate_panel, validate_provider_panel
    from transforms.panel import build_provider_panel, current_counts, episode_disagreements

    staged = warehouse.query(db, _STAGED_AGGREGATE)
    episodes = warehouse.query(db, _STAGED_EPISODE_COUNTS)
    differing = episode_disagreements(staged, episodes, protocol.vanguard_areas)
    if differing.height:
        log.warning(
            "panel: %d area-month-measure counts differ between a site's aggregate file and "
            "its episodes of the same extract (episodes used), e.g. %s",
            differing.height, differing.head(3).rows(),
        )
    current = current_counts(staged, episodes, protocol.vanguard_areas)
    panel = build_panel(current, protocol.outcomes, protocol.months)
    missing_sites = sorted(a for a in protocol.site_areas if a not in set(panel["area_code"]))
    if missing_sites:
        raise PipelineError(f"panel: no data loaded for site areas {missing_sites}")
    gaps = incomplete_areas(panel, len(protocol.months))
    if gaps.height:
        raise PipelineError(
            f"panel: {gaps.height} area-outcome series do not cover all "
            f"{len(protocol.months)} months of the study window, e.g. {gaps.head(5).rows()}"
        )
    result = validate_panel(panel.to_pandas(), n_months=len(protocol.months))
    if not result.success:
        raise PipelineError(f"panel failed validation:\n{result.summary()}")

    providers = build_provider_panel(warehouse.query(db, _STAGED_NATIONAL_AE), protocol.months)
    provider_result = None
    if providers.height:
        provider_result = validate_provider_panel(
            providers.to_pandas(), start=protocol.start, end=protocol.end
        )
        if not provider_result.success:
            raise PipelineError(
                f"provider panel failed validation:\n{provider_result.summary()}"
            )
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "area_month_panel", panel, "true", [])
        warehouse.replace_rows(con, "provider_month_panel", providers, "true", [])
        for target, checked in (("area_month_panel", result),
                                ("provider_month_panel", provider_result)):
            if checked is None:
                continue
            con.execute(
                "INSERT INTO validation_results VALUES (NULL, ?, ?, ?, ?, ?, ?)",
                [target, checked.suite, checked.success, checked.evaluated,
                 json.dumps(checked.to_dict(), default=str), now()],
            )
    log.info("panel: %d rows, %d areas; provider panel: %d rows, %d organisations",
             panel.height, panel["area_code"].n_unique(), providers.height,
             providers["org_code"].n_unique())
    return panel.height


def comparison_pool(panel_areas: list[str], protocol: Protocol) -> list[str]:
    """Areas eligible as comparators: those in no vanguard site."""
    vanguard = set(protocol.vanguard_areas)
    return sorted(a for a in panel_areas if a not in vanguard)


def _matching_inputs(db: Path, protocol: Protocol) -> tuple[pl.DataFrame, list[str],
                                                             pl.DataFrame]:
    """The matching outcome's panel, the comparison pool and the area descriptors."""
    rule = protocol.comparison
    panel = warehouse.query(
        db, "SELECT * FROM area_month_panel WHERE outcome = ?", [rule.matching_outcome]
    )
    pool = comparison_pool(panel["area_code"].unique().to_list(), protocol)
    areas = warehouse.query(db, "SELECT * FROM ref_areas")
    return panel, pool, areas


def match_step(db: Path, protocol: Protocol, site_id: str) -> pl.DataFrame:
    """Choose and store a site's comparison areas and its balance table."""
    site = protocol.site(site_id)
    panel, pool, areas = _matching_inputs(db, protocol)
    matched, balance = match_site(panel, site, pool, protocol.comparison,
                                  protocol.pre_period_months, areas)
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "comparison_areas", matched, "site_id = ?", [site_id])
        warehouse.replace_rows(con, "balance", balance, "site_id = ?", [site_id])
    worst = balance["smd_after"].abs().max()
    log.info("%s: %d comparison areas, largest |SMD| after matching %.2f", site_id,
             matched["area_code"].n_unique(), worst)
    return matched


def placebo_donors(db: Path, protocol: Protocol, site_id: str) -> list[str]:
    """Non-vanguard areas most like the site before go-live, to serve as placebos."""
    site = protocol.site(site_id)
    rule = protocol.comparison
    panel, pool, areas = _matching_inputs(db, protocol)
    features = site_features(panel, site, rule, protocol.pre_period_months, areas)
    k = min(protocol.placebo_donors, len(pool))
    nearest = nearest_neighbours(features, list(site.areas), pool, rule.match_on, k,
                                 metric=rule.metric)
    return sorted(set(nearest["area_code"].to_list()))


def fit_step(db: Path, protocol: Protocol, site_id: str, run_id: str) -> pl.DataFrame:
    """Fit every outcome's DiD model for one site and store estimates and plot series."""
    site = protocol.site(site_id)
    comparators = warehouse.query(
        db, "SELECT DISTINCT area_code FROM comparison_areas WHERE site_id = ?", [site_id]
    )["area_code"].to_list()
    if not comparators:
        raise PipelineError(f"{site_id}: no comparison areas; run the matching step first")
    donors = placebo_donors(db, protocol, site_id)
    areas = sorted(set(site.areas) | set(comparators) | set(donors))
    panel = warehouse.query(
        db,
        "SELECT area_code, month, outcome, count, population FROM area_month_panel "
        "WHERE list_contains(?, area_code)",
        [areas],
    )
    in_model = pl.col("area_code").is_in(list(site.areas) + comparators)
    rows: list[dict] = []
    series: list[pl.DataFrame] = []
    warnings: set[str] = set()
    ordered = sorted(protocol.outcomes, key=lambda o: not o.primary)
    for order, outcome in enumerate(ordered):
        data = panel.filter(pl.col("outcome") == outcome.id)
        fit = fit_poisson_did(
            data.filter(in_model), list(site.areas), site.go_live, protocol.alpha,
            donors=data.filter(pl.col("area_code").is_in(donors)), seed=protocol.seed,
            method=protocol.inference,
        )
        pre, post = pre_post_rates(data.filter(in_model), list(site.areas), site.go_live)
        est = fit.estimate.to_dict()
        warnings.update(fit.estimate.warnings)
        rows.append({
            "site_id": site_id, "outcome": outcome.id, "outcome_label": outcome.label,
            "measure": outcome.measure, "outcome_order": order,
            "estimator": est["estimator"], "inference": est["inference"],
            "inference_reason": est["inference_reason"],
            "warnings": "; ".join(est["warnings"]),
            "log_rate_ratio": est["log_rate_ratio"], "se": est["se"], "df": est["df"],
            "p_value": est["p_value"], "rate_ratio": est["rate_ratio"],
            "pct_change": est["pct_change"], "pct_ci_low": est["pct_ci_low"],
            "pct_ci_high": est["pct_ci_high"], "n_obs": est["n_obs"],
            "n_placebo": est["n_placebo"],
            "n_treated_areas": est["n_treated_areas"],
            "n_comparison_areas": est["n_comparison_areas"],
            "pre_rate_per_1000": pre, "post_rate_per_1000": post,
            "run_id": run_id, "fitted_at": now(),
        })
        series.append(fit.series.with_columns(
            pl.lit(site_id).alias("site_id"), pl.lit(outcome.id).alias("outcome")
        ))
    for warning in sorted(warnings):
        log.warning("%s: %s", site_id, warning)
    results = pl.DataFrame(rows)
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "model_results", results, "site_id = ?", [site_id])
        warehouse.replace_rows(
            con, "model_series", pl.concat(series), "site_id = ?", [site_id]
        )
    log.info("%s: fitted %d outcomes", site_id, len(rows))
    return results


def load_reference(db: Path, landing: Path) -> None:
    """Load area descriptors if the landing area ships them (optional, for reports)."""
    from transforms.ingest import load_reference_areas

    path = landing.parent / "reference" / "areas.csv"
    if path.is_file():
        load_reference_areas(db, path)


def run_pipeline(
    db: Path,
    landing: Path,
    out: Path,
    protocol: Protocol,
    quarantine_dir: Path | None = None,
) -> tuple[str, list[str]]:
    """The whole pipeline without an orchestrator. Returns the run id and ingest errors."""
    from reports import render_reports

    quarantine_dir = quarantine_dir or db.parent / "quarantine"
    run_id = start_run(db, protocol, orchestrator="cli")
    record_sites(db, protocol)
    load_reference(db, landing)
    errors: list[str] = []
    for source_id, files in sources_in(landing, protocol).items():
        errors.extend(ingest_source(db, protocol, source_id, files, quarantine_dir).errors)
    build_panel_step(db, protocol)
    for site in protocol.sites:
        match_step(db, protocol, site.id)
        fit_step(db, protocol, site.id, run_id)
    finish_run(db, run_id)
    render_reports(db, out)
    return run_id, errors
