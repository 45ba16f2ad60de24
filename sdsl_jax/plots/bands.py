"""Which laws a figure draws, and the uncertainty bands they carry.

Every figure takes its laws as a :class:`~sdsl_jax.fitting.laws.FittedLaws`:
a published preset is one with no covariance and no samples, so it draws no
band; a laws file from ``sdsl fit`` carries a delta-method covariance and,
usually, bootstrap samples, and the figures turn them into bands:

* bootstrap: the quantity is evaluated under every resampled coefficient
  vector (vmapped) and the band is the equal-tailed percentile range;
* delta: value +- q sigma with sigma^2 = g' Sigma g, g the gradient of the
  quantity with respect to the eight coefficients (forward mode); for a
  positive quantity the band is symmetric in its logarithm. q is Student t's
  quantile with the laws' ``covariance_df`` for a covariance clustered by
  model, the normal one for an iid covariance.

Which one a figure draws by default: the one whose coverage was checked
(benchmarks/bench_coverage.py). For laws with a covariance clustered by
model that is the delta band; the bootstrap over models is conservative
(it counts each measurement's own noise with both of its models), so it is
drawn only when asked for. Older laws files (an iid covariance, bootstrap
over rows) keep the bootstrap band, the better of their two.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from sdsl_jax.common.buckets import bucket
from sdsl_jax.common.student_t import student_t_quantile
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.planning import flop as planner
from sdsl_jax.laws import pretraining
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.fitting.uncertainty import draft_size_interval, percentile_intervals

INTERVALS = ("auto", "bootstrap", "delta", "none")
# Configurations are padded to a power of two (at least this many), and the
# laws' coefficients are passed per configuration, so that figures with a few
# targets, a latency table, a grid of draft sizes and a bootstrap over resampled
# laws all reuse a handful of compiled planners instead of compiling one per count.
_MIN_BUCKET = 16
# Jitted so the delta method's forward-mode pass through the planner compiles
# once per shape, not on every call.
_interval = jax.jit(draft_size_interval, static_argnames=("interval", "confidence", "method"))


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
    """The band's interval kind, "bootstrap" or "delta": None when the laws carry
    nothing to draw one from.

    "auto" takes the delta method for a covariance clustered by model (the
    interval that covers: module docstring), else the bootstrap when there
    are samples, else the delta method when there is a covariance, else no
    band.

    Raises:
      ValueError: an interval was asked for that the laws cannot support.
    """
    if requested not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {requested!r}")
    if requested == "none":
        return None
    if requested == "auto":
        return laws_lib.default_interval(laws)
    if requested == "bootstrap" and laws.samples is None:
        raise ValueError("--interval bootstrap needs a laws file with bootstrap samples "
                         "(fit with `sdsl fit --bootstrap N`)")
    if requested == "delta" and laws.covariance is None:
        raise ValueError("--interval delta needs a laws file with a covariance (from `sdsl fit`)")
    return requested


def band(quantity, laws: laws_lib.FittedLaws, interval: str | None, confidence: float = 0.95,
         *, log: bool = False):
    """(low, high) numpy arrays bounding ``quantity(coefficient_vector)``, or None.

    Args:
      quantity: a JAX function of the (8,) coefficient vector returning an array.
      laws: the laws whose covariance or samples describe the uncertainty.
      interval: "bootstrap", "delta" or None (no band), as :func:`interval_method` gives it.
      confidence: the band's level.
      log: for a positive quantity: the delta band is symmetric in its log.
    """
    if interval is None:
        return None
    if interval == "bootstrap":
        values = np.asarray(jax.vmap(quantity)(laws.samples), np.float64)
        tail = 100 * (1 - confidence) / 2
        return (np.nanpercentile(values, tail, axis=0),
                np.nanpercentile(values, 100 - tail, axis=0))
    fn = (lambda v: jnp.log(quantity(v))) if log else quantity
    coefficients = laws.coefficients
    center = fn(coefficients)
    gradient = jax.jacfwd(fn)(coefficients)
    sigma = jnp.sqrt(jnp.clip(jnp.einsum("...i,ij,...j->...", gradient, laws.covariance, gradient), 0.0))
    level = 0.5 + confidence / 2
    df = laws.covariance_df
    z = float(ndtri(level)) if df is None else float(student_t_quantile(level, df))
    low, high = center - z * sigma, center + z * sigma
    if log:
        low, high = jnp.exp(low), jnp.exp(high)
    return np.asarray(low, np.float64), np.asarray(high, np.float64)


def band_label(interval: str | None, laws: laws_lib.FittedLaws, confidence: float) -> str:
    """How a band was made, for a legend: '95% band (bootstrap, 200 resamples)'."""
    if interval == "bootstrap":
        return f"{confidence:.0%} band (bootstrap, {laws.samples.shape[0]} resamples)"
    if laws.covariance_df is not None:
        return (f"{confidence:.0%} band (delta method, clustered by model, "
                f"t with {float(laws.covariance_df):g} df)")
    return f"{confidence:.0%} band (delta method)"


def _plan_per_configuration(vectors, target_params, draft_tokens, target_tokens, method):
    """The planner for configuration i under coefficient vector i; numpy leaves of length n."""
    count = target_params.size
    size = bucket(count, _MIN_BUCKET)
    dtype = jnp.result_type(float)
    # Padding repeats the last configuration: a valid input whose answer is dropped.
    pad = lambda a: jnp.asarray(np.resize(a, (size,) + a.shape[1:]), dtype)
    pre, acc = laws_lib.laws_from_vector(pad(vectors))
    plan = planner.optimal_draft_size(pad(target_params), pad(draft_tokens), pad(target_tokens),
                                      pretraining_law=pre, acceptance_law=acc, method=method)
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[:count], plan)


def plan_draft_sizes(laws: laws_lib.FittedLaws, target_params, draft_tokens, target_tokens, *,
                     interval: str | None = None, confidence: float = 0.95, method: str = "bracket"):
    """(plan, low, high) for 1-D arrays of configurations, as numpy.

    ``plan`` is the planner's :class:`~sdsl_jax.planning.flop.DraftPlan` with numpy
    leaves (``method``: the planner's, "bracket" or "gradient"). ``low`` and
    ``high`` bound N* (None when ``interval`` is None):

    * "bootstrap": the equal-tailed percentiles of N* over the resampled laws
      (0 counted where a resample finds no paying draft), as
      :func:`~sdsl_jax.fitting.uncertainty.draft_size_interval` computes them;
      here every (resample, configuration) pair is one row of a single planner
      call, which reuses the compiled planner;
    * "delta": :func:`~sdsl_jax.fitting.uncertainty.draft_size_interval`.
    """
    arrays = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64)).ravel()
                                   for v in (target_params, draft_tokens, target_tokens)))
    count = arrays[0].size
    point = np.broadcast_to(np.asarray(laws.coefficients, np.float64), (count, 8))
    plan = _plan_per_configuration(point, *arrays, method)
    if interval is None:
        return plan, None, None
    if interval == "bootstrap":
        samples = np.asarray(laws.samples, np.float64)
        draws = _plan_per_configuration(np.repeat(samples, count, axis=0),
                                        *(np.tile(a, len(samples)) for a in arrays), method)
        n_star = draws.draft_params.reshape(len(samples), count)
        low, high = percentile_intervals(n_star, confidence)
        return plan, np.asarray(low, np.float64), np.asarray(high, np.float64)
    size = bucket(count, _MIN_BUCKET)
    padded = [jnp.asarray(np.resize(a, size), jnp.result_type(float)) for a in arrays]
    result = _interval(laws, *padded, interval=interval, confidence=confidence, method=method)
    return plan, np.asarray(result.low)[:count], np.asarray(result.high)[:count]
