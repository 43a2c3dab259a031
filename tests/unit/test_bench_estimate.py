"""bench/estimate.py's agreement check catches disagreements, and the Callaway-Sant'Anna
path it times for ours (simple aggregate only, no pre-test) gives the full run's numbers.

Uses none of the bench-only peer packages."""

import importlib.util
import sys
from pathlib import Path

import pytest

from transforms.did import CSOptions, PanelColumns, estimate_cs

_PATH = Path(__file__).resolve().parents[2] / "bench" / "estimate.py"
_SPEC = importlib.util.spec_from_file_location("bench_estimate", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # its dataclasses look their module up there
_SPEC.loader.exec_module(bench)

COLUMNS = PanelColumns(unit="unit", time="month", cohort="first_month", outcome="y")
CELLS = [[3.0, 2.0, -0.1, 0.05], [3.0, 3.0, 0.4, 0.06], [5.0, 4.0, 0.2, 0.07]]


def _shifted(rows, index, by):
    return [[g, t, att + by if k == index else att, se]
            for k, (g, t, att, se) in enumerate(rows)]


def test_identical_estimates_agree():
    check = bench.agreement(CELLS, [list(r) for r in reversed(CELLS)], [0.3, 0.01], [0.3, 0.01])
    assert check.agrees and check.shared == 3 and check.max_att == 0.0


def test_a_cell_off_by_more_than_the_tolerance_disagrees():
    assert not bench.agreement(CELLS, _shifted(CELLS, 1, 2 * bench.TOLERANCE)).agrees
    assert bench.agreement(CELLS, _shifted(CELLS, 1, bench.TOLERANCE / 2)).agrees


def test_a_simple_aggregate_off_disagrees():
    check = bench.agreement(CELLS, CELLS, [0.3, 0.01], [0.3 + 1e-5, 0.01])
    assert not check.agrees and check.simple_att == pytest.approx(1e-5)


def test_a_missing_cell_disagrees():
    check = bench.agreement(CELLS, CELLS[:2])
    assert not check.agrees and check.only_ours == 1


def test_simple_only_run_matches_full_run():
    frame = bench.cs_panel(300, 10, 3, seed=5)
    full = estimate_cs(frame, COLUMNS, CSOptions())
    simple = estimate_cs(frame, COLUMNS, CSOptions(), aggregations=("simple",), pretest=False)
    assert simple.att_gt == full.att_gt
    assert simple.aggregate("simple") == full.aggregate("simple")
    assert simple.pretest.wald is None and full.pretest.wald is not None
    with pytest.raises(KeyError, match="'group' was not computed"):
        simple.aggregate("group")
