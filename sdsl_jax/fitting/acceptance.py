"""Fitting the acceptance law alpha = A x + B y + C to measured acceptances.

Two fits, both weighted least squares:

* joint: one plane over every (draft, target) measurement, the paper's fit;
* per target: alpha = A_t x + C_t for each target separately (within one
  target y is constant, so B folds into the intercept). The paper reports
  R^2 = 0.97-0.98 for these; they show how much the plane's single slope
  costs each target.

A plane is linear in its coefficients, so the least-squares solution has a
closed form and no iterative optimiser is needed: it is the solution of the
3x3 normal equations, and its covariance is the textbook s^2 (X'WX)^-1. They
are formed on standardised perplexities, (x - mean) / std, where the Gram
matrix is [[1, rho, 0], [rho, 1, 0], [0, 0, 1]] (rho the weighted correlation
of x and y), so the solve is as accurate in float32 as in float64 whatever
the units of x and y, and it differentiates and vmaps like any other jnp
function. The end-to-end fit (:mod:`sdsl_jax.fitting.joint`) profiles the
plane out the same way.

:func:`plane_objective` is the concentrated Gaussian log-likelihood
(n/2) log(weighted SSR / n) in natural coefficients: minimised by the same
plane, and its inverse Hessian (:func:`sdsl_jax.fitting.uncertainty.delta_method_covariance`)
is the same covariance.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common import saved_programs
from sdsl_jax.common import validation as _validate
from sdsl_jax.common.buckets import bucket
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.fitting.data import AcceptanceRows


@chex.dataclass(frozen=True)
class AcceptanceFit:
    """A fitted acceptance plane and how well it fits.

    Attributes:
      law: the fitted AcceptanceLaw (A, B, C).
      r2: 1 - SSR / SST on acceptance, unweighted (as the paper reports it).
      weighted_r2: the same with the fit's weights.
      residuals: measured minus fitted acceptance, per row.
      rms_residual: root mean square of the residuals.
      covariance: (3, 3) covariance of (A, B, C), the textbook s^2 (X'WX)^-1
        with s^2 = weighted SSR / (n - p), n = sum of the weights (the row
        count for the normalised weights of fitting.data) and p the fitted
        coefficients; B's row and column are 0 where B was held at 0.
      identifiable: whether the data determine the plane: the draft
        perplexities vary and are not collinear with the target's. (A target
        perplexity that never varies is not a failure: B is then 0 and the
        intercept absorbs it.)
    """

    law: acceptance_lib.AcceptanceLaw
    r2: jnp.ndarray
    weighted_r2: jnp.ndarray
    residuals: jnp.ndarray
    rms_residual: jnp.ndarray
    covariance: jnp.ndarray
    identifiable: jnp.ndarray


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


def _fit_plane(rows: AcceptanceRows, weight, use_target: bool):
    """((A, B, C), covariance (3, 3), identifiable) of the weighted plane."""
    x_mean, x_std = _weighted_stats(rows.draft_perplexity, weight)
    y_mean, y_std = _weighted_stats(rows.target_perplexity, weight)
    xs = (rows.draft_perplexity - x_mean) / x_std
    ys = (rows.target_perplexity - y_mean) / y_std if use_target else jnp.zeros_like(xs)
    design = jnp.stack([xs, ys, jnp.ones_like(xs)], axis=1)
    total = jnp.sum(weight)
    gram = design.T @ (weight[:, None] * design) / total
    # A column that is identically zero (no target term, or one target) gets
    # a 1 on its diagonal, which pins its coefficient to 0 instead of making
    # the system singular; it is then no coefficient of the fit.
    fitted = jnp.diagonal(gram) > 0
    gram = gram + jnp.diag((~fitted).astype(gram.dtype))
    theta = jnp.linalg.solve(gram, design.T @ (weight * rows.acceptance) / total)
    ssr = jnp.sum(weight * (rows.acceptance - design @ theta) ** 2)
    dof = jnp.maximum(total - jnp.sum(fitted), 1.0)
    pinned = jnp.outer(fitted, fitted)
    cov_theta = jnp.where(pinned, jnp.linalg.inv(gram), 0.0) * ssr / (dof * total)
    # Natural coefficients: A = theta_x / sx, B = theta_y / sy, C = theta_1 - A mx - B my.
    to_natural = jnp.array([[1 / x_std, 0.0, 0.0], [0.0, 1 / y_std, 0.0],
                            [-x_mean / x_std, -y_mean / y_std, 1.0]], xs.dtype)
    coeffs = to_natural @ theta
    # The x column's spread is exactly 1 after scaling unless x never varies;
    # x and y nearly collinear shows as a Gram eigenvalue near 0.
    eps = jnp.finfo(xs.dtype).eps
    identifiable = fitted[0] & (jnp.linalg.eigvalsh(gram)[0] > 1e3 * eps)
    return coeffs, to_natural @ cov_theta @ to_natural.T, identifiable


def _r2(actual, fitted, weight):
    mean = jnp.sum(weight * actual) / jnp.sum(weight)
    return 1 - jnp.sum(weight * (actual - fitted) ** 2) / jnp.sum(weight * (actual - mean) ** 2)


def _check_rows(rows: AcceptanceRows, weight, needed: int, what: str) -> None:
    """Eager checks (skipped under tracing) that name what is wrong."""
    if not isinstance(rows, AcceptanceRows):
        raise TypeError(f"rows must be AcceptanceRows (see fitting.data.acceptance_rows), got {type(rows).__name__}")
    if not _validate.is_concrete(rows, weight):
        return
    w = np.asarray(weight, np.float64)
    if w.shape != np.shape(rows.acceptance):
        raise ValueError(f"weight must have one entry per row, shape {np.shape(rows.acceptance)}, got {w.shape}")
    if not np.all(np.isfinite(w) & (w >= 0)):
        raise ValueError("weights must be finite and >= 0")
    used = int(np.sum(w > 0))
    if used < needed:
        raise ValueError(f"{what} needs at least {needed} measurements with positive weight, got {used}")
    x = np.asarray(rows.draft_perplexity)[w > 0]
    if np.ptp(x) == 0:
        raise ValueError(f"{what} cannot be fitted: every measurement has the same draft perplexity "
                         f"({x[0]:g}), so the slope A is not determined; measure more than one draft")


@functools.partial(jax.jit, static_argnames=("use_target",))
def _fit_acceptance_law(rows, weight, use_target):
    coeffs, covariance, identifiable = _fit_plane(rows, weight, use_target)
    law = acceptance_lib.AcceptanceLaw(draft_coeff=coeffs[0], target_coeff=coeffs[1], intercept=coeffs[2])
    fitted = acceptance_lib.raw_acceptance(law, rows.draft_perplexity, rows.target_perplexity)
    residuals = rows.acceptance - fitted
    used = (weight > 0).astype(fitted.dtype)
    return AcceptanceFit(
        law=law, r2=_r2(rows.acceptance, fitted, used),
        weighted_r2=_r2(rows.acceptance, fitted, weight), residuals=residuals,
        rms_residual=jnp.sqrt(jnp.sum(used * residuals**2) / jnp.sum(used)),
        covariance=covariance, identifiable=identifiable)


def _saved_fit(rows, weight, use_target):
    # Where the caller saves programs (the sdsl command line does), a new
    # process loads the compiled fit instead of tracing it again.
    return saved_programs.call("fitting.acceptance", _fit_acceptance_law, (), rows, weight,
                               static_kwargs=dict(use_target=use_target))


def fit_acceptance_law(rows: AcceptanceRows, weight=None, *, use_target: bool = True) -> AcceptanceFit:
    """The joint plane over all measurements (weights default to ``rows.weight``).

    ``weight`` may be given to refit the same rows with other weights (a
    bootstrap resample is a weight of how often each row was drawn); a zero
    weight leaves a row out. ``use_target=False`` fits alpha = A x + C.
    Works under jit, vmap (e.g. over weights) and grad (e.g. of the
    coefficients with respect to the measured acceptances). Raises ValueError
    for concrete input with fewer than 3 weighted rows or a single draft
    perplexity.
    """
    weight = rows.weight if weight is None else jnp.asarray(weight, rows.acceptance.dtype)
    _check_rows(rows, weight, 3 if use_target else 2, "the acceptance plane")
    size = rows.acceptance.shape[0]
    if bucket(size, ROW_BUCKET) == size or not _validate.is_concrete(rows, weight):
        return _saved_fit(rows, weight, use_target)
    # Padded rows at weight 0 change no weighted sum (and r2 and the rms
    # residual count the rows of positive weight): one compiled fit serves
    # every row count up to the bucket.
    fit = _saved_fit(_pad_rows(rows, bucket(size, ROW_BUCKET)), _pad(weight, bucket(size, ROW_BUCKET), 0.0),
                     use_target)
    return fit.replace(residuals=jnp.asarray(np.asarray(fit.residuals)[:size]))


ROW_BUCKET = 256  # the fewest rows a padded fit is compiled for
TARGET_BUCKET = 16  # and the fewest targets of the per-target fits


def _pad(values, size, fill=None):
    """``values`` (n,) on the host, extended to ``size`` with ``fill`` (by default its first entry)."""
    values = np.asarray(values)
    extra = np.full(size - values.size, values[0] if fill is None else fill, values.dtype)
    return jnp.asarray(np.concatenate([values, extra]))


def _pad_rows(rows: AcceptanceRows, size: int) -> AcceptanceRows:
    """Rows padded to ``size`` with copies of the first (their weight is the caller's to zero)."""
    return jax.tree_util.tree_map(lambda v: _pad(v, size), rows)


@functools.partial(jax.jit, static_argnames=("num_targets",))
def _fit_per_target(rows, num_targets):
    # Per-target weighted sums in one pass (segment sums): the fits are
    # independent 2x2 least-squares problems, so this costs O(rows), not
    # O(rows x targets) as masking every row once per target would.
    t, w, x, alpha = rows.target_index, rows.weight, rows.draft_perplexity, rows.acceptance
    total = lambda v: jax.ops.segment_sum(v, t, num_segments=num_targets)
    count = jax.ops.segment_sum(jnp.ones_like(t), t, num_segments=num_targets)
    w_sum = total(w)
    safe = jnp.where(w_sum > 0, w_sum, 1.0)
    x_mean, alpha_mean = total(w * x) / safe, total(w * alpha) / safe
    dx, dalpha = x - x_mean[t], alpha - alpha_mean[t]  # centred within each target
    sxx, sxa = total(w * dx**2), total(w * dx * dalpha)
    # One draft perplexity leaves deviations of rounding size about a mean that
    # is not exactly x, not exactly 0: a spread below 100 eps of the largest x
    # (real spreads are 1e10 times that) is none, and the slope undetermined.
    x_scale = jax.ops.segment_max(jnp.abs(x), t, num_segments=num_targets)
    spread = sxx > w_sum * (100 * jnp.finfo(x.dtype).eps * x_scale) ** 2
    slope = jnp.where(spread, sxa / jnp.where(spread, sxx, 1.0), jnp.nan)
    intercept = alpha_mean - slope * x_mean
    # Unweighted R^2 within each target, as the paper reports it.
    residual = alpha - (slope[t] * x + intercept[t])
    plain_mean = jax.ops.segment_sum(alpha, t, num_segments=num_targets) / jnp.maximum(count, 1)
    sst = jax.ops.segment_sum((alpha - plain_mean[t]) ** 2, t, num_segments=num_targets)
    r2 = 1 - jax.ops.segment_sum(residual**2, t, num_segments=num_targets) / sst
    return PerTargetFit(draft_coeff=slope, intercept=intercept, r2=r2, measurements=count)


def fit_per_target(rows: AcceptanceRows, num_targets: int) -> PerTargetFit:
    """alpha = A_t x + C_t for every target t = 0 .. num_targets - 1.

    A target whose draft perplexities never vary (one draft) gets NaN
    coefficients: its slope is not determined. Its R^2 is NaN too, as is the
    R^2 of a target whose acceptances are all equal.
    """
    if int(num_targets) < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}")
    _check_rows(rows, rows.weight, 2, "the per-target fits")
    if not _validate.is_concrete(rows):
        return _fit_per_target(rows, int(num_targets))
    index = np.asarray(rows.target_index)
    if index.min() < 0 or index.max() >= num_targets:
        raise ValueError(f"rows.target_index must lie in [0, {num_targets}), got values "
                         f"{index.min()} .. {index.max()}")
    # Padded: the extra rows (weight 0) form one more target of their own,
    # dropped from the result, so that one compiled fit serves every row and
    # target count up to the buckets.
    size, targets = rows.acceptance.shape[0], int(num_targets)
    padded_targets = bucket(targets + 1, TARGET_BUCKET)
    padded = _pad_rows(rows, bucket(size, ROW_BUCKET)).replace(
        weight=_pad(rows.weight, bucket(size, ROW_BUCKET), 0.0),
        target_index=_pad(rows.target_index, bucket(size, ROW_BUCKET), padded_targets - 1))
    fit = _fit_per_target(padded, padded_targets)
    return jax.tree_util.tree_map(lambda v: jnp.asarray(np.asarray(v)[:targets]), fit)
