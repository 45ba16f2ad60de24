"""The small pieces the checkpoints' blocks are made of: layer norm, RMS norm, activations,
dense layers and the projections into and out of attention heads.

Each matches its PyTorch counterpart in transformers to float32 rounding:
layer norm uses the biased variance with eps inside the square root, RMS norm
(Zhang & Sennrich 2019) normalises in float32 and applies its scale after
casting back, and the activation names are transformers' ``ACT2FN`` keys found
in real configs.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def layer_norm(x: jax.Array, params: dict, eps: float) -> jax.Array:
    """LayerNorm over the last axis; ``params`` may lack scale and bias (OPT's
    ``layer_norm_elementwise_affine=False``). Statistics in at least float32."""
    compute = jnp.promote_types(x.dtype, jnp.float32)
    h = x.astype(compute)
    mean = h.mean(axis=-1, keepdims=True)
    var = jnp.square(h - mean).mean(axis=-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + eps)
    if "scale" in params:
        h = h * params["scale"].astype(compute) + params["bias"].astype(compute)
    return h.astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """``scale * x / sqrt(mean(x**2) + eps)`` over the last axis.

    The statistics are taken in float32 and the result cast back to ``x``'s
    dtype before the scale multiplies it, in that order, as Llama-family
    checkpoints were trained (in bfloat16 the order changes the rounding).
    """
    h = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    h = h * jax.lax.rsqrt(jnp.square(h).mean(axis=-1, keepdims=True) + eps)
    return scale * h.astype(x.dtype)


def dense(x: jax.Array, params: dict) -> jax.Array:
    """``x @ kernel (+ bias)``; kernel is [in, out]."""
    y = x @ params["kernel"]
    if "bias" in params:
        y = y + params["bias"]
    return y


def to_heads(x: jax.Array, params: dict) -> jax.Array:
    """A projection into attention heads: ``x`` [..., D] by kernel [D, H, Dh] (+ bias
    [H, Dh]) to [..., H, Dh]; the heads axis is kept apart so it can be split over devices."""
    y = jnp.einsum("...d,dhk->...hk", x, params["kernel"])
    if "bias" in params:
        y = y + params["bias"]
    return y


def from_heads(x: jax.Array, params: dict) -> jax.Array:
    """The projection out of attention heads: ``x`` [..., H, Dh] by kernel [H, Dh, D]
    (+ bias [D]) to [..., D], summing over heads and their channels."""
    y = jnp.einsum("...hk,hkd->...d", x, params["kernel"])
    if "bias" in params:
        y = y + params["bias"]
    return y


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _gelu_erf(x):
    return jax.nn.gelu(x, approximate=False)


def _quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": _gelu_erf,
    # The tanh approximation under its several transformers names.
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}

