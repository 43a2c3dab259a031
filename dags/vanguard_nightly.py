"""vanguard_nightly: ingest the night's site extracts, rebuild the panel, re-fit stale sites.

Wiring only: every task is a call into `transforms`. Each scheduled or backfill run works on
its own partition, the extracts whose `landing/<source>/<extract_date>/` falls in the run's
data interval; a manual run (which may have no logical date) takes every extract not yet
loaded. Ingest skips files already loaded (by content hash) and only sites whose data
changed since their last fit are re-fitted, so running a day twice leaves the same
warehouse. Every task that opens the DuckDB warehouse runs in the one-slot pool
`vanguard_warehouse` (create it with `airflow pools set vanguard_warehouse 1 ...`), so
writers never meet on the lock, across runs and DAGs. When some site was re-fitted, the
last task emits the asset `vanguard://results` and `vanguard_reports` rebuilds the reports.
"""

from __future__ import annotations

import os
from datetime import date, timedelta

import pendulum
from airflow.sdk import (
    Asset,
    CronDataIntervalTimetable,
    Param,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

POOL = "vanguard_warehouse"
RESULTS = Asset("vanguard://results")
WRITER = {"pool": POOL, "max_active_tis_per_dagrun": 1}
#: Run types that own a partition of the landing area (manual runs take all of it).
PARTITIONED_RUNS = {"scheduled", "backfill"}


def _settings() -> dict:
    """Paths for this run: the run's conf/params, falling back to the VANGUARD_* env vars."""
    from transforms.protocol import load_protocol

    params = get_current_context()["params"]
    settings = {
        "db": params.get("db") or os.environ.get("VANGUARD_DB", "vanguard.duckdb"),
        "landing": params.get("landing") or os.environ.get("VANGUARD_LANDING", "demo/landing"),
        "out": params.get("out") or os.environ.get("VANGUARD_OUT", "out"),
        "protocol": params.get("protocol") or os.environ.get("VANGUARD_PROTOCOL")
        or "evaluation.toml",
        "sites": list(params.get("sites") or []),
        "outcomes": list(params.get("outcomes") or []),
        "force": bool(params.get("force")),
    }
    protocol = load_protocol(settings["protocol"])
    if settings["sites"]:
        protocol = protocol.subset(settings["sites"])
    return {**settings, "protocol_obj": protocol}


def _window() -> tuple[date | None, date | None]:
    """The run's partition [start, end) of extract dates, or (None, None) for everything.

    Scheduled and backfill runs own their data interval; a manual run has no logical date
    (or an arbitrary one) and takes every extract not yet loaded, unless its `partition`
    param asks for the interval.
    """
    context = get_current_context()
    mode = context["params"].get("partition") or "auto"
    run_type = str(getattr(context["dag_run"].run_type, "value", context["dag_run"].run_type))
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    wanted = mode == "interval" or (mode == "auto" and run_type in PARTITIONED_RUNS)
    if not wanted or start is None or end is None:
        return None, None
    return start.date(), end.date()


def _entry(task_name: str, item: str | None, run_id: str):
    """Where this attempt's outcome goes in the warehouse's run log."""
    from transforms.runlog import Entry

    context = get_current_context()
    return Entry(run_id, task_name, item, context["dag_run"].run_id, context["ti"].try_number)


def _fail_without_retry(exc: Exception) -> None:
    """A refused file or a bad panel will not get better by retrying: fail now, say why."""
    from transforms.ingest import IngestError
    from transforms.pipeline import PipelineError
    from transforms.protocol import ProtocolError

    if isinstance(exc, IngestError | PipelineError | ProtocolError):
        raise AirflowFailException(str(exc)) from exc


@dag(
    dag_id="vanguard_nightly",
    # A data interval (yesterday, for a run after midnight), not a point in time: the
    # interval is the partition of extract dates the run owns.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2015, 4, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["vanguard", "evaluation"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        "db": Param("", type="string", description="DuckDB warehouse path"),
        "landing": Param("", type="string", description="landing directory"),
        "out": Param("", type="string", description="report directory"),
        "protocol": Param("", type="string", description="evaluation protocol TOML"),
        "sites": Param([], type="array", description="subset of site ids (empty: all)"),
        "outcomes": Param([], type="array",
                          description="outcomes to re-fit (empty: all the protocol's)"),
        "force": Param(False, type="boolean",
                       description="re-fit the sites even if no new data arrived"),
        "partition": Param("auto", enum=["auto", "interval", "all"],
                           description="extracts to take: the data interval's (scheduled "
                                       "and backfill runs) or all not yet loaded (manual)"),
    },
    doc_md=__doc__,
)
def vanguard_nightly():
    @task(pool=POOL)
    def start_run() -> str:
        from pathlib import Path

        from transforms.pipeline import load_reference, record_sites, start_run

        s = _settings()
        start, _ = _window()
        name = f"{start:%Y-%m-%d}" if start else get_current_context()["dag_run"].run_id
        run_id = start_run(Path(s["db"]), s["protocol_obj"], orchestrator="airflow",
                           run_id=f"nightly-{name}")
        record_sites(Path(s["db"]), s["protocol_obj"])
        load_reference(Path(s["db"]), Path(s["landing"]))
        return run_id

    @task
    def discover_sources() -> list[str]:
        from pathlib import Path

        from transforms.pipeline import sources_between

        s = _settings()
        return sorted(sources_between(Path(s["landing"]), s["protocol_obj"], *_window()))

    @task(**WRITER)
    def ingest(source_id: str, evaluation_run: str) -> dict:
        from pathlib import Path

        from transforms.pipeline import ingest_source, sources_between
        from transforms.runlog import logged

        s = _settings()
        db = Path(s["db"])
        files = sources_between(Path(s["landing"]), s["protocol_obj"], *_window())[source_id]
        with logged(db, _entry("ingest", source_id, evaluation_run)):
            report = ingest_source(db, s["protocol_obj"], source_id, files,
                                   db.parent / "quarantine")
            if report.errors:
                raise AirflowFailException("quarantined:\n" + "\n".join(report.errors))
        loaded = sum(o.status == "loaded" for o in report.outcomes)
        return {"source_id": source_id, "files": len(report.outcomes), "loaded": loaded}

    @task
    def all_files_accepted(loaded: list[dict]) -> int:
        """A leaf that fails (upstream_failed) when any file was quarantined, so the run
        shows as failed while the panel and models still use what loaded."""
        return len(loaded)

    @task(pool=POOL, trigger_rule="all_done")
    def plan_refits() -> dict:
        from pathlib import Path

        from transforms.pipeline import plan_refits

        s = _settings()
        plan = plan_refits(Path(s["db"]), s["protocol_obj"], force=s["force"])
        return {"rebuild_panel": plan.rebuild_panel, "sites": plan.sites}

    @task(pool=POOL)
    def build_panel(plan: dict, evaluation_run: str) -> int:
        from pathlib import Path

        from transforms.pipeline import build_panel_step
        from transforms.runlog import logged

        if not plan["rebuild_panel"]:
            raise AirflowSkipException("no new data since the panel was built")
        s = _settings()
        try:
            with logged(Path(s["db"]), _entry("build_panel", None, evaluation_run)):
                return build_panel_step(Path(s["db"]), s["protocol_obj"])
        except Exception as exc:
            _fail_without_retry(exc)
            raise

    @task
    def site_ids(plan: dict) -> list[str]:
        return list(plan["sites"])

    @task(**WRITER)
    def evaluate_site(site_id: str, evaluation_run: str) -> str:
        from pathlib import Path

        from transforms.pipeline import fit_outcomes_step, match_step, synth_step
        from transforms.runlog import logged

        s = _settings()
        db, protocol = Path(s["db"]), s["protocol_obj"]
        primary = not s["outcomes"] or protocol.primary_outcome.id in s["outcomes"]
        try:
            with logged(db, _entry("fit", site_id, evaluation_run)):
                match_step(db, protocol, site_id)
                fit_outcomes_step(db, protocol, site_id, evaluation_run, s["outcomes"])
                if protocol.comparison.synthetic_control and primary:
                    synth_step(db, protocol, site_id, evaluation_run)
        except Exception as exc:
            _fail_without_retry(exc)
            raise
        return site_id

    @task
    def all_sites_fitted() -> None:
        """A leaf that fails (upstream_failed) when any site's fit failed."""

    @task(pool=POOL, trigger_rule="all_done")
    def check_claims(evaluation_run: str) -> int:
        """Sites' own claims against their comparison areas, once the fits are in."""
        from pathlib import Path

        from transforms.pipeline import claims_step, sites_fitted_in_run
        from transforms.runlog import logged

        s = _settings()
        db = Path(s["db"])
        if not sites_fitted_in_run(db, evaluation_run):
            raise AirflowSkipException("no site was re-fitted; claim checks stand")
        try:
            with logged(db, _entry("claims", None, evaluation_run)):
                return claims_step(db, s["protocol_obj"], evaluation_run).height
        except Exception as exc:
            _fail_without_retry(exc)
            raise

    @task(pool=POOL, trigger_rule="all_done")
    def finish_run(evaluation_run: str) -> str:
        from pathlib import Path

        from transforms.pipeline import finish_run

        return finish_run(Path(_settings()["db"]), evaluation_run)

    @task(pool=POOL, outlets=[RESULTS])
    def publish_results(evaluation_run: str) -> list[str]:
        """Emit `vanguard://results` (with where to find them) only when results changed."""
        from pathlib import Path

        from transforms.pipeline import sites_fitted_in_run

        s = _settings()
        fitted = sites_fitted_in_run(Path(s["db"]), evaluation_run)
        if not fitted:
            raise AirflowSkipException("no site was re-fitted; reports are up to date")
        get_current_context()["outlet_events"][RESULTS].extra = {
            "db": str(Path(s["db"]).resolve()), "out": str(Path(s["out"]).resolve()),
            "run_id": evaluation_run, "sites": fitted,
        }
        return fitted

    run_id = start_run()
    sources = discover_sources()
    run_id >> sources
    ingested = ingest.partial(evaluation_run=run_id).expand(source_id=sources)
    all_files_accepted(ingested)
    plan = plan_refits()
    ingested >> plan
    panel = build_panel(plan, run_id)
    evaluated = evaluate_site.partial(evaluation_run=run_id).expand(site_id=site_ids(plan))
    panel >> evaluated >> all_sites_fitted()
    claims = check_claims(run_id)
    finished = finish_run(run_id)
    evaluated >> claims >> finished >> publish_results(run_id)


vanguard_nightly()
