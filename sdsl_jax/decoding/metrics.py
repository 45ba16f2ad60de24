r"""Latency of a decoding run (TTFT, TPOT, TTOT) and summaries across prompts.

What is timed, and why this way
-------------------------------
The decoding loop runs on the device from the first iteration to the last
without returning to the host, so no host clock can see an individual token.
A run is therefore timed in two pieces, each ended by ``block_until_ready``
(compilation excluded: the functions are compiled before timing):

* prefill: both models read the prompts and the target samples the first
  token. This is the time to first token, **TTFT**.
* decode: the whole on-device loop, until every row of the batch has its
  ``max_new_tokens`` tokens.

Every step of the loop costs the same (shapes are static, finished rows still
run), so the decode time of a batch is apportioned to its rows by the step in
which each finished: row b's decode time is ``decode * finish_step[b] /
num_steps``. Then per row

* **TTOT** (total) = TTFT + row decode time,
* **TPOT** (per output token after the first) = row decode time /
  (output tokens - 1), where the output is the row's first
  ``max_new_tokens`` tokens, or fewer when it stopped at the end-of-sequence
  token (undefined, NaN, for a row whose first token was that token).

At batch size 1 these are exactly the measured times. Tokens an iteration
produces beyond ``max_new_tokens`` are not counted: they were not asked for.
A row that stops early finishes in an earlier step, so its share of the
decode time is smaller, and its TPOT divides by the tokens it did produce.
The speedup over target-only decoding is the ratio of TPOTs, baseline over
speculative: without a stop it is the ratio of decode times (the prefills are
the same work, plus the draft's prompt read); with one, the two runs of a
prompt may stop after different numbers of tokens (they are different draws
of the same distribution, except at temperature 0), and time per token is
what compares them.

Intervals across prompts: the batch is the unit
-----------------------------------------------
What is estimated is the mean per-prompt latency (and speedup) over the
population of prompts, under this serving setup: this model pair, device and
batch size. At batch size 1 every prompt is timed on its own and the interval
is the Student-t interval of the mean, as in the SDSL paper's latency plots.
With batch size B > 1 the rows of a batch share one prefill time and one
decode time (TTFT is the same number for all of them), so whatever slowed the
machine during that batch moves all B values together: they are not B
independent observations, and the row-wise t interval (the loop's interval
before) is too narrow, by up to sqrt(B) for TTFT.

:func:`mean_interval` therefore takes the batch as the unit: a cluster-robust
interval of the mean with batches as clusters. The estimate is still the mean
over prompts, i.e. the batch means weighted by their prompt counts; with G
batches, N prompts and batch sums S_g, its variance is

    G / (G - 1) * sum_g (S_g - n_g * mean)^2 / N^2

(the CR1 sandwich of a regression on a constant), and the interval is mean
+- t_{G-1} * sqrt(variance), t quantiles from
:func:`sdsl_jax.common.student_t.student_t_quantile_float`. It is exactly the
Student-t interval at batch size 1, and exactly the t interval over the G
batch means when all batches have B prompts; a short last batch counts by its
prompts. With one batch there is no interval (NaN ends), as with one prompt
at batch size 1. Records name their batch (``batch_index``);
:func:`record_batches` finds the batches of records written before that field.
Why not the plain t over batch means: it would weight a short last batch like
a full one and estimate a different mean; why G - 1 degrees of freedom: the
batches are the independent units, and with few of them a normal quantile
(or N - 1 df) would undercover.

Coverage of the mean at nominal 95%, row-wise (old) and batch-wise (new), in
10,000 simulated measurements per cell (seeds 1000 + 10 B + prompts; the
simulation is tests/decoding/latency_simulation.py, ``coverage``): prefill
20 ms, decode 5 ms per step, target-alone step 4 ms, 64 new tokens, lookahead
4; a log-normal batch factor exp(z), z ~ N(0, 0.3^2), shared by the batch's
prefill, decode and baseline times, each with its own factor of sigma 0.1;
each prompt's finish step set by its acceptance a ~ Beta(6, 3) through
63 / (1 + a + ... + a^4), times a log-normal draw of sigma 0.15. Old / new:

    batch  prompts  TTFT         TPOT         TTOT         speedup
    1      8        0.937        0.919        0.923        0.939
    1      16       0.939        0.933        0.933        0.945
    1      32       0.944        0.939        0.939        0.944
    1      64       0.950        0.943        0.945        0.950
    4      8        0.450/0.944  0.741/0.945  0.710/0.945  0.883/0.946
    4      16       0.574/0.935  0.758/0.933  0.736/0.934  0.881/0.946
    4      32       0.620/0.936  0.764/0.933  0.742/0.933  0.878/0.938
    4      64       0.652/0.941  0.779/0.942  0.758/0.942  0.886/0.946

(one figure at batch 1: both intervals are the same there). Monte Carlo
standard error about 0.002. The batch-wise interval holds its level at batch
4 from 2 batches up; the row-wise one covers 45-65% for TTFT, whose rows are
copies. What is left below 93% is the t interval's known weakness with
skewed values and few units: at batch 1 with 8 prompts, TPOT and TTOT (per
prompt, log-normal timing times a skewed finish step) cover 0.92, and 10
prompts in batches of 4, 4 and 2 (seed 3010) cover 0.932 / 0.929 / 0.930 /
0.939 (old 0.567 / 0.769 / 0.746 / 0.888). With steadier timing, a batch factor of
sigma 0.1 (seeds 2000 + 10 B + prompts), batch 1 with 8 prompts covers
0.948 / 0.934 / 0.935 / 0.941, batch 4 with 8 prompts 0.952 / 0.951 / 0.950 /
0.953 (old 0.47 / 0.87 / 0.87 / 0.88) and with 16 prompts 0.946 / 0.941 /
0.941 / 0.947 (old 0.58 / 0.88 / 0.87 / 0.88).

The acceptance interval comes from
:func:`sdsl_jax.estimation.acceptance.estimate_acceptance`; it is unchanged
by batching (acceptance does not depend on the timing).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Iterable, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common import validation as _validate
from sdsl_jax.common.student_t import student_t_quantile_float
from sdsl_jax.estimation.acceptance import estimate_acceptance
from sdsl_jax.decoding.decoder import Decoder
from sdsl_jax.decoding import loop
from sdsl_jax.decoding.sampling import AcceptFn, speculative_accept


@chex.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the two timed pieces of a run (module docstring)."""

    prefill_seconds: float
    decode_seconds: float


def timed_generate(draft: Decoder | None, target: Decoder, prompt_tokens: jax.Array,
                   prompt_lengths: jax.Array, row_keys: jax.Array, *, lookahead: int,
                   max_new_tokens: int, temperature=1.0, top_k: int = 0, top_p: float = 1.0,
                   eos_token: int | None = None, accept_fn: AcceptFn = speculative_accept,
                   clock=time.perf_counter) -> tuple[loop.Generation, Timing]:
    """:func:`~sdsl_jax.decoding.loop.speculative_generate` with prefill and decode timed.

    Inputs are checked and moved to the device before the clock starts; the
    first call for a new shape also compiles, so time a second call (or call
    once to warm up, as :func:`~sdsl_jax.decoding.pair.measure_pair` does).
    The caller's arrays stay usable: only the state the prefill makes is
    consumed by the decode. Sampling settings as in
    :func:`~sdsl_jax.decoding.loop.prefill`.
    """
    prefill_stage, decode_stage = loop.staged_generate(
        draft, target, prompt_tokens, prompt_lengths, row_keys, lookahead=lookahead,
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_token=eos_token, accept_fn=accept_fn)
    start = clock()
    state = jax.block_until_ready(prefill_stage())
    middle = clock()
    generation = jax.block_until_ready(decode_stage(state))
    end = clock()
    return generation, Timing(prefill_seconds=middle - start, decode_seconds=end - middle)


def row_latencies(generation: loop.Generation, timing: Timing,
                  max_new_tokens: int) -> dict[str, np.ndarray]:
    """Per-row TTFT, TPOT and TTOT in seconds (definitions in the module docstring).

    Returns:
      ``{"ttft_s", "tpot_s", "ttot_s"}``, float64 arrays of shape [B]; TPOT is
      NaN for a row with one output token (max_new_tokens 1, or the
      end-of-sequence token first).
    """
    finish = np.asarray(generation.finish_step, np.float64)
    steps = float(generation.num_steps)
    share = finish / steps if steps > 0 else np.zeros_like(finish)
    decode = timing.decode_seconds * share
    ttft = np.full(finish.shape, timing.prefill_seconds)
    after_first = output_tokens(generation, max_new_tokens) - 1
    tpot = np.where(after_first > 0, decode / np.maximum(after_first, 1), np.nan)
    return {"ttft_s": ttft, "tpot_s": tpot, "ttot_s": ttft + decode}


def output_tokens(generation: loop.Generation, max_new_tokens: int) -> np.ndarray:
    """int64[B]: the tokens of each row's output, min(num_generated, max_new_tokens)
    (fewer than max_new_tokens only for a row that stopped at the end-of-sequence token)."""
    return np.minimum(np.asarray(generation.num_generated, np.int64), int(max_new_tokens))


# --------------------------------------------------------------------------
# Step times: what one draft step and one target step cost, for the law.


def _forward_chain(forward, params, cache, tokens, start, steps):
    def body(_, carry):
        cache, tokens = carry
        logits, cache = forward(params, tokens, start, cache)
        # Each step reads the previous step's output, so XLA can neither skip
        # nor hoist a step.
        return cache, jnp.argmax(logits, -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, steps, body, (cache, tokens))


_forward_chain_jit = jax.jit(_forward_chain, static_argnums=(0,))


def _chain_runner(decoder: Decoder, width: int, batch_size: int, context: int):
    """A function of n that runs n chained steps of ``width`` tokens and waits for them."""
    _validate.check_static_int("tokens_per_step", width, 1)
    cache = decoder.init_cache(batch_size, context + width)
    tokens = jnp.zeros((batch_size, width), jnp.int32)
    start = jnp.full((batch_size,), context, jnp.int32)
    return lambda n: jax.block_until_ready(_forward_chain_jit(
        decoder.forward, decoder.params, cache, tokens, start, jnp.int32(n)))


def forward_step_seconds(chains: Mapping[str, tuple[Decoder, int]], *, batch_size: int = 1,
                         context: int = 0, min_seconds: float = 0.02, repeats: int = 7,
                         clock=time.perf_counter) -> dict[str, np.ndarray]:
    """Seconds of one forward step of each named (decoder, tokens_per_step), per round.

    A step feeds ``tokens_per_step`` new tokens per sequence for ``batch_size``
    sequences that already hold ``context`` cached positions: 1 token is a
    draft step or an autoregressive target step, lookahead + 1 tokens is a
    verification. Each chain runs as one compiled loop of chained steps (so
    dispatch is paid once, as in the decoding loop), long enough to take
    about ``min_seconds``. The chains take turns, ``repeats`` rounds after a
    compiling call, so a disturbance from other work on the machine hits
    every chain of a round alike: ratios of one round's times are steadier
    than ratios of separate medians.

    Returns:
      name -> float64[repeats], seconds per step in each round.
    """
    for name, value, minimum in (("batch_size", batch_size, 1), ("context", context, 0),
                                 ("repeats", repeats, 1)):
        _validate.check_static_int(name, value, minimum)
    runs = {name: _chain_runner(decoder, width, batch_size, context)
            for name, (decoder, width) in chains.items()}
    steps = {}
    for name, run in runs.items():
        run(1)  # compile
        begin = clock()
        run(16)
        per_step = max((clock() - begin) / 16, 1e-9)
        steps[name] = int(min(max(16, math.ceil(min_seconds / per_step)), 1 << 16))
    times = {name: np.empty(repeats) for name in runs}
    for r in range(repeats):
        for name, run in runs.items():
            begin = clock()
            run(steps[name])
            times[name][r] = (clock() - begin) / steps[name]
    return times


def law_speedup(acceptance, lookahead: int, cost_ratio, verify_cost=1.0) -> float:
    """The speedup the throughput law predicts, E(alpha, gamma) / (gamma c + v).

    ``cost_ratio`` c is one draft step over one target step; ``verify_cost`` v
    is the verification of gamma + 1 tokens in target steps. The law (theory,
    section 3) takes v = 1, which memory-bound accelerators come close to; a
    CPU pays more for the wider step, and the measured v says how much.
    """
    # E = 1 + alpha + ... + alpha^gamma, summed as written: exact at alpha = 1
    # and no device work (the law in sdsl_jax.laws.throughput is the jit-able form).
    alpha = float(acceptance)
    expected = sum(alpha ** i for i in range(int(lookahead) + 1))
    return expected / (lookahead * float(cost_ratio) + float(verify_cost))


# --------------------------------------------------------------------------
# Intervals across prompts.


@functools.lru_cache(maxsize=256)
def _t_quantile(probability: float, df: int) -> float:
    # A summary asks for the same few (confidence, df) pairs over and over (and
    # a coverage simulation thousands of times); each costs a float64 bisection.
    return student_t_quantile_float(probability, df)


def mean_interval(values: Iterable[float], confidence: float = 0.95, *,
                  batches: Iterable[Any] | None = None) -> tuple[float, float, float]:
    """(mean, low, high): the interval for the mean per-prompt value, batches as the units.

    Args:
      values: one value per prompt; NaN values are dropped (with their batch).
      confidence: the interval's level.
      batches: the batch each value was timed in (labels numpy can sort, such
        as ints, one per value; :func:`record_batches` gives them for
        records); values of one batch share its timing. None: every value is its
        own batch (batch size 1), and the interval is the Student-t interval
        for the mean of i.i.d. values.

    The mean is the mean over prompts. Its interval is cluster-robust with the
    batches as clusters (module docstring): with G batches of n_g prompts, N in
    all, and batch sums S_g,

        var = G / (G - 1) * sum_g (S_g - n_g * mean)^2 / N^2,
        mean +- t_{G-1} sqrt(var),

    which is exactly the Student-t interval at batch size 1, and the t
    interval over the batch means when every batch has the same size. With
    fewer than two batches the ends are NaN.
    """
    _validate.check_open_unit("confidence", confidence)
    x = np.asarray(list(values), np.float64).reshape(-1)
    if batches is None:
        labels = np.arange(x.size)
    else:
        labels = np.asarray(list(batches)).reshape(-1)
        if labels.size != x.size:
            raise ValueError(f"batches has {labels.size} labels for {x.size} values")
    keep = ~np.isnan(x)
    x, labels = x[keep], labels[keep]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(np.mean(x))
    _, which, counts = np.unique(labels, return_inverse=True, return_counts=True)
    units = counts.size
    if units < 2:
        return (mean, math.nan, math.nan)
    # Each batch's deviation from the mean, weighted by its prompts: n_g (mean_g - mean).
    deviation = np.bincount(which.reshape(-1), weights=x, minlength=units) - counts * mean
    variance = units / (units - 1) * float(np.sum(deviation ** 2)) / x.size ** 2
    half = _t_quantile((1 + confidence) / 2, units - 1) * math.sqrt(variance)
    return (mean, mean - half, mean + half)


# --------------------------------------------------------------------------
# Summaries of per-prompt records (see sdsl_jax.decoding.pair).


def acceptance_inputs(records: Iterable[Mapping[str, Any]]):
    """(accepted, lookahead, prompt_ids) arrays for ``estimate_acceptance``.

    One row per record, padded with lookahead-0 iterations (which count
    nothing); prompt ids are the record's position 0..n-1.
    """
    records = list(records)
    if not records:
        raise ValueError("records is empty")
    width = max(1, max(len(r["accepted"]) for r in records))
    accepted = np.zeros((len(records), width), np.int32)
    lookahead = np.zeros((len(records), width), np.int32)
    for i, r in enumerate(records):
        k = np.asarray(r["accepted"], np.int32)
        accepted[i, :k.size] = k
        lookahead[i, :k.size] = int(r["lookahead"])
    ids = np.broadcast_to(np.arange(len(records), dtype=np.int32)[:, None], accepted.shape)
    return accepted, lookahead, ids


def record_batches(records: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """The timed batch of each record, as int labels for :func:`mean_interval`'s ``batches``.

    A record of :func:`sdsl_jax.decoding.pair.measure_pair` names its batch
    (``batch_index``, distinct within a run). Records written before that field
    existed are assigned to batches by what their batch shared: records with
    ``batch_size`` > 1 and exactly the same ``ttft_s`` (one prefill time per
    batch; ``baseline_ttft_s`` too, when present) are one batch, split in their
    order into runs of at most ``batch_size`` records (so identical times of
    several batches, as only a made-up timing gives, still make batches of the
    right size). Assumed: two batches never measure the very same prefill
    time, which a clock read to the nanosecond makes all but impossible.
    Records with ``batch_size`` 1, or none, are each their own batch. Inferred
    labels are negative, so they never meet a recorded ``batch_index``.
    """
    records = list(records)
    labels = np.empty(len(records), np.int64)
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        if r.get("batch_index") is not None:
            labels[i] = int(r["batch_index"])
            continue
        size = int(r.get("batch_size") or 1)
        key = ((size, r.get("ttft_s"), r.get("baseline_ttft_s")) if size > 1
               else ("alone", i))
        groups.setdefault(key, []).append(i)
    label = -1
    for key, members in groups.items():
        size = key[0] if key[0] != "alone" else 1
        for start in range(0, len(members), size):
            labels[members[start:start + size]] = label
            label -= 1
    return labels


def summarize(records: Iterable[Mapping[str, Any]], confidence: float = 0.95,
              interval: str = "cluster", key: jax.Array | None = None,
              num_resamples: int = 1000) -> dict[str, Any]:
    """Acceptance with its interval, accepted length, speedup and latencies across prompts.

    Args:
      records: per-prompt records of :func:`sdsl_jax.decoding.pair.measure_pair`,
        all with the same lookahead.
      confidence: level of every interval.
      interval: the acceptance interval, as in ``estimate_acceptance``; the
        default, "cluster", takes prompts as the units and covers from two
        prompts on (:func:`sdsl_jax.estimation.acceptance.cluster_interval`).
      key, num_resamples: for interval="bootstrap" only.

    Returns:
      A flat dict of plain numbers: prompts, lookahead, accepted, trials,
      acceptance (+ _low, _high), beta_mean (mean exact acceptance
      probability of the judged positions), mean_accepted (K per iteration),
      tokens_per_iteration, and ``<name>``, ``<name>_low``, ``<name>_high``
      for ttft_s, tpot_s, ttot_s and, when the records have a baseline,
      speedup, with ``batches`` the number of timed batches their intervals
      rest on (:func:`record_batches`; the batch is the unit, see
      :func:`mean_interval`). The acceptance columns match the measurement-set
      format (sdsl_jax.estimation.measurements).
    """
    records = list(records)
    if not records:
        raise ValueError("records is empty")
    lookaheads = {int(r["lookahead"]) for r in records}
    if len(lookaheads) != 1:
        raise ValueError(f"records mix lookaheads {sorted(lookaheads)}; summarise each apart")
    lookahead = lookaheads.pop()
    out: dict[str, Any] = {"prompts": len(records), "lookahead": lookahead}
    accepted, lookahead_arr, ids = acceptance_inputs(records)
    if lookahead > 0:
        est = estimate_acceptance(accepted, lookahead_arr, ids, interval=interval,
                                  confidence=confidence, num_prompts=len(records),
                                  num_resamples=num_resamples, key=key)
        out.update(accepted=int(est.accepted), trials=int(est.trials),
                   acceptance=float(est.acceptance), acceptance_low=float(est.low),
                   acceptance_high=float(est.high))
        beta_count = sum(int(r["beta_count"]) for r in records)
        out["beta_mean"] = (sum(float(r["beta_sum"]) for r in records) / beta_count
                            if beta_count else math.nan)
    iterations = sum(len(r["accepted"]) for r in records)
    mean_k = float(accepted.sum()) / iterations if iterations else math.nan
    out.update(mean_accepted=mean_k, tokens_per_iteration=mean_k + 1)
    names = ["ttft_s", "tpot_s", "ttot_s"]
    # Records of a run with a baseline all have the key; a None (a prompt
    # whose output was one token, no TPOT) is left out like a NaN.
    if all("speedup" in r for r in records) and any(r["speedup"] is not None for r in records):
        names.append("speedup")
    # Rows of one batch share one timing: the batch, not the prompt, is the
    # independent unit of every latency and speedup.
    batches = record_batches(records)
    out["batches"] = int(np.unique(batches).size)
    for name in names:
        mean, low, high = mean_interval(
            [math.nan if r.get(name) is None else r[name] for r in records], confidence,
            batches=batches)
        out.update({name: mean, f"{name}_low": low, f"{name}_high": high})
    return out
