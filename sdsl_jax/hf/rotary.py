"""Rotary position embeddings as Llama, Mistral, Qwen and GPT-NeoX checkpoints use them.

RoPE (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position
Embedding") rotates each pair of a query's or key's leading ``rotary_dim``
channels by ``position * inv_freq[i]``, so that ``q . k`` depends on positions
only through their difference. The pairs are "rotate half" pairs, channel
``i`` with channel ``i + rotary_dim / 2``, as in GPT-NeoX and every
transformers checkpoint of these families; channels beyond ``rotary_dim``
pass through (GPT-NeoX's partial rotary, ``rotary_pct``).

The inverse frequencies are ``theta ** (-2i / rotary_dim)``, rescaled by the
checkpoint's rope scaling:

- ``"default"``: as they are;
- ``"linear"`` (position interpolation, Chen et al. 2023): divided by ``factor``;
- ``"llama3"`` (Llama 3.1 onwards): wavelengths longer than
  ``original_max_position_embeddings / low_freq_factor`` are divided by
  ``factor``, those shorter than ``original_max_position_embeddings /
  high_freq_factor`` kept, and those between interpolated smoothly in
  ``original_max_position_embeddings / wavelength``.

Other scalings (yarn, dynamic NTK, longrope, ...) change the attention
temperature or depend on the sequence length; they are refused, not
approximated. Angles, cosines and the rotation itself are computed in
float32 whatever the model's dtype: in bfloat16 the angle of position 1000
would be off by several radians.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.errors import CheckpointError

SCALINGS = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RotarySpec:
    """The rotary embedding of a checkpoint: which channels rotate and at which frequencies."""

    rotary_dim: int  # the leading channels of each head that rotate; even
    theta: float
    scaling: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    def inverse_frequencies(self) -> np.ndarray:
        """float32[rotary_dim / 2]; computed in float64, then rounded once."""
        exponent = np.arange(0, self.rotary_dim, 2, dtype=np.float64) / self.rotary_dim
        inv_freq = 1.0 / self.theta ** exponent
        if self.scaling == "linear":
            inv_freq = inv_freq / self.factor
        elif self.scaling == "llama3":
            wavelength = 2 * math.pi / inv_freq
            long_wave = self.original_max_positions / self.low_freq_factor
            short_wave = self.original_max_positions / self.high_freq_factor
            # 0 at the long-wave end of the band, 1 at the short-wave end.
            smooth = ((self.original_max_positions / wavelength - self.low_freq_factor)
                      / (self.high_freq_factor - self.low_freq_factor))
            interpolated = (1 - smooth) * inv_freq / self.factor + smooth * inv_freq
            inv_freq = np.where(wavelength > long_wave, inv_freq / self.factor,
                                np.where(wavelength < short_wave, inv_freq, interpolated))
        return inv_freq.astype(np.float32)


def read_rotary(config: dict, path: str, head_dim: int, *, theta_keys: tuple[str, ...] = ("rope_theta",),
                partial_keys: tuple[str, ...] = ("partial_rotary_factor",), default_partial: float = 1.0,
                default_theta: float = 10000.0) -> RotarySpec:
    """The `RotarySpec` of a config.json, in either form transformers has written.

    transformers 5 writes ``rope_parameters`` (with ``rope_theta`` inside);
    older configs have ``rope_theta`` (or GPT-NeoX's ``rotary_emb_base`` and
    ``rotary_pct``) at the top level and the scaling in ``rope_scaling``.
    ``theta_keys`` and ``partial_keys`` are the top-level spellings the family
    uses, read when ``rope_parameters`` does not say.
    """
    params = config.get("rope_parameters")
    source = "rope_parameters"
    if params is None:
        params, source = config.get("rope_scaling"), "rope_scaling"
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: {source!r} must be an object, got {params!r}")
    scaling = params.get("rope_type", params.get("type", "default"))
    if any(isinstance(value, dict) for value in params.values()):
        raise CheckpointError(f"{path}: {source!r} gives one rotary embedding per layer type, which is not supported")
    if scaling not in SCALINGS:
        raise CheckpointError(
            f"{path}: {source} has rope type {scaling!r}, which is not supported (supported: {', '.join(SCALINGS)})")

    def number(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise CheckpointError(f"{path}: {key!r} must be a positive number, got {value!r}")
        return float(value)

    def lookup(inner_key, top_keys, default):
        # rope_parameters first, then the family's top-level spellings, then transformers' default.
        if inner_key in params:
            return f"{source}.{inner_key}", params[inner_key]
        for key in top_keys:
            if config.get(key) is not None:
                return key, config[key]
        return inner_key, default

    theta = number(*lookup("rope_theta", theta_keys, default_theta))
    partial_key, partial = lookup("partial_rotary_factor", partial_keys, default_partial)
    partial = number(partial_key, partial)
    if partial > 1:
        raise CheckpointError(f"{path}: {partial_key!r} must be at most 1, got {partial!r}")
    rotary_dim = int(head_dim * partial)
    if rotary_dim < 2 or rotary_dim % 2:
        raise CheckpointError(
            f"{path}: {partial_key}={partial!r} of head_dim {head_dim} rotates {rotary_dim} channels; "
            "an even number of at least 2 is needed")
    spec = dict(rotary_dim=rotary_dim, theta=theta, scaling=scaling)
    if scaling in ("linear", "llama3"):
        if "factor" not in params:
            raise CheckpointError(f"{path}: {source} of rope type {scaling!r} needs 'factor'")
        spec["factor"] = number(f"{source}.factor", params["factor"])
    if scaling == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in params:
                raise CheckpointError(f"{path}: {source} of rope type 'llama3' needs {key!r}")
            spec[key] = number(f"{source}.{key}", params[key])
        if not spec["high_freq_factor"] > spec["low_freq_factor"]:
            raise CheckpointError(f"{path}: {source} needs high_freq_factor > low_freq_factor, got "
                                  f"{spec['high_freq_factor']} and {spec['low_freq_factor']}")
        # transformers falls back to max_position_embeddings, as we do.
        original = params.get("original_max_position_embeddings", config.get("original_max_position_embeddings",
                                                                              config.get("max_position_embeddings")))
        if isinstance(original, bool) or not isinstance(original, int) or original < 1:
            raise CheckpointError(f"{path}: {source}.original_max_position_embeddings must be a positive integer, "
                                  f"got {original!r}")
        spec["original_max_positions"] = original
    return RotarySpec(**spec)


def rotate(x: jax.Array, positions: jax.Array, rotary: RotarySpec) -> jax.Array:
    """``x`` [B, T, H, Dh] with the leading ``rotary_dim`` channels of each head rotated
    to ``positions`` [B, T]; computed in float32, returned in ``x``'s dtype."""
    inv_freq = jnp.asarray(rotary.inverse_frequencies())
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq  # [B, T, rotary_dim / 2]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    half = rotary.rotary_dim // 2
    compute = jnp.promote_types(x.dtype, jnp.float32)
    x1 = x[..., :half].astype(compute)
    x2 = x[..., half:rotary.rotary_dim].astype(compute)
    # (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin): the "rotate half" pairing.
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
    if rotary.rotary_dim == x.shape[-1]:
        return rotated
    return jnp.concatenate([rotated, x[..., rotary.rotary_dim:]], axis=-1)
