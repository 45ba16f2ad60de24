"""Which laws a figure draws, and the uncertainty bands they carry.

Every figure takes its laws as a :class:`~sdsl_jax.fitting.laws.FittedLaws`:
a published preset is one with no covariance and no samples, so it draws no
band; a laws file from ``sdsl fit`` carries a delta-method covariance and,
usually, bootstrap samples, and the figures turn them into bands:

* bootstrap: the quantity is evaluated under every resampled coefficient
  vector (vmapped) and the band is the equal-tailed percentile range;
* delta: value +- z sigma with sigma^2 = g' Sigma g, g the gradient of the
  quantity with respect to the eight coefficients (forward mode); for a
  positive quantity the band is symmetric in its logarithm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from sdsl_jax import acceptance_law as acceptance_lib
from sdsl_jax import planner
from sdsl_jax import pretraining_law as pretraining
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.fitting.uncertainty import draft_size_interval

INTERVALS = ("auto", "bootstrap", "delta", "none")
# Configurations are padded to a power of two (at least this many) so that
# figures with a few targets, a latency table and a grid of draft sizes reuse
# a handful of compiled planners instead of compiling one per count.
_MIN_BUCKET = 16
# Jitted so a bootstrap's lax.map over the planner compiles once per shape,
# not on every call (eagerly, the mapped closure is traced and compiled anew).
_interval = jax.jit(draft_size_interval, static_argnames=("method", "confidence", "solver"))


def preset_laws(pretraining_name: str = pretraining.DEFAULT_PRESET,
                acceptance_name: str = acceptance_lib.DEFAULT_PRESET) -> laws_lib.FittedLaws:
    """Published laws as FittedLaws without uncertainty (so no bands are drawn)."""
    return laws_lib.FittedLaws(pretraining_law=pretraining.pretraining_preset(pretraining_name),
                               acceptance_law=acceptance_lib.acceptance_preset(acceptance_name))


def finite_samples(laws: laws_lib.FittedLaws) -> laws_lib.FittedLaws:
    """The same laws with any non-finite bootstrap resample (a failed refit) dropped."""
    if laws.samples is None:
        return laws
    samples = np.asarray(laws.samples)
    keep = np.all(np.isfinite(samples), axis=1)
    if keep.all():
        return laws
    return laws.replace(samples=jnp.asarray(samples[keep]) if keep.sum() >= 2 else None)


def interval_method(laws: laws_lib.FittedLaws, requested: str = "auto") -> str | None:
    """The band method to use: None when the laws carry nothing to draw one from.

    "auto" takes the bootstrap when there are samples, else the delta method
    when there is a covariance, else no band.

    Raises:
      ValueError: a method was asked for that the laws cannot support.
    """
    if requested not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {requested!r}")
    if requested == "none":
        return None
    if requested == "auto":
        if laws.samples is not None:
            return "bootstrap"
        return "delta" if laws.covariance is not None else None
    if requested == "bootstrap" and laws.samples is None:
        raise ValueError("--interval bootstrap needs a laws file with bootstrap samples "
                         "(fit with `sdsl fit --bootstrap N`)")
    if requested == "delta" and laws.covariance is None:
        raise ValueError("--interval delta needs a laws file with a covariance (from `sdsl fit`)")
    return requested


def band(quantity, laws: laws_lib.FittedLaws, method: str | None, confidence: float = 0.95,
         *, log: bool = False):
    """(low, high) numpy arrays bounding ``quantity(coefficient_vector)``, or None.

    Args:
      quantity: a JAX function of the (8,) coefficient vector returning an array.
      laws: the laws whose covariance or samples describe the uncertainty.
      method: "bootstrap", "delta" or None (no band).
      confidence: the band's level.
      log: for a positive quantity: the delta band is symmetric in its log.
    """
    if method is None:
        return None
    if method == "bootstrap":
        values = np.asarray(jax.vmap(quantity)(laws.samples), np.float64)
        tail = 100 * (1 - confidence) / 2
        return (np.nanpercentile(values, tail, axis=0),
                np.nanpercentile(values, 100 - tail, axis=0))
    fn = (lambda v: jnp.log(quantity(v))) if log else quantity
    coefficients = laws.coefficients
    center = fn(coefficients)
    gradient = jax.jacfwd(fn)(coefficients)
    sigma = jnp.sqrt(jnp.clip(jnp.einsum("...i,ij,...j->...", gradient, laws.covariance, gradient), 0.0))
    z = float(ndtri(0.5 + confidence / 2))
    low, high = center - z * sigma, center + z * sigma
    if log:
        low, high = jnp.exp(low), jnp.exp(high)
    return np.asarray(low, np.float64), np.asarray(high, np.float64)


def band_label(method: str | None, laws: laws_lib.FittedLaws, confidence: float) -> str:
    """How a band was made, for a legend: '95% band (bootstrap, 200 resamples)'."""
    if method == "bootstrap":
        return f"{confidence:.0%} band (bootstrap, {laws.samples.shape[0]} resamples)"
    return f"{confidence:.0%} band (delta method)"


def plan_draft_sizes(laws: laws_lib.FittedLaws, target_params, draft_tokens, target_tokens, *,
                     method: str | None = None, confidence: float = 0.95, solver: str = "bracket"):
    """(plan, low, high) for 1-D arrays of configurations, as numpy.

    ``plan`` is the planner's :class:`~sdsl_jax.planner.DraftPlan` with numpy
    leaves; ``low`` and ``high`` bound N* by ``method`` ("bootstrap",
    "delta", via :func:`~sdsl_jax.fitting.uncertainty.draft_size_interval`),
    or are None when ``method`` is None.
    """
    arrays = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64))
                                   for v in (target_params, draft_tokens, target_tokens)))
    count = arrays[0].size
    size = max(_MIN_BUCKET, 1 << (count - 1).bit_length())
    dtype = jnp.result_type(float)
    # Padding repeats the last configuration: a valid input whose answer is dropped.
    padded = [jnp.asarray(np.resize(a.ravel(), size), dtype) for a in arrays]
    trim = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a)[:count], tree)
    if method is None:
        plan = planner.optimal_draft_size(*padded, pretraining_law=laws.pretraining_law,
                                          acceptance_law=laws.acceptance_law, method=solver)
        return trim(plan), None, None
    result = _interval(laws, *padded, method=method, confidence=confidence, solver=solver)
    return trim(result.plan), np.asarray(result.low)[:count], np.asarray(result.high)[:count]
