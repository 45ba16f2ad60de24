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

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import softmax

from sdsl_jax.decoding.baseline import autoregressive_generate
from sdsl_jax.decoding.loop import pad_prompts, speculative_generate
from sdsl_jax.decoding.sampling import Verdict, first_rejection, sample
from sdsl_jax.models.ngram import ngram_decoder

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
    """Chi-square goodness of fit of the rows of `tokens` to `probs`; cells
    expecting fewer than 5 counts are pooled so the test's approximation holds."""
    cells = np.ravel_multi_index(tuple(np.asarray(tokens).T), (VOCAB,) * tokens.shape[1])
    observed = np.bincount(cells, minlength=probs.size).astype(np.float64)
    expected = probs * observed.sum()
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


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


def generate_long(draft, target, prompts, temperature, seed):
    tokens, lengths = pad_prompts(prompts, 5)
    return speculative_generate(draft, target, tokens, lengths, jax.random.PRNGKey(seed),
                                lookahead=LONG_LOOKAHEAD, max_new_tokens=LONG_NEW,
                                temperature=temperature)


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
