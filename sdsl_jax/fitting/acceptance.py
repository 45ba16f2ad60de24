"""Fitting the acceptance law alpha = A x + B y + C to measured acceptances.

Two fits, both weighted least squares solved by L-BFGS (sdsl_jax.optimize):

* joint: one plane over every (draft, target) measurement, the paper's fit;
* per target: alpha = A_t x + C_t for each target separately (within one
  target y is constant, so B folds into the intercept). The paper reports
  R^2 = 0.97-0.98 for these; they show how much the plane's single slope
  costs each target.

The minimiser works on standardised perplexities, (x - mean) / std, which
makes the problem's Hessian nearly the identity: L-BFGS then converges in a
handful of steps to the exact least-squares solution, in float32 as well as
float64, whatever the units of x and y. The objective it minimises is the
concentrated Gaussian log-likelihood (n/2) log(weighted SSR / n): the same
minimiser as least squares, and its inverse Hessian is the covariance of the
coefficients with the noise variance estimated from the residuals (the
textbook s^2 (X'WX)^-1), which :mod:`sdsl_jax.fitting.uncertainty` uses.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from sdsl_jax import acceptance_law as acceptance_lib
from sdsl_jax.fitting.data import AcceptanceRows
from sdsl_jax.optimize import minimize


@chex.dataclass(frozen=True)
class AcceptanceFit:
    """A fitted acceptance plane and how well it fits.

    Attributes:
      law: the fitted AcceptanceLaw (A, B, C).
      r2: 1 - SSR / SST on acceptance, unweighted (as the paper reports it).
      weighted_r2: the same with the fit's weights.
      residuals: measured minus fitted acceptance, per row.
      rms_residual: root mean square of the residuals.
      converged: whether the minimiser met its gradient tolerance.
    """

    law: acceptance_lib.AcceptanceLaw
    r2: jnp.ndarray
    weighted_r2: jnp.ndarray
    residuals: jnp.ndarray
    rms_residual: jnp.ndarray
    converged: jnp.ndarray


@chex.dataclass(frozen=True)
class PerTargetFit:
    """alpha = A_t x + C_t for each target t; leaves have shape (targets,)."""

    draft_coeff: jnp.ndarray
    intercept: jnp.ndarray
    r2: jnp.ndarray
    measurements: jnp.ndarray  # rows per target


def _weighted_stats(v, w):
    mean = jnp.sum(w * v) / jnp.sum(w)
    std = jnp.sqrt(jnp.sum(w * (v - mean) ** 2) / jnp.sum(w))
    # A constant column (one target, so one y) has no spread to standardise by.
    return mean, jnp.where(std > 0, std, 1.0)


def concentrated_nll(ssr, n):
    """(n/2) log(SSR / n): the Gaussian likelihood with its variance profiled out."""
    return 0.5 * n * jnp.log(ssr / n)


def plane_objective(coeffs, rows: AcceptanceRows, weight):
    """The fit's objective in natural coefficients (A, B, C), as a flat vector."""
    pred = coeffs[0] * rows.draft_perplexity + coeffs[1] * rows.target_perplexity + coeffs[2]
    ssr = jnp.sum(weight * (rows.acceptance - pred) ** 2)
    return concentrated_nll(ssr, jnp.sum(weight))


def _fit_plane(rows: AcceptanceRows, weight, use_target: bool, max_steps: int):
    """Weighted least squares for A x (+ B y) + C with standardised inputs."""
    x_mean, x_std = _weighted_stats(rows.draft_perplexity, weight)
    y_mean, y_std = _weighted_stats(rows.target_perplexity, weight)
    xs = (rows.draft_perplexity - x_mean) / x_std
    ys = (rows.target_perplexity - y_mean) / y_std if use_target else jnp.zeros_like(xs)

    def loss(theta):
        pred = theta[0] * xs + theta[1] * ys + theta[2]
        return 0.5 * jnp.sum(weight * (rows.acceptance - pred) ** 2) / jnp.sum(weight)

    start = jnp.zeros(3, xs.dtype).at[2].set(jnp.sum(weight * rows.acceptance) / jnp.sum(weight))
    solution = minimize(loss, start, max_steps=max_steps)
    theta = solution.params
    a = theta[0] / x_std
    b = jnp.where(use_target, theta[1] / y_std, 0.0)
    c = theta[2] - a * x_mean - b * y_mean
    # Converged: the gradient has shrunk to rounding relative to the data's scale.
    eps = jnp.finfo(xs.dtype).eps
    return a, b, c, solution.grad_norm <= 1e3 * eps


def _r2(actual, fitted, weight):
    mean = jnp.sum(weight * actual) / jnp.sum(weight)
    return 1 - jnp.sum(weight * (actual - fitted) ** 2) / jnp.sum(weight * (actual - mean) ** 2)


@functools.partial(jax.jit, static_argnames=("max_steps",))
def fit_acceptance_law(rows: AcceptanceRows, weight=None, *, max_steps: int = 100) -> AcceptanceFit:
    """The joint plane over all measurements (weights default to ``rows.weight``).

    ``weight`` may be given to refit the same rows with other weights (a
    bootstrap resample is a weight of how often each row was drawn); a zero
    weight leaves a row out.
    """
    weight = rows.weight if weight is None else weight
    a, b, c, converged = _fit_plane(rows, weight, True, max_steps)
    law = acceptance_lib.AcceptanceLaw(draft_coeff=a, target_coeff=b, intercept=c)
    fitted = acceptance_lib.raw_acceptance(law, rows.draft_perplexity, rows.target_perplexity)
    residuals = rows.acceptance - fitted
    return AcceptanceFit(
        law=law, r2=_r2(rows.acceptance, fitted, jnp.ones_like(weight) * (weight > 0)),
        weighted_r2=_r2(rows.acceptance, fitted, weight), residuals=residuals,
        rms_residual=jnp.sqrt(jnp.sum((weight > 0) * residuals**2) / jnp.sum(weight > 0)),
        converged=converged)


@functools.partial(jax.jit, static_argnames=("num_targets", "max_steps"))
def fit_per_target(rows: AcceptanceRows, num_targets: int, *, max_steps: int = 100) -> PerTargetFit:
    """alpha = A_t x + C_t for every target, vmapped over targets."""

    def one(t):
        mask = rows.target_index == t
        weight = jnp.where(mask, rows.weight, 0.0)
        a, _, c, _ = _fit_plane(rows, weight, False, max_steps)
        fitted = a * rows.draft_perplexity + c
        return a, c, _r2(rows.acceptance, fitted, mask.astype(fitted.dtype)), jnp.sum(mask)

    a, c, r2, count = jax.vmap(one)(jnp.arange(num_targets))
    return PerTargetFit(draft_coeff=a, intercept=c, r2=r2, measurements=count)
