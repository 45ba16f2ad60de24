"""The paper's rule of thumb N* ~= a M + b, and refitting it to the full planner.

The paper summarises the planner by a line, N* ~= 2.71e-3 M + 87M, with a
weak correction in the log of the training data. The line is a convenience;
the planner is the law. :func:`fit_linear_rule` refits the line over a range
of targets and data sizes the user chooses, so the two can be compared where
the user's targets actually live.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sdsl_jax.planning import flop as planner

PUBLISHED_SLOPE = 2.71e-3
PUBLISHED_INTERCEPT = 87e6


def published_rule(target_params: ArrayLike) -> jnp.ndarray:
    """N* ~= 2.71e-3 M + 87M, the paper's linear summary."""
    return PUBLISHED_SLOPE * jnp.asarray(target_params) + PUBLISHED_INTERCEPT


@chex.dataclass(frozen=True)
class LinearRule:
    """N* ~= slope M + intercept + log_tokens_coeff log(D), with its fit quality.

    Attributes:
      slope: a, draft parameters per target parameter.
      intercept: b, in parameters.
      log_tokens_coeff: c, parameters per nat of draft training tokens
        (0 when the fit left it out).
      r2: coefficient of determination of the fit on N*.
      max_relative_error: worst |rule - N*| / N* over the fitted grid.
    """

    slope: float
    intercept: float
    log_tokens_coeff: float
    r2: float
    max_relative_error: float

    def __call__(self, target_params, draft_tokens=1.0):
        return (self.slope * jnp.asarray(target_params) + self.intercept
                + self.log_tokens_coeff * jnp.log(jnp.asarray(draft_tokens)))


class RuleUndefinedError(ValueError):
    """Speculation does not pay at some configurations of the grid, so the line through
    N* is undefined there (the planner returns no draft).

    Attributes:
      pays: boolean array, the broadcast grid, True where speculation pays.
      target_params, draft_tokens, target_tokens: the grid, broadcast to ``pays``' shape.
    """

    def __init__(self, message, *, pays, target_params, draft_tokens, target_tokens):
        super().__init__(message)
        self.pays = pays
        self.target_params = target_params
        self.draft_tokens = draft_tokens
        self.target_tokens = target_tokens


def fit_linear_rule(target_params: ArrayLike, draft_tokens: ArrayLike, target_tokens: ArrayLike,
                    *, with_log_tokens: bool = False, **plan_kwargs) -> LinearRule:
    """Least-squares line through the planner's N* over a grid of configurations.

    Args:
      target_params, draft_tokens, target_tokens: broadcastable arrays; every
        broadcast point is one configuration of the fit.
      with_log_tokens: also fit the log(D) term.
      **plan_kwargs: passed to :func:`sdsl_jax.optimal_draft_size` (laws, method).

    Raises:
      RuleUndefinedError: where speculation does not pay at some configuration
        (it carries the grid and where it pays).
    """
    if with_log_tokens and np.ptp(np.asarray(draft_tokens, np.float64)) == 0:
        raise ValueError("with_log_tokens needs more than one draft_tokens value: with one, "
                         "log D is a constant beside the intercept and its coefficient is undetermined")
    plan = planner.optimal_draft_size(target_params, draft_tokens, target_tokens, **plan_kwargs)
    grid = [np.asarray(v, np.float64) for v in jnp.broadcast_arrays(
        jnp.asarray(target_params), jnp.asarray(draft_tokens), jnp.asarray(target_tokens),
        plan.draft_params)]
    pays = np.broadcast_to(np.asarray(plan.pays), grid[0].shape)
    if not np.all(pays):
        first = np.unravel_index(np.argmin(pays), pays.shape)
        raise RuleUndefinedError(
            f"speculation does not pay at {pays.size - int(pays.sum())} of {pays.size} "
            f"configurations (e.g. target_params={grid[0][first]:.4g}, draft_tokens="
            f"{grid[1][first]:.4g}, target_tokens={grid[2][first]:.4g}); the rule is undefined there",
            pays=pays, target_params=grid[0], draft_tokens=grid[1], target_tokens=grid[2])
    m, d, n_star = (np.ravel(v) for v in (grid[0], grid[1], grid[3]))
    columns = [m, np.ones_like(m)] + ([np.log(d)] if with_log_tokens else [])
    design = np.stack(columns, axis=1)
    # Scale columns so the solve is well conditioned when M ~ 1e11 and 1 sit side by side.
    scale = np.abs(design).max(axis=0)
    # And N* in units of its largest value, so that squares of N* ~ 1e200 (a
    # target of 1e300) do not overflow to an R^2 of NaN.
    unit = np.abs(n_star).max()
    coeffs = np.linalg.lstsq(design / scale, n_star / unit, rcond=None)[0] / scale
    residual = n_star / unit - design @ coeffs
    spread = n_star / unit - np.mean(n_star / unit)
    r2 = 1.0 - residual @ residual / (spread @ spread)
    coeffs, residual = coeffs * unit, residual * unit
    return LinearRule(
        slope=float(coeffs[0]), intercept=float(coeffs[1]),
        log_tokens_coeff=float(coeffs[2]) if with_log_tokens else 0.0,
        r2=float(r2), max_relative_error=float(np.max(np.abs(residual) / n_star)))
