"""Time one nightly run over a 50-site demo: through Airflow (`dag.test()`) and `vanguard run`.

Usage: .venv/bin/python bench/nightly.py [--sites 50] [--seed 2015] [--workdir DIR]
Airflow's metadata database is a fresh one under the work directory (not timed), so the
runs do not meet other `dag.test` runs on the project's .airflow.

Builds a protocol with the demo's sites plus synthetic one-area sites up to --sites, writes
its demo extracts (not timed), then times the same work both ways on fresh warehouses:
`vanguard run` (ingest, panel, matching, fits, reports) and the `vanguard_nightly` DAG
followed by the `vanguard_reports` DAG its results asset triggers. Prints both wall times
and the orchestration overhead ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder comes first on sys.path, and bench/reports.py would hide the
# `reports` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
for key, value in {"AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                   "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "GX_ANALYTICS_ENABLED": "False",
                   "OPENBLAS_NUM_THREADS": "1"}.items():
    os.environ.setdefault(key, value)

from transforms import warehouse  # noqa: E402
from transforms.cli import main as vanguard  # noqa: E402
from transforms.demo_data import generate_demo  # noqa: E402
from transforms.protocol import default_protocol_path, load_protocol  # noqa: E402

#: Synthetic sites take one area each from here up, below the claims' comparison areas.
FIRST_EXTRA_AREA = 40


def protocol_with_sites(n_sites: int, work: Path) -> Path:
    """The demo protocol plus one-area synthetic sites (go-live April 2016) up to n_sites."""
    source = default_protocol_path()
    text = source.read_text()
    existing = len(load_protocol(source).sites)
    extra = []
    for n in range(max(0, n_sites - existing)):
        area = f"A{FIRST_EXTRA_AREA + n:03d}"
        extra.append(f'\n[[sites]]\nid = "bench-site-{n + 1:02d}"\n'
                     f'name = "Benchmark site {n + 1} (synthetic)"\nmodel_type = "PACS"\n'
                     f'go_live = "2016-04"\nareas = ["{area}"]\n')
    path = work / "bench-protocol.toml"
    path.write_text(text + "".join(extra))
    return path


def time_cli(landing: Path, protocol: Path, work: Path) -> float:
    db = work / "cli.duckdb"
    start = time.perf_counter()
    code = vanguard(["run", "--db", str(db), "--landing", str(landing), "--out",
                     str(work / "cli-out"), "--protocol", str(protocol),
                     "--quarantine", str(work / "cli-quarantine")])
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"vanguard run exited with {code}")
    return elapsed


def time_airflow(landing: Path, protocol: Path, work: Path) -> float:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    db, out = work / "airflow.duckdb", work / "airflow-out"
    conf = {"db": str(db), "landing": str(landing), "out": str(out),
            "protocol": str(protocol)}
    start = time.perf_counter()
    nightly = bag.get_dag("vanguard_nightly").test(run_conf=conf, logical_date=None)
    reports = bag.get_dag("vanguard_reports").test(run_conf={"db": str(db), "out": str(out)},
                                                   logical_date=None)
    elapsed = time.perf_counter() - start
    if nightly.state != "success" or reports.state != "success":
        raise SystemExit(f"DAG runs ended {nightly.state} and {reports.state}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2015)
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vanguard-bench-nightly-"))
    work.mkdir(parents=True, exist_ok=True)
    for old in ("cli.duckdb", "airflow.duckdb"):
        (work / old).unlink(missing_ok=True)
    os.environ["AIRFLOW_HOME"] = str(work / "airflow")
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                   check=True, capture_output=True)
    protocol = protocol_with_sites(args.sites, work)
    n_sites = len(load_protocol(protocol).sites)
    generate_demo(work / "demo", seed=args.seed, protocol=load_protocol(protocol))
    landing = work / "demo" / "landing"

    cli = time_cli(landing, protocol, work)
    print(f"vanguard run, {n_sites} sites:            {cli:7.1f} s", flush=True)
    airflow = time_airflow(landing, protocol, work)
    print(f"Airflow nightly + reports, {n_sites} sites: {airflow:7.1f} s", flush=True)
    fitted = warehouse.query(work / "airflow.duckdb",
                             "SELECT count(DISTINCT site_id) AS n FROM model_results")["n"][0]
    print(f"sites fitted through Airflow: {fitted}; overhead ratio Airflow / CLI: "
          f"{airflow / cli:.2f} ({work})")


if __name__ == "__main__":
    main()
