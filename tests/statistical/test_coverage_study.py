"""A small version of bench/simulation.py: each design recovers a rate ratio of 0.70 and
its intervals cover it in most replications (the full study runs 500 per design)."""

import pytest

from transforms.simulation import DESIGNS, coverage


@pytest.mark.parametrize("name", sorted(DESIGNS))
def test_design_is_unbiased_and_covers(name):
    row = coverage(DESIGNS[name], reps=12, rate_ratio=0.70, first_seed=500)
    assert abs(row["bias_pp"]) < 1.5
    assert row["coverage"] >= 10 / 12
    assert row["mean_ci_width_pp"] < 6.0
