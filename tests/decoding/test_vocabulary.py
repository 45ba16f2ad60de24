"""A padded vocabulary adds ids of probability exactly zero, and the loop stays lossless over it.

The models are exact bigram tables (sdsl_jax.models.ngram) of different
vocabulary sizes, as a Qwen2.5-0.5B draft (151936 rows) and a Qwen2.5-7B
target (152064) are. The lossless check enumerates the target's joint law of
the first generated tokens in numpy, independently of the library, and
compares the loop's samples with it by a chi-square test (fixed seeds, so the
p-values are deterministic; threshold p > 1e-3).
"""

from __future__ import annotations

import importlib.util
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from sdsl_jax.decoding.loop import pad_prompts, speculative_generate
from sdsl_jax.decoding.sampling import probabilities
from sdsl_jax.decoding.vocabulary import PaddedForward, pad_vocabulary
from sdsl_jax.models.ngram import ngram_decoder

_chi_spec = importlib.util.spec_from_file_location(
    "chi_square", pathlib.Path(__file__).with_name("chi_square.py"))
chi_square = importlib.util.module_from_spec(_chi_spec)
_chi_spec.loader.exec_module(chi_square)

PROMPT = [1, 0]
WINDOW = 3  # generated tokens whose joint law is tested
NUM_SAMPLES = 20_000
LOOKAHEAD = 3


def _bigram(seed, vocab_size, name):
    table = 1.5 * np.random.default_rng(seed).normal(size=(vocab_size, vocab_size))
    return ngram_decoder(jnp.asarray(table, jnp.float32), name=name)


_probabilities = jax.jit(probabilities)


def _logits(decoder, tokens):
    tokens = jnp.asarray(tokens, jnp.int32)
    cache = decoder.init_cache(tokens.shape[0], tokens.shape[1])
    return decoder.forward(decoder.params, tokens, jnp.zeros(tokens.shape[0], jnp.int32), cache)[0]


def test_padded_ids_have_probability_exactly_zero():
    small = _bigram(0, 5, "small")
    padded = pad_vocabulary(small, 8)
    assert padded.vocab_size == 8 and padded.params is small.params and padded.num_params == small.num_params
    assert (padded.name, padded.dtype, padded.init_cache) == (small.name, small.dtype, small.init_cache)
    tokens = np.array([[0, 4, 2, 3], [1, 1, 0, 4]])
    original = np.asarray(_logits(small, tokens))
    for logits in (_logits(padded, tokens), jax.jit(padded.forward)(
            padded.params, jnp.asarray(tokens, jnp.int32), jnp.zeros(2, jnp.int32), padded.init_cache(2, 4))[0]):
        logits = np.asarray(logits)
        assert logits.shape == (2, 4, 8)
        np.testing.assert_array_equal(logits[..., :5], original)
        assert np.all(logits[..., 5:] == np.finfo(np.float32).min)
        # The loop's own probabilities, at the temperatures and truncations a run may use
        # (settings traced, so one compilation per shape serves them all).
        for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.3, 0, 1.0), (2.0, 0, 1.0), (1.0, 7, 1.0),
                                          (1.0, 0, 0.9), (0.0, 0, 1.0)]:
            settings = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
            probs = np.asarray(_probabilities(jnp.asarray(logits), *settings))
            assert np.all(probs[..., 5:] == 0.0), (temperature, top_k, top_p)
            assert np.all(np.isfinite(probs))
            expected = np.asarray(_probabilities(jnp.asarray(original), *settings))
            np.testing.assert_allclose(probs[..., :5], expected, rtol=1e-6, atol=1e-7)


def test_padding_compares_by_value_and_checks_its_input():
    small = _bigram(0, 5, "small")
    again = pad_vocabulary(_bigram(0, 5, "small"), 8)
    assert pad_vocabulary(small, 8).forward == again.forward
    assert hash(pad_vocabulary(small, 8).forward) == hash(again.forward)
    assert pad_vocabulary(small, 8).forward != pad_vocabulary(small, 9).forward
    assert pad_vocabulary(small, 5) is small
    # Padding twice pads the original once.
    assert pad_vocabulary(pad_vocabulary(small, 7), 9).forward == PaddedForward(small.forward, 5, 9)
    with pytest.raises(ValueError, match="vocab_size=4 is smaller than small's 5 ids"):
        pad_vocabulary(small, 4)
    with pytest.raises(ValueError, match="vocab_size must be an integer, got 7.5"):
        pad_vocabulary(small, 7.5)
    padded = pad_vocabulary(small, 8)
    # A padded id is valid input (read as the last real id); one beyond the padding is not.
    np.testing.assert_array_equal(_logits(padded, [[2, 7]]), _logits(padded, [[2, 4]]))
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 8\), got 8"):
        _logits(padded, [[2, 8]])


# --------------------------------------------------------------------------
# Lossless end to end.


def _exact_joint(decoder, vocab_size):
    """P(first WINDOW generated tokens = s) for s in [0, vocab_size)^WINDOW under ``decoder``'s
    own (unpadded) bigram table at temperature 1."""
    table = np.asarray(decoder.params["table"], np.float64)
    conditional = np.zeros((vocab_size, vocab_size))
    conditional[:table.shape[0], :table.shape[1]] = softmax(table, axis=-1)
    joint = np.zeros((vocab_size,) * WINDOW)
    for seq in itertools.product(range(vocab_size), repeat=WINDOW):
        p, previous = 1.0, PROMPT[-1]
        for token in seq:
            p *= conditional[previous, token]
            previous = token
        joint[seq] = p
    return joint.ravel()


def _chi_square_pvalue(tokens, probs, vocab_size):
    cells = np.ravel_multi_index(tuple(np.asarray(tokens).T), (vocab_size,) * WINDOW)
    observed = np.bincount(cells, minlength=probs.size)
    assert observed[probs == 0].sum() == 0, "a sequence of probability 0 was generated"
    return chi_square.chi_square_pvalue(tokens, probs, vocab_size)


@pytest.mark.slow
@pytest.mark.parametrize("padded_role", ["target", "draft"])
def test_loop_is_lossless_with_a_padded_model(padded_role):
    """A padded target: the draft proposes the target's missing ids often and the target
    never emits one. A padded draft: the target emits ids the draft lacks and the draft
    reads them. Either way the samples follow the target's own law."""
    small, large = _bigram(1, 4, "small"), _bigram(2, 6, "large")
    draft, target = (large, pad_vocabulary(small, 6)) if padded_role == "target" else (pad_vocabulary(small, 6), large)
    tokens, lengths = pad_prompts([PROMPT] * NUM_SAMPLES)
    generation = speculative_generate(draft, target, tokens, lengths, jax.random.PRNGKey(7),
                                      lookahead=LOOKAHEAD, max_new_tokens=WINDOW, temperature=1.0)
    samples = np.asarray(generation.tokens)[:, :WINDOW]
    if padded_role == "target":
        assert samples.max() < 4
        probs = _exact_joint(small, 6)
    else:
        assert samples.max() >= 4  # the target used the ids the draft lacks
        probs = _exact_joint(large, 6)
    assert _chi_square_pvalue(samples, probs, 6) > 1e-3
