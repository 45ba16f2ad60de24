"""The transformer as pure functions of a params pytree: what training and decoding call.

nnx modules hold their weights; jit, grad and the speculative loop want pure
functions of a pytree. ``params`` here is the plain nested dict of arrays of
``nnx.to_pure_dict`` (orbax saves it as it is), and every function rebuilds
the module from it with ``nnx.merge`` at trace time, which costs nothing at
run time. The graph definition comes from the config alone, so two models of
one size share compiled code, and the callables in a :class:`Decoder` are
frozen dataclasses equal by config, hence hashable as the contract requires.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.models.config import ModelConfig
from sdsl_jax.models.transformer import KVCache, Transformer, init_cache


@functools.lru_cache(maxsize=None)
def _graphdef(config: ModelConfig):
    return nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))[0]


def abstract_params(config: ModelConfig):
    """The params pytree of ``config`` as ShapeDtypeStructs (a restore target)."""
    model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model))


def init_params(config: ModelConfig, seed: int):
    """Freshly initialised params of ``config``, fixed by ``seed``.

    Drawn with numpy from the distributions the modules' own initialisers use
    (see transformer.py: embedding N(0, 1/d), kernels N(0, 1/fan_in), the
    residual-branch outputs further scaled by 1/(2 layers), norm scales 1).
    numpy needs no compilation, where initialising through jit costs seconds
    per size on a CPU, and it gives the same weights on every backend.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.asarray(np.ones(leaf.shape, np.float32), leaf.dtype)
        if name == "embedding":
            variance = 1.0 / config.d_model
        elif name == "kernel":
            residual_out = path[-2].key in ("out", "down")
            variance = (1.0 / (2 * config.num_layers) if residual_out else 1.0) / leaf.shape[0]
        else:
            raise AssertionError(f"no initialiser for parameter {jax.tree_util.keystr(path)}")
        sample = rng.standard_normal(leaf.shape, dtype=np.float32) * np.float32(np.sqrt(variance))
        return jnp.asarray(sample, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(config))


def count_params(params) -> int:
    """The number of scalars in a params pytree."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(params)))


def apply(config: ModelConfig, params, tokens, start=None, cache: KVCache | None = None):
    """``Transformer.__call__`` as a pure function: ``(logits[B, T, V], cache)``."""
    return nnx.merge(_graphdef(config), params)(tokens, start, cache)


@dataclasses.dataclass(frozen=True)
class TransformerForward:
    """The Decoder ``forward`` of a transformer of ``config``."""

    config: ModelConfig

    def __call__(self, params, tokens, start, cache):
        return apply(self.config, params, tokens, start, cache)


@dataclasses.dataclass(frozen=True)
class TransformerInitCache:
    """The Decoder ``init_cache`` of a transformer of ``config``."""

    config: ModelConfig

    def __call__(self, batch_size: int, max_len: int) -> KVCache:
        return init_cache(self.config, batch_size, max_len)


def _pure_params(model_or_params, config: ModelConfig):
    if isinstance(model_or_params, nnx.Module):
        params = nnx.to_pure_dict(nnx.state(model_or_params, nnx.Param))
    elif isinstance(model_or_params, nnx.State):
        params = nnx.to_pure_dict(model_or_params)
    else:
        params = model_or_params
    expected = abstract_params(config)
    if jax.tree.structure(params) != jax.tree.structure(expected):
        raise ValueError("as_decoder: the params do not have the structure of a transformer of "
                         f"{config}")
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"as_decoder: a parameter has shape {tuple(got.shape)} where "
                             f"{config} needs {tuple(want.shape)}")
    return jax.tree.map(jnp.asarray, params)


# Tensor parallelism over the mesh axis "model" (Megatron's layout; see
# sdsl_jax.decoding.decoder): the fused q/k/v projection and the MLP's up
# projection split their output columns, the attention output and the MLP's
# down projection their input rows, so each block needs one all-reduce per
# branch. The embedding (also the output layer) and the norm scales are
# replicated: at byte vocabularies they are a small share of the weights.
PARAM_SHARDING = (
    (r"blocks/\d+/attn/qkv/kernel", (None, "model")),
    (r"blocks/\d+/attn/out/kernel", ("model", None)),
    (r"blocks/\d+/mlp/up/kernel", (None, "model")),
    (r"blocks/\d+/mlp/down/kernel", ("model", None)),
)
# The cache [B, max_len, heads, head_dim] of every layer: split over heads.
CACHE_SHARDING = ((r"(keys|values)/\d+", (None, None, "model", None)),)

# The dtypes a transformer computes in, by name.
DTYPES = ("float32", "bfloat16", "float16")


def dtype_name(dtype) -> str:
    """``dtype`` (a name such as "bfloat16", or a numpy or JAX dtype) as a name in
    :data:`DTYPES`; a ValueError names the dtypes there are."""
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


def cast_params(params, dtype):
    """``params`` with every floating leaf in ``dtype`` (master weights to a compute dtype)."""
    dtype = jnp.dtype(dtype_name(dtype))
    return jax.tree.map(lambda leaf: leaf.astype(dtype)
                        if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf, params)


def as_decoder(model_or_params, config: ModelConfig, name: str = "transformer") -> Decoder:
    """A :class:`Decoder` for a transformer: an nnx ``Transformer``, its ``nnx.State``,
    or a pure params dict, with the ``config`` it was built from.

    ``num_params`` is the exact count of the weights (tied embedding counted once);
    ``dtype`` is ``config.dtype`` (the params are cast to it); the sharding
    annotations are :data:`PARAM_SHARDING` and :data:`CACHE_SHARDING`.
    """
    params = _pure_params(model_or_params, config)
    if config.dtype in DTYPES:
        params = cast_params(params, config.dtype)
    return Decoder(params=params, forward=TransformerForward(config),
                   init_cache=TransformerInitCache(config), vocab_size=config.vocab_size,
                   num_params=count_params(params), name=name, dtype=config.dtype,
                   param_sharding=PARAM_SHARDING, cache_sharding=CACHE_SHARDING)
