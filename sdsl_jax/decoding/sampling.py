r"""Exact speculative sampling: the acceptance rule and the residual distribution.

One iteration has the draft's distributions q_1..q_gamma at the drafted
positions, the drafted tokens x_1..x_gamma (x_i ~ q_i), and the target's
distributions p_1..p_{gamma+1} from ONE forward pass over the same positions
(Leviathan et al. 2023, Chen et al. 2023). For i = 1..gamma in turn:

* accept x_i with probability min(1, p_i(x_i) / q_i(x_i));
* at the first rejection emit a token from the residual
  norm(max(0, p_i - q_i)) and stop;
* if all gamma are accepted, emit a bonus token from p_{gamma+1}.

Whatever q is, each emitted token is distributed as p given the prefix, so the
output is distributed exactly as sampling from the target alone.

Serving settings: the loop samples from the distributions a deployment
samples from. :func:`probabilities` applies, in the order transformers'
``generate`` does, the temperature, then top-k (keep the tokens whose logit
is at least the k-th largest, ties kept), then top-p on the renormalised
result (keep the most probable tokens until their mass reaches p, at least
one). The rule above then makes the output follow the TRUNCATED target
distribution, whatever truncation the draft used; the draft is truncated the
same way because a deployment's draft samples with the same settings.

Greedy decoding is the same rule on one-hot distributions: with p and q the
indicator of their argmax, min(1, p/q) is 1 when the argmaxes agree and 0
when not, the residual is the target's argmax, and the bonus is the target's
argmax. :func:`probabilities` builds those one-hot distributions at temperature 0,
so one code path (and one compiled loop, temperature traced) serves both.

The acceptance probability of a position, averaged over the draft's token, is
beta = sum_v min(p(v), q(v)) = 1 - TV(p, q); it is recorded for every judged
position as the low-variance estimate of the acceptance rate alpha.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Verdict(NamedTuple):
    """What the acceptance rule decided for one row.

    Attributes:
      num_accepted: K in [0, gamma], the accepted prefix of the drafted tokens.
      next_token: the token emitted after them (residual sample at the first
        rejection, bonus sample from p_{gamma+1} when all were accepted).
      betas: float[gamma], sum_v min(p_i(v), q_i(v)) at each drafted position.
    """

    num_accepted: jax.Array
    next_token: jax.Array
    betas: jax.Array


# (uniforms float[g + 1], draft_tokens int[g], draft_probs float[g, V],
#  target_probs float[g + 1, V]) -> Verdict
AcceptFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], Verdict]


def keep_mask(scaled_logits: jax.Array, top_k, top_p) -> jax.Array:
    """The tokens top-k and then top-p keep: bool[..., V].

    top-k keeps v when ``logit(v) >= `` the k-th largest logit (so every token
    tied with the k-th is kept); top-p then keeps v when the mass of the
    kept tokens strictly more probable than v, under the renormalised top-k
    distribution, is below p. Without ties that is the smallest set of most
    probable tokens whose mass reaches p; with ties at the boundary every
    tied token is kept, so the set does not depend on how a sort orders
    equal values. At least the most probable token is always kept.

    Args:
      scaled_logits: float[..., V], logits already divided by the temperature.
      top_k: int scalar (may be traced); 0 keeps every token.
      top_p: float scalar in (0, 1] (may be traced); 1 keeps every token.
    """
    vocab = scaled_logits.shape[-1]
    top_k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, scaled_logits.dtype)
    # One descending sort serves both: each filter becomes a threshold on the
    # logit (the smallest kept value), compared with the unsorted logits.
    ordered = -jnp.sort(-scaled_logits, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jax.lax.dynamic_index_in_dim(ordered, k - 1, axis=ordered.ndim - 1, keepdims=True)
    in_top_k = ordered >= kth  # a prefix of the sorted order, ties included
    probs = jax.nn.softmax(jnp.where(in_top_k, ordered, -jnp.inf), axis=-1)
    # Mass strictly before each sorted position (exclusive cumulative sum).
    before = jnp.concatenate(
        [jnp.zeros_like(probs[..., :1]), jnp.cumsum(probs, axis=-1)[..., :-1]], axis=-1)
    # p = 1 keeps everything: the cumulative sum may round to 1 before the
    # last tokens of tiny mass, and "before < 1" would drop them.
    in_top_p = in_top_k & ((before < top_p) | (top_p >= 1))
    last = jnp.sum(in_top_p, axis=-1, keepdims=True) - 1  # >= 0: before[0] = 0 < p
    cutoff = jnp.take_along_axis(ordered, last, axis=-1)
    return scaled_logits >= cutoff


def truncate(scaled_logits: jax.Array, top_k, top_p) -> jax.Array:
    """``scaled_logits`` with the tokens :func:`keep_mask` drops set to -inf.

    When both filters are off (top_k = 0, top_p = 1) the logits are returned
    as they are and no sort runs (a real branch, so the default settings cost
    nothing in the loop).
    """
    top_k = jnp.asarray(top_k, jnp.int32)
    top_p = jnp.asarray(top_p, scaled_logits.dtype)
    if top_k.ndim != 0 or top_p.ndim != 0:
        raise ValueError(f"top_k and top_p must be scalars, got shapes {top_k.shape} and "
                         f"{top_p.shape}")

    def filtered(x):
        return jnp.where(keep_mask(x, top_k, top_p), x, -jnp.inf)

    return jax.lax.cond((top_k > 0) | (top_p < 1), filtered, lambda x: x, scaled_logits)


def probabilities(logits: jax.Array, temperature, top_k=0, top_p=1.0) -> jax.Array:
    """softmax(truncate(logits / T)) over the last axis; the one-hot of the argmax at T = 0.

    At T = 0 the argmax is the first one on ties; the one-hot is exact, so
    sampling from it returns the argmax. Greedy decoding ignores top-k and
    top-p (both always keep the argmax).

    Args:
      logits: float[..., V].
      temperature: T >= 0, a scalar (may be traced).
      top_k: keep the k most probable tokens, ties included (see
        :func:`keep_mask`); 0 is off. A scalar (may be traced).
      top_p: then keep the most probable tokens until their mass reaches p;
        1 is off. A scalar in (0, 1] (may be traced).

    Returns:
      float[..., V] in the logits' dtype, or float32 for narrower ones.
    """
    # Low-precision logits (bfloat16) are upcast: probabilities of rare tokens
    # and the acceptance ratios need float32 resolution at least.
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    t = jnp.asarray(temperature, logits.dtype)

    def soft(logits):
        scaled = logits / jnp.where(t > 0, t, 1.0)
        return jax.nn.softmax(truncate(scaled, top_k, top_p), axis=-1)

    def greedy(logits):
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=logits.dtype)

    if t.ndim != 0:
        raise ValueError(f"temperature must be a scalar, got shape {t.shape}")
    # A real branch: only one of the two is computed in the loop.
    return jax.lax.cond(t > 0, soft, greedy, logits)


def _first_above(cdf, threshold, weights):
    """The first index where cdf > threshold; if rounding leaves none, the last
    index of positive weight."""
    above = cdf > threshold[..., None]
    last_positive = weights.shape[-1] - 1 - jnp.argmax(jnp.flip(weights > 0, axis=-1), axis=-1)
    return jnp.where(jnp.any(above, axis=-1), jnp.argmax(above, axis=-1), last_positive)


def sample(uniform: jax.Array, weights: jax.Array) -> jax.Array:
    """Inverse-CDF draw: the first v with cumsum(w)[v] > u * sum(w), for u ~ U[0, 1).

    One uniform per draw (the loop draws all of a run's uniforms up front, so
    no PRNG runs inside it). A token of weight 0 is never returned: its
    cumulative sum equals its predecessor's, so it cannot be the first to
    exceed the threshold. Weights need not be normalised.

    The cumulative sum is taken in two levels, over blocks of about sqrt(V)
    tokens and then inside the chosen block: a cumulative sum over a whole
    vocabulary is a slow sequential pass on CPU, while block sums are one
    plain reduction.

    Args:
      uniform: float[...], in [0, 1).
      weights: float[..., V], >= 0 with a positive sum.

    Returns:
      int32[...].
    """
    vocab = weights.shape[-1]
    size = max(1, math.isqrt(vocab - 1) + 1) if vocab > 1 else 1
    num_blocks = -(-vocab // size)
    padded = jnp.pad(weights, [(0, 0)] * (weights.ndim - 1) + [(0, num_blocks * size - vocab)])
    blocks = padded.reshape(weights.shape[:-1] + (num_blocks, size))
    block_sums = jnp.sum(blocks, axis=-1)
    block_cdf = jnp.cumsum(block_sums, axis=-1)
    threshold = uniform * block_cdf[..., -1]
    b = _first_above(block_cdf, threshold, block_sums)
    before = jnp.take_along_axis(block_cdf - block_sums, b[..., None], axis=-1)[..., 0]
    inner = jnp.take_along_axis(blocks, b[..., None, None], axis=-2)[..., 0, :]
    j = _first_above(before[..., None] + jnp.cumsum(inner, axis=-1), threshold, inner)
    return (b * size + j).astype(jnp.int32)


def acceptance_probability(target_probs: jax.Array, draft_probs: jax.Array) -> jax.Array:
    """beta = sum_v min(p(v), q(v)) over the last axis: 1 - TV(p, q)."""
    return jnp.sum(jnp.minimum(target_probs, draft_probs), axis=-1)


def residual(target_probs: jax.Array, draft_probs: jax.Array) -> jax.Array:
    """max(0, p - q), unnormalised; p itself where p <= q everywhere.

    In exact arithmetic the residual is all zero only when p == q, and then a
    rejection has probability 0. Rounding can still reject there; falling back
    to p keeps the emitted token a draw from the target.
    """
    r = jnp.maximum(target_probs - draft_probs, 0.0)
    return jnp.where(jnp.sum(r, axis=-1, keepdims=True) > 0, r, target_probs)


def first_rejection(accepted: jax.Array) -> jax.Array:
    """K = the length of the all-True prefix of a bool[gamma] vector."""
    return jnp.sum(jnp.cumprod(accepted.astype(jnp.int32)), dtype=jnp.int32)


def speculative_accept(uniforms: jax.Array, draft_tokens: jax.Array, draft_probs: jax.Array,
                       target_probs: jax.Array) -> Verdict:
    """The exact rejection rule for one row (vmap for a batch).

    Args:
      uniforms: float[gamma + 1], independent U[0, 1): one per acceptance
        test, the last for the emitted token.
      draft_tokens: int[gamma], x_i ~ q_i.
      draft_probs: float[gamma, V], q_1..q_gamma.
      target_probs: float[gamma + 1, V], p_1..p_{gamma+1}.

    Returns:
      A :class:`Verdict`. gamma = 0 is allowed: it samples one token from p_1,
      which is plain autoregressive sampling.
    """
    gamma = draft_tokens.shape[0]
    rows = jnp.arange(gamma)
    p_x = target_probs[rows, draft_tokens]
    q_x = draft_probs[rows, draft_tokens]
    # u < p/q without the division; q(x) > 0 because x was drawn from q.
    num_accepted = first_rejection(uniforms[:gamma] * q_x < p_x)
    # A zero row for "q_{gamma+1}" makes the bonus draw max(0, p - 0) = p, so
    # rejection and bonus are one formula indexed by K.
    q_padded = jnp.concatenate([draft_probs, jnp.zeros_like(target_probs[:1])], axis=0)
    r = residual(target_probs[num_accepted], q_padded[num_accepted])
    next_token = sample(uniforms[gamma], r)
    betas = acceptance_probability(target_probs[:gamma], draft_probs)
    return Verdict(num_accepted, next_token, betas)
