"""Speculative sampling is lossless: its output is distributed as the target's own samples.

The models are exact n-gram tables (sdsl_jax.models.ngram) over a 4-token
vocabulary, so the target's joint distribution of the first four generated
tokens is enumerated in closed form here, in numpy, independently of the
library. Many rows (one PRNG key each) decode the same prompt; a chi-square
test compares the counts of the 4^4 = 256 four-token continuations with the
exact joint. With lookahead 2 the window holds the first token (prefill), the
accepted drafts, a residual draw after a rejection, and the bonus token after
full acceptance, so every branch of the rule is tested. Seeds are fixed, so
the p-values are deterministic; the thresholds (lossless: p > 1e-3, wrong
rules: p < 1e-6) leave a wide margin either way.
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

from sdsl_jax.decoding import loop
from sdsl_jax.decoding.baseline import autoregressive_generate
from sdsl_jax.decoding.loop import pad_prompts, speculative_generate
from sdsl_jax.decoding.sampling import (
    Verdict,
    first_rejection,
    probabilities,
    sample,
    speculative_accept,
)
from sdsl_jax.models.ngram import ngram_decoder

_chi_spec = importlib.util.spec_from_file_location(
    "chi_square", pathlib.Path(__file__).with_name("chi_square.py"))
chi_square = importlib.util.module_from_spec(_chi_spec)
_chi_spec.loader.exec_module(chi_square)

VOCAB = 4
WINDOW = 4  # generated tokens whose joint law is tested
NUM_SAMPLES = 40_000
LOOKAHEAD = 2
PROMPT = [1, 3, 0]


# --------------------------------------------------------------------------
# Independent numpy reference for n-gram tables.


def next_distribution(params, sequence, temperature):
    """p(. | sequence) of an n-gram decoder, straight from its tables."""
    table = np.asarray(params["table"], np.float64)
    order = table.ndim
    pos = len(sequence)
    context = [sequence[pos - k] if pos - k >= 0 else 0 for k in range(order - 1, 0, -1)]
    logits = table[tuple(context)] if order > 1 else table
    if "position_bias" in params:
        bias = np.asarray(params["position_bias"], np.float64)
        # The bias belongs to the query position, that of the last token.
        logits = logits + bias[min(pos - 1, bias.shape[0] - 1)]
    if temperature == 0:
        out = np.zeros(VOCAB)
        out[np.argmax(logits)] = 1.0
        return out
    return softmax(logits / temperature)


def exact_joint(params, prompt, length, temperature):
    """P(first `length` generated tokens = s) for every s in V^length, flattened
    with the first token most significant."""
    probs = np.zeros(VOCAB ** length)
    for seq in itertools.product(range(VOCAB), repeat=length):
        p, context = 1.0, list(prompt)
        for tok in seq:
            p *= next_distribution(params, context, temperature)[tok]
            context.append(tok)
        probs[np.ravel_multi_index(seq, (VOCAB,) * length)] = p
    return probs


def chi_square_pvalue(tokens, probs):
    """Chi-square goodness of fit of the rows of `tokens` to `probs` over this file's
    vocabulary (tests/decoding/chi_square.py)."""
    return chi_square.chi_square_pvalue(tokens, probs, VOCAB)


# --------------------------------------------------------------------------
# Wrong acceptance rules the test must catch.


def always_accept(uniforms, draft_tokens, draft_probs, target_probs):
    """Every draft accepted: the drafted tokens follow q, not p."""
    gamma = draft_tokens.shape[0]
    betas = jnp.sum(jnp.minimum(target_probs[:gamma], draft_probs), axis=-1)
    return Verdict(jnp.int32(gamma), sample(uniforms[gamma], target_probs[gamma]), betas)


def no_residual(uniforms, draft_tokens, draft_probs, target_probs):
    """min(1, p/q) acceptance, but a rejected draft is replaced by a draw from p
    itself instead of the residual max(0, p - q): biased towards min(p, q)."""
    gamma = draft_tokens.shape[0]
    rows = jnp.arange(gamma)
    k = first_rejection(uniforms[:gamma] * draft_probs[rows, draft_tokens]
                        < target_probs[rows, draft_tokens])
    betas = jnp.sum(jnp.minimum(target_probs[:gamma], draft_probs), axis=-1)
    return Verdict(k, sample(uniforms[gamma], target_probs[k]), betas)


# --------------------------------------------------------------------------


def table_decoders(seed):
    """A trigram target with a position bias, a different bigram draft, and a
    trigram draft near the target (tables from numpy: no JAX work to set up).

    The bigram draft is stored as a trigram table that ignores the older
    context token, with a zero position bias: the same law, in the target's
    parameter structure, so every pair of these models runs one compiled loop
    per shape.
    """
    rng = np.random.default_rng(seed)
    target_table = rng.normal(size=(VOCAB,) * 3).astype(np.float32)
    bias = rng.normal(size=(16, VOCAB)).astype(np.float32)
    target = ngram_decoder(target_table, bias, name="target")
    # Correlated with the target's last-token marginal, so acceptance is
    # moderate (about 0.6) and rejections, residuals and bonuses all occur.
    draft_table = target_table.mean(axis=0) + 0.8 * rng.normal(size=(VOCAB,) * 2)
    draft = ngram_decoder(np.broadcast_to(draft_table.astype(np.float32), (VOCAB,) * 3),
                          np.zeros_like(bias), name="draft")
    near_table = target_table + 0.4 * rng.normal(size=target_table.shape)
    near = ngram_decoder(near_table.astype(np.float32), bias, name="near")
    return draft, target, near


@pytest.fixture(scope="module")
def models():
    return table_decoders(20230211)


@pytest.fixture(scope="module")
def pair(models):
    return models[:2]


@pytest.fixture(scope="module")
def batch():
    tokens, lengths = pad_prompts([PROMPT] * NUM_SAMPLES)
    return tokens, lengths


def run(pair, batch, temperature, accept_fn=None, seed=0):
    draft, target = pair
    kwargs = {} if accept_fn is None else {"accept_fn": accept_fn}
    return speculative_generate(draft, target, *batch, jax.random.PRNGKey(seed),
                                lookahead=LOOKAHEAD, max_new_tokens=WINDOW,
                                temperature=temperature, **kwargs)


@pytest.fixture(scope="module")
def runs(pair, batch):
    """Speculative samples at two temperatures (one compiled loop serves both)."""
    return {t: run(pair, batch, t) for t in (1.0, 0.6)}


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_speculative_samples_follow_target_joint(pair, runs, temperature):
    gen = runs[temperature]
    probs = exact_joint(pair[1].params, PROMPT, WINDOW, temperature)
    pvalue = chi_square_pvalue(np.asarray(gen.tokens), probs)
    assert pvalue > 1e-3, pvalue
    # Every branch occurred: rejections at both positions and full acceptance.
    first_k = np.asarray(gen.accepted[:, 0])
    assert set(np.unique(first_k)) == {0, 1, 2}


@pytest.mark.slow
def test_baseline_samples_follow_target_joint(pair, batch):
    gen = autoregressive_generate(pair[1], *batch, jax.random.PRNGKey(1), max_new_tokens=WINDOW,
                                  temperature=1.0)
    probs = exact_joint(pair[1].params, PROMPT, WINDOW, 1.0)
    assert chi_square_pvalue(np.asarray(gen.tokens), probs) > 1e-3


def test_speculative_differs_from_draft_joint(pair, runs):
    # Power check on the reference side: the draft's own law is far away.
    draft_probs = exact_joint(pair[0].params, PROMPT, WINDOW, 1.0)
    assert chi_square_pvalue(np.asarray(runs[1.0].tokens), draft_probs) < 1e-6


@pytest.mark.parametrize("rule", [always_accept, no_residual], ids=["always-accept", "no-residual"])
@pytest.mark.slow
def test_wrong_rule_is_rejected(pair, batch, rule):
    gen = run(pair, batch, 1.0, accept_fn=rule)
    probs = exact_joint(pair[1].params, PROMPT, WINDOW, 1.0)
    pvalue = chi_square_pvalue(np.asarray(gen.tokens), probs)
    assert pvalue < 1e-6, pvalue


# --------------------------------------------------------------------------
# Many prompts of different lengths (one shape, shared by the tests below).

LONG_LOOKAHEAD = 3
LONG_NEW = 24


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(11)
    return [rng.integers(0, VOCAB, size=int(n)).tolist() for n in rng.integers(1, 6, size=256)]


def generate_long(draft, target, prompts, temperature, seed, **settings):
    tokens, lengths = pad_prompts(prompts, 5)
    return speculative_generate(draft, target, tokens, lengths, jax.random.PRNGKey(seed),
                                lookahead=LONG_LOOKAHEAD, max_new_tokens=LONG_NEW,
                                temperature=temperature, **settings)


# --------------------------------------------------------------------------
# Greedy: exact equality with the target's own greedy decoding.


def greedy_reference(params, prompt, length):
    seq = list(prompt)
    for _ in range(length):
        seq.append(int(np.argmax(next_distribution(params, seq, 0.0))))
    return seq[len(prompt):]


@pytest.mark.slow
def test_greedy_equals_target_greedy(models, prompts):
    draft, target, near = models
    expected = np.array([greedy_reference(target.params, p, LONG_NEW) for p in prompts])
    # A far draft (rarely accepted) and a near one (often accepted).
    for d in (draft, near):
        gen = generate_long(d, target, prompts, 0.0, seed=0)
        np.testing.assert_array_equal(np.asarray(gen.tokens), expected)
    ran = np.arange(gen.accepted.shape[1]) < np.asarray(gen.num_iterations)[:, None]
    assert np.asarray(gen.accepted)[ran].mean() > 1.0, np.asarray(gen.accepted)[ran].mean()
    tokens, lengths = pad_prompts(prompts, 5)
    base = autoregressive_generate(target, tokens, lengths, jax.random.PRNGKey(5),
                                   max_new_tokens=LONG_NEW, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(base.tokens), expected)
    # With a stop: the greedy output up to the first end-of-sequence token (the
    # same compiled loop; top-k and top-p do not change greedy decoding).
    stop = generate_long(near, target, prompts, 0.0, seed=0, eos_token=EOS, top_k=1,
                         top_p=0.5)
    is_eos = expected == EOS
    length = np.where(is_eos.any(1), np.argmax(is_eos, axis=1) + 1, LONG_NEW)
    assert len(np.unique(length)) > 5  # rows stop at many different places
    cut = np.where(np.arange(LONG_NEW) < length[:, None], expected, EOS)
    np.testing.assert_array_equal(np.asarray(stop.tokens), cut)
    np.testing.assert_array_equal(np.asarray(stop.num_generated)[length < LONG_NEW],
                                  length[length < LONG_NEW])
    np.testing.assert_array_equal(stop.stopped, length < LONG_NEW)


# --------------------------------------------------------------------------
# The recorded betas are the exact acceptance probabilities.


@pytest.fixture(scope="module")
def long_run(pair, prompts):
    """Temperature 0.8, 256 prompts of lengths 1-5, 24 tokens each."""
    return prompts, generate_long(*pair, prompts, 0.8, seed=2)


@pytest.mark.slow
def test_betas_equal_exact_overlap(pair, long_run):
    draft, target = pair
    prompts, gen = long_run
    tokens = np.asarray(gen.tokens)
    accepted, betas = np.asarray(gen.accepted), np.asarray(gen.betas, np.float64)
    checked = 0
    for b, prompt in enumerate(prompts):
        sequence = list(prompt) + tokens[b].tolist()
        n = len(prompt) + 1  # committed tokens before the first iteration
        for it in range(int(gen.num_iterations[b])):
            k = int(accepted[b, it])
            for i in range(LONG_LOOKAHEAD):
                if i >= min(k + 1, LONG_LOOKAHEAD):
                    assert np.isnan(betas[b, it, i])  # not judged
                    continue
                if n + i > len(sequence):
                    continue  # the prefix runs past the tokens returned
                prefix = sequence[:n + i]
                p = next_distribution(target.params, prefix, 0.8)
                q = next_distribution(draft.params, prefix, 0.8)
                np.testing.assert_allclose(betas[b, it, i], np.minimum(p, q).sum(), atol=2e-6)
                checked += 1
            n += k + 1
        assert np.all(np.isnan(betas[b, int(gen.num_iterations[b]):]))
    assert checked > 2000


@pytest.mark.slow
def test_acceptance_counts_agree_with_betas(long_run):
    """Each judged position is accepted with probability beta, so sum K minus the
    sum of judged betas is a sum of zero-mean terms with variance sum beta (1 - beta)."""
    _, gen = long_run
    betas = np.asarray(gen.betas, np.float64)
    judged = betas[~np.isnan(betas)]
    total_k = int(np.asarray(gen.accepted).sum())
    z = (total_k - judged.sum()) / np.sqrt(np.sum(judged * (1 - judged)))
    assert abs(z) < 4, z
    # Judged positions are exactly sum min(K + 1, gamma) over the iterations that ran.
    ran = np.arange(gen.accepted.shape[1]) < np.asarray(gen.num_iterations)[:, None]
    trials = np.minimum(np.asarray(gen.accepted) + 1, LONG_LOOKAHEAD)[ran].sum()
    assert judged.size == trials


@pytest.mark.slow
def test_identical_draft_accepts_everything(models, prompts):
    target = models[1]
    gen = generate_long(target, target, prompts, 1.0, seed=4)
    ran = np.arange(gen.accepted.shape[1]) < np.asarray(gen.num_iterations)[:, None]
    assert np.all(np.asarray(gen.accepted)[ran] == LONG_LOOKAHEAD)
    betas = np.asarray(gen.betas)
    np.testing.assert_allclose(betas[~np.isnan(betas)], 1.0, atol=1e-6)


# --------------------------------------------------------------------------
# Serving settings: top-k, top-p and the stop at the end-of-sequence token.
# The loop must follow the TRUNCATED target, sampled with the same stop. The
# runs share the compiled loop of the tests above (the settings are traced).


def keep_reference(scaled, top_k, top_p):
    """Which tokens top-k then top-p keep, by their definitions, token by token:
    v is in the top k when fewer than k tokens have a strictly larger logit; it
    survives top-p when the renormalised mass of the kept tokens strictly more
    probable than v is below p. Also returns how close any such mass comes to
    p, so a test can make sure float32 rounding cannot move the boundary."""
    vocab = scaled.size
    keep = np.ones(vocab, bool)
    if top_k > 0:
        keep = np.array([np.sum(scaled > scaled[v]) < top_k for v in range(vocab)])
    margin = np.inf
    if top_p < 1:
        probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
        probs /= probs.sum()
        above = np.array([probs[probs > probs[v]].sum() for v in range(vocab)])
        margin = np.min(np.abs(above[keep] - top_p))
        keep &= above < top_p
    return keep, margin


def serving_distribution(params, sequence, temperature, top_k, top_p, margins):
    """The target's next-token law under temperature, top-k and top-p (numpy, float64)."""
    table = np.asarray(params["table"], np.float64)
    pos = len(sequence)
    logits = table[sequence[pos - 2], sequence[pos - 1]]
    bias = np.asarray(params["position_bias"], np.float64)
    scaled = (logits + bias[min(pos - 1, bias.shape[0] - 1)]) / temperature
    keep, margin = keep_reference(scaled, top_k, top_p)
    margins.append(margin)
    probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    return probs / probs.sum()


def serving_joint(params, prompt, length, temperature, top_k=0, top_p=1.0, eos_token=None):
    """P(the first `length` output tokens = s), s in V^length, first token most
    significant. With a stop, a sequence reads as its output followed by the
    end-of-sequence token as filler (what the loop returns): only sequences with
    nothing but that token after the first one have mass."""
    probs, margins = np.zeros(VOCAB ** length), []
    for seq in itertools.product(range(VOCAB), repeat=length):
        stop = seq.index(eos_token) if eos_token in seq else length - 1
        if any(tok != eos_token for tok in seq[stop + 1:]):
            continue
        p, context = 1.0, list(prompt)
        for tok in seq[:stop + 1]:
            p *= serving_distribution(params, context, temperature, top_k, top_p, margins)[tok]
            context.append(tok)
        probs[np.ravel_multi_index(seq, (VOCAB,) * length)] = p
    # No context puts a top-p boundary within 1e-3 of p: rounding cannot move it.
    assert min(margins) > 1e-3, min(margins)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-12)
    return probs


EOS = 2
# The p values keep every top-p boundary of these contexts 1e-3 away (see serving_joint).
SERVING = {  # name: (temperature, top_k, top_p, eos_token)
    "top-k-top-p": (1.0, 3, 0.82, None),
    "top-p": (0.7, 0, 0.75, None),
    "eos": (1.0, 0, 1.0, EOS),
    "eos-top-k-top-p": (0.8, 3, 0.85, EOS),
}


@pytest.fixture(scope="module")
def serving_runs(pair, batch):
    draft, target = pair
    return {name: speculative_generate(draft, target, *batch, jax.random.PRNGKey(7),
                                       lookahead=LOOKAHEAD, max_new_tokens=WINDOW,
                                       temperature=t, top_k=k, top_p=p, eos_token=eos)
            for name, (t, k, p, eos) in SERVING.items()}


@pytest.mark.parametrize("name", list(SERVING))
def test_serving_samples_follow_truncated_target(pair, serving_runs, name):
    temperature, top_k, top_p, eos = SERVING[name]
    gen = serving_runs[name]
    tokens = np.asarray(gen.tokens)
    probs = serving_joint(pair[1].params, PROMPT, WINDOW, temperature, top_k, top_p, eos)
    # Every returned row is a possible output (the chi-square pools cells of
    # zero mass away, so this is checked on its own).
    cells = np.ravel_multi_index(tuple(tokens.T), (VOCAB,) * WINDOW)
    assert np.all(probs[cells] > 0)
    assert chi_square_pvalue(tokens, probs) > 1e-3
    # Power: the untruncated, unstopped target is far from these samples.
    plain = exact_joint(pair[1].params, PROMPT, WINDOW, temperature)
    assert chi_square_pvalue(tokens, plain) < 1e-6
    # Every branch of the rule still occurs.
    assert set(np.unique(np.asarray(gen.accepted[:, 0]))) == {0, 1, 2}


def test_eos_stop_bookkeeping(serving_runs):
    gen = serving_runs["eos"]
    tokens, generated = np.asarray(gen.tokens), np.asarray(gen.num_generated)
    stopped = np.asarray(gen.stopped)
    has_eos = (tokens == EOS).any(axis=1)
    np.testing.assert_array_equal(stopped, has_eos)
    first = np.argmax(tokens == EOS, axis=1)
    # A stopped row generated up to and including the token; it is done
    # when it commits the token.
    np.testing.assert_array_equal(generated[stopped], first[stopped] + 1)
    assert np.all(generated[~stopped] >= WINDOW)
    iters, acc = np.asarray(gen.num_iterations), np.asarray(gen.accepted)
    np.testing.assert_array_equal(gen.finish_step, iters)
    assert np.all(iters[stopped & (first == 0)] == 0)  # EOS first: no iteration at all
    # The iteration that committed the token is recorded in full: where it
    # accepted drafts beyond the token, K exceeds what the row kept.
    ran = np.arange(acc.shape[1]) < iters[:, None]
    full = 1 + np.where(ran, acc + 1, 0).sum(1)
    assert np.all(full >= generated)
    assert np.any(full[stopped] > generated[stopped])
    # (A row that did not stop may still have cut its last iteration at the
    # token, beyond the tokens asked for; most did not.)
    assert np.mean(full[~stopped] == generated[~stopped]) > 0.9
    # Those tests are genuine: the accepted count is the sum of Bernoulli(beta)
    # draws over the judged positions, the positions past the token included.
    betas = np.asarray(gen.betas, np.float64)
    judged = betas[~np.isnan(betas)]
    assert judged.size == np.minimum(acc + 1, LOOKAHEAD)[ran].sum()
    z = (acc.sum() - judged.sum()) / np.sqrt(np.sum(judged * (1 - judged)))
    assert abs(z) < 4, z


# --------------------------------------------------------------------------
# Low precision: bfloat16 models are sampled exactly from their own
# distributions (softmax and the acceptance test run in float32).

DTYPES_SEEN = []


def dtype_spy(uniforms, draft_tokens, draft_probs, target_probs):
    """The exact rule, noting the dtypes it is handed when the loop is traced."""
    DTYPES_SEEN.append((uniforms.dtype, draft_probs.dtype, target_probs.dtype))
    return speculative_accept(uniforms, draft_tokens, draft_probs, target_probs)


def low_precision_decoders(dtype, seed=5):
    """A trigram target with a position bias and a bigram draft whose logits sit
    near 100, where bfloat16's spacing is 0.5, so rounding the tables to it
    moves the distribution far from the float32 model's. The position bias is
    a multiple of 0.5, so the model's bfloat16 sums are exact: XLA may keep
    bfloat16 intermediates in float32 when they feed a float32 op (its default
    excess precision), and exact sums give the same logits either way.
    Returns ((draft, target) in `dtype`, the target in float32)."""
    rng = np.random.default_rng(seed)
    table = 100 + rng.normal(size=(VOCAB,) * 3)
    bias = np.round(2 * rng.normal(size=(16, VOCAB))) / 2
    draft_table = np.broadcast_to(table.mean(axis=0) + 0.8 * rng.normal(size=(VOCAB,) * 2),
                                  (VOCAB,) * 3)
    low = lambda a: jnp.asarray(np.asarray(a, np.float32), dtype)
    target = ngram_decoder(low(table), low(bias), name="target")
    draft = ngram_decoder(low(draft_table), low(np.zeros_like(bias)), name="draft")
    return (draft, target), ngram_decoder(jnp.asarray(table, jnp.float32),
                                          jnp.asarray(bias, jnp.float32))


@pytest.mark.slow
def test_bfloat16_sampling_follows_bfloat16_target(batch):
    (draft, target), target_f32 = low_precision_decoders(jnp.bfloat16)
    logits, _ = jax.eval_shape(target.forward, target.params, batch[0], batch[1],
                               target.init_cache(NUM_SAMPLES, 8))
    assert logits.dtype == jnp.bfloat16
    gen = speculative_generate(draft, target, *batch, jax.random.PRNGKey(3), lookahead=LOOKAHEAD,
                               max_new_tokens=WINDOW, temperature=1.0)
    tokens = np.asarray(gen.tokens)
    # The reference reads the bfloat16 tables exactly (float64 sums of them).
    assert chi_square_pvalue(tokens, exact_joint(target.params, PROMPT, WINDOW, 1.0)) > 1e-3
    # Power: the float32 model the tables were rounded from is told apart, so
    # the test resolves what bfloat16 does to the distribution.
    assert chi_square_pvalue(tokens, exact_joint(target_f32.params, PROMPT, WINDOW, 1.0)) < 1e-6
    assert set(np.unique(np.asarray(gen.accepted[:, 0]))) == {0, 1, 2}
    assert gen.betas.dtype == jnp.float32


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_low_precision_loop_samples_in_float32(dtype):
    """The loop upcasts narrow logits: the state's uniforms and settings, the
    probabilities the acceptance rule is handed and the betas are float32.
    Traced only (eval_shape), so nothing compiles."""
    (draft, target), _ = low_precision_decoders(dtype)
    tokens, lengths = pad_prompts([PROMPT, [2]])

    def run():
        state = loop.prefill(draft, target, tokens, lengths,
                             loop.row_keys(jax.random.PRNGKey(0), jnp.arange(2)),
                             lookahead=LOOKAHEAD, max_new_tokens=WINDOW, top_k=3, top_p=0.9)
        return state, loop.decode(draft, target, state, lookahead=LOOKAHEAD,
                                  max_new_tokens=WINDOW, accept_fn=dtype_spy)

    DTYPES_SEEN.clear()
    state, gen = jax.eval_shape(run)
    logits, _ = jax.eval_shape(target.forward, target.params, tokens, jnp.zeros(2, jnp.int32),
                               target.init_cache(2, 8))
    assert logits.dtype == dtype
    for name in ("uniforms", "temperature", "top_p", "betas"):
        assert getattr(state, name).dtype == jnp.float32, name
    assert DTYPES_SEEN and set(DTYPES_SEEN) == {(np.dtype(np.float32),) * 3}
    assert gen.betas.dtype == jnp.float32
    assert probabilities(jnp.asarray([1.0, 2.0, 3.0, 0.5], dtype), 0.7, 2, 0.9).dtype == jnp.float32
