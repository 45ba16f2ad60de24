"""Uncertainty of fitted coefficients, and of the N* they imply.

Two routes, side by side so each can check the other:

* the delta method: the covariance of the coefficients is the inverse
  Hessian of the fit's negative log-likelihood (JAX computes it exactly),
  mapped to natural coefficients through the Jacobian of the coordinate
  change; an interval on log N* follows from the gradient of log N* with
  respect to the coefficients, by forward-mode autodiff through the planner
  (its implicit-function derivative; see :func:`draft_size_interval` for
  why not differences). Cheap; accurate when the likelihood is close to
  quadratic over the interval.
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
from sdsl_jax.planning import inputs
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
    inverse, identifiable = corrected_inverse_hessian(hessians, sizes)
    cov_theta = jnp.zeros((theta.size, theta.size), theta.dtype).at[np.ix_(index, index)].set(inverse)
    jacobian = jax.jacobian(to_natural)(theta)
    return jacobian @ cov_theta @ jacobian.T, identifiable


def corrected_inverse_hessian(hessians, sizes):
    """(covariance, identifiable) from the blocks' Hessians: :func:`delta_method_covariance`'s core.

    ``hessians``: each block's Hessian (p, p) over the free coordinates;
    ``sizes``: the blocks' observation counts. Each block's Hessian is scaled
    by (n_b - p_b) / n_b, p_b = tr(H^-1 H_b), and the sum inverted. For a
    caller that already has the Hessians (the end-to-end fit, whose
    cluster-robust covariance needs the same ones).
    """
    inverse, identifiable = _inverse(sum(hessians))
    corrected = 0
    for hessian, size in zip(hessians, sizes):
        dof = jnp.trace(inverse @ hessian)
        corrected = corrected + hessian * jnp.maximum(size - dof, 1.0) / size
    inverse, _ = _inverse(corrected)
    return inverse, identifiable


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
    N* exp(+- q sigma) with sigma^2 = g' Sigma g, g the gradient of log N*
    with respect to the eight coefficients (:func:`_log_n_star_gradient`),
    and q the normal quantile, or Student t's with ``laws.covariance_df``
    degrees of freedom where the laws carry them (a cluster-robust
    covariance from few models). interval="bootstrap" needs
    ``laws.samples``: the planner runs on every resampled pair of laws
    (lax.map, in chunks of SAMPLES_CHUNK) and the interval is the
    equal-tailed percentile range of N*. ``method`` is the planner's
    ("bracket" or "gradient"); other keyword arguments go to the planner too.

    The gradient is forward-mode autodiff (jax.jacfwd over the coefficient
    vector) through the planner, whose derivative is the implicit function
    theorem's at the solution, so it is as accurate as the solution itself
    in either dtype. Central differences at a fixed relative step of 1e-5,
    used before, divide the solver's float32 rounding by the step: measured
    on the six reference configurations of tests/planning/test_flop.py with
    a joint fit's covariance (synthetic set, seed 0, 12 x 12 models), the
    float32 interval ends were up to 2.9% off the float64 ones (a
    target-coefficient gradient of 0); a step scaled to the dtype
    (eps^(1/3), 4.9e-3) brings that to 2e-5, autodiff to 2e-6 (gradients
    within 1e-4 of float64's). Autodiff also costs less: one compiled
    program gives the plan and its Jacobian, 7.5 s of CPU to compile and
    run the first call in float32 (7.8 s in float64), against 9.9 s (9.8 s)
    for the planner and the 16-law batched planner the differences need;
    later calls take 5-10 ms either way. The delta interval's ``plan`` comes
    from that program too: it agrees with :func:`optimal_draft_size`'s to
    rounding (1e-15 relative in float64), not bit for bit.
    """
    plan_kwargs = dict(plan_kwargs, method=method)
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    _validate.check_open_unit("confidence", confidence)
    if interval == "delta":
        if laws.covariance is None:
            raise ValueError("interval='delta' needs laws with a covariance (fit them, or use 'bootstrap')")
        # The planner's input checks, eagerly: under the jit below they would
        # see tracers and stand aside.
        given = inputs.planner_inputs(dict(target_params=target_params, draft_tokens=draft_tokens,
                                           target_tokens=target_tokens),
                                      laws.pretraining_law, laws.acceptance_law)
        plan, grads = _log_n_star_gradient(laws.coefficients.astype(given.dtype), *given.values,
                                           tuple(sorted(plan_kwargs.items())))
        sigma = jnp.sqrt(jnp.clip(jnp.einsum("...i,ij,...j->...", grads, laws.covariance, grads), 0.0))
        level = 0.5 + confidence / 2
        quantile = (ndtri(level) if laws.covariance_df is None
                    else student_t_quantile(level, laws.covariance_df))
        low = jnp.where(plan.pays, plan.draft_params * jnp.exp(-quantile * sigma), 0.0)
        high = jnp.where(plan.pays, plan.draft_params * jnp.exp(quantile * sigma), 0.0)
        return DraftSizeInterval(plan=plan, low=low, high=high,
                                 pays_fraction=plan.pays.astype(low.dtype))
    if laws.samples is None:
        raise ValueError("interval='bootstrap' needs laws with bootstrap samples (fit with a bootstrap)")
    plan = planner.optimal_draft_size(target_params, draft_tokens, target_tokens,
                                      pretraining_law=laws.pretraining_law,
                                      acceptance_law=laws.acceptance_law, **plan_kwargs)
    draws, pays = _plans_of_samples(laws.samples, plan.target_perplexity, target_params, draft_tokens,
                                    target_tokens, plan_kwargs)
    low, high = percentile_intervals(draws, confidence)
    return DraftSizeInterval(plan=plan, low=low, high=high,
                             pays_fraction=jnp.mean(pays.astype(low.dtype), axis=0))


SAMPLES_CHUNK = 50  # resampled laws planned per compiled call


@functools.partial(jax.jit, static_argnums=4)
def _log_n_star_gradient(coeffs, target_params, draft_tokens, target_tokens, plan_items):
    """(plan, (..., 8) gradient of log N*): the planner at the coefficient vector
    ``coeffs`` and jax.jacfwd of its log N* with respect to it, in one compiled
    call (``plan_items``: the planner's keyword arguments as sorted pairs).

    Forward mode: eight tangents against the configurations' many outputs,
    batched under vmap while the solve itself runs once. Where no draft pays
    the gradient is 0 (log N* is read as log 1 there), and so is the interval.
    """
    def log_n_star(vector):
        pre, acc = laws_lib.laws_from_vector(vector)
        plan = planner.optimal_draft_size(target_params, draft_tokens, target_tokens,
                                          pretraining_law=pre, acceptance_law=acc, **dict(plan_items))
        return jnp.log(jnp.where(plan.pays, plan.draft_params, 1.0)), plan

    grads, plan = jax.jacfwd(log_n_star, has_aux=True)(coeffs)
    return plan, grads


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
