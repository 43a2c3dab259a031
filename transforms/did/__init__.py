"""Callaway & Sant'Anna (2021) difference-in-differences, matching R package `did`.

Modules, in data-flow order: `options` (settings, errors), `panel_checks` (long table to
checked wide arrays), `group_time` (ATT(g,t)), `drdid` (2x2 estimators with covariates),
`aggregation` (simple/group/dynamic/calendar), `bootstrap` (multiplier bootstrap),
`callaway_santanna` (the estimator and its result), `cli` (`vanguard did`).

Names are imported on first use so that `import transforms.did.cli` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transforms.did.callaway_santanna import (
        AggregateEffect,
        CSResult,
        Effect,
        GroupTimeATT,
        PreTest,
        estimate_cs,
        estimate_panel,
    )
    from transforms.did.options import CSOptions, DidInputError, PanelColumns
    from transforms.did.panel_checks import WidePanel, estimation_sample, wide_panel

_HOME = {
    "AggregateEffect": "callaway_santanna",
    "CSResult": "callaway_santanna",
    "Effect": "callaway_santanna",
    "GroupTimeATT": "callaway_santanna",
    "PreTest": "callaway_santanna",
    "estimate_cs": "callaway_santanna",
    "estimate_panel": "callaway_santanna",
    "CSOptions": "options",
    "DidInputError": "options",
    "PanelColumns": "options",
    "WidePanel": "panel_checks",
    "estimation_sample": "panel_checks",
    "wide_panel": "panel_checks",
}

__all__ = [
    "AggregateEffect",
    "CSOptions",
    "CSResult",
    "DidInputError",
    "Effect",
    "GroupTimeATT",
    "PanelColumns",
    "PreTest",
    "WidePanel",
    "estimate_cs",
    "estimate_panel",
    "estimation_sample",
    "wide_panel",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"transforms.did.{_HOME[name]}"), name)
