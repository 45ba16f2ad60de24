"""The prefill reads long prompts in chunks: the same run, less memory.

A chunked prefill (``prefill_chunk`` C smaller than the padded prompt P,
chunk boundaries that do not divide P, so the last chunk overlaps) must give
the one-call prefill's first tokens and caches (what the decode then reads;
tests/decoding/test_loop.py decodes from both with table models, where they
agree exactly), and
:func:`~sdsl_jax.decoding.pair.prompt_log_likelihood` its sums; XLA's
compiled memory of the prefill must lose the [B, P, V] logits. The models are
small random transformers (their attention reads the cache written by earlier
chunks, which is what chunking could get wrong) and, for the memory figures,
a bigram table, whose only large temporary is its logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from sdsl_jax.decoding import loop
from sdsl_jax.decoding.pair import prompt_log_likelihood
from sdsl_jax.models import ModelConfig, as_decoder, init_params
from sdsl_jax.models.ngram import mlp_ngram_decoder

VOCAB = 97
PROMPTS = [list(range(3, 16)), [5, 9, 2, 7, 1], [4]]  # P = 13: rows end in chunks 3, 1, 0
CHUNK = 4  # chunks start at 0, 4, 8 and 9 (the last overlaps the one before)
LOOKAHEAD = 2
MAX_NEW = 6


@pytest.fixture(scope="module")
def pair():
    target_config = ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64, vocab_size=VOCAB)
    draft_config = ModelConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, vocab_size=VOCAB)
    return (as_decoder(init_params(draft_config, 1), draft_config, name="draft"),
            as_decoder(init_params(target_config, 2), target_config, name="target"))


@pytest.fixture(scope="module")
def prompt_batch():
    return loop.pad_prompts(PROMPTS)


def _prefill(pair, prompt_batch, prefill_chunk, temperature):
    """The prefilled state, on the host."""
    keys = loop.row_keys(jax.random.PRNGKey(7), jnp.arange(len(PROMPTS)))
    state = loop.prefill(*pair, *prompt_batch, keys, lookahead=LOOKAHEAD, max_new_tokens=MAX_NEW,
                         temperature=temperature, prefill_chunk=prefill_chunk)
    return jax.tree_util.tree_map(np.asarray, state)


@pytest.mark.slow
def test_chunked_prefill_is_the_one_call_prefill(pair, prompt_batch):
    width = prompt_batch[0].shape[1]
    for temperature in (0.0, 1.0):
        whole = _prefill(pair, prompt_batch, width, temperature)
        chunked = _prefill(pair, prompt_batch, CHUNK, temperature)
        # The first token (at each row's prompt length) and the rest of the bookkeeping.
        for field in ("sequence", "length", "prompt_length", "uniforms", "temperature"):
            np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field), field)
        # Every cache entry, the overlapping chunk's rewritten ones and the padding's included.
        for role in ("draft_cache", "target_cache"):
            for got, want in zip(jax.tree_util.tree_leaves(getattr(chunked, role)),
                                 jax.tree_util.tree_leaves(getattr(whole, role))):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=role)
    # The rows' prompts were read: the target's first token follows its prompt.
    assert len(set(np.asarray(whole.sequence)[np.arange(3), whole.prompt_length].tolist())) > 1


@pytest.mark.slow
def test_chunked_prompt_log_likelihood(pair, prompt_batch):
    draft, target = pair
    tokens, lengths = prompt_batch
    # Reference: one full forward, log-softmax in float64 by scipy.
    logits, _ = jax.jit(target.forward)(target.params, tokens, jnp.zeros(3, jnp.int32),
                                        target.init_cache(3, tokens.shape[1]))
    logp = log_softmax(np.asarray(logits, np.float64), axis=-1)
    expected = [-sum(logp[b, t, PROMPTS[b][t + 1]] for t in range(len(PROMPTS[b]) - 1))
                for b in range(3)]
    for chunk in (CHUNK, tokens.shape[1]):
        nll, scored = prompt_log_likelihood(target, tokens, lengths, prefill_chunk=chunk)
        np.testing.assert_allclose(nll, expected, rtol=1e-5, err_msg=f"chunk {chunk}")
        np.testing.assert_array_equal(scored, [12, 4, 0])
    with pytest.raises(ValueError, match="prefill_chunk must be >= 1"):
        prompt_log_likelihood(target, tokens, lengths, prefill_chunk=0)
    with pytest.raises(ValueError, match="prefill_chunk must be >= 1"):
        loop.prefill(*pair, tokens, lengths, loop.row_keys(jax.random.PRNGKey(0), jnp.arange(3)),
                     lookahead=1, max_new_tokens=2, prefill_chunk=0)


def test_prefill_chunk_size_fits_the_budget():
    # Llama 3's vocabulary: 8 rows read 64 positions at a time, 1 row 512.
    assert loop.prefill_chunk_size(8, 128_256) == 64
    assert loop.prefill_chunk_size(1, 128_256) == 512
    for batch in (1, 3, 8):
        for vocab in (2, 1000, 50_257, 10**9):
            for budget in (1, 4096, 2**20):
                c = loop.prefill_chunk_size(batch, vocab, budget)
                assert c & (c - 1) == 0  # a power of two
                # The largest that fits, or 1 if none does.
                assert c == 1 or batch * c * vocab * 4 <= budget
                assert batch * 2 * c * vocab * 4 > budget


@pytest.mark.slow
def test_chunked_prefill_needs_less_memory():
    # A long prompt over a 512-token vocabulary, with logits from a matrix
    # product (an MLP's readout), so XLA cannot compute only the last
    # position's: the one-call prefill's logits are [4, 2048, 512] float32,
    # 16 MiB, far more than anything else it holds.
    target = mlp_ngram_decoder(0, np.zeros(512, np.float32), width=8, depth=1)
    batch, prompt_len = 4, 2048
    full_logits = batch * prompt_len * 512 * 4
    temp = {}
    for chunk in (prompt_len, 64):
        memory = loop.compiled_memory(None, target, batch_size=batch, prompt_len=prompt_len,
                                      lookahead=0, max_new_tokens=1, prefill_chunk=chunk)
        if memory["prefill"] is None:
            pytest.skip("this backend gives no memory analysis")
        temp[chunk] = memory["prefill"].temp_bytes
    assert temp[prompt_len] >= full_logits
    # Chunked: the logits of 64 positions (512 KiB), a few copies at most.
    assert temp[64] < full_logits / 8
