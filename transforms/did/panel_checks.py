"""Turn a long unit-by-period table into the wide arrays the Callaway & Sant'Anna estimator uses.

The rules follow R `did`'s pre-processing so that estimates match it: rows with missing values
are dropped, cohorts first treated after the last period (plus anticipation) count as never
treated, units already treated in the first period are dropped, and the panel is balanced by
dropping units not observed in every period. Each of these is reported as a warning. Problems
that cannot be repaired (duplicate unit-period rows, a non-numeric outcome, a cohort that
changes within a unit, collinear covariates, ...) raise `DidInputError` with a message that
names the column and says what to change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from transforms.did.options import DidInputError, PanelColumns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WidePanel:
    """A balanced panel as arrays: one row per unit, one column per period.

    Units are sorted by cohort (never treated, coded 0, first) and then by id, so each
    cohort is a contiguous block of rows. `groups` are the cohorts whose ATT(g,t) are
    estimated; it can be a strict subset of the treated cohorts present (see
    `estimation_sample`).
    """

    unit_ids: np.ndarray
    times: np.ndarray
    cohort: np.ndarray
    y: np.ndarray
    weights: np.ndarray
    cluster: np.ndarray | None
    covariates: np.ndarray | None  # (periods, units, k)
    covariate_names: tuple[str, ...]
    groups: np.ndarray
    warnings: tuple[str, ...]

    @property
    def n_units(self) -> int:
        return int(self.y.shape[0])

    def cohort_blocks(self) -> list[tuple[float, slice]]:
        """(cohort, row slice) for each cohort present, in row order."""
        values, starts = np.unique(self.cohort, return_index=True)
        ends = [*starts[1:], len(self.cohort)]
        return [(float(v), slice(int(s), int(e))) for v, s, e in zip(values, starts, ends,
                                                                      strict=True)]


def _numeric_column(frame: pl.DataFrame, name: str, role: str) -> np.ndarray:
    """Float values of a column, or an error naming the first value that is not a number."""
    series = frame[name]
    if series.dtype in (pl.Date, pl.Datetime) or isinstance(series.dtype, pl.Datetime):
        raise DidInputError(
            f"{role} column `{name}` holds dates; use numeric periods instead "
            "(e.g. a year, or a month index such as year * 12 + month)"
        )
    if series.dtype == pl.Boolean:
        series = series.cast(pl.Float64)
    if series.dtype.is_numeric():
        return series.cast(pl.Float64).to_numpy()
    as_number = series.cast(pl.Float64, strict=False)
    bad = (as_number.is_null() & series.is_not_null()).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DidInputError(
            f"{role} column `{name}` must be numeric but has {int(bad.sum())} values that are "
            f"not numbers, first at row {row + 1}: {_show(series[row])}"
        )
    return as_number.to_numpy()


def _show(value: object) -> str:
    """A data value for a message: numbers plain, text quoted."""
    item = value.item() if isinstance(value, np.generic) else value
    return repr(item) if isinstance(item, str) else str(item)


def _first_per_unit(codes: np.ndarray, values: np.ndarray, n_units: int) -> np.ndarray:
    """Each unit's value in its first row (assignment keeps the last write, so go backwards)."""
    first = np.empty(n_units, dtype=values.dtype)
    first[codes[::-1]] = values[::-1]
    return first


def _require_constant(codes: np.ndarray, values: np.ndarray, unit_ids: np.ndarray,
                      name: str, role: str) -> np.ndarray:
    """The per-unit value of a column that must not change over time within a unit."""
    first = _first_per_unit(codes, values, len(unit_ids))
    differs = values != first[codes]
    if differs.any():
        unit = unit_ids[codes[np.flatnonzero(differs)[0]]]
        raise DidInputError(
            f"{role} column `{name}` must be the same in every period of a unit, but unit "
            f"{_show(unit)} has more than one value ({int(np.unique(codes[differs]).size)} units "
            "affected)"
        )
    return first


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and each row's position among them, as `np.unique`'s
    `return_inverse`.

    Unit ids and periods are usually whole numbers in a range not much wider than the
    number of rows; a lookup table then codes every row in one pass, where `np.unique`
    would sort them all.
    """
    if values.dtype.kind not in "iuf" or len(values) == 0:
        return np.unique(values, return_inverse=True)
    low, high = values.min(), values.max()
    if not (np.isfinite(low) and np.isfinite(high) and high - low <= 4 * len(values)):
        return np.unique(values, return_inverse=True)
    offsets = values - low
    if values.dtype.kind == "f":
        whole = offsets.astype(np.int64)
        if not np.array_equal(whole, offsets):
            return np.unique(values, return_inverse=True)
        offsets = whole
    present = np.zeros(int(high - low) + 1, dtype=bool)
    present[offsets] = True
    position = np.cumsum(present) - 1
    distinct = (np.flatnonzero(present) + low).astype(values.dtype)
    return distinct, position[offsets]


def _drop_incomplete_rows(frame: pl.DataFrame, columns: PanelColumns,
                          values: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Mask of rows with every needed value present and finite (R `did` drops the others)."""
    keep = np.ones(frame.height, dtype=bool)
    for array in values.values():
        keep &= np.isfinite(array)
    for name in (columns.unit, columns.cluster):
        if name is not None:
            keep &= frame[name].is_not_null().to_numpy()
    warnings = []
    if not keep.all():
        warnings.append(f"dropped {int((~keep).sum())} rows with missing or non-finite values "
                        f"in {', '.join(f'`{c}`' for c in columns.required())}")
    return keep, warnings


def wide_panel(frame: pl.DataFrame, columns: PanelColumns) -> WidePanel:
    """Check a long panel and pivot it to unit x period arrays (not yet balanced).

    Cells with no row are NaN in `y`; `estimation_sample` applies the cohort rules and
    balances the panel.
    """
    missing = [c for c in columns.required() if c not in frame.columns]
    if missing:
        raise DidInputError(f"column(s) {', '.join(f'`{c}`' for c in missing)} not found; "
                            f"the panel has {', '.join(frame.columns)}")
    if frame.height == 0:
        raise DidInputError("the panel has no rows")
    roles = {columns.time: "time", columns.cohort: "cohort", columns.outcome: "outcome",
             **{c: "covariate" for c in columns.covariates}}
    if columns.weights:
        roles[columns.weights] = "weights"
    values = {name: _numeric_column(frame, name, role) for name, role in roles.items()}
    keep, warnings = _drop_incomplete_rows(frame, columns, values)
    if not keep.any():
        raise DidInputError("no rows left after dropping rows with missing values")
    unit_values = frame[columns.unit].to_numpy()
    if not keep.all():
        values = {name: array[keep] for name, array in values.items()}
        unit_values = unit_values[keep]

    unit_ids, unit_codes = _codes(unit_values)
    times, time_codes = _codes(values[columns.time])
    n_units, n_times = len(unit_ids), len(times)
    cell = unit_codes.astype(np.int64) * n_times + time_codes
    counts = np.bincount(cell, minlength=n_units * n_times)
    if (counts > 1).any():
        first_dup = int(np.flatnonzero(counts > 1)[0])
        unit, period = unit_ids[first_dup // n_times], times[first_dup % n_times]
        raise DidInputError(
            f"{int((counts > 1).sum())} unit-period pairs appear more than once, first unit "
            f"{_show(unit)} in period {period:g} (columns `{columns.unit}`, `{columns.time}`); "
            "aggregate to one row per unit and period"
        )

    cohort = _require_constant(unit_codes, values[columns.cohort], unit_ids, columns.cohort,
                               "cohort")
    if (cohort < 0).any():
        raise DidInputError(f"cohort column `{columns.cohort}` must hold the first treated "
                            "period, or 0 for never treated; found negative values")
    weights = np.ones(n_units)
    if columns.weights:
        weights = _require_constant(unit_codes, values[columns.weights], unit_ids,
                                    columns.weights, "weights")
        if (weights < 0).any() or weights.sum() <= 0:
            raise DidInputError(f"weights column `{columns.weights}` must be non-negative "
                                "with a positive total")
    cluster = None
    if columns.cluster:
        labels, cluster_codes = np.unique(frame[columns.cluster].to_numpy()[keep],
                                          return_inverse=True)
        cluster = _require_constant(unit_codes, cluster_codes, unit_ids, columns.cluster,
                                    "cluster")

    y = np.full((n_units, n_times), np.nan)
    y.ravel()[cell] = values[columns.outcome]  # flat positions: one index array, not two
    covariates = None
    if columns.covariates:
        covariates = np.full((n_times, n_units, len(columns.covariates)), np.nan)
        for j, name in enumerate(columns.covariates):
            covariates[time_codes, unit_codes, j] = values[name]
    log.info("panel: %d rows, %d units, %d periods", int(keep.sum()), n_units, n_times)
    return WidePanel(unit_ids=unit_ids, times=times, cohort=cohort, y=y, weights=weights,
                     cluster=cluster, covariates=covariates,
                     covariate_names=tuple(columns.covariates),
                     groups=np.unique(cohort[cohort > 0]), warnings=tuple(warnings))


def _subset(panel: WidePanel, units: np.ndarray | None = None,
            periods: np.ndarray | None = None) -> WidePanel:
    """The panel restricted to some units (boolean mask) and/or periods (boolean mask)."""
    u = np.ones(panel.n_units, dtype=bool) if units is None else units
    p = np.ones(len(panel.times), dtype=bool) if periods is None else periods
    covariates = None if panel.covariates is None else panel.covariates[p][:, u]
    return replace(panel, unit_ids=panel.unit_ids[u], times=panel.times[p],
                   cohort=panel.cohort[u], y=panel.y[u][:, p], weights=panel.weights[u],
                   cluster=None if panel.cluster is None else panel.cluster[u],
                   covariates=covariates)


def _balanced(panel: WidePanel) -> tuple[WidePanel, list[str]]:
    """Drop units without an outcome in every period (R `did`'s default for panel data)."""
    complete = np.isfinite(panel.y).all(axis=1)
    if panel.covariates is not None:
        complete &= np.isfinite(panel.covariates).all(axis=(0, 2))
    if complete.all():
        return panel, []
    dropped = int((~complete).sum())
    return _subset(panel, units=complete), [
        f"{dropped} units are missing in some periods; dropped them to balance the panel"]


def _sorted_by_cohort(panel: WidePanel) -> WidePanel:
    order = np.lexsort((np.arange(panel.n_units), panel.cohort))
    if (order == np.arange(panel.n_units)).all():
        return panel
    covariates = None if panel.covariates is None else panel.covariates[:, order]
    return replace(panel, unit_ids=panel.unit_ids[order], cohort=panel.cohort[order],
                   y=panel.y[order], weights=panel.weights[order],
                   cluster=None if panel.cluster is None else panel.cluster[order],
                   covariates=covariates)


def _collinear_covariates(x: np.ndarray, names: Sequence[str]) -> str | None:
    """Describe the first covariate that adds nothing to an intercept and earlier covariates."""
    design = np.column_stack([np.ones(len(x)), x])
    scale = np.abs(design).max(axis=0)
    design = design / np.where(scale > 0, scale, 1.0)
    rank = 1
    for j, name in enumerate(names, start=1):
        new_rank = np.linalg.matrix_rank(design[:, : j + 1])
        if new_rank == rank:
            if np.ptp(x[:, j - 1]) == 0:
                return f"covariate `{name}` is constant"
            earlier = ", ".join(f"`{n}`" for n in names[: j - 1]) or "the intercept"
            return f"covariate `{name}` is a linear combination of {earlier}"
        rank = new_rank
    return None


def estimation_sample(panel: WidePanel, control: str, anticipation: float) -> WidePanel:
    """Apply R `did`'s sample rules for cohorts and periods, then balance the panel."""
    warnings = list(panel.warnings)
    cohort = panel.cohort.copy()
    late = cohort > panel.times.max() + anticipation
    if late.any():
        cohort[late] = 0.0
        warnings.append(f"{int(late.sum())} units first treated after the last period "
                        "(plus anticipation) are used as never treated")
    panel = replace(panel, cohort=cohort)

    period_mask = None
    latest = None
    if not (cohort == 0).any():
        if control == "never":
            raise DidInputError(
                "no never-treated units (cohort 0) to use as controls; use --control notyet to "
                "compare with units not yet treated"
            )
        latest = float(cohort.max())
        period_mask = panel.times < latest - anticipation
        warnings.append(f"no never-treated units: periods from {latest - anticipation:g} on are "
                        f"dropped and cohort {latest:g} is used only as a control")
    panel = _subset(panel, periods=period_mask) if period_mask is not None else panel
    if len(panel.times) < 2:
        raise DidInputError("fewer than two periods are left to compare")

    first = panel.times.min()
    always = (panel.cohort > 0) & (panel.cohort <= first + anticipation)
    if always.any():
        n_always = int(always.sum())
        suffix = f" (accounting for anticipation = {anticipation:g})" if anticipation else ""
        warnings.append(f"dropped {n_always} units that were already treated in the first "
                        f"period{suffix}")
        panel = _subset(panel, units=~always)
    panel, balance_warnings = _balanced(panel)
    warnings.extend(balance_warnings)
    if panel.n_units == 0:
        raise DidInputError("no units left after balancing the panel")
    panel = _sorted_by_cohort(panel)

    groups = np.unique(panel.cohort[panel.cohort > 0])
    groups = groups[groups > panel.times.min() + anticipation]
    if latest is not None:
        groups = groups[groups < latest]
    if len(groups) == 0:
        raise DidInputError("no treated cohorts left to estimate; the cohort column must hold "
                            "the first treated period (0 for never treated) on the same scale "
                            "as the time column")
    if control == "never" and not (panel.cohort == 0).any():
        raise DidInputError("no never-treated units are left after balancing the panel; use "
                            "--control notyet")

    if panel.covariates is not None:
        problem = _collinear_covariates(panel.covariates.reshape(-1, panel.covariates.shape[2]),
                                        panel.covariate_names)
        if problem:
            raise DidInputError(f"singular covariates: {problem}; drop it from --covariates")

    needed = len(panel.covariate_names) + 5
    cohorts, sizes = np.unique(panel.cohort, return_counts=True)
    small = [f"{c:g}" for c, s in zip(cohorts, sizes, strict=True) if s < needed]
    if small:
        warnings.append(f"some cohorts have fewer than {needed} units, which may make estimates "
                        f"unstable: {', '.join(small)} (0 = never treated)")
    return replace(panel, groups=groups, warnings=tuple(warnings))
