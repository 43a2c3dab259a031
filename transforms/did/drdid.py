"""Two-group two-period DiD estimators for panel data with covariates, as in R package DRDID.

R `did` estimates each ATT(g,t) with one of DRDID's panel estimators:

* ``reg``: outcome regression (`reg_did_panel`), a weighted least-squares fit of the change in
  outcome on covariates among controls, predicted for the treated;
* ``ipw``: standardised (Hajek) inverse probability weighting (`std_ipw_did_panel`), with a
  logit propensity score;
* ``dr``: the locally efficient doubly robust estimator (`drdid_panel`), which combines both.

The functions here follow DRDID's formulas, including its influence functions (with the
estimation effect of the propensity score and regression coefficients) and its propensity
score trimming of controls at 0.995. They are vectorised over comparisons: `delta_y` is an
n x m array whose columns share the same treated units, controls and covariates (for example
all periods of one cohort against the never treated), so the nuisance models are fitted once.
Influence functions are on DRDID's scale: the variance of an ATT is mean(IF^2) / n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TRIM_LEVEL = 0.995
_EPS = np.finfo(float).eps


class SingularDesign(ValueError):
    """A propensity score or outcome regression design matrix cannot be inverted."""


@dataclass(frozen=True)
class TwoByTwo:
    """ATTs (m,) and influence functions (n, m) of m comparisons on the same units."""

    att: np.ndarray
    inf: np.ndarray


def _rcond(matrix: np.ndarray) -> float:
    """Reciprocal 1-norm condition number (R's `rcond`), 0 for a singular matrix."""
    try:
        return float(1.0 / np.linalg.cond(matrix, 1))
    except np.linalg.LinAlgError:
        return 0.0


def fit_logit(x: np.ndarray, d: np.ndarray, w: np.ndarray,
              max_iter: int = 100) -> tuple[np.ndarray, bool]:
    """Weighted logit fitted values by Newton-Raphson (the MLE R's `glm` converges to)."""
    beta = np.zeros(x.shape[1])
    converged = False
    for _ in range(max_iter):
        eta = np.clip(x @ beta, -35.0, 35.0)
        p = 1.0 / (1.0 + np.exp(-eta))
        hessian = x.T @ ((w * p * (1.0 - p))[:, None] * x)
        try:
            step = np.linalg.solve(hessian, x.T @ (w * (d - p)))
        except np.linalg.LinAlgError:
            break
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10 * (1.0 + np.max(np.abs(beta))):
            converged = True
            break
    eta = np.clip(x @ beta, -35.0, 35.0)
    return 1.0 / (1.0 + np.exp(-eta)), converged


@dataclass(frozen=True)
class _Propensity:
    ps: np.ndarray
    lin_rep: np.ndarray  # asymptotic linear representation of the logit coefficients (n, k)


def _propensity(x: np.ndarray, d: np.ndarray, w: np.ndarray) -> _Propensity:
    n = len(d)
    ps, _ = fit_logit(x, d, w)
    ps = np.minimum(ps, 1.0 - 1e-6)
    xtwx = x.T @ ((ps * (1.0 - ps) * w)[:, None] * x)
    if _rcond(xtwx) < _EPS:
        raise SingularDesign("the propensity score design matrix is singular")
    hessian = np.linalg.inv(xtwx) * n
    return _Propensity(ps=ps, lin_rep=((w * (d - ps))[:, None] * x) @ hessian)


@dataclass(frozen=True)
class _OutcomeRegression:
    out_delta: np.ndarray  # predicted change for every unit (n, m)
    xpx_inv: np.ndarray  # inverse of the controls' weighted cross-product over n (k, k)


def _outcome_regression(x: np.ndarray, delta_y: np.ndarray, d: np.ndarray,
                        w: np.ndarray) -> _OutcomeRegression:
    control = d == 0
    xc, wc = x[control], w[control]
    xtwx = xc.T @ (wc[:, None] * xc)
    if _rcond(xtwx) < _EPS:
        raise SingularDesign("the outcome regression design matrix is singular")
    beta = np.linalg.solve(xtwx, xc.T @ (wc[:, None] * delta_y[control]))
    return _OutcomeRegression(out_delta=x @ beta, xpx_inv=np.linalg.inv(xtwx / len(d)))


def _trim(ps: np.ndarray, d: np.ndarray) -> np.ndarray:
    """DRDID keeps every treated unit and drops controls with a propensity score >= 0.995."""
    return np.where(d == 1, 1.0, (ps < TRIM_LEVEL).astype(float))


def reg_did_panel(delta_y: np.ndarray, d: np.ndarray, x: np.ndarray,
                  w: np.ndarray) -> TwoByTwo:
    """Outcome-regression DiD (DRDID `reg_did_panel`)."""
    n = len(d)
    w = w / w.mean()
    reg = _outcome_regression(x, delta_y, d, w)
    w_treat = w * d
    mean_treat = w_treat.mean()
    eta_treat = (w_treat @ delta_y) / n / mean_treat
    eta_cont = (w_treat @ reg.out_delta) / n / mean_treat
    residual = delta_y - reg.out_delta
    inf_treat = w_treat[:, None] * (delta_y - eta_treat) / mean_treat
    inf_cont_1 = w_treat[:, None] * (reg.out_delta - eta_cont)
    m1 = (w_treat @ x) / n
    w_ols = w * (1 - d)
    inf_cont_2 = (w_ols * (x @ (reg.xpx_inv @ m1)))[:, None] * residual
    inf_control = (inf_cont_1 + inf_cont_2) / mean_treat
    return TwoByTwo(att=eta_treat - eta_cont, inf=inf_treat - inf_control)


def std_ipw_did_panel(delta_y: np.ndarray, d: np.ndarray, x: np.ndarray,
                      w: np.ndarray) -> TwoByTwo:
    """Standardised inverse probability weighting DiD (DRDID `std_ipw_did_panel`)."""
    n = len(d)
    w = w / w.mean()
    pscore = _propensity(x, d, w)
    trim = _trim(pscore.ps, d)
    w_treat = trim * w * d
    w_cont = trim * w * pscore.ps * (1 - d) / (1 - pscore.ps)
    mean_treat, mean_cont = w_treat.mean(), w_cont.mean()
    eta_treat = (w_treat @ delta_y) / n / mean_treat
    eta_cont = (w_cont @ delta_y) / n / mean_cont
    inf_treat = w_treat[:, None] * (delta_y - eta_treat) / mean_treat
    centred = delta_y - eta_cont
    inf_cont_1 = w_cont[:, None] * centred
    m2 = x.T @ (w_cont[:, None] * centred) / n
    inf_cont_2 = pscore.lin_rep @ m2
    inf_control = (inf_cont_1 + inf_cont_2) / mean_cont
    return TwoByTwo(att=eta_treat - eta_cont, inf=inf_treat - inf_control)


def drdid_panel(delta_y: np.ndarray, d: np.ndarray, x: np.ndarray, w: np.ndarray) -> TwoByTwo:
    """Locally efficient doubly robust DiD (DRDID `drdid_panel`, R `did`'s default)."""
    n = len(d)
    w = w / w.mean()
    pscore = _propensity(x, d, w)
    reg = _outcome_regression(x, delta_y, d, w)
    trim = _trim(pscore.ps, d)
    w_treat = trim * w * d
    w_cont = trim * w * pscore.ps * (1 - d) / (1 - pscore.ps)
    mean_treat, mean_cont = w_treat.mean(), w_cont.mean()
    residual = delta_y - reg.out_delta
    eta_treat = (w_treat @ residual) / n / mean_treat
    eta_cont = (w_cont @ residual) / n / mean_cont
    w_ols = w * (1 - d)
    inf_treat_1 = w_treat[:, None] * (residual - eta_treat)
    m1 = (w_treat @ x) / n
    inf_treat_2 = (w_ols * (x @ (reg.xpx_inv @ m1)))[:, None] * residual
    inf_cont_1 = w_cont[:, None] * (residual - eta_cont)
    m2 = x.T @ (w_cont[:, None] * (residual - eta_cont)) / n
    inf_cont_2 = pscore.lin_rep @ m2
    m3 = (w_cont @ x) / n
    inf_cont_3 = (w_ols * (x @ (reg.xpx_inv @ m3)))[:, None] * residual
    inf_treat = (inf_treat_1 - inf_treat_2) / mean_treat
    inf_control = (inf_cont_1 + inf_cont_2 - inf_cont_3) / mean_cont
    return TwoByTwo(att=eta_treat - eta_cont, inf=inf_treat - inf_control)


ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], TwoByTwo]] = {
    "reg": reg_did_panel,
    "ipw": std_ipw_did_panel,
    "dr": drdid_panel,
}


def overlap_violated(x: np.ndarray, d: np.ndarray) -> bool:
    """R `did`'s pre-check: an unweighted logit predicting treatment with p >= 0.999."""
    ps, _ = fit_logit(x, d, np.ones(len(d)))
    return bool(ps.max() >= 0.999)


def regression_infeasible(x: np.ndarray, d: np.ndarray) -> bool:
    """R `did`'s pre-check: too few controls to fit the outcome regression."""
    xc = x[d == 0]
    return bool(_rcond(xc.T @ xc) < _EPS)
