"""vanguard_nightly: ingest new site extracts, rebuild the panel, re-fit, publish reports.

Wiring only: every task is a call into `transforms` or `reports`. DuckDB has a single
writer, so the mapped tasks that write run one at a time (max_active_tis_per_dagrun=1)
and the DAG allows one active run.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

WRITER = {"max_active_tis_per_dagrun": 1}


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
        "sites": params.get("sites") or [],
    }
    protocol = load_protocol(settings["protocol"])
    if settings["sites"]:
        protocol = protocol.subset(list(settings["sites"]))
    return {**settings, "protocol_obj": protocol}


@dag(
    dag_id="vanguard_nightly",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["vanguard", "evaluation"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "db": Param("", type="string", description="DuckDB warehouse path"),
        "landing": Param("", type="string", description="landing directory"),
        "out": Param("", type="string", description="report directory"),
        "protocol": Param("", type="string", description="evaluation protocol TOML"),
        "sites": Param([], type="array", description="subset of site ids (empty: all)"),
    },
    doc_md=__doc__,
)
def vanguard_nightly():
    @task
    def start_run() -> str:
        from pathlib import Path

        from transforms.pipeline import load_reference, record_sites, start_run

        s = _settings()
        run_id = start_run(Path(s["db"]), s["protocol_obj"], orchestrator="airflow")
        record_sites(Path(s["db"]), s["protocol_obj"])
        load_reference(Path(s["db"]), Path(s["landing"]))
        return run_id

    @task
    def discover_sources() -> list[str]:
        from pathlib import Path

        from transforms.pipeline import sources_in

        s = _settings()
        return sorted(sources_in(Path(s["landing"]), s["protocol_obj"]))

    @task(**WRITER)
    def ingest(source_id: str) -> dict:
        from pathlib import Path

        from transforms.pipeline import ingest_source, sources_in

        s = _settings()
        db = Path(s["db"])
        files = sources_in(Path(s["landing"]), s["protocol_obj"])[source_id]
        report = ingest_source(db, s["protocol_obj"], source_id, files, db.parent / "quarantine")
        if report.errors:
            raise RuntimeError("quarantined:\n" + "\n".join(report.errors))
        return {"source_id": source_id, "files": len(report.outcomes)}

    @task
    def all_files_accepted(loaded: list[dict]) -> int:
        """A leaf that fails (upstream_failed) when any file was quarantined, so the run
        shows as failed while the panel, models and reports still use what loaded."""
        return len(loaded)

    @task(trigger_rule="all_done")
    def build_panel() -> int:
        from pathlib import Path

        from transforms.pipeline import build_panel_step

        s = _settings()
        return build_panel_step(Path(s["db"]), s["protocol_obj"])

    @task
    def site_ids() -> list[str]:
        return [site.id for site in _settings()["protocol_obj"].sites]

    @task(**WRITER)
    def evaluate_site(site_id: str, evaluation_run: str) -> str:
        from pathlib import Path

        from transforms.pipeline import fit_step, match_step

        s = _settings()
        match_step(Path(s["db"]), s["protocol_obj"], site_id)
        fit_step(Path(s["db"]), s["protocol_obj"], site_id, evaluation_run)
        return site_id

    @task
    def finish_run(evaluation_run: str, sites: list[str]) -> str:
        from pathlib import Path

        from transforms.pipeline import finish_run

        finish_run(Path(_settings()["db"]), evaluation_run)
        return evaluation_run

    @task
    def publish_reports(evaluation_run: str) -> str:
        from pathlib import Path

        from reports import render_reports

        s = _settings()
        render_reports(Path(s["db"]), Path(s["out"]))
        return str(Path(s["out"]).resolve() / "index.html")

    run_id = start_run()
    ingested = ingest.expand(source_id=discover_sources())
    panel = build_panel()
    run_id >> ingested >> panel
    all_files_accepted(ingested)
    evaluated = evaluate_site.partial(evaluation_run=run_id).expand(site_id=site_ids())
    panel >> evaluated
    publish_reports(finish_run(run_id, evaluated))


vanguard_nightly()
