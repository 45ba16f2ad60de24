"""Fitting the pre-training law L(N, D) = E + A / N^a + B / D^b to losses.

The method of Hoffmann et al. (2022, approach 3), as replicated by Besiroglu
et al. (2024): minimise the Huber loss (delta = 1e-3) between log L and the
log of the prediction, written as

    log L_hat = logsumexp(log A - a log N, log B - b log D, log E),

with L-BFGS from a grid of starting points, keeping the best. The
log-sum-exp form keeps all three terms positive and the problem well scaled
whatever the magnitudes of N and D; Huber on log-loss keeps a few outlying
runs from steering the fit; the grid matters because the problem is not
convex and L-BFGS finds the basin it starts in.

Where Hoffmann et al. grid all five coordinates (thousands of starts), the
grid here covers the two exponents only: for fixed (a, b) the law is linear
in (E, A, B), so ordinary least squares gives the best coefficients for each
exponent pair exactly and at once (vmapped 3x3 solves). The Huber objective
ranks those starts and L-BFGS polishes the best few. Same coverage of the
non-convex directions, a thousandth of the optimiser work.

The fit's inputs are loss points (N, D, L). From a measurement set they are
the distinct draft and target models with L = log(perplexity), i.e. the
perplexity measured on the acceptance prompts stands in for the validation
loss, as in the paper's chain.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdsl_jax.common import saved_programs
from sdsl_jax.common import validation as _validate
from sdsl_jax.common.buckets import bucket
from sdsl_jax.laws import pretraining
from sdsl_jax.common.optimize import minimize

HUBER_DELTA = 1e-3

# Exponent pairs to start from; published fits lie in 0.2-0.8 and the grid
# reaches well beyond on both sides.
DEFAULT_EXPONENTS = tuple(float(v) for v in np.round(np.linspace(0.05, 1.5, 16), 4))
DEFAULT_REFINE = 8  # starts polished by L-BFGS


@chex.dataclass(frozen=True)
class PretrainingFit:
    """A fitted pre-training law and its fit quality.

    Attributes:
      law: the fitted PretrainingLaw.
      objective: the summed Huber loss at the optimum.
      r2: 1 - SSR / SST on the loss L (nats), unweighted.
      residuals: log L - log L_hat per point.
      converged: whether L-BFGS stopped on its tolerances from the best
        start, not at its step limit.
    """

    law: pretraining.PretrainingLaw
    objective: jnp.ndarray
    r2: jnp.ndarray
    residuals: jnp.ndarray
    converged: jnp.ndarray


def to_theta(law: pretraining.PretrainingLaw) -> jnp.ndarray:
    """The law in the fit's coordinates (log E, log A, log B, a, b)."""
    return jnp.stack([jnp.log(law.irreducible_loss), jnp.log(law.param_coeff),
                      jnp.log(law.data_coeff), jnp.asarray(law.param_exponent),
                      jnp.asarray(law.data_exponent)])


def from_theta(theta) -> pretraining.PretrainingLaw:
    return pretraining.PretrainingLaw(
        irreducible_loss=jnp.exp(theta[0]), param_coeff=jnp.exp(theta[1]),
        data_coeff=jnp.exp(theta[2]), param_exponent=theta[3], data_exponent=theta[4])


def predicted_log_loss(theta, log_params, log_tokens):
    """log L_hat = log(E + A N^-a + B D^-b) in the fit's coordinates, from log N and log D."""
    model = theta[1] - theta[3] * log_params
    data = theta[2] - theta[4] * log_tokens
    # A three-term log-sum-exp written out: every term is finite, so none of
    # jax.nn.logsumexp's guards for infinities are needed, and the smaller
    # graph compiles faster inside every fit that uses it.
    top = jnp.maximum(jnp.maximum(model, data), theta[0])
    return top + jnp.log(jnp.exp(model - top) + jnp.exp(data - top) + jnp.exp(theta[0] - top))


def huber_objective(theta, log_params, log_tokens, log_loss, weight):
    residual = predicted_log_loss(theta, log_params, log_tokens) - log_loss
    return jnp.sum(weight * optax.losses.huber_loss(residual, delta=HUBER_DELTA))


def profiled_starts(log_params, log_tokens, losses, weight, exponents):
    """A start per exponent pair: (a, b) from the grid, (E, A, B) by least squares.

    Returns (starts (k, 5) in the fit's coordinates, Huber objective of each).
    """
    a, b = (v.ravel() for v in jnp.meshgrid(exponents, exponents, indexing="ij"))

    def one(a, b):
        design = jnp.stack([jnp.ones_like(log_params), jnp.exp(-a * log_params),
                            jnp.exp(-b * log_tokens)], axis=1)
        # Scale columns to unit size so the normal equations stay well conditioned
        # when N**-a is 1e-4 and 1 sits beside it.
        scale = jnp.sqrt(jnp.sum(weight[:, None] * design**2, axis=0))
        scaled = design / scale
        gram = scaled.T @ (weight[:, None] * scaled)
        coeffs = jnp.linalg.solve(gram + 1e-12 * jnp.eye(3, dtype=gram.dtype),
                                  scaled.T @ (weight * losses)) / scale
        # A negative coefficient has no log; a small positive one keeps its
        # term in play for L-BFGS to grow if the data want it.
        floor = 1e-3 * jnp.sum(weight * losses) / jnp.sum(weight)
        coeffs = jnp.maximum(coeffs, floor)
        return jnp.stack([jnp.log(coeffs[0]), jnp.log(coeffs[1]), jnp.log(coeffs[2]), a, b])

    starts = jax.vmap(one)(a, b)
    values = jax.vmap(huber_objective, in_axes=(0, None, None, None, None))(
        starts, log_params, log_tokens, jnp.log(losses), weight)
    return starts, jnp.where(jnp.isfinite(values), values, jnp.inf)


def _lowest(values, k):
    """Indices of the k lowest values, lowest first, ties to the earlier index: a stable
    argsort's first k.

    By ranks (n^2 comparisons, nothing for the few hundred starts here)
    rather than a sort: jaxlib 0.10 cannot serialize a sort's comparator, so
    a program with one could not be saved (common/saved_programs).
    """
    index = jnp.arange(values.shape[0])
    earlier = (values[None, :] < values[:, None]) | ((values[None, :] == values[:, None])
                                                     & (index[None, :] < index[:, None]))
    rank = jnp.sum(earlier, axis=1)
    return jnp.argmax(rank[None, :] == jnp.arange(k)[:, None], axis=1)


@functools.partial(jax.jit, static_argnames=("max_steps", "refine"))
def _fit(num_params, tokens, losses, weight, starts, exponents, max_steps, refine):
    log_params, log_tokens, log_loss = jnp.log(num_params), jnp.log(tokens), jnp.log(losses)
    if starts is None:
        grid, values = profiled_starts(log_params, log_tokens, losses, weight, exponents)
        starts = grid[_lowest(values, refine)]
    # L-BFGS works on centred log sizes: log A - a log N with log N near 20 is
    # two large numbers that cancel, and the search would crawl along that
    # valley; log A' - a (log N - centre) is the same law, well conditioned.
    centre = jnp.stack([0.5 * (jnp.min(log_params) + jnp.max(log_params)),
                        0.5 * (jnp.min(log_tokens) + jnp.max(log_tokens))])
    shift = lambda theta, sign: theta.at[1].add(sign * theta[3] * centre[0]).at[2].add(
        sign * theta[4] * centre[1])
    objective = lambda t: huber_objective(t, log_params - centre[0], log_tokens - centre[1],
                                          log_loss, weight)
    # lax.map, not vmap: a batched while_loop runs every start for as many
    # steps as the slowest needs, with the line search's selects on top.
    solutions = jax.lax.map(lambda s: minimize(objective, shift(s, -1), max_steps=max_steps), starts)
    # A start that wandered into overflow has a NaN objective; it must not win.
    values = jnp.where(jnp.isfinite(solutions.value), solutions.value, jnp.inf)
    best = jnp.argmin(values)
    theta = shift(solutions.params[best], 1)
    fitted = jnp.exp(predicted_log_loss(theta, log_params, log_tokens))
    active = weight > 0
    mean = jnp.sum(active * losses) / jnp.sum(active)
    r2 = 1 - jnp.sum(active * (losses - fitted) ** 2) / jnp.sum(active * (losses - mean) ** 2)
    # Converged: L-BFGS stopped on its own tolerances (gradient, or no
    # progress beyond rounding), not at its step limit.
    return PretrainingFit(law=from_theta(theta), objective=values[best], r2=r2,
                          residuals=log_loss - jnp.log(fitted),
                          converged=jnp.isfinite(values[best]) & (solutions.steps[best] < max_steps))


def _saved_fit(num_params, tokens, losses, weight, starts, exponents, max_steps, refine):
    # Where the caller saves programs (the sdsl command line does), a new
    # process loads the compiled fit instead of tracing it again.
    return saved_programs.call("fitting.pretraining", _fit, (), num_params, tokens, losses, weight,
                               starts, exponents,
                               static_kwargs=dict(max_steps=max_steps, refine=refine))


def fit_pretraining_law(num_params, tokens, losses, weight=None, *, exponents=DEFAULT_EXPONENTS,
                        refine: int = DEFAULT_REFINE, starts=None,
                        max_steps: int = 300, pad: bool = False) -> PretrainingFit:
    """Fit E, A, B, a, b to loss points (N, D, L) by Huber regression on log L.

    Args:
      num_params, tokens, losses: N, D and the loss L in nats (L = log perplexity),
        1-D arrays of the same length (at least 5 points: the law has 5
        coefficients).
      weight: optional per-point weight (a bootstrap's resample counts).
      exponents: values of a and of b whose pairs seed the starts.
      refine: how many of the best starts L-BFGS polishes.
      starts: explicit starting points (k, 5) in the coordinates
        (log E, log A, log B, a, b), replacing the grid (e.g. one warm start
        when refitting a bootstrap resample).
      pad: pad concrete points to a bucket size (:func:`bucket`) with copies
        at weight 0, so that one compiled fit serves a range of point counts.
        The same optimum, but the reductions run in another order, so the
        result may differ in its last digits; off by default.
    """
    num_params, tokens, losses = (jnp.asarray(v, jnp.result_type(v, float))
                                  for v in (num_params, tokens, losses))
    dtype = jnp.result_type(num_params, tokens, losses)
    num_params, tokens, losses = (v.astype(dtype) for v in (num_params, tokens, losses))
    if num_params.ndim != 1 or not num_params.shape == tokens.shape == losses.shape:
        raise ValueError("num_params, tokens and losses must be 1-D arrays of one length, got shapes "
                         f"{num_params.shape}, {tokens.shape}, {losses.shape}")
    if num_params.shape[0] < 5:
        raise ValueError(f"the pre-training law has 5 coefficients; {num_params.shape[0]} points "
                         "cannot fix them")
    for name, value in (("num_params", num_params), ("tokens", tokens), ("losses", losses)):
        _validate.check_positive(name, value)
    weight = jnp.ones_like(num_params) if weight is None else jnp.asarray(weight, dtype)
    if starts is not None:
        starts = jnp.atleast_2d(jnp.asarray(starts, dtype))
    exponents = jnp.asarray(exponents, dtype)
    refine = min(int(refine), exponents.size**2)
    size = num_params.shape[0]
    padded = bucket(size, POINT_BUCKET)
    if not pad or padded == size or not _validate.is_concrete(num_params, tokens, losses, weight):
        return _saved_fit(num_params, tokens, losses, weight, starts, exponents, max_steps, refine)
    fit = _saved_fit(*(jnp.asarray(v, dtype) for v in padded_points(num_params, tokens, losses, weight)),
                     starts, exponents, max_steps, refine)
    return fit.replace(residuals=jnp.asarray(np.asarray(fit.residuals)[:size]))


POINT_BUCKET = 32  # the fewest points a padded fit is compiled for


def padded_points(num_params, tokens, losses, weight):
    """(num_params, tokens, losses, weight) as numpy arrays padded to ``bucket(size,
    POINT_BUCKET)`` points with copies of the first at weight 0.

    Extremes, sums and the Huber objective are unchanged, so one compiled fit
    serves every count of points up to the bucket.
    """
    size = np.shape(num_params)[0]
    extra = bucket(size, POINT_BUCKET) - size
    extend = lambda v: np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[:1], extra)])
    weight = np.asarray(weight)
    return (extend(num_params), extend(tokens), extend(losses),
            np.concatenate([weight, np.zeros(extra, weight.dtype)]))


