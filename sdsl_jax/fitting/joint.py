"""The end-to-end fit: acceptance from (N, D, M, D') through both laws at once.

The planner never sees a perplexity: it predicts the draft's and target's
perplexities from their sizes and data with the pre-training law, and the
acceptance from those with the plane. Fitting the two laws separately
minimises the wrong error for that use. This fit minimises, jointly over all
eight coefficients,

    l(theta) = (n_a / 2) log(sum_i w_i (alpha_i - alpha_hat(N_i, D_i, M_i, D'_i))^2 / n_a)
             + (n_p / 2) log(sum_j (log L_j - log L_hat(N_j, D_j))^2 / n_p),

the Gaussian log-likelihood of the measured acceptances (weighted by their
intervals, w = 1/sigma^2) and of the measured losses (L = log perplexity of
each distinct model), each block's noise variance profiled out. Profiling
makes the relative weight of the two blocks a property of the data, not a
tuning knob, and makes the inverse Hessian a covariance (delta method).
Acceptances alone could not pin down the pre-training law (E and A trade off
against the plane's slope); the loss points can.

Coordinates: the pre-training law in (log E, log A, log B, a, b), as in the
Huber fit; the plane on standardised perplexities, so every coordinate is of
order one and L-BFGS converges quickly in float32 as in float64. The fit
starts from the separate fits (Huber pre-training law, plane on measured
perplexities), which are close.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from sdsl_jax import acceptance_law as acceptance_lib
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.fitting import pretraining as pretraining_fit
from sdsl_jax.fitting.acceptance import concentrated_nll, fit_acceptance_law
from sdsl_jax.fitting.data import AcceptanceRows, PerplexityPoints
from sdsl_jax.fitting.uncertainty import delta_method_covariance
from sdsl_jax.optimize import minimize


@chex.dataclass(frozen=True)
class PlaneScales:
    """Centre and spread of the measured perplexities (constants of the fit's coordinates)."""

    draft_mean: jnp.ndarray
    draft_std: jnp.ndarray
    target_mean: jnp.ndarray
    target_std: jnp.ndarray


@chex.dataclass(frozen=True)
class JointFit:
    """Result of :func:`fit_joint`.

    Attributes:
      laws: FittedLaws with the delta-method covariance.
      theta: the optimum in the fit's coordinates (for warm starts).
      acceptance_r2: R^2 of acceptance predicted from sizes alone.
      acceptance_residuals: measured minus predicted acceptance per row.
      loss_r2: R^2 of the pre-training law on the loss points.
      loss_residuals: log L - log L_hat per loss point.
      objective: l(theta) at the optimum.
      converged: whether L-BFGS met its gradient tolerance.
      identifiable: whether the Hessian was positive definite (if not, some
        coefficient is not determined by the data and its variance is inf).
    """

    laws: laws_lib.FittedLaws
    theta: jnp.ndarray
    acceptance_r2: jnp.ndarray
    acceptance_residuals: jnp.ndarray
    loss_r2: jnp.ndarray
    loss_residuals: jnp.ndarray
    objective: jnp.ndarray
    converged: jnp.ndarray
    identifiable: jnp.ndarray


def plane_scales(rows: AcceptanceRows) -> PlaneScales:
    def stats(v):
        mean = jnp.mean(v)
        std = jnp.std(v)
        return mean, jnp.where(std > 0, std, 1.0)

    dm, ds = stats(rows.draft_perplexity)
    tm, ts = stats(rows.target_perplexity)
    return PlaneScales(draft_mean=dm, draft_std=ds, target_mean=tm, target_std=ts)


def natural_coefficients(theta, scales: PlaneScales) -> jnp.ndarray:
    """theta (fit coordinates) -> the eight coefficients in laws.COEFFICIENTS order."""
    pre = pretraining_fit.from_theta(theta[:5])
    a = theta[5] / scales.draft_std
    b = theta[6] / scales.target_std
    c = theta[7] - a * scales.draft_mean - b * scales.target_mean
    acc = acceptance_lib.AcceptanceLaw(draft_coeff=a, target_coeff=b, intercept=c)
    return laws_lib.coefficient_vector(pre, acc)


def theta_from_laws(pretraining_law, acceptance_law, scales: PlaneScales) -> jnp.ndarray:
    pre_theta = pretraining_fit.to_theta(pretraining_law)
    a, b, c = (jnp.asarray(getattr(acceptance_law, f)) for f in laws_lib.ACCEPTANCE_FIELDS)
    plane = jnp.stack([a * scales.draft_std, b * scales.target_std,
                       c + a * scales.draft_mean + b * scales.target_mean])
    return jnp.concatenate([pre_theta, plane.astype(pre_theta.dtype)])


def _predicted_acceptance(theta, rows: AcceptanceRows, scales: PlaneScales):
    log_loss = lambda n, d: pretraining_fit.predicted_log_loss(theta[:5], jnp.log(n), jnp.log(d))
    draft_ppl = jnp.exp(jnp.exp(log_loss(rows.draft_params, rows.draft_tokens)))
    target_ppl = jnp.exp(jnp.exp(log_loss(rows.target_params, rows.target_tokens)))
    return (theta[5] * (draft_ppl - scales.draft_mean) / scales.draft_std
            + theta[6] * (target_ppl - scales.target_mean) / scales.target_std + theta[7])


def _loss_residuals(theta, points: PerplexityPoints):
    predicted = pretraining_fit.predicted_log_loss(theta[:5], jnp.log(points.params),
                                                   jnp.log(points.tokens))
    return jnp.log(jnp.log(points.perplexity)) - predicted


def joint_objective(theta, rows, points, scales, row_weight, point_weight):
    """l(theta), the profiled log-likelihood of acceptances and losses (module doc)."""
    residual = rows.acceptance - _predicted_acceptance(theta, rows, scales)
    # Weights are normalised to mean 1, so their sum is the row count (a
    # bootstrap's counts keep that sum too).
    acceptance_term = concentrated_nll(jnp.sum(row_weight * residual**2), jnp.sum(row_weight))
    loss_residual = _loss_residuals(theta, points)
    loss_term = concentrated_nll(jnp.sum(point_weight * loss_residual**2), jnp.sum(point_weight))
    return acceptance_term + loss_term


def _free_mask(fit_target_coeff: bool, dtype):
    return jnp.asarray([1, 1, 1, 1, 1, 1, int(fit_target_coeff), 1], dtype)


@functools.partial(jax.jit, static_argnames=("fit_target_coeff", "max_steps"))
def refit(theta0, rows, points, scales, row_weight, point_weight, *,
          fit_target_coeff: bool = True, max_steps: int = 500):
    """Minimise l from theta0; coordinates outside the free mask stay at theta0."""
    free = _free_mask(fit_target_coeff, theta0.dtype)
    objective = lambda t: joint_objective(free * t + (1 - free) * theta0, rows, points, scales,
                                          row_weight, point_weight)
    solution = minimize(objective, theta0, max_steps=max_steps)
    return free * solution.params + (1 - free) * theta0, solution


def fit_joint(rows: AcceptanceRows, points: PerplexityPoints, *, start=None,
              fit_target_coeff: bool | None = None, max_steps: int = 500) -> JointFit:
    """Fit both laws end to end (module doc).

    Args:
      rows, points: from :func:`sdsl_jax.fitting.data.acceptance_rows` and
        :func:`~sdsl_jax.fitting.data.perplexity_points`.
      start: optional (PretrainingLaw, AcceptanceLaw) to start from; by
        default the separate Huber and plane fits.
      fit_target_coeff: fit B, the plane's target coefficient. By default
        only when the rows span more than one target perplexity; with one
        target B cannot be told apart from the intercept and is held at 0.
    """
    if fit_target_coeff is None:
        fit_target_coeff = bool(jnp.ptp(rows.target_perplexity) > 0)
    scales = plane_scales(rows)
    if start is None:
        pre = pretraining_fit.fit_pretraining_law(points.params, points.tokens,
                                                  jnp.log(points.perplexity)).law
        acc = fit_acceptance_law(rows).law
    else:
        pre, acc = start
    theta0 = theta_from_laws(pre, acc, scales)
    if not fit_target_coeff:
        theta0 = theta0.at[6].set(0.0)
    theta, solution = refit(theta0, rows, points, scales, rows.weight, jnp.ones_like(points.params),
                            fit_target_coeff=fit_target_coeff, max_steps=max_steps)
    return _summarise(theta, solution, rows, points, scales, fit_target_coeff)


@functools.partial(jax.jit, static_argnums=5)
def _summarise(theta, solution, rows, points, scales, fit_target_coeff):
    free = (True,) * 6 + (fit_target_coeff, True)
    objective = lambda t: joint_objective(t, rows, points, scales, rows.weight,
                                          jnp.ones_like(points.params))
    n = rows.acceptance.shape[0] + points.params.shape[0]
    covariance, identifiable = delta_method_covariance(
        objective, theta, lambda t: natural_coefficients(t, scales), free, n)
    coeffs = natural_coefficients(theta, scales)
    pre, acc = laws_lib.laws_from_vector(coeffs)
    predicted = _predicted_acceptance(theta, rows, scales)
    residuals = rows.acceptance - predicted
    sst = jnp.sum((rows.acceptance - jnp.mean(rows.acceptance)) ** 2)
    loss_res = _loss_residuals(theta, points)
    losses = jnp.log(points.perplexity)
    loss_fit = jnp.exp(jnp.log(losses) - loss_res)
    eps = jnp.finfo(theta.dtype).eps
    return JointFit(
        laws=laws_lib.FittedLaws(pretraining_law=pre, acceptance_law=acc, covariance=covariance),
        theta=theta,
        acceptance_r2=1 - jnp.sum(residuals**2) / sst,
        acceptance_residuals=residuals,
        loss_r2=1 - jnp.sum((losses - loss_fit) ** 2) / jnp.sum((losses - jnp.mean(losses)) ** 2),
        loss_residuals=loss_res,
        objective=solution.value,
        converged=solution.grad_norm <= 1e4 * eps * jnp.maximum(jnp.abs(solution.value), 1.0),
        identifiable=identifiable)


def bootstrap_joint(fit: JointFit, rows: AcceptanceRows, points: PerplexityPoints, key, *,
                    num_resamples: int = 1000, fit_target_coeff: bool | None = None,
                    max_steps: int = 200, batch_size: int = 100) -> jnp.ndarray:
    """(num_resamples, 8) coefficients refitted on resampled measurements.

    Rows and loss points are resampled with replacement (each resample is a
    vector of draw counts used as weights), and every resample is refitted
    from the point estimate: warm starts converge in a few dozen L-BFGS steps.
    Resamples run ``batch_size`` at a time under vmap (lax.map over batches
    bounds the memory: each batch holds batch_size x rows weights).
    """
    from sdsl_jax.fitting.uncertainty import resample_weights

    if fit_target_coeff is None:
        fit_target_coeff = bool(fit.laws.acceptance_law.target_coeff != 0)
    scales = plane_scales(rows)
    row_key, point_key = jax.random.split(key)
    dtype = fit.theta.dtype
    row_counts = resample_weights(row_key, rows.acceptance.shape[0], num_resamples, dtype)
    point_counts = resample_weights(point_key, points.params.shape[0], num_resamples, dtype)
    return _bootstrap(fit.theta, rows, points, scales, row_counts, point_counts,
                      fit_target_coeff=fit_target_coeff, max_steps=max_steps,
                      batch_size=min(batch_size, num_resamples))


@functools.partial(jax.jit, static_argnames=("fit_target_coeff", "max_steps", "batch_size"))
def _bootstrap(theta, rows, points, scales, row_counts, point_counts, *, fit_target_coeff,
               max_steps, batch_size):
    def one(counts):
        row_count, point_count = counts
        solved, _ = refit(theta, rows, points, scales, rows.weight * row_count, point_count,
                          fit_target_coeff=fit_target_coeff, max_steps=max_steps)
        return natural_coefficients(solved, scales)

    return jax.lax.map(one, (row_counts, point_counts), batch_size=batch_size)
