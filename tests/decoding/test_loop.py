"""The speculative loop's parts: sampling primitives, the acceptance rule, the
loop's bookkeeping, latency metrics, records and the toy decoders.

The distributional guarantees (lossless sampling, exact betas, greedy
equality) are in tests/decoding/test_lossless.py; here each piece is checked against
an independent computation (brute force, quadrature over the uniforms,
scipy, numpy).
"""

from __future__ import annotations

import itertools
import json
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from sdsl_jax.estimation.acceptance import estimate_acceptance
from sdsl_jax.decoding import loop, metrics
from sdsl_jax.decoding.baseline import autoregressive_generate
from sdsl_jax.decoding.pair import measure_pair, prompt_log_likelihood, run_records
from sdsl_jax.decoding.sampling import (
    acceptance_probability,
    first_rejection,
    probabilities,
    residual,
    sample,
    speculative_accept,
)
from sdsl_jax.models.ngram import mlp_ngram_decoder, ngram_decoder, ngram_forward

VOCAB = 6


# --------------------------------------------------------------------------
# Sampling primitives.


def test_probabilities_match_softmax_and_one_hot():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, VOCAB)).astype(np.float32)
    for fn in (probabilities, jax.jit(probabilities)):
        np.testing.assert_allclose(fn(logits, 0.7), softmax(logits / 0.7, axis=-1), rtol=1e-5)
        hot = np.asarray(fn(logits, 0.0))
        np.testing.assert_array_equal(hot, np.eye(VOCAB)[np.argmax(logits, axis=-1)])
    # Ties at T = 0 go to the first maximum.
    np.testing.assert_array_equal(probabilities(jnp.array([1.0, 3.0, 3.0]), 0.0), [0, 1, 0])
    # bfloat16 logits are upcast for sampling.
    assert probabilities(jnp.ones(4, jnp.bfloat16), 1.0).dtype == jnp.float32


@pytest.mark.slow
def test_sample_inverts_the_cdf_exactly():
    draw = jax.jit(sample)
    weights = jnp.array([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    # Midpoints of a fine grid of u: each token gets exactly its weight's share.
    m = 10_000
    u = (jnp.arange(m) + 0.5) / m
    counts = np.bincount(np.asarray(draw(u, jnp.broadcast_to(weights, (m, 6)))), minlength=6)
    np.testing.assert_allclose(counts / m, weights, atol=1.5 / m)
    # Against a float64 searchsorted for vocabularies around the block size
    # (the CDF is summed in blocks of about sqrt(V)).
    grid = (np.arange(4000) + 0.5) / 4000
    for vocab in (1, 17, 1000):
        rng = np.random.default_rng(vocab)
        w = (rng.random(vocab) * (rng.random(vocab) > 0.3)).astype(np.float32)
        w[0] += np.float32(w.sum() == 0)
        got = np.asarray(draw(jnp.asarray(grid, jnp.float32),
                              jnp.broadcast_to(jnp.asarray(w), (grid.size, vocab))))
        ref = np.searchsorted(np.cumsum(w, dtype=np.float64), grid * w.astype(np.float64).sum(),
                              side="right")
        assert np.sum(got != ref) <= 1 and np.all(w[got] > 0), vocab
    # Unnormalised weights and the ends of [0, 1): never a zero-weight token.
    six = jnp.stack([7 * weights, weights, weights])
    ends = jnp.array([0.0, float(np.nextafter(np.float32(1), np.float32(0))), 1.0])
    # u = 1 stands in for u * total rounding up to total: the fallback picks
    # the last token of positive weight.
    np.testing.assert_array_equal(draw(ends, six), [1, 4, 4])
    tiny = jnp.array([[0.1, 0.1, 0.1, 1e-30, 0.0]])
    assert int(draw(jnp.array([1.0]), tiny)[0]) == 3


def test_first_rejection_brute_force():
    for bits in itertools.product([False, True], repeat=5):
        expected = next((i for i, b in enumerate(bits) if not b), 5)
        assert int(first_rejection(jnp.array(bits))) == expected


def test_residual_and_acceptance_probability():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(VOCAB), size=4)
    q = rng.dirichlet(np.ones(VOCAB), size=4)
    np.testing.assert_allclose(residual(p, q), np.maximum(p - q, 0), atol=1e-7)
    np.testing.assert_allclose(acceptance_probability(p, q), np.minimum(p, q).sum(-1), rtol=1e-6)
    # 1 - TV(p, q), the other way to write beta.
    np.testing.assert_allclose(acceptance_probability(p, q), 1 - 0.5 * np.abs(p - q).sum(-1),
                               rtol=1e-6)
    # p == q: no residual mass, the fallback is p itself.
    np.testing.assert_allclose(residual(p, p), p)


def rule_quadrature(p, q, m=300):
    """Run speculative_accept for gamma = 1 over every draft token x and an
    m x m midpoint grid of (acceptance u, emission u), weighting by q(x)/m^2.
    Returns (law of the first emitted token, law of the bonus given acceptance,
    probability of acceptance)."""
    vocab = p.shape[-1]
    u = (np.arange(m) + 0.5) / m
    x, ua, un = (a.ravel() for a in np.meshgrid(np.arange(vocab), u, u, indexing="ij"))
    uniforms = jnp.asarray(np.stack([ua, un], axis=1), jnp.float32)
    verdict = jax.jit(jax.vmap(speculative_accept, in_axes=(0, 0, None, None)))(
        uniforms, jnp.asarray(x[:, None], jnp.int32), jnp.asarray(q[None], jnp.float32),
        jnp.asarray(p, jnp.float32))
    k = np.asarray(verdict.num_accepted)
    nxt = np.asarray(verdict.next_token)
    w = q[x] / m ** 2
    first = np.where(k == 1, x, nxt)
    first_law = np.bincount(first, weights=w, minlength=vocab)
    accepted = k == 1
    bonus_law = np.bincount(nxt[accepted], weights=w[accepted], minlength=vocab) / w[accepted].sum()
    return first_law, bonus_law, w[accepted].sum(), np.asarray(verdict.betas)


def test_accept_rule_emits_target_law_by_quadrature():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(5), size=2)  # p_1 and the bonus distribution p_2
    q = rng.dirichlet(np.ones(5))
    first_law, bonus_law, accept_prob, betas = rule_quadrature(p, q)
    # Grid error is O(1/m) per token.
    np.testing.assert_allclose(first_law, p[0], atol=5e-3)
    np.testing.assert_allclose(bonus_law, p[1], atol=5e-3)
    np.testing.assert_allclose(accept_prob, np.minimum(p[0], q).sum(), atol=5e-3)
    np.testing.assert_allclose(betas, np.minimum(p[0], q).sum(), rtol=1e-6)


def test_accept_rule_greedy_is_argmax_agreement():
    eye = np.eye(4, dtype=np.float32)
    u = np.array([0.999, 0.5, 0.2], np.float32)
    accept = jax.jit(speculative_accept)
    # Draft argmax 2 twice; target argmax 2 then 3: accept one, emit 3.
    v = accept(u, np.array([2, 2]), eye[[2, 2]], eye[[2, 3, 1]])
    assert (int(v.num_accepted), int(v.next_token)) == (1, 3)
    np.testing.assert_array_equal(v.betas, [1.0, 0.0])
    # Both agree: accept both and emit the target's bonus argmax.
    v = accept(u, np.array([2, 3]), eye[[2, 3]], eye[[2, 3, 1]])
    assert (int(v.num_accepted), int(v.next_token)) == (2, 1)


def test_accept_rule_lookahead_zero_is_plain_sampling():
    p = jnp.array([[0.1, 0.6, 0.3]])
    v = speculative_accept(jnp.array([0.65]), jnp.zeros((0,), jnp.int32), jnp.zeros((0, 3)), p)
    assert int(v.num_accepted) == 0 and int(v.next_token) == 1 and v.betas.shape == (0,)


# --------------------------------------------------------------------------
# Toy decoders.


def numpy_ngram_logits(table, bias, history, pos):
    order = table.ndim
    ctx = tuple(history[pos - k] if pos - k >= 0 else 0 for k in range(order - 2, -1, -1))
    out = table[ctx] if order > 1 else table
    return out + (bias[min(pos, len(bias) - 1)] if bias is not None else 0)


def test_ngram_forward_follows_the_cache_contract():
    rng = np.random.default_rng(3)
    table = rng.normal(size=(VOCAB,) * 3).astype(np.float32)
    bias = rng.normal(size=(4, VOCAB)).astype(np.float32)
    dec = ngram_decoder(table, bias)
    cache = dec.init_cache(2, 12)
    history = rng.integers(0, VOCAB, size=(2, 12))
    fwd = jax.jit(ngram_forward)
    # Row 0 is written in chunks of 3, row 1 in chunks of 4, from different starts.
    logits, cache = fwd(dec.params, jnp.asarray(history[:, :3]), jnp.array([0, 0]), cache)
    logits, cache = fwd(dec.params, jnp.asarray(np.stack([history[0, 3:7], history[1, 3:7]])),
                        jnp.array([3, 3]), cache)
    for b in range(2):
        for t in range(4):
            np.testing.assert_allclose(logits[b, t], numpy_ngram_logits(table, bias, history[b], 3 + t))
    np.testing.assert_array_equal(np.asarray(cache)[:, :7], history[:, :7])
    # Rewriting position 5 changes what position 6 reads: stale entries are not read.
    new = (history[:, 5:7] + 1) % VOCAB
    logits, cache = fwd(dec.params, jnp.asarray(new), jnp.array([5, 5]), cache)
    edited = history.copy()
    edited[:, 5:7] = new
    for b in range(2):
        np.testing.assert_allclose(logits[b, 1], numpy_ngram_logits(table, bias, edited[b], 6))


def test_toy_decoder_validation_and_sizes():
    with pytest.raises(ValueError, match="table must have shape"):
        ngram_decoder(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="position_bias"):
        ngram_decoder(np.zeros((4, 4)), np.zeros((3, 5)))
    dec = mlp_ngram_decoder(0, np.zeros((5, 5), np.float32), width=8, depth=3, mlp_scale=0.01)
    assert dec.num_params == 25 + 5 * 8 + 3 * 64 + 8 * 5 + 1
    logits, _ = jax.jit(dec.forward)(dec.params, jnp.array([[1, 2]]), jnp.array([0]),
                                     dec.init_cache(1, 4))
    # tanh outputs are bounded by 1, so the MLP moves the logits by at most 0.01 * |readout|_1.
    bound = 0.01 * np.abs(np.asarray(dec.params["readout"])).sum(axis=0)
    assert np.all(np.abs(np.asarray(logits)) <= bound + 1e-6) and np.any(np.asarray(logits) != 0)
    # The per-forward MLP adds one offset to every position of the chunk.
    shared = mlp_ngram_decoder(0, np.zeros((5, 5), np.float32), width=8, depth=1, per_token=False)
    logits, _ = jax.jit(shared.forward)(shared.params, jnp.array([[1, 2, 4]]), jnp.array([0]),
                                        shared.init_cache(1, 4))
    np.testing.assert_allclose(logits[0, 0], logits[0, 2])
    assert np.any(np.asarray(logits) != 0)


# --------------------------------------------------------------------------
# The loop on a small shared configuration (one compilation for most tests).

LOOKAHEAD = 2
MAX_NEW = 10
PROMPTS = [[3], [1, 4, 2], [0, 5, 5, 1, 2]]


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(4)
    target_table = rng.normal(size=(VOCAB,) * 3).astype(np.float32)
    target = ngram_decoder(target_table, rng.normal(size=(8, VOCAB)).astype(np.float32),
                           name="target")
    draft_table = target_table.mean(axis=0) + 0.5 * rng.normal(size=(VOCAB,) * 2)
    draft = ngram_decoder(draft_table.astype(np.float32), name="draft")
    return draft, target


@pytest.fixture(scope="module")
def prompt_batch():
    return loop.pad_prompts(PROMPTS, 5)


def generate(pair, prompt_batch, temperature=1.0, seed=0, row_ids=None, **kwargs):
    return loop.speculative_generate(*pair, *prompt_batch, jax.random.PRNGKey(seed),
                                     lookahead=kwargs.pop("lookahead", LOOKAHEAD),
                                     max_new_tokens=kwargs.pop("max_new_tokens", MAX_NEW),
                                     temperature=temperature, row_ids=row_ids, **kwargs)


def test_pad_prompts():
    tokens, lengths = loop.pad_prompts([[1, 2], [3]], 4, pad_token=5)
    np.testing.assert_array_equal(tokens, [[1, 2, 5, 5], [3, 5, 5, 5]])
    np.testing.assert_array_equal(lengths, [2, 1])
    with pytest.raises(ValueError, match="at least one token; prompt 1"):
        loop.pad_prompts([[1], []])
    with pytest.raises(ValueError, match="longest prompt"):
        loop.pad_prompts([[1, 2, 3]], 2)


def test_loop_bookkeeping(pair, prompt_batch):
    for seed in range(3):
        gen = generate(pair, prompt_batch, seed=seed)
        assert gen.tokens.shape == (3, MAX_NEW) and gen.lookahead == LOOKAHEAD
        iters = np.asarray(gen.num_iterations)
        acc = np.asarray(gen.accepted)
        ran = np.arange(acc.shape[1]) < iters[:, None]
        assert np.all(acc[~ran] == 0) and np.all((acc >= 0) & (acc <= LOOKAHEAD))
        # One token from the prefill, K + 1 from each iteration.
        np.testing.assert_array_equal(gen.num_generated, 1 + np.where(ran, acc + 1, 0).sum(1))
        assert np.all(np.asarray(gen.num_generated) >= MAX_NEW)
        assert np.all(np.asarray(gen.num_generated) <= MAX_NEW + LOOKAHEAD)
        # A row runs every step until it is done.
        np.testing.assert_array_equal(gen.finish_step, iters)
        assert int(gen.num_steps) == iters.max()
        assert np.all((np.asarray(gen.tokens) >= 0) & (np.asarray(gen.tokens) < VOCAB))


def test_rows_do_not_depend_on_their_batch(pair, prompt_batch):
    tokens, lengths = prompt_batch
    a = generate(pair, prompt_batch, row_ids=jnp.array([7, 8, 9]))
    order = np.array([2, 0, 1])
    b = generate(pair, (tokens[order], lengths[order]), row_ids=jnp.array([7, 8, 9])[order])
    for field in ("tokens", "accepted", "num_iterations"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field))[order], getattr(b, field))
    # Another key changes the output.
    c = generate(pair, prompt_batch, row_ids=jnp.array([17, 18, 19]))
    assert not np.array_equal(a.tokens, c.tokens)


def test_iteration_lookahead_feeds_estimate_acceptance(pair, prompt_batch):
    gen = generate(pair, prompt_batch, seed=5)
    la = np.asarray(loop.iteration_lookahead(gen))
    acc = np.asarray(gen.accepted)
    ran = np.arange(acc.shape[1]) < np.asarray(gen.num_iterations)[:, None]
    np.testing.assert_array_equal(la, np.where(ran, LOOKAHEAD, 0))
    est = estimate_acceptance(acc, la)
    trials = np.minimum(acc + 1, LOOKAHEAD)[ran].sum()
    assert int(est.trials) == trials
    np.testing.assert_allclose(float(est.acceptance), acc.sum() / trials, rtol=1e-6)


@pytest.mark.slow
def test_lookahead_one_and_single_token(pair, prompt_batch):
    # Lookahead 1: the draft's scan has no steps; greedy must match the target's.
    spec = generate(pair, prompt_batch, temperature=0.0, lookahead=1)
    base = autoregressive_generate(pair[1], *prompt_batch, jax.random.PRNGKey(1),
                                   max_new_tokens=MAX_NEW, temperature=0.0)
    np.testing.assert_array_equal(spec.tokens, base.tokens)
    assert np.all(np.asarray(base.accepted) == 0) and base.lookahead == 0
    # One new token: no iterations at all.
    one = generate(pair, prompt_batch, max_new_tokens=1)
    assert one.tokens.shape == (3, 1) and one.accepted.shape == (3, 0)
    assert int(one.num_steps) == 0 and np.all(np.asarray(one.num_generated) == 1)


def test_input_errors(pair, prompt_batch):
    draft, target = pair
    tokens, lengths = prompt_batch
    key = jax.random.PRNGKey(0)

    def call(**kw):
        args = dict(draft=draft, target=target, prompt_tokens=tokens, prompt_lengths=lengths,
                    key=key, lookahead=LOOKAHEAD, max_new_tokens=MAX_NEW, temperature=1.0)
        args.update(kw)
        return loop.speculative_generate(args.pop("draft"), args.pop("target"),
                                         args.pop("prompt_tokens"), args.pop("prompt_lengths"),
                                         args.pop("key"), **args)

    small = ngram_decoder(np.zeros((VOCAB - 1,) * 2, np.float32))
    cases = [
        (dict(draft=small), "vocabularies differ"),
        (dict(draft=None), "draft must be a Decoder"),
        (dict(lookahead=2.0), "lookahead must be a Python int"),
        (dict(lookahead=-1), "lookahead must be >= 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(temperature=-0.5), "temperature must be a finite scalar >= 0"),
        (dict(temperature=float("nan")), "temperature must be a finite"),
        (dict(prompt_lengths=jnp.array([1, 6, 2])), r"prompt_lengths must lie in \[1, 5\], got 6 at row 1"),
        (dict(prompt_tokens=tokens.at[2, 4].set(VOCAB)), r"got 6 at row 2, position 4"),
        (dict(prompt_tokens=tokens[0]), "prompt_tokens must be an integer array"),
        (dict(prompt_lengths=lengths[:2]), r"prompt_lengths must be an integer array \[3\]"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            call(**kw)
    state = loop.prefill(draft, target, tokens, lengths, loop.row_keys(key, jnp.arange(3)),
                         lookahead=LOOKAHEAD, max_new_tokens=MAX_NEW)
    with pytest.raises(ValueError, match="prefilled for other settings"):
        loop.decode(draft, target, state, lookahead=3, max_new_tokens=MAX_NEW)


# --------------------------------------------------------------------------
# Metrics and records.


def test_row_latencies_apportion_the_decode_time(pair, prompt_batch):
    gen = generate(pair, prompt_batch)
    timing = metrics.Timing(prefill_seconds=0.5, decode_seconds=2.0)
    lat = metrics.row_latencies(gen, timing, MAX_NEW)
    share = np.asarray(gen.finish_step) / int(gen.num_steps)
    np.testing.assert_allclose(lat["ttft_s"], 0.5)
    np.testing.assert_allclose(lat["ttot_s"], 0.5 + 2.0 * share)
    np.testing.assert_allclose(lat["tpot_s"], 2.0 * share / (MAX_NEW - 1))


def test_timed_generate_is_the_same_run(pair, prompt_batch):
    keys = loop.row_keys(jax.random.PRNGKey(3), jnp.arange(3))
    gen, timing = metrics.timed_generate(*pair, *prompt_batch, keys, lookahead=LOOKAHEAD,
                                         max_new_tokens=MAX_NEW, temperature=1.0)
    ref = generate(pair, prompt_batch, seed=3)
    np.testing.assert_array_equal(gen.tokens, ref.tokens)
    np.testing.assert_array_equal(gen.accepted, ref.accepted)
    assert timing.prefill_seconds > 0 and timing.decode_seconds > 0


@pytest.fixture(scope="module")
def records(pair):
    prompts = PROMPTS + [[2, 2], [5]]
    return list(measure_pair(*pair, prompts, LOOKAHEAD, MAX_NEW, 1.0, jax.random.PRNGKey(9),
                             batch_size=3, prompt_len=5, warmup=False))


def test_measure_pair_records(pair, records):
    assert [r["prompt_id"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["prompt_tokens"] for r in records] == [1, 3, 5, 2, 1]
    for r in records:
        json.loads(json.dumps(r))  # plain JSON values
        assert r["lookahead"] == LOOKAHEAD and r["iterations"] == len(r["accepted"])
        assert r["generated"] == 1 + sum(k + 1 for k in r["accepted"])
        assert r["trials"] == sum(min(k + 1, LOOKAHEAD) for k in r["accepted"])
        assert r["beta_count"] == r["trials"] and 0 <= r["beta_sum"] <= r["beta_count"]
        assert 0 < r["ttft_s"] <= r["ttot_s"]
        assert r["tpot_s"] == pytest.approx((r["ttot_s"] - r["ttft_s"]) / (MAX_NEW - 1))
        assert r["speedup"] == pytest.approx(
            (r["baseline_ttot_s"] - r["baseline_ttft_s"]) / (r["ttot_s"] - r["ttft_s"]))
        assert r["draft_params"] == pair[0].num_params and r["target_model"] == "target"
        assert r["batch_size"] == 3
    # Two batches of 3 (the last one short); a batch's rows share its prefill time.
    assert [r["batch_index"] for r in records] == [0, 0, 0, 1, 1]
    assert len({r["ttft_s"] for r in records[:3]}) == 1
    assert records[3]["ttft_s"] == records[4]["ttft_s"]


def test_measure_pair_resumes_with_the_same_randomness(pair, records):
    # Rerunning prompts 3 and 4 alone (as after a kill) repeats their runs.
    again = list(measure_pair(*pair, [[2, 2], [5]], LOOKAHEAD, MAX_NEW, 1.0,
                              jax.random.PRNGKey(9), prompt_ids=[3, 4], batch_size=3,
                              prompt_len=5, baseline=False, warmup=False, first_batch=7))
    assert [r["accepted"] for r in again] == [r["accepted"] for r in records[3:]]
    # A resumption numbers its batches on from the run's (first_batch).
    assert [r["batch_index"] for r in again] == [7, 7]
    assert "speedup" not in again[0]
    with pytest.raises(ValueError, match="distinct"):
        next(measure_pair(*pair, [[1], [2]], 2, 4, 1.0, jax.random.PRNGKey(0), prompt_ids=[1, 1]))
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 2"):
        next(measure_pair(*pair, [[1]], 2, 1, 1.0, jax.random.PRNGKey(0)))


def test_summarize(records):
    s = metrics.summarize(records, key=jax.random.PRNGKey(0), num_resamples=200)
    accepted = sum(sum(r["accepted"]) for r in records)
    trials = sum(r["trials"] for r in records)
    assert (s["prompts"], s["accepted"], s["trials"]) == (5, accepted, trials)
    assert s["acceptance"] == pytest.approx(accepted / trials, rel=1e-6)
    assert s["acceptance_low"] <= s["acceptance"] <= s["acceptance_high"]
    assert s["beta_mean"] == pytest.approx(sum(r["beta_sum"] for r in records) / trials)
    iterations = sum(r["iterations"] for r in records)
    assert s["tokens_per_iteration"] == pytest.approx(1 + accepted / iterations)
    # Latencies: the batch is the unit (batches of 3 and 2 prompts).
    assert s["batches"] == 2
    for name in ("ttft_s", "tpot_s", "ttot_s", "speedup"):
        mean, low, high = metrics.mean_interval([r[name] for r in records],
                                                batches=[0, 0, 0, 1, 1])
        assert (s[name], s[f"{name}_low"], s[f"{name}_high"]) == pytest.approx((mean, low, high))
    # Records from before batch_index: the batches are found again from the shared times.
    old = [{k: v for k, v in r.items() if k != "batch_index"} for r in records]
    np.testing.assert_array_equal(metrics.record_batches(old), [-1, -1, -1, -2, -2])
    s_old = metrics.summarize(old, key=jax.random.PRNGKey(0), num_resamples=200)
    for name in ("batches", "ttft_s", "ttft_s_low", "ttot_s_high", "speedup_low"):
        assert s_old[name] == pytest.approx(s[name])
    with pytest.raises(ValueError, match="mix lookaheads"):
        metrics.summarize([records[0], dict(records[1], lookahead=3)])
    # The run records of a finished Generation are what measure_pair yields.
    assert math.isfinite(s["acceptance"])


def test_run_records_rows(pair, prompt_batch):
    gen = generate(pair, prompt_batch)
    recs = run_records(gen, metrics.Timing(prefill_seconds=0.1, decode_seconds=0.9), prompt_ids=[5, 6, 7],
                       prompt_lengths=[1, 3, 5], max_new_tokens=MAX_NEW, temperature=1.0, rows=2)
    assert [r["prompt_id"] for r in recs] == [5, 6]
    assert recs[1]["accepted"] == np.asarray(gen.accepted)[1, :int(gen.num_iterations[1])].tolist()
    assert "draft_model" not in recs[0] and "speedup" not in recs[0]


# --------------------------------------------------------------------------
# Serving settings: top-k and top-p truncation.


def keep_brute_force(scaled, top_k, top_p):
    """top-k then top-p by their definitions, one token at a time (float64):
    v is in the top k when fewer than k tokens have a strictly larger logit; it
    stays under top-p when the renormalised mass of the kept tokens strictly
    more probable than v is below p."""
    scaled = np.asarray(scaled, np.float64)
    keep = np.ones(scaled.size, bool)
    if top_k > 0:
        keep = np.array([np.sum(scaled > x) < top_k for x in scaled])
    if top_p < 1:
        probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
        probs /= probs.sum()
        keep &= np.array([probs[probs > x].sum() < top_p for x in probs])
    return keep


def test_truncation_matches_its_definition():
    rng = np.random.default_rng(6)
    # Integer logits make many ties, at the k-th place and at the top-p boundary.
    logits = np.concatenate([rng.normal(size=(40, 9)) * 2,
                             rng.integers(-2, 3, size=(40, 9)).astype(float)]).astype(np.float32)
    traces = []

    def truncated_probs(logits, temperature, top_k, top_p):
        traces.append(1)
        return probabilities(logits, temperature, top_k, top_p)

    fn = jax.jit(truncated_probs)
    checked = 0
    for temperature, top_k, top_p in [(1.0, 3, 1.0), (0.7, 0, 0.6), (1.3, 4, 0.5), (1.0, 1, 1.0),
                                      (1.0, 20, 0.97), (0.9, 2, 0.05), (1.0, 0, 1.0)]:
        got = np.asarray(fn(logits, temperature, top_k, top_p), np.float64)
        for row, probs in zip(logits, got):
            scaled = row.astype(np.float64) / temperature
            # Skip rows whose top-p boundary lies within float32 rounding of p.
            keep = keep_brute_force(scaled, top_k, top_p)
            if top_p < 1 and any(keep_brute_force(scaled, top_k, top_p + d).tolist()
                                 != keep.tolist() for d in (-1e-5, 1e-5)):
                continue
            np.testing.assert_array_equal(probs > 0, keep)
            ref = np.where(keep, softmax(np.where(keep, scaled, -np.inf)), 0.0)
            np.testing.assert_allclose(probs, ref, atol=2e-7)
            checked += 1
    assert checked > 500
    assert len(traces) == 1  # top_k and top_p are traced: one compilation for every value
    # Off (k = 0, p = 1) is the plain softmax, and greedy ignores both filters.
    np.testing.assert_allclose(fn(logits, 0.8, 0, 1.0), softmax(logits / 0.8, axis=-1),
                               rtol=1e-5)
    np.testing.assert_array_equal(fn(logits, 0.0, 2, 0.3), np.eye(9)[np.argmax(logits, -1)])


def test_truncation_sorts_only_when_on():
    """The sort sits in a branch taken only when a filter is on."""
    jaxpr = jax.make_jaxpr(probabilities)(jnp.zeros((2, 7)), 1.0, 0, 1.0)

    def sorts(eqns, branch_depth):
        found = []
        for eqn in eqns:
            if eqn.primitive.name == "sort":
                found.append(branch_depth)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                found += sorts(sub.eqns, branch_depth + (eqn.primitive.name == "cond"))
        return found

    # Inside the temperature branch and inside the truncation branch.
    assert sorts(jaxpr.jaxpr.eqns, 0) == [2]


@pytest.mark.slow
def test_truncation_matches_transformers():
    """Against transformers' own logits warpers (temperature, top-k, top-p in
    generate's order), on logits without ties, where both definitions agree."""
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(64, 50)) * 2).astype(np.float32)
    fn = jax.jit(probabilities)
    for temperature, top_k, top_p in [(0.7, 5, 1.0), (1.0, 0, 0.8), (1.3, 10, 0.5),
                                      (1.0, 1, 1.0), (0.5, 0, 0.05), (1.0, 40, 0.99)]:
        x = TemperatureLogitsWarper(temperature)(None, torch.tensor(logits))
        if top_k:
            x = TopKLogitsWarper(top_k)(None, x)
        if top_p < 1:
            x = TopPLogitsWarper(top_p)(None, x)
        ref = torch.softmax(x, -1).numpy()
        got = np.asarray(fn(logits, temperature, top_k, top_p))
        np.testing.assert_array_equal(got > 0, ref > 0)
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_sampling_settings_errors(pair, prompt_batch):
    cases = [
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(top_k=1.5), "top_k must be an integer"),
        (dict(top_k=True), "top_k must be an integer"),
        (dict(top_k=np.array([2])), "top_k must be an integer"),
        (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be a number in \(0, 1\]"),
        (dict(top_p=float("nan")), "top_p must be"),
        (dict(top_p="high"), "top_p must be"),
        (dict(eos_token=-1), r"eos_token must be None or a token id in \[0, 6\), got -1"),
        (dict(eos_token=VOCAB), r"eos_token must be None or a token id in \[0, 6\), got 6"),
        (dict(eos_token=2.0), "eos_token must be None or a token id"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(pair, prompt_batch, **kw)
        with pytest.raises(ValueError, match=message):
            next(measure_pair(*pair, PROMPTS, LOOKAHEAD, MAX_NEW, 1.0, jax.random.PRNGKey(0),
                              **kw))
    settings = loop.sampling_settings(0.5, np.int64(3), jnp.float32(0.9), 4, vocab_size=VOCAB)
    assert [np.asarray(x).item() for x in settings] == [0.5, 3, pytest.approx(0.9), 4]
    assert int(loop.sampling_settings(vocab_size=VOCAB).eos_token) == -1


# --------------------------------------------------------------------------
# The stop at the end-of-sequence token, in records and latencies.

EOS = 4


@pytest.fixture(scope="module")
def eos_records(pair):
    prompts = PROMPTS + [[2, 2], [5]]
    return list(measure_pair(*pair, prompts, LOOKAHEAD, MAX_NEW, 1.0, jax.random.PRNGKey(9),
                             batch_size=3, prompt_len=5, warmup=False, eos_token=EOS,
                             top_k=4, top_p=0.95))


def test_eos_records_and_latencies(eos_records):
    stopped = [r for r in eos_records if r["stopped_at_eos"]]
    assert stopped and len(stopped) < len(eos_records)
    for r in eos_records:
        json.loads(json.dumps(r))
        assert (r["top_k"], r["top_p"], r["eos_token"]) == (4, 0.95, EOS)
        assert r["output_tokens"] == min(r["generated"], MAX_NEW)
        # The iteration that committed the token is recorded in full.
        assert r["generated"] <= 1 + sum(k + 1 for k in r["accepted"])
        assert r["trials"] == sum(min(k + 1, LOOKAHEAD) for k in r["accepted"])
        if r["stopped_at_eos"]:
            assert r["output_tokens"] == r["generated"] <= MAX_NEW
        else:
            assert r["output_tokens"] == MAX_NEW
        # TPOT divides the row's share of the decode by the tokens after the first.
        if r["output_tokens"] > 1:
            assert r["tpot_s"] == pytest.approx((r["ttot_s"] - r["ttft_s"])
                                                / (r["output_tokens"] - 1))
            assert r["baseline_output_tokens"] >= 1
        else:
            assert r["tpot_s"] is None and r["speedup"] is None
            assert r["ttot_s"] == r["ttft_s"]  # done in the prefill
        if r["speedup"] is not None:
            assert r["speedup"] == pytest.approx(r["baseline_tpot_s"] / r["tpot_s"])
    s = metrics.summarize(eos_records, key=jax.random.PRNGKey(0), num_resamples=100)
    assert math.isfinite(s["speedup"]) and math.isfinite(s["tpot_s"])


def test_eos_rows_stop_and_do_not_depend_on_their_batch(pair, prompt_batch):
    tokens, lengths = prompt_batch
    # A temperature that makes token 1 likely, so rows stop early.
    a = generate(pair, prompt_batch, temperature=2.0, row_ids=jnp.array([3, 4, 5]),
                 eos_token=EOS)
    order = np.array([1, 2, 0])
    b = generate(pair, (tokens[order], lengths[order]), temperature=2.0,
                 row_ids=jnp.array([3, 4, 5])[order], eos_token=EOS)
    for field in ("tokens", "num_generated", "stopped", "finish_step", "accepted"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field))[order], getattr(b, field))
    out = np.asarray(a.tokens)
    generated = np.asarray(a.num_generated)
    for row, n, stopped in zip(out, generated, np.asarray(a.stopped)):
        if stopped:
            assert list(row[:n]).index(EOS) == n - 1 and np.all(row[n:] == EOS)
        else:
            assert EOS not in row.tolist()
    # The loop ends when every row is done: the last to finish sets num_steps.
    assert int(a.num_steps) == int(np.max(a.finish_step))
    lat = metrics.row_latencies(a, metrics.Timing(prefill_seconds=0.5, decode_seconds=2.0),
                                MAX_NEW)
    share = np.asarray(a.finish_step) / max(int(a.num_steps), 1)
    after_first = np.minimum(generated, MAX_NEW) - 1
    expected = np.where(after_first > 0, 2.0 * share / np.maximum(after_first, 1), np.nan)
    np.testing.assert_allclose(lat["tpot_s"], expected)


# --------------------------------------------------------------------------
# Memory: the decode consumes its state in place.


def test_decode_donates_the_state(pair, prompt_batch):
    draft, target = pair
    tokens, lengths = prompt_batch
    keys = loop.row_keys(jax.random.PRNGKey(2), jnp.arange(3))
    prefill_stage, decode_stage = loop.staged_generate(
        draft, target, tokens, lengths, keys, lookahead=LOOKAHEAD, max_new_tokens=MAX_NEW)
    state = prefill_stage()
    state_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state))
    first = decode_stage(state)
    # The state's buffers (caches included) became the loop's.
    assert state.target_cache.is_deleted() and state.draft_cache.is_deleted()
    with pytest.raises(ValueError, match="already decoded"):
        loop.decode(draft, target, state, lookahead=LOOKAHEAD, max_new_tokens=MAX_NEW)
    # The caller's inputs were not donated: they prefill again, to the same run.
    assert not any(x.is_deleted() for x in (tokens, lengths, keys))
    second = decode_stage(prefill_stage())
    np.testing.assert_array_equal(first.tokens, second.tokens)
    gen, _ = metrics.timed_generate(draft, target, tokens, lengths, keys, lookahead=LOOKAHEAD,
                                    max_new_tokens=MAX_NEW)
    np.testing.assert_array_equal(gen.tokens, first.tokens)
    # XLA's analysis of the compiled decode: every byte of the state is written
    # in place (aliased), so no part of it is copied.
    memory = loop.compiled_memory(draft, target, batch_size=3, prompt_len=5,
                                  lookahead=LOOKAHEAD, max_new_tokens=MAX_NEW)
    decode, prefill = memory["decode"], memory["prefill"]
    assert decode.alias_bytes == state_bytes
    params_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves((draft.params,
                                                                           target.params)))
    assert decode.argument_bytes >= params_bytes + state_bytes
    assert prefill.alias_bytes == 0 and prefill.output_bytes >= state_bytes
    for program in (decode, prefill):
        assert program.peak_bytes >= program.argument_bytes > 0


# --------------------------------------------------------------------------
# Memory: a long prompt is read in chunks (the transformer and XLA's memory
# figures are in tests/decoding/test_prefill_chunks.py).


def test_chunked_prefill_is_the_one_call_prefill(pair, prompt_batch):
    # P = 5 read 2 positions at a time: chunks at 0, 2 and 3 (the last
    # overlaps the one before); the rows' last prompt positions 0, 2 and 4
    # fall in the first, second and last chunk. The default reads P in one call.
    draft, target = pair
    tokens, lengths = prompt_batch
    assert loop.prefill_chunk_size(3, VOCAB) > tokens.shape[1]
    keys = loop.row_keys(jax.random.PRNGKey(5), jnp.arange(3))
    for temperature in (0.0, 1.0):
        runs = []
        for chunk in (None, 2):
            state = loop.prefill(draft, target, tokens, lengths, keys, lookahead=LOOKAHEAD,
                                 max_new_tokens=MAX_NEW, temperature=temperature,
                                 prefill_chunk=chunk)
            host = jax.tree_util.tree_map(np.asarray, state)  # decode consumes the state
            runs.append((host, loop.decode(draft, target, state, lookahead=LOOKAHEAD,
                                           max_new_tokens=MAX_NEW)))
        (whole, whole_gen), (chunked, chunked_gen) = runs
        # Table look-ups: the same first tokens, caches and runs, bit for bit.
        for got, want in zip(jax.tree_util.tree_leaves(chunked), jax.tree_util.tree_leaves(whole)):
            np.testing.assert_array_equal(got, want)
        for field in ("tokens", "num_generated", "accepted", "betas", "num_iterations"):
            np.testing.assert_array_equal(getattr(chunked_gen, field), getattr(whole_gen, field))


def test_chunked_prompt_log_likelihood(pair):
    _, target = pair
    table, bias = (np.asarray(target.params[k], np.float64) for k in ("table", "position_bias"))
    prompts = [[3, 1, 4, 1, 5, 2, 0], [2, 2], [4]]
    tokens, lengths = loop.pad_prompts(prompts)
    # Brute force: each position's next-token log-probability, summed in float64.
    expected = [-sum(np.log(softmax(numpy_ngram_logits(table, bias, p, t)))[p[t + 1]]
                     for t in range(len(p) - 1)) for p in prompts]
    # P = 7 in chunks of 3 (at 0, 3 and 4: the last overlaps), and in one call.
    for chunk in (3, None):
        nll, scored = prompt_log_likelihood(target, tokens, lengths, prefill_chunk=chunk)
        np.testing.assert_allclose(nll, expected, rtol=1e-5)
        np.testing.assert_array_equal(scored, [6, 1, 0])
