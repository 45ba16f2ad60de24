"""A fixed-size key/value cache written at per-row positions, and attention over it.

This is the `Decoder` cache contract (sdsl_jax/decoding/decoder.py) for every
Hugging Face family: row ``b`` of a forward call holds tokens at positions
``start[b] .. start[b] + T - 1``; their keys and values are written there, and
the query at position ``p`` attends to cache slots ``<= p``. Slots beyond
``p`` may hold stale keys from rejected drafts; the mask, not the cache,
keeps them out, which is what makes rollback free.

Layout: ``{"k": [L, B, S, Hkv, Dh], "v": [L, B, S, Hkv, Dh]}`` with S =
max_len, so a forward pass scans over the leading layer axis. With grouped-
query attention (Ainslie et al. 2023) the cache holds only the ``Hkv`` key/value
heads, and query head ``h`` reads key/value head ``h // (H / Hkv)``, as
transformers' ``repeat_kv`` pairs them; multi-head attention is ``Hkv = H``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.validation import is_concrete


# Tensor-parallel annotation of the cache (see Decoder.cache_sharding): the key/value heads
# axis, as the attention projections are split by heads.
KV_CACHE_SHARDING = ((r"k|v", (None, None, None, "model", None)),)


def init_kv_cache(num_layers: int, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int,
                  dtype, max_positions: int, positions_kind: str = "learned positions",
                  sliding_window: int | None = None) -> dict:
    """An empty cache for ``batch_size`` rows of ``max_len`` positions each.

    ``max_positions`` is the model's learned position table size, or for
    rotary models the context it was trained for (``positions_kind`` says
    which in the error); a longer cache would ask for positions the model has
    no embedding for or never saw. A model with a ``sliding_window`` lets a
    query see only the last ``sliding_window`` keys; a cache no longer than
    the window makes that full causal attention, which is what
    `cached_attention` computes, so a longer cache is refused.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    if max_len > max_positions:
        raise ValueError(
            f"max_len={max_len} exceeds the model's {max_positions} {positions_kind}; "
            f"use max_len <= {max_positions}"
        )
    if sliding_window is not None and max_len > sliding_window:
        raise ValueError(
            f"max_len={max_len} exceeds the model's sliding attention window of {sliding_window} positions, "
            f"beyond which it attends to the last {sliding_window} tokens only, which this cache does not "
            f"implement; use max_len <= {sliding_window}"
        )
    shape = (num_layers, int(batch_size), int(max_len), num_kv_heads, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def check_forward_inputs(tokens, start, cache, vocab_size: int) -> None:
    """Eager checks of a forward call (skipped under tracing, where values are unknown)."""
    tokens_shape, start_shape = np.shape(tokens), np.shape(start)
    if len(tokens_shape) != 2:
        raise ValueError(f"tokens must have shape [batch, time], got shape {tokens_shape}")
    if start_shape != tokens_shape[:1]:
        raise ValueError(f"start must have shape [batch]={tokens_shape[:1]}, got shape {start_shape}")
    _, batch, max_len, _, _ = np.shape(cache["k"])
    if tokens_shape[0] != batch:
        raise ValueError(f"tokens has {tokens_shape[0]} rows but the cache was made for {batch}")
    if tokens_shape[1] > max_len:
        raise ValueError(f"tokens has {tokens_shape[1]} positions but the cache holds {max_len}")
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ValueError(f"tokens must be integers, got dtype {jnp.result_type(tokens)}")
    if is_concrete(tokens):
        tok = np.asarray(tokens)
        if tok.size and (tok.min() < 0 or tok.max() >= vocab_size):
            bad = tok[(tok < 0) | (tok >= vocab_size)][0]
            raise ValueError(f"tokens must lie in [0, {vocab_size}), got {int(bad)}")
    if is_concrete(start):
        s = np.asarray(start)
        if s.size and (s.min() < 0 or s.max() + tokens_shape[1] > max_len):
            row = int(np.argmax((s < 0) | (s + tokens_shape[1] > max_len)))
            raise ValueError(
                f"start[{row}]={int(s[row])} with {tokens_shape[1]} tokens does not fit in the cache's "
                f"{max_len} positions"
            )


def positions(start: jax.Array, num_tokens: int) -> jax.Array:
    """Absolute positions ``start[b] + t``, int32[B, T]."""
    return start.astype(jnp.int32)[:, None] + jnp.arange(num_tokens, dtype=jnp.int32)[None, :]


def write_rows(layer_cache: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write ``new[b]`` ([T, H, Dh]) into ``layer_cache[b]`` ([S, H, Dh]) from slot ``start[b]``."""
    def write_one(row_cache, row_new, row_start):
        return jax.lax.dynamic_update_slice(row_cache, row_new.astype(row_cache.dtype), (row_start, 0, 0))

    return jax.vmap(write_one)(layer_cache, new, start.astype(jnp.int32))


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, k_cache: jax.Array, v_cache: jax.Array,
                     start: jax.Array, scale: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Causal (grouped-query) attention of new queries over the cache, after writing k, v into it.

    Args:
      q: [B, T, H, Dh] for the new tokens.
      k, v: [B, T, Hkv, Dh] for the new tokens; ``H`` is a multiple of ``Hkv``.
      k_cache, v_cache: [B, S, Hkv, Dh] for one layer.
      start: int[B], the position of each row's first new token.
      scale: multiplies q . k before the softmax.

    Returns:
      (out [B, T, H, Dh], k_cache, v_cache), the caches with the new entries.
      Scores and softmax are computed in at least float32.
    """
    batch, num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not divide into {num_kv_heads} key/value heads")
    k_cache = write_rows(k_cache, k, start)
    v_cache = write_rows(v_cache, v, start)
    # Query head h = kv * group + g reads key/value head kv.
    grouped = q.reshape(batch, num_tokens, num_kv_heads, num_heads // num_kv_heads, head_dim)
    compute = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("btkgd,bskd->bkgts", grouped, k_cache, preferred_element_type=compute)
    scores = scores * scale
    query_pos = positions(start, num_tokens)  # [B, T]
    slot = jnp.arange(k_cache.shape[1], dtype=jnp.int32)
    visible = slot[None, None, :] <= query_pos[:, :, None]  # [B, T, S]
    # Every query sees at least its own slot, so no row is fully masked.
    scores = jnp.where(visible[:, None, None, :, :], scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v_cache)
    return out.reshape(batch, num_tokens, num_heads, head_dim), k_cache, v_cache
