"""Shared fixtures; Airflow and Great Expectations settings are fixed before any import."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

from transforms.protocol import Protocol, load_protocol  # noqa: E402

SHARED_REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def protocol() -> Protocol:
    """The shipped demo protocol."""
    return load_protocol(ROOT / "evaluation.toml")
