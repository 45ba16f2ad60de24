"""Uncertainty of fitted coefficients, and of the N* they imply.

Two routes, side by side so each can check the other:

* the delta method: the covariance of the coefficients is the inverse
  Hessian of the fit's negative log-likelihood (JAX computes it exactly),
  mapped to natural coefficients through the Jacobian of the coordinate
  change; an interval on log N* follows from the gradient of log N* with
  respect to the coefficients (central differences through the batched
  planner; they agree with autodiff through the planner's implicit
  derivative to 1e-8 and cost no second compilation). Cheap; accurate when
  the likelihood is close to quadratic over the interval.
* the bootstrap: resample the measurements with replacement (as integer
  weights), refit each resample from the point estimate (vmapped Newton
  steps, L-BFGS for the few they leave short), and read percentiles, of the
  coefficients and of N* through the batched planner. Honest when the
  likelihood is skewed or the model is misspecified.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from sdsl_jax.common import validation as _validate
from sdsl_jax.common.student_t import student_t_quantile
from sdsl_jax.planning import flop as planner
from sdsl_jax.fitting import laws as laws_lib

INTERVALS = ("delta", "bootstrap")


def _inverse(matrix):
    """(pseudo-inverse, full rank?) of a symmetric matrix, by its eigenvalues.

    Numerical rank as numpy.linalg.matrix_rank judges it: an eigenvalue below
    p eps of the largest is indistinguishable from 0. (Not pinv's default
    cut-off, 10 p eps, which in float32 discards directions the data do
    determine: a condition number of 1e5 is common in these fits.)
    """
    eigenvalues, vectors = jnp.linalg.eigh(matrix)
    cutoff = matrix.shape[0] * jnp.finfo(matrix.dtype).eps * jnp.abs(eigenvalues[-1])
    kept = eigenvalues > cutoff
    inverse_values = jnp.where(kept, 1.0 / jnp.where(kept, eigenvalues, 1.0), 0.0)
    return (vectors * inverse_values) @ vectors.T, eigenvalues[0] > cutoff


def delta_method_covariance(objective, theta, to_natural, free, n):
    """(covariance of to_natural(theta), identifiable) from the objective's Hessian.

    ``objective`` is a negative log-likelihood with the noise variance
    profiled out, so its inverse Hessian is the covariance of theta, up to
    the degrees-of-freedom correction: the profiled variance is SSR / n, and
    the unbiased one SSR / (n - p). So the Hessian is scaled by (n - p) / n
    (with it, a linear fit reproduces s^2 (X'WX)^-1 exactly).

    The likelihood may come in blocks with a variance each (the end-to-end
    fit's acceptances and losses): pass ``n`` as a sequence of the blocks'
    observation counts, and ``objective`` as an equal-length sequence of the
    blocks' negative log-likelihoods (summing to the whole), or as one
    function returning them as a vector (one Hessian pass for all blocks,
    half the graph to compile when the blocks share their work). Each block's Hessian H_b is then scaled by
    (n_b - p_b) / n_b, where p_b = tr(H^-1 H_b) is the share of the p
    coefficients that block determines (its effective degrees of freedom;
    the shares add up to p). With a single block this is the correction above.

    Coordinates not in ``free`` were held fixed and get zero variance. Where
    the Hessian is singular (``identifiable`` False) the covariance is its
    pseudo-inverse's, finite but meaningless along the undetermined directions.
    """
    sizes = tuple(n) if isinstance(n, (tuple, list)) else (n,)
    index = np.flatnonzero(np.asarray(free))
    if isinstance(objective, (tuple, list)):
        if len(objective) != len(sizes):
            raise ValueError(f"{len(objective)} objective blocks but {len(sizes)} observation counts")
        hessians = [jax.hessian(block)(theta)[np.ix_(index, index)] for block in objective]
    elif isinstance(n, (tuple, list)):
        stacked = jax.hessian(objective)(theta)  # (blocks, p, p)
        if stacked.shape[0] != len(sizes):
            raise ValueError(f"{stacked.shape[0]} objective blocks but {len(sizes)} observation counts")
        hessians = [stacked[b][np.ix_(index, index)] for b in range(len(sizes))]
    else:
        hessians = [jax.hessian(objective)(theta)[np.ix_(index, index)]]
    inverse, identifiable = _inverse(sum(hessians))
    corrected = 0
    for hessian, size in zip(hessians, sizes):
        dof = jnp.trace(inverse @ hessian)
        corrected = corrected + hessian * jnp.maximum(size - dof, 1.0) / size
    inverse, _ = _inverse(corrected)
    cov_theta = jnp.zeros((theta.size, theta.size), theta.dtype).at[np.ix_(index, index)].set(inverse)
    jacobian = jax.jacobian(to_natural)(theta)
    return jacobian @ cov_theta @ jacobian.T, identifiable


@jax.jit  # a dozen small ops: one compile rather than one per op
def normal_intervals(estimate, covariance, confidence=0.95, log_scale=None, df=None):
    """estimate +- z sigma from a covariance matrix, per coefficient.

    ``df``: degrees of freedom of a Student t quantile to use instead of the
    normal z (a cluster-robust covariance estimated from few models, see
    :mod:`sdsl_jax.fitting.clusters`); None (the default) or inf gives z.

    Where ``log_scale`` (a boolean per coefficient) is set, the interval is
    symmetric in log(coefficient) instead, estimate * exp(+- z sigma / estimate):
    for the pre-training law's E, A and B, which the fit estimates as logs and
    whose sampling distributions are skewed, this is the better interval and
    never crosses zero.
    """
    z = ndtri(0.5 + confidence / 2)
    if df is not None:
        z = student_t_quantile(0.5 + confidence / 2, df)
    sigma = jnp.sqrt(jnp.clip(jnp.diagonal(covariance), 0.0))
    low, high = estimate - z * sigma, estimate + z * sigma
    if log_scale is None:
        return low, high
    log_scale = jnp.asarray(log_scale) & (estimate > 0)
    rel = sigma / jnp.where(log_scale, estimate, 1.0)
    return (jnp.where(log_scale, estimate * jnp.exp(-z * rel), low),
            jnp.where(log_scale, estimate * jnp.exp(z * rel), high))


def percentile_intervals(samples, confidence=0.95):
    """Equal-tailed percentiles of bootstrap samples along axis 0."""
    tail = 100 * (1 - confidence) / 2
    return (jnp.percentile(samples, tail, axis=0), jnp.percentile(samples, 100 - tail, axis=0))


def resample_weights(key, n, num_resamples, dtype):
    """(num_resamples, n) counts of how often each of n items was drawn (sums to n)."""
    # One small compiled program per size instead of a randint and a vmapped
    # bincount compiled op by op; jnp.float64 and np.dtype("float64") share it.
    return _resample_weights(key, int(n), int(num_resamples), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _resample_weights(key, n, num_resamples, dtype):
    draws = jax.random.randint(key, (num_resamples, n), 0, n)
    return jax.vmap(lambda d: jnp.bincount(d, length=n))(draws).astype(dtype)


@chex.dataclass(frozen=True)
class DraftSizeInterval:
    """N* with an interval that carries the coefficients' uncertainty.

    Attributes:
      plan: the planner's answer at the point estimate of the laws.
      low, high: the interval on N* (0 where no draft pays).
      pays_fraction: for the bootstrap, the share of resampled laws under
        which some draft pays (1.0 for the delta method where it pays).
    """

    plan: planner.DraftPlan
    low: jnp.ndarray
    high: jnp.ndarray
    pays_fraction: jnp.ndarray


def draft_size_interval(laws: laws_lib.FittedLaws, target_params, draft_tokens, target_tokens, *,
                        interval: str = "delta", confidence: float = 0.95,
                        method: str = "bracket", **plan_kwargs) -> DraftSizeInterval:
    """N* for the fitted laws, with an interval from their uncertainty.

    interval="delta" needs ``laws.covariance``: the interval is
    N* exp(+- z sigma) with sigma^2 = g' Sigma g, g the gradient of log N*
    with respect to the eight coefficients (central differences, see
    :func:`_log_n_star_gradient`). interval="bootstrap" needs ``laws.samples``:
    the planner runs on every resampled pair of laws (lax.map, in chunks of
    SAMPLES_CHUNK) and the interval is the equal-tailed percentile range of N*.
    ``method`` is the planner's ("bracket" or "gradient"); other keyword
    arguments go to the planner too.
    """
    plan_kwargs = dict(plan_kwargs, method=method)
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    _validate.check_open_unit("confidence", confidence)
    plan = planner.optimal_draft_size(target_params, draft_tokens, target_tokens,
                                      pretraining_law=laws.pretraining_law,
                                      acceptance_law=laws.acceptance_law, **plan_kwargs)
    if interval == "delta":
        if laws.covariance is None:
            raise ValueError("interval='delta' needs laws with a covariance (fit them, or use 'bootstrap')")
        grads = _log_n_star_gradient(laws.coefficients, plan, target_params, draft_tokens,
                                     target_tokens, plan_kwargs)
        sigma = jnp.sqrt(jnp.clip(jnp.einsum("...i,ij,...j->...", grads, laws.covariance, grads), 0.0))
        z = ndtri(0.5 + confidence / 2)
        low = jnp.where(plan.pays, plan.draft_params * jnp.exp(-z * sigma), 0.0)
        high = jnp.where(plan.pays, plan.draft_params * jnp.exp(z * sigma), 0.0)
        return DraftSizeInterval(plan=plan, low=low, high=high,
                                 pays_fraction=plan.pays.astype(low.dtype))
    if laws.samples is None:
        raise ValueError("interval='bootstrap' needs laws with bootstrap samples (fit with a bootstrap)")
    draws, pays = _plans_of_samples(laws.samples, plan.target_perplexity, target_params, draft_tokens,
                                    target_tokens, plan_kwargs)
    low, high = percentile_intervals(draws, confidence)
    return DraftSizeInterval(plan=plan, low=low, high=high,
                             pays_fraction=jnp.mean(pays.astype(low.dtype), axis=0))


SAMPLES_CHUNK = 50  # resampled laws planned per compiled call
DIFFERENCE_STEP = 1e-5  # relative; about eps^(1/3), where central differences are most accurate


def _log_n_star_gradient(coeffs, plan, target_params, draft_tokens, target_tokens, plan_kwargs):
    """(..., 8) gradient of log N* with respect to the coefficients, by central differences.

    The 16 displaced laws (each coefficient times 1 +- DIFFERENCE_STEP) go
    through the bootstrap's batched planner in one call: forward-mode
    differentiation through the planner gives the same gradient (to about
    1e-8 relative here, the root finder's implicit derivative against the
    difference quotient) but compiles a second, larger copy of the planner,
    10 s or more on a CPU, for one gradient. Where one side's plan does not
    pay (N* at the edge of paying), the one-sided quotient is used.
    """
    scale = jnp.where(coeffs != 0, jnp.abs(coeffs), 1.0)
    steps = DIFFERENCE_STEP * scale
    shifts = jnp.diag(steps)
    vectors = jnp.concatenate([coeffs + shifts, coeffs - shifts])
    draws, pays = _plans_of_samples(vectors, plan.target_perplexity, target_params, draft_tokens,
                                    target_tokens, plan_kwargs)
    log_n = jnp.log(jnp.where(pays, draws, 1.0))
    centre = jnp.log(jnp.where(plan.pays, plan.draft_params, 1.0))
    up, down, up_ok, down_ok = log_n[:8], log_n[8:], pays[:8], pays[8:]
    steps = steps.reshape((8,) + (1,) * centre.ndim)
    grads = jnp.where(up_ok & down_ok, (up - down) / (2 * steps),
                      jnp.where(up_ok, (up - centre) / steps,
                                jnp.where(down_ok, (centre - down) / steps, 0.0)))
    return jnp.moveaxis(grads, 0, -1)


def _plans_of_samples(samples, like, target_params, draft_tokens, target_tokens, plan_kwargs):
    """(N* (r, ...), pays (r, ...)): the planner under each of r resampled laws.

    In chunks of SAMPLES_CHUNK (the last padded with copies of the final
    sample, then trimmed), so that every count of resamples runs one compiled
    function. ``like`` is an array of the configurations' broadcast shape.
    """
    count = samples.shape[0]
    padded = -(-count // SAMPLES_CHUNK) * SAMPLES_CHUNK
    samples = jnp.concatenate([samples, jnp.repeat(samples[-1:], padded - count, axis=0)])
    dtype = jnp.result_type(samples.dtype, like.dtype)
    args = tuple(jnp.broadcast_to(jnp.asarray(v, dtype), like.shape)
                 for v in (target_params, draft_tokens, target_tokens))
    chunks = [_plan_chunk(samples[start:start + SAMPLES_CHUNK], *args, tuple(sorted(plan_kwargs.items())))
              for start in range(0, padded, SAMPLES_CHUNK)]
    draws, pays = (jnp.concatenate(parts)[:count] for parts in zip(*chunks))
    return draws, pays


@functools.partial(jax.jit, static_argnums=4)
def _plan_chunk(samples, target_params, draft_tokens, target_tokens, plan_items):
    def n_star(vector):
        pre, acc = laws_lib.laws_from_vector(vector)
        result = planner.optimal_draft_size(target_params, draft_tokens, target_tokens,
                                            pretraining_law=pre, acceptance_law=acc, **dict(plan_items))
        return result.draft_params, result.pays

    return jax.lax.map(n_star, samples)
