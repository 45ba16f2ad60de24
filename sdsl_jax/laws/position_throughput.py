r"""The throughput law with measured acceptance rates per draft position.

The law of :mod:`sdsl_jax.laws.throughput` assumes every drafted token is accepted
with one rate alpha. Real drafts often do worse (or better) deeper into the
draft; :mod:`sdsl_jax.estimation.positions` measures the rate at each position,

    r_i = P(draft i accepted | drafts 1..i-1 accepted),   i = 1..G,

and tests whether one alpha describes them. With the measured rates an
iteration at lookahead gamma <= G accepts at least k drafts with probability
prod_{i<=k} r_i, so it emits on average

    E(gamma) = 1 + sum_{k=1..gamma} prod_{i<=k} r_i

tokens (K + 1: the accepted drafts plus the target's own token). The rest of
the law is unchanged: an iteration costs gamma draft steps and one target
step, so with the cost ratio c

    S(gamma) = E(gamma) / (gamma c + 1),     T = E(gamma) / (2 (gamma N + M)).

With every r_i = alpha, E is the geometric sum (1 - alpha^(gamma+1)) /
(1 - alpha) of the i.i.d. law, and every function here returns what
:mod:`sdsl_jax.laws.throughput` returns (to rounding).

The rates say nothing past the last measured position G, so the optimal
lookahead is searched over the integers 0..G; an optimum at G means a longer
lookahead might pay more (measure one to find out).

All functions take ``rates`` as float[..., G] (positions on the last axis),
broadcast the other arguments against ``rates[..., 0]``, keep the float
dtype (float32 by default, float64 under ``jax_enable_x64``) and work under
jit, vmap and grad (``lookahead`` may be traced). Eager calls check their
inputs: a rate outside [0, 1] (or NaN: a position never reached) is an error.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate


def _rates(rates) -> jnp.ndarray:
    # Checked before the cast, so an error shows the value as given. NaN is
    # what per_position_acceptance reports for a position never reached.
    _validate.check_in_range("rates", rates, 0.0, 1.0)
    r = jnp.asarray(rates)
    if r.ndim == 0 or r.shape[-1] == 0:
        raise ValueError(f"rates must hold the rate of at least one draft position on its last "
                         f"axis, got shape {r.shape}")
    return r.astype(jnp.result_type(r.dtype, float))


def _lookahead(lookahead, rates) -> jnp.ndarray:
    measured = rates.shape[-1]
    if lookahead is None:
        return jnp.full(rates.shape[:-1], measured, rates.dtype)
    if _validate.is_concrete(lookahead):
        arr = np.asarray(lookahead, np.float64)
        bad = ~((arr >= 0) & (arr <= measured) & (arr == np.round(arr)))
        if np.any(bad):
            raise ValueError(f"lookahead must be an integer in [0, {measured}] (the positions "
                             f"measured), got {_validate.first_bad(arr, bad)}")
    return jnp.asarray(lookahead, rates.dtype)


def survival(rates: ArrayLike) -> jnp.ndarray:
    """P(K >= k) = prod_{i<=k} r_i for k = 1..G: float[..., G]."""
    # cumprod differentiates by products (no division), so a zero rate is safe under grad.
    return jnp.cumprod(_rates(rates), axis=-1)


def expected_tokens(rates: ArrayLike, lookahead: ArrayLike | None = None) -> jnp.ndarray:
    """Mean tokens per iteration, E = 1 + sum_{k=1..gamma} prod_{i<=k} r_i.

    Args:
      rates: r_i, float[..., G], each in [0, 1].
      lookahead: gamma, an integer in 0..G (any shape broadcasting against
        ``rates[..., 0]``); default G.

    Returns:
      E, shape broadcast(rates[..., 0], lookahead).
    """
    r = _rates(rates)
    gamma = _lookahead(lookahead, r)
    k = jnp.arange(1, r.shape[-1] + 1, dtype=r.dtype)
    counted = k <= gamma[..., None]
    return 1 + jnp.sum(jnp.where(counted, jnp.cumprod(r, axis=-1), 0.0), axis=-1)


def expected_tokens_all(rates: ArrayLike) -> jnp.ndarray:
    """E at every lookahead 0..G: float[..., G + 1] (E(0) = 1)."""
    s = survival(rates)
    zero = jnp.zeros(s.shape[:-1] + (1,), s.dtype)
    return 1 + jnp.concatenate([zero, jnp.cumsum(s, axis=-1)], axis=-1)


def speedup(rates: ArrayLike, lookahead: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """Speedup over the target alone, S = E(gamma) / (gamma c + 1).

    Args:
      rates: r_i, float[..., G].
      lookahead: gamma in 0..G.
      cost_ratio: c > 0, a draft step over a target step (N / M under the
        FLOP model).
    """
    _validate.check_positive("cost_ratio", cost_ratio)
    r = _rates(rates)
    gamma = _lookahead(lookahead, r)
    c = jnp.asarray(cost_ratio, r.dtype)
    return expected_tokens(r, gamma) / (gamma * c + 1)


def tokens_per_flop(rates: ArrayLike, lookahead: ArrayLike, draft_params: ArrayLike,
                    target_params: ArrayLike) -> jnp.ndarray:
    """Throughput T = E(gamma) / (2 (gamma N + M)) in tokens per FLOP."""
    _validate.check_positive("draft_params", draft_params)
    _validate.check_positive("target_params", target_params)
    r = _rates(rates)
    gamma = _lookahead(lookahead, r)
    n, m = jnp.asarray(draft_params, r.dtype), jnp.asarray(target_params, r.dtype)
    return expected_tokens(r, gamma) / (2 * (gamma * n + m))


def speedups(rates: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """S at every lookahead 0..G: float[..., G + 1] (S(0) = 1)."""
    _validate.check_positive("cost_ratio", cost_ratio)
    e = expected_tokens_all(rates)
    gamma = jnp.arange(e.shape[-1], dtype=e.dtype)
    c = jnp.asarray(cost_ratio, e.dtype)[..., None]
    return e / (gamma * c + 1)


def optimal_lookahead(rates: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """The integer lookahead in 0..G with the highest speedup (ties: the shorter).

    0 means no lookahead pays: decode with the target alone. G, the last
    measured position, means a longer lookahead might pay more. Returned as
    int32.
    """
    return jnp.argmax(speedups(rates, cost_ratio), axis=-1).astype(jnp.int32)


def optimal_speedup(rates: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """max over gamma in 0..G of S(gamma); its gradient is that of the maximiser's S."""
    return jnp.max(speedups(rates, cost_ratio), axis=-1)
