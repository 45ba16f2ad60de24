"""Precision of our transformers: a bfloat16 decoder, and mixed-precision training gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax import models
from sdsl_jax.models import training

CONFIG = models.ModelConfig(d_model=16, num_layers=2, num_heads=2, d_ff=48)


@pytest.fixture(scope="module")
def params():
    return models.init_params(CONFIG, seed=4)


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 20)),
                       jnp.int32)


DTYPES = ("float32", "bfloat16", "float16")


@pytest.fixture(scope="module")
def decoders(params):
    return {dtype: models.as_decoder(params, dataclasses.replace(CONFIG, dtype=dtype))
            for dtype in DTYPES}


@pytest.fixture(scope="module")
def outputs(decoders, tokens):
    """dtype -> (logits, cache) of a cached forward pass; the three in one compilation."""
    batch, length = tokens.shape

    def run(all_params):
        return {dtype: decoders[dtype].forward(all_params[dtype], tokens,
                                               jnp.zeros((batch,), jnp.int32),
                                               decoders[dtype].init_cache(batch, length + 4))
                for dtype in DTYPES}

    return jax.jit(run)({dtype: decoders[dtype].params for dtype in DTYPES})


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_decoder_computes_in_it_and_tracks_float32(decoders, outputs, dtype):
    full, half = decoders["float32"], decoders[dtype]
    assert (full.dtype, half.dtype) == ("float32", dtype)
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(half.params)} == {dtype}
    assert half.num_params == full.num_params
    reference, _ = outputs["float32"]
    logits, cache = outputs[dtype]
    # Logits come back float32 for the sampling; the cache stays in the model's dtype.
    assert logits.dtype == jnp.float32
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(cache)} == {dtype}
    # Two layers of matmuls rounded to 8 (bf16) or 11 (fp16) bits of mantissa: errors
    # of a few units of their last bit, far below the spread of the logits.
    error = float(jnp.max(jnp.abs(logits - reference)))
    scale = float(jnp.std(reference))
    assert error < (0.05 if dtype == "bfloat16" else 0.01) * scale, (error, scale)
    assert error > 0  # it did compute in the narrower type
    # The same next-token choices almost everywhere.
    agree = float(jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(reference, -1)))
    assert agree > 0.9


def test_sharding_annotations_name_every_split_leaf(params):
    import re
    decoder = models.as_decoder(params, CONFIG)
    paths = ["/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                      for k in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(decoder.params)[0]]
    split = {p for p in paths if any(re.fullmatch(rule, p) for rule, _ in decoder.param_sharding)}
    # Every attention and MLP kernel of every block, and nothing else.
    assert split == {f"blocks/{i}/{name}/kernel" for i in range(CONFIG.num_layers)
                     for name in ("attn/qkv", "attn/out", "mlp/up", "mlp/down")}
    cache = jax.eval_shape(lambda: decoder.init_cache(1, 4))
    cache_paths = ["/".join(str(getattr(k, "name", getattr(k, "idx", k))) for k in path)
                   for path, _ in jax.tree_util.tree_flatten_with_path(cache)[0]]
    assert all(any(re.fullmatch(rule, p) for rule, _ in decoder.cache_sharding)
               for p in cache_paths) and len(cache_paths) == 2 * CONFIG.num_layers


@pytest.mark.slow
def test_mixed_precision_gradients_are_float32_and_near_the_float32_ones(tokens):
    """Master weights stay float32: the gradient of a bfloat16 pass reaches them in float32,
    and points where the float32 gradient points."""
    # One block: the gradient's path through attention, MLP, norms and the tied
    # embedding is all there, and the two backward passes compile in one program.
    config = dataclasses.replace(CONFIG, num_layers=1)
    params = models.init_params(config, seed=4)
    compute = dataclasses.replace(config, dtype="bfloat16")
    (loss16, grads16), (loss32, grads32) = jax.jit(lambda p: (
        jax.value_and_grad(lambda q: training.next_token_loss(compute, q, tokens))(p),
        jax.value_and_grad(lambda q: training.next_token_loss(config, q, tokens))(p)))(params)
    assert loss16.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
    assert float(loss16) == pytest.approx(float(loss32), rel=1e-2)
    g16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads16)])
    g32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads32)])
    cosine = g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32))
    assert cosine > 0.99 and not np.array_equal(g16, g32)


def test_bad_dtypes_are_refused(params):
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
        models.cast_params(params, "int8")
    with pytest.raises(training.TrainingError, match="dtype must be one of"):
        training.TrainSettings(steps=1, dtype="fp8")
