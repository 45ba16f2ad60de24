"""Few compiled programs: teacher forcing reuses its programs across run sizes, and XLA's
memory estimate of the loop compiles the very executables the timed run then calls.

Compilations are counted by JAX's own event for a backend compilation (the one
``JAX_LOG_COMPILES`` prints as "Finished XLA compilation of ..."). The n-gram
decoders compile in a second, and the shapes here are used by no other test,
so each first call compiles here and the counts mean what they say.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.decoding import loop, metrics
from sdsl_jax.decoding.teacher_forced import forward_batch_rows, teacher_forced_acceptance
from sdsl_jax.models.ngram import ngram_decoder

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
VOCAB = 13  # no other test's vocabulary: these programs are compiled here first


@contextlib.contextmanager
def compilations():
    """The names of the programs XLA compiles inside the block (a list, filled as they come)."""
    names = []

    def listen(event, seconds, **kwargs):
        if event == BACKEND_COMPILE:
            names.append(str(kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def _softmax(logits, temperature):
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(17)
    target_table = rng.normal(size=(VOCAB, VOCAB))
    draft_table = target_table + 0.7 * rng.normal(size=(VOCAB, VOCAB))
    return (ngram_decoder(jnp.asarray(draft_table, jnp.float32), name="draft"),
            ngram_decoder(jnp.asarray(target_table, jnp.float32), name="target"),
            draft_table, target_table)


def test_forward_batch_rows_is_the_batch_or_the_next_power_of_two():
    assert [forward_batch_rows(n, 64) for n in (1, 2, 3, 5, 8, 9, 33, 64, 65, 1000)] == [
        1, 2, 4, 8, 8, 16, 64, 64, 64, 64]
    assert forward_batch_rows(5, 6) == 6 and forward_batch_rows(3, 3) == 3
    with pytest.raises(ValueError, match="batch_size"):
        forward_batch_rows(3, 0)


def test_teacher_forcing_of_another_size_compiles_nothing(pair):
    """5 then 7 documents (one forward batch of 8 rows, the interval padded to 64
    documents): the second run compiles no program, and both are the bigram's exact
    betas (numpy, float64)."""
    draft, target, draft_table, target_table = pair
    rng = np.random.default_rng(3)
    width, temperature = 11, 0.9
    beta = np.minimum(_softmax(target_table, temperature),
                      _softmax(draft_table, temperature)).sum(-1)
    for count, must_compile in ((5, True), (7, False)):
        lengths = rng.integers(2, width + 1, count)
        tokens = rng.integers(0, VOCAB, (count, width))
        with compilations() as names:
            res = teacher_forced_acceptance(draft, target, tokens, temperature, lengths=lengths)
        assert bool(names) == must_compile, names
        want = [beta[tokens[i, :lengths[i] - 1]].mean() for i in range(count)]
        np.testing.assert_allclose(res.document_acceptance, want, rtol=1e-5)
        assert res.low <= res.acceptance <= res.high


@pytest.mark.slow
def test_the_memory_estimate_compiles_the_programs_the_run_calls(pair):
    """compiled_memory, then a timed run of the same shapes: the run compiles neither the
    prefill nor the decode (JAX keeps the executables compiled ahead of time for its calls),
    so recording the estimate costs no second compilation of the loop."""
    draft, target, _, _ = pair
    batch, prompt_len, lookahead, max_new = 2, 3, 1, 3
    with compilations() as estimate:
        memory = loop.compiled_memory(draft, target, batch_size=batch, prompt_len=prompt_len,
                                      lookahead=lookahead, max_new_tokens=max_new)
    assert any("_prefill" in n for n in estimate) and any("_decode" in n for n in estimate)
    assert memory["prefill"].peak_bytes > 0 and memory["decode"].peak_bytes > 0
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, VOCAB, (batch, prompt_len)),
                         jnp.int32)
    keys = loop.row_keys(jax.random.PRNGKey(0), jnp.arange(batch))
    with compilations() as run:
        generation, _ = metrics.timed_generate(
            draft, target, tokens, jnp.full((batch,), prompt_len, jnp.int32), keys,
            lookahead=lookahead, max_new_tokens=max_new, temperature=0.6)
    assert not [n for n in run if "_prefill" in n or "_decode" in n], run
    assert np.all(np.asarray(generation.num_generated) >= max_new)
