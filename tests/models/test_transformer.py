"""The transformer: exact parameter counts, and cached decoding equal to a full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sdsl_jax import models
from sdsl_jax.models import tokenizer
from sdsl_jax.decoding.decoder import Decoder

# float32 logits of magnitude ~10 computed along two summation orders.
ATOL = 2e-4

CONFIG = models.ModelConfig(d_model=16, num_layers=2, num_heads=2, d_ff=48)
MAX_LEN = 24  # the sequences' length: the last chunk runs into the end of the cache
APPLY = jax.jit(models.apply, static_argnums=0)


def hand_count(d, layers, ff, vocab):
    embedding = vocab * d                       # tied: also the output layer
    attention = 4 * d * d                       # q, k, v, out; no biases
    mlp = 2 * d * ff                            # up, down
    norms = 2 * d                               # two RMSNorm scales per block
    return embedding + layers * (attention + mlp + norms) + d   # + final norm


@pytest.mark.parametrize("size", list(models.SIZES))
def test_param_count_matches_hand_formula(size):
    config = models.SIZES[size]
    counts = models.param_counts(config)
    expected = hand_count(config.d_model, config.num_layers, config.d_ff, config.vocab_size)
    assert counts["total"] == expected
    assert counts["non_embedding"] == expected - config.vocab_size * config.d_model


@pytest.mark.parametrize("config", [CONFIG, models.SIZES["100k"], models.SIZES["10m"]],
                         ids=["d16-ff48", "100k", "10m"])
def test_param_count_matches_the_weights_allocated(config):
    # Shapes only (eval_shape): nothing is materialised.
    expected = hand_count(config.d_model, config.num_layers, config.d_ff, config.vocab_size)
    assert models.count_params(models.abstract_params(config)) == expected


def test_sizes_span_10k_to_over_100m_and_families_are_ordered():
    totals = [models.param_counts(c)["total"] for c in models.SIZES.values()]
    assert min(totals) < 12_000 and max(totals) > 100_000_000
    assert totals == sorted(totals)
    for family, sizes in models.FAMILIES.items():
        family_totals = [models.param_counts(models.model_config(s))["total"] for s in sizes]
        assert family_totals == sorted(family_totals), family


@pytest.fixture(scope="module")
def params():
    # Random weights larger than the initialiser's make attention peaky, so a
    # wrong mask or a stale cache entry moves the logits far more than ATOL.
    rng = np.random.default_rng(3)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: (1.0 + 0.1 * rng.standard_normal(x.shape) if path[-1].key == "scale"
                         else 0.5 * rng.standard_normal(x.shape)).astype(np.float32),
        models.abstract_params(CONFIG))


@pytest.fixture(scope="module")
def decoder(params):
    return models.as_decoder(params, CONFIG, name="test")


@pytest.fixture(scope="module")
def sequences():
    return jnp.asarray(np.random.default_rng(11).integers(0, tokenizer.VOCAB_SIZE, (3, 24)),
                       jnp.int32)


@pytest.fixture(scope="module")
def full_logits(decoder, sequences):
    logits, cache = APPLY(CONFIG, decoder.params, sequences)
    assert cache is None
    return np.asarray(logits)


@pytest.fixture(scope="module")
def forward(decoder):
    return jax.jit(decoder.forward)


def test_full_forward_is_causal(decoder, sequences, full_logits):
    # Independent of the cache: changing the tokens after t leaves the logits up to t alone.
    for t in (0, 9, 17):
        changed = np.array(sequences)
        changed[:, t + 1:] = np.random.default_rng(t).integers(0, tokenizer.VOCAB_SIZE,
                                                                (3, 24 - t - 1))
        logits, _ = APPLY(CONFIG, decoder.params, jnp.asarray(changed))
        np.testing.assert_allclose(np.asarray(logits)[:, :t + 1], full_logits[:, :t + 1], atol=ATOL)
        assert np.abs(np.asarray(logits)[:, t + 1:] - full_logits[:, t + 1:]).max() > 0.1
    assert np.abs(full_logits).max() > 1.0  # the comparisons are not of near-zeros


def test_prefill_then_one_token_at_a_time_matches_full_forward(decoder, forward, sequences,
                                                               full_logits):
    cache = decoder.init_cache(3, MAX_LEN)
    logits, cache = forward(decoder.params, sequences[:, :8], jnp.zeros(3, jnp.int32), cache)
    pieces = [np.asarray(logits)]
    for t in range(8, 24):
        logits, cache = forward(decoder.params, sequences[:, t:t + 1], jnp.full(3, t, jnp.int32),
                                cache)
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full_logits, atol=ATOL)


def test_chunks_with_per_row_starts_and_rollback_match_full_forward(decoder, forward, sequences,
                                                                    full_logits):
    """Rows advance by different amounts; tokens written past a row's position are junk
    (rejected drafts) and must never be read once the row is rolled back."""
    rng = np.random.default_rng(0)
    cache = decoder.init_cache(3, MAX_LEN)
    _, cache = forward(decoder.params, sequences[:, :8], jnp.zeros(3, jnp.int32), cache)
    start = np.array([8, 8, 8])
    chunk = 8  # the prefill's shape: one compilation serves both
    checked = np.zeros((3, 24), bool)
    checked[:, :8] = True
    while start.min() < 24 - chunk:
        keep = rng.integers(1, 5, size=3)  # true tokens this step; the rest is junk
        tokens = np.stack([np.asarray(sequences[b, start[b]:start[b] + chunk]) for b in range(3)])
        junk = rng.integers(0, tokenizer.VOCAB_SIZE, size=tokens.shape)
        tokens = np.where(np.arange(chunk)[None, :] < keep[:, None], tokens, junk)
        logits, cache = forward(decoder.params, jnp.asarray(tokens, jnp.int32),
                                jnp.asarray(start, jnp.int32), cache)
        logits = np.asarray(logits)
        for b in range(3):
            for t in range(keep[b]):
                np.testing.assert_allclose(logits[b, t], full_logits[b, start[b] + t], atol=ATOL)
                checked[b, start[b] + t] = True
        start = np.minimum(start + keep, 24 - chunk)
    assert checked[:, :24 - chunk].all()


def test_writes_past_max_len_are_dropped_not_clamped(decoder, forward, sequences, full_logits):
    # A chunk that runs off the end of the cache must not be shifted back onto
    # (and overwrite) the valid positions before it.
    cache = decoder.init_cache(3, MAX_LEN)
    _, cache = forward(decoder.params, sequences[:, :8], jnp.zeros(3, jnp.int32), cache)
    for t in range(8, 22):
        _, cache = forward(decoder.params, sequences[:, t:t + 1], jnp.full(3, t, jnp.int32), cache)
    overflow = jnp.concatenate([sequences[:, 22:24], sequences[:, :6]], axis=1)  # T = 8
    _, cache = forward(decoder.params, overflow, jnp.full(3, 22, jnp.int32), cache)
    logits, _ = forward(decoder.params, sequences[:, 21:22], jnp.full(3, 21, jnp.int32), cache)
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full_logits[:, 21], atol=ATOL)


def test_decoder_contract(decoder, params):
    assert isinstance(decoder, Decoder)
    assert decoder.vocab_size == tokenizer.VOCAB_SIZE
    assert decoder.num_params == hand_count(16, 2, 48, tokenizer.VOCAB_SIZE)
    # Equal configs give equal, hash-equal functions: compiled loops are reused.
    other = models.as_decoder(jax.tree.map(lambda x: 2 * x, params), CONFIG)
    assert other.forward == decoder.forward and hash(other.forward) == hash(decoder.forward)
    assert other.init_cache == decoder.init_cache
    cache = decoder.init_cache(2, 5)
    assert len(cache.keys) == CONFIG.num_layers
    assert cache.keys[0].shape == (2, 5, CONFIG.num_heads, CONFIG.head_dim)
    assert cache.keys[0].dtype == jnp.float32


def test_as_decoder_accepts_module_and_state(params):
    shapes = nnx.eval_shape(lambda: models.Transformer(CONFIG, rngs=nnx.Rngs(0)))
    model = nnx.merge(nnx.split(shapes)[0], params)
    for source in (model, nnx.state(model)):
        dec = models.as_decoder(source, CONFIG)
        assert jax.tree.structure(dec.params) == jax.tree.structure(params)
        for got, want in zip(jax.tree.leaves(dec.params), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bad_inputs_raise_clear_errors(params):
    with pytest.raises(ValueError, match="not divisible"):
        models.ModelConfig(d_model=10, num_layers=1, num_heads=3, d_ff=8)
    with pytest.raises(ValueError, match="even"):
        models.ModelConfig(d_model=6, num_layers=1, num_heads=2, d_ff=8)
    with pytest.raises(ValueError, match="unknown model size '7k'"):
        models.model_config("7k")
    with pytest.raises(ValueError, match="unknown family"):
        models.family_sizes("huge")
    wide = models.ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=48)
    with pytest.raises(ValueError, match="shape"):
        models.as_decoder(params, wide)
    with pytest.raises(ValueError, match="start must have shape"):
        models.apply(CONFIG, params, jnp.zeros((2, 3), jnp.int32), jnp.zeros(3, jnp.int32))


def test_float32_model_stays_float32_under_x64(decoder, sequences, full_logits):
    # `sdsl` runs its commands with x64 enabled: the cache (a loop carry) and the
    # logits must keep the model's dtype there too.
    with jax.enable_x64(True):
        cache = decoder.init_cache(3, MAX_LEN)
        logits, cache = jax.jit(decoder.forward)(decoder.params, sequences[:, :8],
                                                 jnp.zeros(3, jnp.int64), cache)
        assert logits.dtype == jnp.float32
        assert all(k.dtype == jnp.float32 for k in cache.keys + cache.values)
    np.testing.assert_allclose(np.asarray(logits), full_logits[:, :8], atol=ATOL)
