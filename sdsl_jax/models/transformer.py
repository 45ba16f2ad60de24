"""A small decoder-only transformer in flax.nnx, with a fixed-size KV cache.

Architecture (nanoGPT-sized, LLaMA-shaped): token embedding, ``num_layers``
pre-norm blocks ``x += attn(rmsnorm(x)); x += mlp(rmsnorm(x))``, a final
RMSNorm, and logits from the transposed embedding (tied weights: at byte
vocabularies the embedding is a small share of the parameters anyway, and
tying keeps the count one formula). Attention is multi-head with rotary
position embeddings, so positions need no parameters and a row's position is
simply ``start[b] + t``; the MLP is GELU with no biases anywhere.

Precision: params, cache and activations are in ``config.dtype``; the
attention scores and their softmax, the RMSNorm statistics (flax computes
them in float32) and the returned logits are float32 at least, so a
bfloat16 model differs from its float32 self by the rounding of its matmuls
only.

The cache follows the ``sdsl_jax.decoding.decoder`` contract: per layer, keys and
values of shape ``[B, max_len, heads, head_dim]``; a call writes row ``b``'s
new entries at positions ``start[b] .. start[b] + T - 1`` and the query at
position ``p`` sees cache positions ``<= p`` only, so whatever sits beyond a
row's position (rejected drafts, padding) is never read.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sdsl_jax.models.config import ModelConfig


class KVCache(NamedTuple):
    """Per-layer keys and values, each ``[B, max_len, num_heads, head_dim]``."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]


def init_cache(config: ModelConfig, batch_size: int, max_len: int) -> KVCache:
    """An all-zero cache for ``batch_size`` rows of ``max_len`` positions."""
    if batch_size < 1 or max_len < 1:
        raise ValueError(f"init_cache: batch_size and max_len must be >= 1, got "
                         f"{batch_size} and {max_len}")
    shape = (batch_size, max_len, config.num_heads, config.head_dim)
    zeros = tuple(jnp.zeros(shape, config.dtype) for _ in range(config.num_layers))
    return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, config.dtype)
                                            for _ in range(config.num_layers)))


def rotary_tables(positions: jax.Array, head_dim: int, base: float, dtype):
    """cos and sin of ``position * base^(-2i/h)``, each ``[B, T, 1, h/2]``; shared by all layers."""
    half = head_dim // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * freqs
    return (jnp.cos(angles)[:, :, None, :].astype(dtype),
            jnp.sin(angles)[:, :, None, :].astype(dtype))


def rotate(x: jax.Array, tables) -> jax.Array:
    """Rotate channel pairs ``(i, i + h/2)`` of ``x[B, T, H, h]`` by the angles of ``tables``."""
    cos, sin = tables
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _fan_in_normal(scale: float):
    # N(0, scale / fan_in); functional.init_params draws the same with numpy.
    return nnx.initializers.variance_scaling(scale, "fan_in", "normal")


class Attention(nnx.Module):
    """Causal multi-head self-attention that reads and writes a KV cache by position."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.d_model
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=config.dtype,
                              param_dtype=config.dtype, kernel_init=_fan_in_normal(1.0), rngs=rngs)
        # Residual-branch outputs start small so depth does not blow up the stream (GPT-2).
        self.out = nnx.Linear(d, d, use_bias=False, dtype=config.dtype, param_dtype=config.dtype,
                              kernel_init=_fan_in_normal(1.0 / (2 * config.num_layers)),
                              rngs=rngs)

    def __call__(self, x, positions, rope, layer_cache=None):
        batch, length, _ = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(batch, length, 3 * self.num_heads, self.head_dim),
                            3, axis=2)
        q, k = rotate(q, rope), rotate(k, rope)
        if layer_cache is None:
            keys, values, key_positions = k, v, positions
        else:
            cache_k, cache_v = layer_cache
            rows = jnp.arange(batch)[:, None]
            # mode="drop": a position past max_len is discarded, never clamped onto
            # (and overwriting) a valid earlier position.
            keys = cache_k.at[rows, positions].set(k.astype(cache_k.dtype), mode="drop")
            values = cache_v.at[rows, positions].set(v.astype(cache_v.dtype), mode="drop")
            key_positions = jnp.broadcast_to(jnp.arange(cache_k.shape[1]), (batch, cache_k.shape[1]))
            layer_cache = (keys, values)
        # Scores and their softmax in float32 at least: in bfloat16 the exponentials
        # of a long context lose the small weights (mixed precision as the field
        # runs it); the matmuls stay in the model's dtype.
        wide = jnp.promote_types(q.dtype, jnp.float32)
        scores = jnp.einsum("bthd,bshd->bhts", q, keys,
                            preferred_element_type=wide) / math.sqrt(self.head_dim)
        visible = key_positions[:, None, None, :] <= positions[:, None, :, None]
        scores = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
        out = jnp.einsum("bhts,bshd->bthd", weights, values).reshape(batch, length, -1)
        return self.out(out), layer_cache


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(config.d_model, config.d_ff, use_bias=False, dtype=config.dtype,
                             param_dtype=config.dtype, kernel_init=_fan_in_normal(1.0), rngs=rngs)
        self.down = nnx.Linear(config.d_ff, config.d_model, use_bias=False, dtype=config.dtype,
                               param_dtype=config.dtype,
                               kernel_init=_fan_in_normal(1.0 / (2 * config.num_layers)),
                               rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        norm = dict(epsilon=config.norm_eps, dtype=config.dtype, param_dtype=config.dtype, rngs=rngs)
        self.attn_norm = nnx.RMSNorm(config.d_model, **norm)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(config.d_model, **norm)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, rope, layer_cache=None):
        attended, layer_cache = self.attn(self.attn_norm(x), positions, rope, layer_cache)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), layer_cache


class Transformer(nnx.Module):
    """The decoder-only language model; see the module docstring."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        # Unit-variance logits at init: the tied output layer dots a unit-RMS state
        # with embedding rows of norm ~1.
        self.embed = nnx.Embed(config.vocab_size, config.d_model, dtype=config.dtype,
                               param_dtype=config.dtype,
                               embedding_init=nnx.initializers.normal(1.0 / math.sqrt(config.d_model)),
                               rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = nnx.RMSNorm(config.d_model, epsilon=config.norm_eps, dtype=config.dtype,
                                      param_dtype=config.dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array, start: jax.Array | None = None,
                 cache: KVCache | None = None):
        """Logits ``[B, T, V]`` for ``tokens[B, T]`` placed at positions ``start[b] + t``.

        Without a cache the tokens attend causally among themselves (training,
        scoring); with one they also see the cache's positions below their own,
        and the updated cache is returned. ``start`` defaults to zeros.

        Returns:
          (logits, cache): cache is None when none was given.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        batch, length = tokens.shape
        if start is None:
            start = jnp.zeros((batch,), jnp.int32)
        if start.shape != (batch,):
            raise ValueError(f"start must have shape ({batch},) to match tokens {tokens.shape}, "
                             f"got {start.shape}")
        positions = start.astype(jnp.int32)[:, None] + jnp.arange(length, dtype=jnp.int32)
        x = self.embed(tokens)
        rope = rotary_tables(positions, self.config.head_dim, self.config.rope_base, x.dtype)
        layer_caches = []
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x, layer_cache = block(x, positions, rope, layer_cache)
            layer_caches.append(layer_cache)
        # Logits in float32 at least, whatever the model computes in: the loss,
        # the sampling probabilities and the acceptance ratios read them.
        logits = self.embed.attend(self.final_norm(x))
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        if cache is None:
            return logits, None
        return logits, KVCache(keys=tuple(c[0] for c in layer_caches),
                               values=tuple(c[1] for c in layer_caches))
