"""Settings of the Callaway & Sant'Anna estimator and the error it raises for unusable input.

Kept free of numerical imports so that the command line can build its parser cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTROLS = ("never", "notyet")
BASES = ("varying", "universal")
METHODS = ("reg", "ipw", "dr")
MULTIPLIERS = ("rademacher", "mammen")


class DidInputError(ValueError):
    """The panel or options cannot be used as given; the message names the problem and fix."""


@dataclass(frozen=True)
class PanelColumns:
    """Which columns of the long table play which role."""

    unit: str
    time: str
    cohort: str
    outcome: str
    covariates: tuple[str, ...] = ()
    weights: str | None = None
    cluster: str | None = None

    def required(self) -> list[str]:
        extra = [c for c in (self.weights, self.cluster) if c is not None]
        return [self.unit, self.time, self.cohort, self.outcome, *self.covariates, *extra]


@dataclass(frozen=True)
class CSOptions:
    """Estimator settings; defaults are R `did`'s except analytic standard errors.

    `anticipation` is in units of the time column, as in R `did`'s code.
    """

    control: str = "never"
    base: str = "varying"
    anticipation: float = 0
    method: str = "dr"
    bootstrap: int = 0  # number of multiplier bootstrap draws; 0 = analytic standard errors
    multiplier: str = "rademacher"
    seed: int | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        for name, allowed in (("control", CONTROLS), ("base", BASES), ("method", METHODS),
                              ("multiplier", MULTIPLIERS)):
            if getattr(self, name) not in allowed:
                raise DidInputError(f"{name} must be one of {', '.join(allowed)}; "
                                    f"got {getattr(self, name)!r}")
        if self.anticipation < 0:
            raise DidInputError("anticipation must be 0 or more periods")
        if self.bootstrap < 0:
            raise DidInputError("bootstrap must be 0 (analytic) or a number of draws")
        if not 0 < self.alpha < 1:
            raise DidInputError("alpha must be between 0 and 1")

    @property
    def inference(self) -> str:
        return "multiplier_bootstrap" if self.bootstrap else "analytic"
