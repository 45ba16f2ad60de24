"""Exact toy decoders: n-gram tables behind the :class:`~sdsl_jax.decoding.decoder.Decoder` contract.

An n-gram decoder's next-token logits are a table lookup on the previous
``order - 1`` tokens (plus, optionally, a bias per position), so the
distribution of any continuation is known exactly and cheaply. That is what
the lossless tests need: the target's joint distribution of the first few
generated tokens, enumerated in closed form, to test the speculative loop's
samples against.

The cache is the token history itself, int32[B, max_len]. ``forward`` writes
its tokens at ``start`` and then reads every context from the cache, so these
models obey the contract exactly as a transformer does: a loop that fails to
roll back (or that reads past a query's position) reads stale tokens and
produces a wrong distribution, which the tests would see.

:func:`mlp_ngram_decoder` adds a matmul-heavy MLP to the logits (with a small
weight, so the acceptance stays set by the tables) to give a toy model a real,
configurable compute cost for the loop benchmarks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.decoding.decoder import Decoder


def init_token_cache(batch_size: int, max_len: int) -> jax.Array:
    """The n-gram cache: the token history, int32[batch_size, max_len]."""
    return jnp.zeros((batch_size, max_len), jnp.int32)


def _write(cache, tokens, start):
    return jax.vmap(lambda c, t, s: jax.lax.dynamic_update_slice(c, t, (s,)))(cache, tokens, start)


def ngram_forward(params: dict, tokens: jax.Array, start: jax.Array, cache: jax.Array):
    """Logits of an n-gram model at positions ``start .. start + T - 1`` of each row.

    Args:
      params: ``{"table": float[V] * order}`` (indexed by the previous
        ``order - 1`` tokens, oldest first, then the next token), optionally
        ``"position_bias": float[P, V]`` (added at position p, the last row
        reused beyond P), and optionally the MLP of :func:`mlp_ngram_decoder`.
      tokens: int32[B, T].
      start: int32[B], the position of ``tokens[:, 0]`` in each row.
      cache: int32[B, max_len] token history.

    Returns:
      (logits float[B, T, V], cache). Positions before 0 read as token 0.
    """
    table = params["table"]
    order = table.ndim
    cache = _write(cache, tokens.astype(jnp.int32), start.astype(jnp.int32))
    positions = start[:, None] + jnp.arange(tokens.shape[1])  # [B, T]
    if order > 1:
        offsets = jnp.arange(order - 2, -1, -1)  # oldest context token first
        context_pos = positions[..., None] - offsets  # [B, T, order - 1]
        context = jax.vmap(lambda row, idx: row[idx])(cache, jnp.maximum(context_pos, 0))
        context = jnp.where(context_pos >= 0, context, 0)
        logits = table[tuple(context[..., k] for k in range(order - 1))]
    else:
        logits = jnp.broadcast_to(table, positions.shape + table.shape)
    if "position_bias" in params:
        bias = params["position_bias"]
        logits = logits + bias[jnp.minimum(positions, bias.shape[0] - 1)]
    if "mlp" in params:
        # The current token's embedding through the MLP: compute per token, as
        # in a transformer block; its output moves the logits a little.
        x = params["embed"][tokens]
        for weight in params["mlp"]:
            x = jnp.tanh(x @ weight)
        logits = logits + params["mlp_scale"] * (x @ params["readout"])
    if "shared_mlp" in params:
        # One MLP pass per forward on the chunk's mean embedding: a cost that
        # does not grow with the chunk, like a memory-bound accelerator step.
        x = jnp.mean(params["embed"][tokens], axis=1)
        for weight in params["shared_mlp"]:
            x = jnp.tanh(x @ weight)
        logits = logits + params["mlp_scale"] * (x @ params["readout"])[:, None, :]
    return logits, cache


def _num_params(params) -> int:
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def ngram_decoder(table: jax.Array, position_bias: jax.Array | None = None,
                  name: str = "ngram") -> Decoder:
    """A :class:`Decoder` from an n-gram logit table of shape ``[V] * order``.

    Args:
      table: float[V, ..., V] with ``order >= 1`` axes of equal size V.
      position_bias: optional float[P, V] added to the logits at each position.
      name: a label.
    """
    table = jnp.asarray(table)
    if table.ndim < 1 or len(set(table.shape)) != 1:
        raise ValueError(f"table must have shape [V] * order with order >= 1, got {table.shape}")
    if not jnp.issubdtype(table.dtype, jnp.floating):
        raise ValueError(f"table must be floating point, got {table.dtype}")
    params = {"table": table}
    if position_bias is not None:
        position_bias = jnp.asarray(position_bias, table.dtype)
        if position_bias.ndim != 2 or position_bias.shape[1] != table.shape[-1]:
            raise ValueError(f"position_bias must have shape [P, {table.shape[-1]}], "
                             f"got {position_bias.shape}")
        params["position_bias"] = position_bias
    return Decoder(params=params, forward=ngram_forward, init_cache=init_token_cache,
                   vocab_size=int(table.shape[-1]), num_params=_num_params(params), name=name,
                   dtype=str(table.dtype))


def random_ngram_decoder(seed: int, vocab_size: int, order: int, scale: float = 1.0,
                         num_positions: int = 0, name: str = "ngram") -> Decoder:
    """An n-gram decoder with i.i.d. normal logits of standard deviation ``scale``.

    ``num_positions > 0`` adds a random position bias of that many rows. The
    tables are drawn with numpy from ``seed`` (toy set-up needs no compiled
    JAX work).
    """
    if vocab_size < 1 or order < 1:
        raise ValueError(f"vocab_size and order must be >= 1, got {vocab_size}, {order}")
    rng = np.random.default_rng(seed)
    table = scale * rng.normal(size=(vocab_size,) * order)
    bias = scale * rng.normal(size=(num_positions, vocab_size)) if num_positions > 0 else None
    dtype = jnp.result_type(float)
    return ngram_decoder(jnp.asarray(table, dtype),
                         None if bias is None else jnp.asarray(bias, dtype), name)


def mlp_ngram_decoder(seed: int, table: jax.Array, width: int, depth: int,
                      mlp_scale: float = 1e-2, per_token: bool = True,
                      name: str = "mlp-ngram") -> Decoder:
    """An n-gram decoder plus a ``depth``-layer tanh MLP of ``width`` units.

    With ``per_token`` the MLP runs on every token of a forward (about
    2 * depth * width**2 FLOPs per token, as in a transformer on a
    compute-bound device, where verifying gamma + 1 tokens costs more than one
    step). Otherwise it runs once per forward on the mean embedding of the
    chunk, so a forward costs the same for 1 or gamma + 1 tokens: the
    memory-bound regime the throughput law assumes. Either way its output is
    scaled by ``mlp_scale`` so the distribution stays close to the table's.
    Weights are drawn with numpy from ``seed``.
    """
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got {width}, {depth}")
    table = jnp.asarray(table)
    vocab_size = table.shape[-1]
    rng = np.random.default_rng(seed)
    dtype = table.dtype

    def normal(*shape, scale=1.0):
        return jnp.asarray(scale * rng.standard_normal(shape, dtype=np.float32), dtype)

    params = {
        "table": table,
        "embed": normal(vocab_size, width),
        "mlp" if per_token else "shared_mlp": [
            normal(width, width, scale=1 / math.sqrt(width)) for _ in range(depth)],
        "readout": normal(width, vocab_size, scale=1 / math.sqrt(width)),
        "mlp_scale": jnp.asarray(mlp_scale, dtype),
    }
    return Decoder(params=params, forward=ngram_forward, init_cache=init_token_cache,
                   vocab_size=int(vocab_size), num_params=_num_params(params), name=name,
                   dtype=str(dtype))
