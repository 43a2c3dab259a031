"""vanguard_reports: rebuild the board reports whenever the nightly run updates results.

Scheduled on the asset `vanguard://results`, which `vanguard_nightly` emits only when some
site was re-fitted, so reports are rebuilt only when the numbers in them change. The event
says which warehouse and report folder it is about; a manual run uses its params, then the
VANGUARD_DB and VANGUARD_OUT environment variables. Rendering refreshes report tables in
the warehouse, so it runs in the same one-slot pool as the nightly run's writers.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

POOL = "vanguard_warehouse"
RESULTS = Asset("vanguard://results")


def _targets() -> tuple[str, str]:
    """(warehouse, report folder): the latest triggering event's, else params, else env."""
    context = get_current_context()
    params = context["params"]
    events = context.get("triggering_asset_events") or {}
    extra = dict(events[RESULTS][-1].extra or {}) if RESULTS in events else {}
    db = params.get("db") or extra.get("db") or os.environ.get("VANGUARD_DB", "vanguard.duckdb")
    out = params.get("out") or extra.get("out") or os.environ.get("VANGUARD_OUT", "out")
    return str(db), str(out)


@dag(
    dag_id="vanguard_reports",
    schedule=[RESULTS],
    start_date=pendulum.datetime(2015, 4, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["vanguard", "reports"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        "db": Param("", type="string", description="DuckDB warehouse path"),
        "out": Param("", type="string", description="report directory"),
    },
    doc_md=__doc__,
)
def vanguard_reports():
    @task(pool=POOL)
    def publish_reports() -> str:
        from pathlib import Path

        from reports import render_reports

        db, out = _targets()
        render_reports(Path(db), Path(out))
        return str(Path(out).resolve() / "index.html")

    publish_reports()


vanguard_reports()
