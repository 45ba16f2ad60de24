"""Teacher-forced acceptance against numpy, the analytic Markov-chain value, and the loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sdsl_jax.estimation.acceptance import estimate_acceptance
from sdsl_jax.estimation.measurements import MeasurementSet
from sdsl_jax.decoding import loop
from sdsl_jax.decoding.metrics import acceptance_inputs
from sdsl_jax.decoding.pair import run_records
from sdsl_jax.decoding.metrics import Timing
from sdsl_jax.decoding.teacher_forced import (
    document_interval,
    document_windows,
    position_acceptance,
    teacher_forced_acceptance,
)
from sdsl_jax.models.ngram import ngram_decoder, random_ngram_decoder

VOCAB = 8


def _softmax(x, t):
    z = x / t
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def pair():
    """A bigram target and a draft whose table is the target's plus noise."""
    rng = np.random.default_rng(3)
    target_table = 1.5 * rng.normal(size=(VOCAB, VOCAB))
    draft_table = target_table + 1.0 * rng.normal(size=(VOCAB, VOCAB))
    dtype = jnp.result_type(float)
    return (ngram_decoder(jnp.asarray(draft_table, dtype), name="draft"),
            ngram_decoder(jnp.asarray(target_table, dtype), name="target"),
            draft_table, target_table)


def _sample_chain(table, temperature, num_docs, length, seed, first=0):
    """Documents sampled from the bigram target with numpy (the reference sampler)."""
    rng = np.random.default_rng(seed)
    trans = _softmax(table, temperature)
    docs = np.zeros((num_docs, length), np.int64)
    docs[:, 0] = first
    for t in range(1, length):
        u = rng.random(num_docs)[:, None]
        docs[:, t] = np.minimum((np.cumsum(trans[docs[:, t - 1]], -1) < u).sum(-1), VOCAB - 1)
    return docs


def _analytic_alpha(draft_table, target_table, temperature, length, first=0, first_position=0):
    """E[mean beta over positions first_position..length-2] for text from the target chain
    (at the same temperature) started at token `first`."""
    p, q = _softmax(target_table, temperature), _softmax(draft_table, temperature)
    beta = np.minimum(p, q).sum(-1)  # beta per context token
    dist = np.eye(VOCAB)[first]
    total = 0.0
    for t in range(length - 1):
        total += (dist @ beta) * (t >= first_position)
        dist = dist @ p
    return total / (length - 1 - first_position)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_beta_matches_numpy(temperature):
    rng = np.random.default_rng(0)
    d, t = rng.normal(size=(2, 3, 5, 11)), rng.normal(size=(2, 3, 5, 11))
    got = np.asarray(jax.jit(position_acceptance)(jnp.asarray(d), jnp.asarray(t), temperature))
    if temperature == 0:
        want = (d.argmax(-1) == t.argmax(-1)).astype(float)
    else:
        want = np.minimum(_softmax(d, temperature), _softmax(t, temperature)).sum(-1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_per_document_betas_and_perplexity_match_numpy(pair):
    draft, target, draft_table, target_table = pair
    docs = [np.array([1, 4, 2, 7, 7, 0]), np.array([3, 5]), np.array([6, 2, 2, 1])]
    res = teacher_forced_acceptance(draft, target, docs, 0.8, batch_size=2, num_resamples=200)
    p, q = _softmax(target_table, 0.8), _softmax(draft_table, 0.8)
    beta = np.minimum(p, q).sum(-1)
    per_doc = [beta[d[:-1]].mean() for d in docs]
    np.testing.assert_allclose(res.document_acceptance, per_doc, rtol=1e-5)
    np.testing.assert_array_equal(res.document_positions, [5, 1, 3])
    assert res.positions == 9
    assert res.acceptance == pytest.approx(sum(beta[d[:-1]].sum() for d in docs) / 9, rel=1e-5)
    logp = np.log(_softmax(target_table, 1.0))
    nll = -sum(logp[d[:-1], d[1:]].sum() for d in docs) / 9
    assert res.target_perplexity == pytest.approx(np.exp(nll), rel=1e-5)
    assert res.low <= res.acceptance <= res.high
    # The padded-batch form gives the same numbers.
    batch = np.zeros((3, 6), np.int64)
    for i, d in enumerate(docs):
        batch[i, :d.size] = d
    res2 = teacher_forced_acceptance(draft, target, batch, 0.8, lengths=np.array([6, 2, 4]),
                                     num_resamples=200)
    assert res2.acceptance == pytest.approx(res.acceptance, rel=1e-6)


def test_bfloat16_models_are_scored_in_float32(pair):
    """bfloat16 logits: beta and the perplexities are those of the bfloat16-rounded
    tables computed in float64 by numpy, to float32 resolution, not bfloat16's (which
    would be off by about 1e-2 here)."""
    _, _, draft_table, target_table = pair
    rounded = [np.asarray(jnp.asarray(t, jnp.bfloat16).astype(jnp.float32), np.float64)
               for t in (draft_table, target_table)]
    draft, target = (ngram_decoder(jnp.asarray(t, jnp.bfloat16), name=n)
                     for t, n in zip(rounded, ("draft", "target")))
    docs = [np.array([1, 4, 2, 7, 7, 0, 3, 3, 5]), np.array([6, 2, 2, 1, 0])]
    res = teacher_forced_acceptance(draft, target, docs, 0.8, batch_size=2)
    beta = np.minimum(_softmax(rounded[1], 0.8), _softmax(rounded[0], 0.8)).sum(-1)
    np.testing.assert_allclose(res.document_acceptance, [beta[d[:-1]].mean() for d in docs],
                               rtol=2e-6)
    logp = np.log(_softmax(rounded[1], 1.0))
    nll = -sum(logp[d[:-1], d[1:]].sum() for d in docs) / res.positions
    assert res.target_perplexity == pytest.approx(np.exp(nll), rel=2e-6)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_alpha_matches_analytic_markov_value(pair, temperature):
    draft, target, draft_table, target_table = pair
    length = 24
    docs = _sample_chain(target_table, 1.0, 256, length, seed=11)
    if temperature == 0:
        # Greedy: beta is an indicator per context; text from the T = 1 chain.
        p = _softmax(target_table, 1.0)
        agree = (draft_table.argmax(-1) == target_table.argmax(-1)).astype(float)
        dist, total = np.eye(VOCAB)[0], 0.0
        for _ in range(length - 1):
            total, dist = total + dist @ agree, dist @ p
        want = total / (length - 1)
    else:
        want = _analytic_alpha(draft_table, target_table, temperature, length)
    res = teacher_forced_acceptance(draft, target, docs, temperature, batch_size=64)
    assert res.low <= want <= res.high, (res.low, want, res.high)
    # The interval is about the size a document-level standard error implies.
    se = np.nanstd(res.document_acceptance, ddof=1) / np.sqrt(len(docs))
    assert 2.5 * se < res.high - res.low < 6 * se + 1e-3


@pytest.mark.slow
def test_agrees_with_the_speculative_loop(pair):
    """The loop's count estimate and teacher forcing on the loop's own (target-distributed)
    output estimate the same alpha."""
    draft, target, draft_table, target_table = pair
    num_prompts, new = 48, 24
    prompts = jnp.zeros((num_prompts, 1), jnp.int32)
    lens = jnp.ones((num_prompts,), jnp.int32)
    gen = loop.speculative_generate(draft, target, prompts, lens, jax.random.PRNGKey(5),
                                    lookahead=4, max_new_tokens=new, temperature=1.0)
    records = run_records(gen, Timing(prefill_seconds=0.0, decode_seconds=1.0),
                          prompt_ids=list(range(num_prompts)),
                          prompt_lengths=[1] * num_prompts, max_new_tokens=new, temperature=1.0)
    acc, gam, ids = acceptance_inputs(records)
    est = estimate_acceptance(acc, gam, ids, interval="cluster", num_prompts=num_prompts)
    text = np.concatenate([np.zeros((num_prompts, 1), np.int64), np.asarray(gen.tokens)], 1)
    # Positions >= 1: the first token after the prompt is sampled, never drafted.
    tf = teacher_forced_acceptance(draft, target, text, 1.0, first_position=1, batch_size=48)
    print(f"\nloop {float(est.acceptance):.4f} [{float(est.low):.4f}, {float(est.high):.4f}]; "
          f"teacher-forced {tf.acceptance:.4f} [{tf.low:.4f}, {tf.high:.4f}]")
    assert max(est.low, tf.low) <= min(est.high, tf.high), (est, tf)
    truth = _analytic_alpha(draft_table, target_table, 1.0, new + 1, first_position=1)
    print(f"analytic {truth:.4f}")
    assert tf.low <= truth <= tf.high
    assert est.low <= truth <= est.high


def test_measurement_row_loads(pair):
    draft, target, *_ = pair
    res = teacher_forced_acceptance(draft, target, [np.arange(8) % VOCAB] * 3, 1.0,
                                    num_resamples=100)
    row = res.measurement_row(draft_tokens=1e6, target_tokens="2M", lookahead=4,
                              prompt_set="toy")
    ms = MeasurementSet.from_records([row])
    assert ms.acceptance[0] == pytest.approx(res.acceptance)
    assert ms.columns["lookahead"][0] == 4 and ms.columns["prompts"][0] == 3
    with pytest.raises(ValueError, match="lookahead"):
        res.measurement_row(draft_tokens=1, target_tokens=1, lookahead=0)


def test_bad_input_errors(pair):
    draft, target, *_ = pair
    other = random_ngram_decoder(0, VOCAB + 1, 1)
    with pytest.raises(ValueError, match="vocabularies"):
        teacher_forced_acceptance(other, target, [[1, 2]])
    with pytest.raises(ValueError, match="temperature"):
        teacher_forced_acceptance(draft, target, [[1, 2]], -1.0)
    with pytest.raises(ValueError, match=r"lie in \[0, 8\)"):
        teacher_forced_acceptance(draft, target, [[1, 9]])
    with pytest.raises(ValueError, match="no position"):
        teacher_forced_acceptance(draft, target, [[1], [2]])
    with pytest.raises(ValueError, match="lengths must lie"):
        teacher_forced_acceptance(draft, target, np.zeros((2, 3), int), lengths=np.array([1, 4]))
    with pytest.raises(ValueError, match="empty"):
        teacher_forced_acceptance(draft, target, [])


@pytest.mark.parametrize("window", [2, 3, 8, 9])
def test_windows_count_every_position_once(window):
    rng = np.random.default_rng(window)
    docs = [rng.integers(0, VOCAB, n) for n in (0, 1, 2, window - 1, window, window + 1, 31)]
    tokens, lengths, first, ids = document_windows(docs, window)
    stride = max(1, window // 2)
    for d, doc in enumerate(docs):
        rows = np.flatnonzero(ids == d)
        counted = []
        for j, r in enumerate(rows):
            start = j * stride
            np.testing.assert_array_equal(tokens[r, :lengths[r]], doc[start:start + window])
            # Positions first .. length - 2 of the window predict a token inside it.
            counted += [start + t for t in range(first[r], lengths[r] - 1)]
            if j:  # past the first window, each counted position sees >= window - stride tokens
                assert first[r] + 1 >= window - stride
        assert counted == list(range(max(0, doc.size - 1))), (d, counted)


@pytest.mark.slow
def test_windows_of_a_document_are_one_unit_of_the_interval(pair):
    """A bigram's beta depends on the current token only, so reading documents in windows
    must give exactly the whole-document numbers, interval included."""
    draft, target, *_ = pair
    rng = np.random.default_rng(4)
    docs = [rng.integers(0, VOCAB, n) for n in (40, 7, 25, 13, 2)]
    whole = teacher_forced_acceptance(draft, target, docs, 0.9, num_resamples=200)
    tokens, lengths, first, ids = document_windows(docs, 6)
    # Ids need not be 0..D-1: any integers name the documents.
    windowed = teacher_forced_acceptance(draft, target, tokens, 0.9, lengths=lengths,
                                         first_position=first, document_ids=10 * ids + 3,
                                         num_resamples=200)
    assert tokens.shape[0] > len(docs)
    np.testing.assert_allclose(windowed.document_acceptance, whole.document_acceptance,
                               rtol=1e-5)
    np.testing.assert_array_equal(windowed.document_positions, whole.document_positions)
    assert windowed.documents == whole.documents == len(docs)
    assert (windowed.acceptance, windowed.low, windowed.high) == pytest.approx(
        (whole.acceptance, whole.low, whole.high), rel=1e-5)
    assert windowed.draft_perplexity == pytest.approx(whole.draft_perplexity, rel=1e-5)


def test_per_row_arguments_are_checked(pair):
    draft, target, *_ = pair
    batch = np.zeros((3, 4), np.int64)
    with pytest.raises(ValueError, match=r"first_position must be an int or ints of shape \(3,\)"):
        teacher_forced_acceptance(draft, target, batch, first_position=np.zeros(2, int))
    with pytest.raises(ValueError, match="first_position must be >= 0"):
        teacher_forced_acceptance(draft, target, batch, first_position=np.array([0, -1, 0]))
    with pytest.raises(ValueError, match=r"document_ids must be ints of shape \(3,\)"):
        teacher_forced_acceptance(draft, target, batch, document_ids=1)
    with pytest.raises(ValueError, match="document_ids must be >= 0"):
        teacher_forced_acceptance(draft, target, batch, document_ids=np.array([0, -2, 1]))
    with pytest.raises(ValueError, match="window must be an int >= 2"):
        document_windows([[1, 2]], 1)


@pytest.mark.slow
def test_document_interval_covers_with_documents_of_very_different_lengths():
    """16 documents of 70 to 36k positions, rates ~ Beta(18, 12) around 0.6: the cluster
    interval covers 0.969 over 1000 runs (module docstring), the expanded percentile
    bootstrap it replaced 0.907, a z = 1 interval 0.674. 600 runs: standard error 0.009."""
    from sdsl_jax.estimation.acceptance import cluster_interval
    rng = np.random.default_rng(5)
    runs, m, truth = 600, 16, 0.6
    n = np.round(np.exp(rng.uniform(np.log(70), np.log(36000), (runs, m))))
    sums = rng.binomial(n.astype(int), rng.beta(18, 12, (runs, m))).astype(float)
    # document_interval is cluster_interval of the per-document totals.
    for r in range(3):
        np.testing.assert_allclose(document_interval(sums[r], n[r]),
                                   cluster_interval(sums[r], n[r]), rtol=1e-5)
    z1 = float(2 * stats.norm.cdf(1.0) - 1)
    batched = jax.jit(jax.vmap(cluster_interval, in_axes=(0, 0, None)))
    cover = {}
    for level in (0.95, z1):
        low, high = (np.asarray(x) for x in batched(jnp.asarray(sums, jnp.float32),
                                                    jnp.asarray(n, jnp.float32), level))
        cover[level] = np.mean((low <= truth) & (truth <= high))
    print(f"\ncoverage {cover[0.95]:.3f} (z = 1: {cover[z1]:.3f})")
    assert 0.93 <= cover[0.95] <= 0.99
    assert cover[z1] < 0.8


def test_document_interval_with_two_dominant_documents():
    """One long document with an unusual rate (as the standard library's held-out files
    give): two documents hold 60% of the positions, so the interval is about what two
    units allow, wide but far from the bootstrap-t's [0.034, 0.634]."""
    rates = np.array([0.61, 0.61, 0.61, 0.62, 0.47, 0.6, 0.61, 0.6, 0.6, 0.64, 0.63, 0.61,
                      0.54, 0.6, 0.61, 0.61])
    n = np.array([2404, 10722, 5060, 8572, 34681, 1023, 4133, 1852, 3557, 3344, 1608, 8155,
                  1302, 8560, 35767, 167], float)
    low, high = document_interval(rates * n, n)
    alpha = (rates * n).sum() / n.sum()
    assert 0.35 < low < alpha < high < 0.8 and high - low < 0.35
    # Equal documents with the same rates: as narrow as the rates' spread allows.
    eq_low, eq_high = document_interval(rates * 5000, np.full(16, 5000.0))
    assert rates.min() < eq_low < eq_high < rates.max()
    with pytest.raises(ValueError, match="1-D of one shape"):
        document_interval(np.ones(3), np.ones(4))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _loop_minus_teacher_forced(key, lookahead, length, runs, rho, sigma, mean_logit):
    """alpha_loop - alpha_tf on texts whose logit beta is mean_logit + an AR(1) process.

    The loop is simulated position by position: a judged position is accepted with
    probability beta_t; after `lookahead` acceptances the next position is the target's
    bonus token and is not judged; a rejection starts a new iteration at the next
    position. Each judged position adds its beta_t (its expected outcome) to the loop's
    sum, on the same texts the teacher-forced mean runs over.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    z0 = sigma * jax.random.normal(k1, (runs,))
    noise = jax.random.normal(k2, (length, runs))
    u = jax.random.uniform(k3, (length, runs))

    def ar(z, e):
        z = rho * z + jnp.sqrt(1 - rho * rho) * sigma * e
        return z, z

    _, z = jax.lax.scan(ar, z0, noise)
    beta = jax.nn.sigmoid(mean_logit + z)

    def step(accepted_so_far, x):
        b, uu = x
        bonus = accepted_so_far == lookahead
        accept = (uu < b) & ~bonus
        nxt = jnp.where(accept, accepted_so_far + 1, 0)
        return nxt, (~bonus, jnp.where(bonus, 0.0, b))

    _, (judged, judged_beta) = jax.lax.scan(step, jnp.zeros((runs,), jnp.int32), (beta, u))
    return jnp.sum(judged_beta) / jnp.sum(judged) - jnp.mean(beta)


@pytest.mark.slow
def test_loop_and_teacher_forced_alphas_differ_when_beta_is_autocorrelated():
    """The module docstring's table, on 128 texts of 2048 positions (sigma 1.5): equal
    without autocorrelation, the loop lower with it, most at small lookahead
    (docstring: -0.044 at gamma 1 and -0.014 at gamma 4 for rho 0.9)."""
    key = jax.random.PRNGKey(3)
    diff = {(rho, g): float(_loop_minus_teacher_forced(key, g, 2048, 128, rho, 1.5, 0.5))
            for rho in (0.0, 0.9) for g in (1, 4)}
    print(f"\n{diff}")
    assert abs(diff[0.0, 1]) < 0.003 and abs(diff[0.0, 4]) < 0.003
    assert -0.06 < diff[0.9, 1] < -0.03
    assert -0.025 < diff[0.9, 4] < -0.007
