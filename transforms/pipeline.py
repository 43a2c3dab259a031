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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from transforms import runlog, warehouse
from transforms.estimators import fit_poisson_did, pre_post_rates
from transforms.ingest import (
    IngestError,
    IngestOutcome,
    extract_date_of,
    ingest_file,
    landing_files,
)
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
        runlog.clear(con, run_id)
        con.execute(
            "INSERT INTO runs VALUES (?, ?, NULL, 'running', ?, ?, ?, NULL, ?, ?, ?)",
            [run_id, now(), code_version(), protocol.name, protocol.sha256,
             protocol.start, protocol.end, orchestrator],
        )
    return run_id


def finish_run(db: Path, run_id: str) -> str:
    """Close the run with the hash of the data it used (the loaded files' hashes).

    The run is 'partial' when any file was quarantined while it ran, or a step's last
    attempt on some site or source failed (the run log), so a board paper built on it says
    that some data were refused or some sites were not updated.
    """
    with warehouse.connect(db) as con, warehouse.transaction(con):
        (refused,) = con.execute(
            "SELECT count(*) FROM provenance p, runs r WHERE r.run_id = ? "
            "AND p.status = 'quarantined' AND p.loaded_at >= r.started_at",
            [run_id],
        ).fetchone() or (0,)
        (failed,) = con.execute(
            "SELECT count(*) FROM (SELECT status FROM run_log WHERE run_id = ? QUALIFY "
            "row_number() OVER (PARTITION BY task, item ORDER BY attempt DESC, "
            "logged_at DESC) = 1) WHERE status = 'failed'",
            [run_id],
        ).fetchone() or (0,)
        status = "partial" if refused or failed else "success"
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


def extracts_between(
    grouped: Mapping[str, Sequence[Path]], start: date | None, end: date | None
) -> dict[str, list[Path]]:
    """The files whose extract-date folder falls in [start, end): one nightly partition.

    With no window (a manual run) every file stays. Files in folders that are not dates
    stay in every partition, so that ingest refuses them loudly rather than never seeing
    them.
    """
    kept: dict[str, list[Path]] = {}
    for source_id, paths in grouped.items():
        for path in paths:
            try:
                extract = extract_date_of(path)
            except IngestError:
                extract = None
            in_window = (start is None or (extract is not None and extract >= start)) and (
                end is None or (extract is not None and extract < end))
            if extract is None or in_window:
                kept.setdefault(source_id, []).append(path)
    return kept


def sources_between(
    landing: Path, protocol: Protocol, start: date | None, end: date | None
) -> dict[str, list[Path]]:
    """`sources_in`, restricted to the extracts of one run's data interval."""
    return extracts_between(sources_in(landing, protocol), start, end)


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
    worst = float(balance["smd_after"].abs().max())  # type: ignore[arg-type]
    log.info("%s: %d comparison areas (%s matching), largest |SMD| after matching %.2f",
             site_id, matched["area_code"].n_unique(), protocol.comparison.method, worst)
    if worst >= 0.1:
        log.warning("%s: matching left |SMD| %.2f >= 0.1 on some feature; see the balance "
                    "table", site_id, worst)
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


def synth_step(db: Path, protocol: Protocol, site_id: str, run_id: str) -> pl.DataFrame:
    """Fit and store a synthetic control for the site's primary outcome, an alternative
    comparison to the matched DiD: the donors are the site's placebo donors (the most
    similar non-vanguard areas), which also serve as its in-space placebos."""
    from transforms.synthetic_control import synthetic_control

    site = protocol.site(site_id)
    outcome = protocol.primary_outcome
    donors = placebo_donors(db, protocol, site_id)
    panel = warehouse.query(
        db,
        "SELECT area_code, month, rate_per_1000 FROM area_month_panel "
        "WHERE outcome = ? AND list_contains(?, area_code)",
        [outcome.id, [*site.areas, *donors]],
    )
    result = synthetic_control(panel, list(site.areas), donors, site.go_live,
                               alpha=protocol.alpha)
    for warning in result.warnings:
        log.warning("%s: synthetic control: %s", site_id, warning)
    row = pl.DataFrame([{
        "site_id": site_id, "outcome": outcome.id, "pct_change": result.pct_change,
        "p_value": result.p_value, "pct_ci_low": result.pct_ci_low,
        "pct_ci_high": result.pct_ci_high, "pre_rmspe": result.pre_rmspe,
        "post_rmspe": result.post_rmspe, "n_donors": result.n_donors,
        "n_placebo": result.n_placebo, "weights_json": result.weights_json,
        "warnings": "; ".join(result.warnings), "run_id": run_id, "fitted_at": now(),
    }], schema_overrides={"p_value": pl.Float64, "pct_ci_low": pl.Float64,
                          "pct_ci_high": pl.Float64})
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "synthetic_control_results", row, "site_id = ?", [site_id])
    log.info("%s: synthetic control %s %+.1f%% (p %s), pre-period RMSPE %.3f, %d donors",
             site_id, outcome.id, result.pct_change, result.p_value, result.pre_rmspe,
             result.n_donors)
    return row


def fit_step(db: Path, protocol: Protocol, site_id: str, run_id: str) -> pl.DataFrame:
    """Fit every outcome's DiD model and event study for one site and store estimates,
    plot series and event-study coefficients."""
    from transforms.event_study import fit_event_study

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
    events: list[pl.DataFrame] = []
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
        try:  # same data and inference as the main fit; a failure leaves the plot out only
            study = fit_event_study(
                data.filter(in_model), list(site.areas), site.go_live, protocol.alpha,
                donors=data.filter(pl.col("area_code").is_in(donors)), seed=protocol.seed,
                method=fit.estimate.inference,
            )
            events.append(study.warehouse_rows(site_id, outcome.id))
            warnings.update(study.warnings)
        except ValueError as exc:
            warnings.add(f"{outcome.id}: no event study ({exc})")
    for warning in sorted(warnings):
        log.warning("%s: %s", site_id, warning)
    results = pl.DataFrame(rows)
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "model_results", results, "site_id = ?", [site_id])
        warehouse.replace_rows(
            con, "model_series", pl.concat(series), "site_id = ?", [site_id]
        )
        warehouse.replace_rows(con, "event_study",
                               pl.concat(events) if events else pl.DataFrame(),
                               "site_id = ?", [site_id])
    log.info("%s: fitted %d outcomes", site_id, len(rows))
    return results


_CLAIM_EPISODES = (
    "SELECT patient_id, area_code, admission_date, admission_method, primary_diagnosis, age "
    "FROM stg_episodes WHERE list_contains(?, area_code) "
    "AND admission_date >= ? AND admission_date < ? "
    "AND event_id IN (SELECT event_id FROM current_files)"
)


def claims_step(db: Path, protocol: Protocol, run_id: str) -> pl.DataFrame:
    """Check every site claim in the protocol against comparison areas (claim_checks).

    Runs after the fits: before/after checks take the site's DiD from model_results, and
    q-values are computed over every site outcome and claim together, so the whole table
    is rewritten. Patient rows are read only for cohort claims and only for their areas and
    windows; what is written holds totals and estimates, never a patient identifier.
    """
    from transforms.claims import claim_check_rows
    from transforms.cohort import CohortRule

    in_run = {site.id for site in protocol.sites}
    claims = [c for c in protocol.claims.sites if c.site in in_run]
    cohort_areas: list[str] = []
    start, end = protocol.end, protocol.start
    rule = CohortRule.from_protocol(protocol.claims.cohort)
    for claim in claims:
        if claim.check == "cohort":
            site = protocol.site(claim.site)
            cohort_areas += list(site.areas) + list(protocol.claims.cohort.comparison_areas)
            first, _, last = rule.windows(site.go_live)
            start, end = min(start, first), max(end, last)
    episodes = (
        warehouse.query(db, _CLAIM_EPISODES, [sorted(set(cohort_areas)), start, end])
        if cohort_areas else pl.DataFrame()
    )
    outcomes = sorted({c.outcome for c in claims})
    panel = warehouse.query(
        db, "SELECT * FROM area_month_panel WHERE list_contains(?, outcome)", [outcomes]
    )
    comparators = warehouse.query(db, "SELECT site_id, area_code FROM comparison_areas")
    models = warehouse.query(
        db,
        "SELECT site_id, outcome, pct_change, pct_ci_low, pct_ci_high, p_value, se, df, "
        "estimator, inference FROM model_results",
    )
    checks = claim_check_rows(protocol, panel, comparators, models, episodes, run_id)
    with warehouse.connect(db) as con, warehouse.transaction(con):
        warehouse.replace_rows(con, "claim_checks", checks, "true", [])
    log.info("claims: %d claim checks (%d patient-level episodes read)", checks.height,
             episodes.height)
    return checks


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
        if protocol.comparison.synthetic_control:
            synth_step(db, protocol, site.id, run_id)
    claims_step(db, protocol, run_id)
    finish_run(db, run_id)
    render_reports(db, out)
    return run_id, errors


# -- nightly runs --------------------------------------------------------------------


def stale_sites(
    sites: Sequence[str],
    site_sources: set[str],
    fitted: Mapping[str, datetime],
    loaded: Mapping[str, datetime],
    force: bool = False,
) -> list[str]:
    """Sites whose estimates no longer reflect the warehouse, in protocol order.

    `fitted` maps a site to the oldest fit among its current results (absent: never fitted,
    or fitted under another protocol), `loaded` maps a source to its newest loaded file. A
    site is stale when its own extracts are newer than its fit, or when any source that is
    not a vanguard site (comparison areas, national data) is, since matching and placebo
    donors draw on every non-vanguard area. Judging from the warehouse, not from what one
    run loaded, means a run interrupted after loading still gets its sites re-fitted later.
    """
    if force:
        return list(sites)
    shared = [when for source, when in loaded.items() if source not in site_sources]
    newest_shared = max(shared, default=None)
    stale = []
    for site in sites:
        fit = fitted.get(site)
        newer = [w for w in (loaded.get(site), newest_shared) if w is not None]
        if fit is None or any(when > fit for when in newer):
            stale.append(site)
    return stale


@dataclass(frozen=True)
class RefitPlan:
    """What a nightly run has to redo after ingest."""

    rebuild_panel: bool
    sites: list[str]


def plan_refits(db: Path, protocol: Protocol, force: bool = False) -> RefitPlan:
    """Compare load and fit times in the warehouse to decide what to rebuild.

    Nothing is rebuilt until some file has loaded; the panel is rebuilt when a file loaded
    after the last panel build or when any site is to be re-fitted (a new protocol may
    change the study window or the outcomes).
    """
    with warehouse.connect(db, read_only=True) as con:
        loaded = dict(con.execute(
            "SELECT source_id, max(loaded_at) FROM provenance WHERE status = 'loaded' "
            "GROUP BY source_id"
        ).fetchall())
        (panel_built,) = con.execute(
            "SELECT max(validated_at) FROM validation_results WHERE target = 'area_month_panel'"
        ).fetchone() or (None,)
        fitted = dict(con.execute(
            "SELECT m.site_id, min(m.fitted_at) FROM model_results m JOIN runs r USING (run_id) "
            "WHERE r.protocol_sha256 = ? AND list_contains(?, m.outcome) GROUP BY m.site_id "
            "HAVING count(DISTINCT m.outcome) = ?",
            [protocol.sha256, [o.id for o in protocol.outcomes], len(protocol.outcomes)],
        ).fetchall())
    if not loaded:
        log.info("plan: nothing loaded yet, nothing to fit")
        return RefitPlan(False, [])
    site_sources = {s.id for s in protocol.sites + protocol.excluded_sites}
    sites = stale_sites([s.id for s in protocol.sites], site_sources, fitted, loaded, force)
    panel_stale = panel_built is None or max(loaded.values()) > panel_built
    plan = RefitPlan(bool(sites) or panel_stale or force, sites)
    log.info("plan: rebuild panel %s; re-fit %d of %d sites %s", plan.rebuild_panel,
             len(sites), len(protocol.sites), sites)
    return plan


def fit_outcomes_step(db: Path, protocol: Protocol, site_id: str, run_id: str,
                      outcomes: Sequence[str] = ()) -> pl.DataFrame:
    """`fit_step` for some outcomes only (an ad-hoc run), keeping the site's other results.

    `fit_step` replaces a site's results as a whole, so the other outcomes' rows are read
    first and written back afterwards with their order in the full protocol.
    """
    per_outcome = ("model_results", "model_series", "event_study")
    if not outcomes:
        return fit_step(db, protocol, site_id, run_id)
    chosen = [protocol.outcome(o) for o in outcomes]
    others = [o.id for o in protocol.outcomes if o.id not in outcomes]
    kept = {
        table: warehouse.query(
            db, f"SELECT * FROM {table} WHERE site_id = ? AND list_contains(?, outcome)",
            [site_id, others],
        )
        for table in per_outcome
    }
    results = fit_step(db, replace(protocol, outcomes=tuple(chosen)), site_id, run_id)
    order = [o.id for o in sorted(protocol.outcomes, key=lambda o: not o.primary)]
    with warehouse.connect(db) as con, warehouse.transaction(con):
        for table, frame in kept.items():
            warehouse.replace_rows(con, table, frame, "site_id = ? AND list_contains(?, outcome)",
                                   [site_id, others])
        for position, outcome_id in enumerate(order):
            con.execute("UPDATE model_results SET outcome_order = ? WHERE site_id = ? "
                        "AND outcome = ?", [position, site_id, outcome_id])
    return results


def sites_fitted_in_run(db: Path, run_id: str) -> list[str]:
    """Sites whose results this run (since it last started) wrote: have the results changed?"""
    return warehouse.query(
        db,
        "SELECT DISTINCT m.site_id FROM model_results m JOIN runs r USING (run_id) "
        "WHERE r.run_id = ? AND m.fitted_at >= r.started_at ORDER BY m.site_id",
        [run_id],
    )["site_id"].to_list()
