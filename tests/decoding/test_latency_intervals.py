"""Latency intervals with the timed batch as the unit (sdsl_jax.decoding.metrics).

The interval against scipy's Student-t interval (batch size 1, and the batch
means at a fixed batch size), against the cluster-robust variance written out
as matrices (batches of unequal size), the batches of records without a
batch_index, and coverage by simulation (tests/decoding/latency_simulation.py).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest
from scipy import stats

from sdsl_jax.decoding import metrics

_spec = importlib.util.spec_from_file_location(
    "latency_simulation", pathlib.Path(__file__).with_name("latency_simulation.py"))
sim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sim)


def test_batch_one_is_the_student_t_interval():
    x = np.random.default_rng(5).exponential(size=17)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    for batches in (None, np.arange(17), [f"b{i}" for i in range(17)]):
        mean, low, high = metrics.mean_interval(x, 0.95, batches=batches)
        assert mean == pytest.approx(x.mean(), rel=1e-12)
        np.testing.assert_allclose([low, high], ref, rtol=1e-10)
    assert np.isnan(metrics.mean_interval([1.0])[1])
    assert metrics.mean_interval([1.0, np.nan, 3.0])[0] == 2.0


def test_batch_four_is_the_t_interval_over_batch_means():
    rng = np.random.default_rng(6)
    batches = np.repeat(np.arange(5), 4)
    ttft = np.exp(rng.normal(size=5))[batches]  # one prefill time per batch, as measured
    ttot = ttft + rng.exponential(size=20)
    for x in (ttft, ttot):
        means = x.reshape(5, 4).mean(1)
        ref = stats.t.interval(0.9, 4, loc=means.mean(), scale=stats.sem(means))
        mean, low, high = metrics.mean_interval(x, 0.9, batches=batches)
        assert mean == pytest.approx(x.mean(), rel=1e-12)
        np.testing.assert_allclose([low, high], ref, rtol=1e-10)
    # The rows as independent values (the old interval) are narrower by about sqrt(4).
    _, low_rows, high_rows = metrics.mean_interval(ttft, 0.9)
    mean, low, high = metrics.mean_interval(ttft, 0.9, batches=batches)
    assert (high_rows - low_rows) < 0.6 * (high - low)


def test_unequal_batches_are_the_cluster_robust_interval():
    # The sandwich of a regression on a constant, written out: bread (X'X)^-1,
    # meat sum_g X_g' u_g u_g' X_g, small-sample factor G / (G - 1), t with G - 1 df.
    rng = np.random.default_rng(7)
    sizes = [4, 4, 4, 1, 3]
    batches = np.repeat(np.arange(len(sizes)), sizes)
    x = rng.gamma(2.0, size=batches.size) + rng.normal(size=len(sizes))[batches]
    x[2] = np.nan  # dropped with its batch label
    keep = ~np.isnan(x)
    y, g = x[keep], batches[keep]
    design = np.ones((y.size, 1))
    bread = np.linalg.inv(design.T @ design)
    beta = bread @ design.T @ y
    u = y - design @ beta
    meat = sum(np.outer(design[g == k].T @ u[g == k], design[g == k].T @ u[g == k])
               for k in range(len(sizes)))
    se = math.sqrt(len(sizes) / (len(sizes) - 1) * (bread @ meat @ bread)[0, 0])
    half = stats.t.ppf(0.975, len(sizes) - 1) * se
    mean, low, high = metrics.mean_interval(x, 0.95, batches=batches)
    np.testing.assert_allclose([mean, low, high], [beta[0], beta[0] - half, beta[0] + half],
                               rtol=1e-10)
    # One batch: no interval; a label per value or none.
    assert np.isnan(metrics.mean_interval([1.0, 2.0], batches=[3, 3])[2])
    with pytest.raises(ValueError, match="batches"):
        metrics.mean_interval([1.0, 2.0], batches=[0])


def test_record_batches_without_batch_index():
    def rec(size, ttft, **kw):
        return dict(batch_size=size, ttft_s=ttft, **kw)

    # A resumed old run in prompt order: batch (0.1) was cut by a kill, its last
    # prompt redone in the next batch (0.3), which also took prompt 4.
    records = [rec(3, 0.1), rec(3, 0.1), rec(3, 0.3), rec(3, 0.2), rec(3, 0.2), rec(3, 0.3)]
    labels = metrics.record_batches(records)
    assert len(set(labels)) == 3 and (labels < 0).all()
    assert labels[0] == labels[1] and labels[2] == labels[5] and labels[3] == labels[4]
    # Made-up identical times still make batches of batch_size, in order; batch size 1
    # (or none) is a batch per record; a recorded batch_index is used as is.
    np.testing.assert_array_equal(
        metrics.record_batches([rec(2, 0.5)] * 5), [-1, -1, -2, -2, -3])
    assert len(set(metrics.record_batches([rec(1, 0.5)] * 3 + [dict(ttft_s=0.5)]))) == 4
    mixed = metrics.record_batches([rec(2, 0.5, batch_index=0), rec(2, 0.5, batch_index=0),
                                    rec(2, 0.5), rec(2, 0.5)])
    np.testing.assert_array_equal(mixed, [0, 0, -1, -1])
    # The simulated records with and without batch_index summarise alike.
    new = sim.simulate_records(np.random.default_rng(1), batch_size=4, prompts=10)[0]
    old = [{k: v for k, v in r.items() if k != "batch_index"} for r in new]
    s_new, s_old = metrics.summarize(new), metrics.summarize(old)
    assert s_new["batches"] == s_old["batches"] == 3
    for name in sim.NAMES:
        assert s_old[f"{name}_low"] == pytest.approx(s_new[f"{name}_low"], rel=1e-12)


@pytest.mark.slow
def test_coverage_at_batch_four():
    # 16 prompts in 4 batches of 4, 1500 simulated measurements (seed 3): the batch-wise
    # 95% interval covers each mean; the row-wise interval (the old one) does not for the
    # times, and neither does a z = 1 interval (nominal 68%).
    kw = dict(batch_size=4, prompts=16, replicates=1500, seed=3)
    new = sim.coverage(sim.batch_intervals, **kw)
    old = sim.coverage(sim.row_intervals, **kw)
    z1 = sim.coverage(sim.batch_intervals, confidence=stats.norm.cdf(1) - stats.norm.cdf(-1),
                      **kw)
    for name in sim.NAMES:
        assert 0.915 <= new[name] <= 0.975, (name, new[name])
        assert z1[name] < 0.8, (name, z1[name])
    for name in ("ttft_s", "tpot_s", "ttot_s"):
        assert old[name] < 0.85, (name, old[name])


@pytest.mark.slow
def test_summary_row_and_text_take_the_batch_as_the_unit():
    # Runs-file lines of 10 prompts in batches of 4 (4, 4, 2) through the measurement
    # row and its printed summary; the old lines (no batch_index) give the same row.
    from sdsl_jax.decoding.rows import summary_row
    from sdsl_jax.decoding.summary import loop_summary

    recs = sim.simulate_records(np.random.default_rng(2), batch_size=4, prompts=10)[0]
    rng = np.random.default_rng(3)
    lines = []
    for i, r in enumerate(recs):
        k = rng.integers(0, 3, size=6).tolist()
        base_decode = r["speedup"] * (r["ttot_s"] - r["ttft_s"])
        lines.append(dict(
            r, prompt_id=i, lookahead=2, accepted_per_iteration=k, accepted=sum(k),
            trials=sum(min(x + 1, 2) for x in k), beta_sum=1.0, beta_count=1,
            draft_model="d", target_model="t", family=None, draft_params=10, target_params=30,
            draft_tokens=1e3, target_tokens=1e3, perplexity_source="validation",
            draft_perplexity=9.0, target_perplexity=7.0, temperature=1.0, baseline=True,
            baseline_ttft_s=r["ttft_s"] * 0.9, baseline_ttot_s=r["ttft_s"] * 0.9 + base_decode,
            baseline_tpot_s=base_decode / 63, draft_step_seconds=1e-3, target_step_seconds=5e-3,
            baseline_step_seconds=4e-3, cost_ratio=0.25, verify_cost=1.25, max_new_tokens=64,
            prompt_len=8, batch=4, context=40, precision="fp32", device="cpu", prompt_set="x",
            seed=0))
    row = summary_row(lines, num_resamples=100)
    batches = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert row["timed_batches"] == 3
    for name, key in (("ttft", "ttft_s"), ("ttot", "ttot_s"), ("speedup", "speedup"),
                      ("baseline_tpot", "baseline_tpot_s")):
        mean, low, high = metrics.mean_interval([r[key] for r in lines], batches=batches)
        assert (row[name], row[f"{name}_low"], row[f"{name}_high"]) == pytest.approx(
            (mean, max(low, 0.0), high), rel=1e-9)
    old = summary_row([{k: v for k, v in r.items() if k != "batch_index"} for r in lines],
                      num_resamples=100)
    assert (old["ttft_low"], old["baseline_ttot_high"]) == pytest.approx(
        (row["ttft_low"], row["baseline_ttot_high"]), rel=1e-12)
    text = loop_summary(row, runs_file="runs.jsonl", measured_now=10, from_earlier=0)
    assert "batch 4 (latency intervals over 3 timed batches)" in text
    assert "interval is wide" not in text
    # Under four prompts the summary says why the acceptance interval is wide.
    few = summary_row(lines[:2], num_resamples=100)
    text = loop_summary(few, runs_file="runs.jsonl", measured_now=2, from_earlier=0)
    assert "under 4 prompts the interval is wide: measure more" in text
