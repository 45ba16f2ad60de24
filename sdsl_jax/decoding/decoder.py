"""What the speculative loop needs of a language model: pure functions and a pytree.

A `Decoder` is a causal language model seen as data plus two pure functions,
so the draft-verify-accept loop can be written once and compiled once for any
model: our flax transformers, a real checkpoint behind an adapter, or the
exact toy models (n-gram tables) the lossless tests use.

The cache contract is what makes rollback free. A cache holds a fixed
`max_len` positions per batch row. ``forward(params, tokens, start, cache)``
writes keys and values for row ``b`` at positions ``start[b] ..
start[b] + T - 1`` and lets the query at position ``p`` attend to cache
positions ``<= p`` only. Nothing is ever read beyond the query's position, so
rejecting drafted tokens needs no cache surgery: the loop simply does not
advance ``start`` past them, and the stale entries are overwritten later.
Rows advance independently, which is what a batch of prompts with different
accepted counts needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

PyTree = Any

# forward(params, tokens int32[B, T], start int32[B], cache) -> (logits float[B, T, V], cache)
ForwardFn = Callable[[PyTree, jax.Array, jax.Array, PyTree], tuple[jax.Array, PyTree]]
# init_cache(batch_size, max_len) -> cache
InitCacheFn = Callable[[int, int], PyTree]


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A causal LM as ``params`` plus pure ``forward`` and ``init_cache``.

    ``forward`` and ``init_cache`` must be hashable (plain functions or
    ``functools.partial`` of them with hashable arguments), because compiled
    loops are cached on them; ``params`` is any pytree of arrays.

    Attributes:
      params: the weights, a pytree of arrays.
      forward: ``(params, tokens[B, T], start[B], cache) -> (logits[B, T, V], cache)``.
        Logits at ``[b, t]`` are for the token that follows ``tokens[b, t]``.
      init_cache: ``(batch_size, max_len) -> cache``, an empty cache.
      vocab_size: V.
      num_params: the exact parameter count reported as N (draft) or M (target).
      name: a label for reports.
      dtype: the dtype the model computes in (its params, cache and
        activations), as a name: "float32", "bfloat16" or "float16". Records
        state it as the precision that ran.
      param_sharding: tensor-parallel annotations of ``params``: pairs of
        (a regular expression matched in full against a leaf's path, its
        dict keys joined by "/", e.g. "blocks/q_proj/kernel"; a partition
        spec as a tuple of mesh axis names or None, one per array axis).
        The first pair that matches wins; a leaf no pair matches is
        replicated. Only the mesh axis ``"model"`` is used. See
        :mod:`sdsl_jax.decoding.sharding`.
      cache_sharding: the same for the cache pytree ``init_cache`` returns.
    """

    params: PyTree
    forward: ForwardFn
    init_cache: InitCacheFn
    vocab_size: int
    num_params: int
    name: str = "decoder"
    dtype: str = "float32"
    param_sharding: tuple[tuple[str, tuple[str | None, ...]], ...] = ()
    cache_sharding: tuple[tuple[str, tuple[str | None, ...]], ...] = ()
