"""Latency records shaped like real batched timing, and the coverage of latency intervals.

Not a test module: tests/decoding/test_latency_intervals.py loads it by path
(the suite imports in importlib mode), and so can a benchmark::

    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "latency_simulation", "tests/decoding/latency_simulation.py")
    sim = importlib.util.module_from_spec(spec); spec.loader.exec_module(sim)
    sim.coverage(sim.batch_intervals, batch_size=4, prompts=16, replicates=2000, seed=0)
    # -> {"ttft_s": 0.95.., "tpot_s": ..., "ttot_s": ..., "speedup": ...}

``coverage`` takes any ``intervals(records, confidence) -> {name: (mean, low,
high)}``; :func:`summary_intervals` wraps a ``summarize`` (the current one or
an older commit's: the records have lookahead 0, so no acceptance is
estimated) and :func:`row_intervals` is the row-wise Student-t interval the
loop used before the batch became the unit.

The model of one measurement (every figure a default argument of
:func:`simulate_records`):

* prompts are decoded in batches of ``batch_size`` (a short last batch when
  they do not divide); batch g has a log-normal factor exp(z_g), z_g ~
  N(0, batch_sigma^2), shared by its prefill, its decode step time and its
  baseline step time (the machine's state while the batch ran), and each of
  the three has its own factor exp(e), e ~ N(0, piece_sigma^2);
* prefill P_g = prefill_seconds * exp(z_g + e_p): every row's TTFT;
* a prompt's acceptance a ~ Beta(6, 3) sets its finish step
  f = (max_new_tokens - 1) / E(a) * exp(h), E(a) = 1 + a + ... + a^lookahead,
  h ~ N(0, finish_sigma^2) (the draws of the decoding);
* row decode time s_g f with s_g = step_seconds * exp(z_g + e_s), as the loop
  apportions a batch's decode time by finish step; TTOT = P_g + s_g f, TPOT =
  s_g f / (max_new_tokens - 1);
* the baseline decodes max_new_tokens - 1 steps at b_g = baseline_step_seconds
  * exp(z_g + e_b); speedup = b_g (max_new_tokens - 1) / (s_g f).

:func:`true_means` gives the mean of each per-prompt latency over prompts and
batches (the estimand), in closed form but for one quadrature over a.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, stats

from sdsl_jax.decoding import metrics

NAMES = ("ttft_s", "tpot_s", "ttot_s", "speedup")
MODEL = dict(prefill_seconds=0.02, step_seconds=0.005, baseline_step_seconds=0.004,
             max_new_tokens=64, lookahead=4, batch_sigma=0.3, piece_sigma=0.1,
             finish_sigma=0.15, acceptance_a=6.0, acceptance_b=3.0)


def _tokens_per_step(a, lookahead):
    return sum(a ** i for i in range(lookahead + 1))


def true_means(**model) -> dict[str, float]:
    """The population mean of each per-prompt quantity under the model."""
    m = dict(MODEL, **model)
    beta = stats.beta(m["acceptance_a"], m["acceptance_b"])
    inv_e = integrate.quad(lambda a: beta.pdf(a) / _tokens_per_step(a, m["lookahead"]), 0, 1,
                           epsabs=1e-13, epsrel=1e-12)[0]
    e = integrate.quad(lambda a: beta.pdf(a) * _tokens_per_step(a, m["lookahead"]), 0, 1,
                       epsabs=1e-13, epsrel=1e-12)[0]
    steps = m["max_new_tokens"] - 1
    lognormal = math.exp((m["batch_sigma"] ** 2 + m["piece_sigma"] ** 2) / 2)
    finish = steps * inv_e * math.exp(m["finish_sigma"] ** 2 / 2)  # E[f]
    ttft = m["prefill_seconds"] * lognormal
    decode = m["step_seconds"] * lognormal * finish
    # b_g / s_g = (b / s) exp(e_b - e_s): the batch factor cancels.
    speedup = (m["baseline_step_seconds"] / m["step_seconds"] * math.exp(m["piece_sigma"] ** 2)
               * e * math.exp(m["finish_sigma"] ** 2 / 2))
    return {"ttft_s": ttft, "tpot_s": decode / steps, "ttot_s": ttft + decode,
            "speedup": speedup}


def simulate_records(rng: np.random.Generator, *, batch_size: int, prompts: int,
                     replicates: int = 1, batch_index: bool = True, **model) -> list[list[dict]]:
    """``replicates`` simulated measurements, each a list of ``prompts`` records.

    Records carry what :func:`sdsl_jax.decoding.metrics.summarize` reads
    (lookahead 0, so no acceptance), ``batch_size`` and, unless
    ``batch_index`` is False (a records file from before that field),
    ``batch_index``.
    """
    m = dict(MODEL, **model)
    batches = -(-prompts // batch_size)
    shape = (replicates, batches)
    z = rng.normal(0.0, m["batch_sigma"], shape)
    piece = lambda: np.exp(z + rng.normal(0.0, m["piece_sigma"], shape))
    prefill = m["prefill_seconds"] * piece()
    step = m["step_seconds"] * piece()
    base_step = m["baseline_step_seconds"] * piece()
    a = rng.beta(m["acceptance_a"], m["acceptance_b"], (replicates, prompts))
    steps = m["max_new_tokens"] - 1
    finish = steps / _tokens_per_step(a, m["lookahead"]) * np.exp(
        rng.normal(0.0, m["finish_sigma"], (replicates, prompts)))
    g = np.arange(prompts) // batch_size
    ttft = prefill[:, g]
    decode = step[:, g] * finish
    speedup = base_step[:, g] * steps / decode
    out = []
    for r in range(replicates):
        recs = []
        for i in range(prompts):
            rec = {"lookahead": 0, "accepted": [], "beta_sum": 0.0, "beta_count": 0,
                   "batch_size": batch_size, "ttft_s": float(ttft[r, i]),
                   "tpot_s": float(decode[r, i] / steps),
                   "ttot_s": float(ttft[r, i] + decode[r, i]), "speedup": float(speedup[r, i])}
            if batch_index:
                rec["batch_index"] = int(g[i])
            recs.append(rec)
        out.append(recs)
    return out


def summary_intervals(summarize=metrics.summarize):
    """``intervals`` for :func:`coverage` from a ``summarize(records, confidence=...)``."""
    def intervals(records, confidence):
        s = summarize(records, confidence=confidence)
        return {name: (s[name], s[f"{name}_low"], s[f"{name}_high"]) for name in NAMES}
    return intervals


batch_intervals = summary_intervals()


def row_intervals(records, confidence):
    """The row-wise Student-t interval, every record its own unit (the loop's old interval)."""
    return {name: metrics.mean_interval([r[name] for r in records], confidence)
            for name in NAMES}


def coverage(intervals, *, batch_size: int, prompts: int, replicates: int, seed: int,
             confidence: float = 0.95, batch_index: bool = True, **model) -> dict[str, float]:
    """The fraction of ``replicates`` simulated measurements whose interval holds the true mean.

    An interval with NaN ends (one batch) counts as a miss.
    """
    truth = true_means(**model)
    sets = simulate_records(np.random.default_rng(seed), batch_size=batch_size, prompts=prompts,
                            replicates=replicates, batch_index=batch_index, **model)
    hits = dict.fromkeys(NAMES, 0)
    for records in sets:
        for name, (_, low, high) in intervals(records, confidence).items():
            hits[name] += bool(low <= truth[name] <= high)
    return {name: hits[name] / replicates for name in NAMES}
