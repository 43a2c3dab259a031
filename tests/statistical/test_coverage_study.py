"""A small version of bench/simulation.py: each design recovers a rate ratio of 0.70 and
its intervals cover it in most replications (the full study runs 500 per design).

With 12 replications at a true coverage of 95%, 10 or more covered happens with
probability 0.98, so the bound fails only when coverage is really poor; the bias bound is
about three Monte Carlo standard errors of a 12-replication mean.
"""

import pytest

from transforms.simulation import DESIGNS, coverage

EXPECTED_INFERENCE = {
    "staggered (24 of 60 areas, 3 waves; ETWFE)": ["cluster_robust"],
    "one site, 2 treated areas, 30 comparators": ["placebo_in_space"],
    "one site, matched comparators from 120": ["placebo_in_space"],
    "6 treated of 20 areas, no donors": ["wild_cluster_bootstrap"],
}


@pytest.mark.parametrize("name", sorted(DESIGNS))
def test_design_is_unbiased_and_covers(name):
    row = coverage(DESIGNS[name], reps=12, rate_ratio=0.70, first_seed=500)
    assert abs(row["bias_pp"]) < 1.5
    assert row["coverage"] >= 10 / 12
    assert row["mean_ci_width_pp"] < 6.0
    assert row["inference"] == EXPECTED_INFERENCE[name]
