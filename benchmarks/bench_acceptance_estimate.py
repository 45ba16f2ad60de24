"""Acceptance intervals: sdsl_jax against scipy on a large batch.

    python benchmarks/bench_acceptance_estimate.py [--batch 100000]
        [--cp-batch 5000] [--repeats 3] [--cp-repeats 15]

Wilson and Clopper-Pearson intervals for a batch of (accepted, trials) counts
(trials log-uniform in [1, 1e6]), jitted, against scipy: binomtest(k, n)
.proportion_ci one count at a time (timed on a slice, scaled to the batch),
and for Clopper-Pearson also the vectorised beta.ppf that binomtest calls
(both ends), on the first --cp-batch counts (the issue's 5,000) and on the
whole batch. Clopper-Pearson and beta.ppf are timed interleaved, one call of
each per repeat, so that a busy machine slows both alike; the rows give the
median and, in brackets, the fastest repeat of each. Then the prompt
bootstrap of one run (100 prompts, 1000 resamples) against
scipy.stats.bootstrap resampling the same prompts (paired, percentile), and a
vmapped batch of runs. Medians after compilation; ratio = scipy / sdsl_jax.
Coverage is not measured here: tests/estimation/test_acceptance.py does that.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from sdsl_jax.estimation import acceptance as ae


def median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def row(name, ours, scipy_time):
    print(f"{name:<50}{ours * 1e3:>12.2f}{scipy_time * 1e3:>14.2f}{scipy_time / ours:>10.3g}x")


def interleaved_times(fns, repeats):
    """Times of each function, called in turn once per repeat (after a warm-up call each)."""
    for fn in fns:
        jax.block_until_ready(fn())
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t0)
    return [np.array(t) for t in times]


def paired_row(name, ours, scipy_times):
    """Median (and fastest) of each, and the ratio of the medians (and of the minima)."""
    mo, ms = np.median(ours), np.median(scipy_times)
    print(f"{name:<50}{mo * 1e3:>12.2f}{ms * 1e3:>14.2f}{ms / mo:>10.3g}x"
          f"   (fastest {ours.min() * 1e3:.2f} vs {scipy_times.min() * 1e3:.2f}: "
          f"{scipy_times.min() / ours.min():.3g}x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--cp-batch", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cp-repeats", type=int, default=15,
                        help="interleaved repeats of Clopper-Pearson and beta.ppf")
    parser.add_argument("--scipy-slice", type=int, default=300,
                        help="counts timed one by one with binomtest (scaled to the batch)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n = np.round(10 ** rng.uniform(0, 6, args.batch))
    k = rng.binomial(n.astype(np.int64), rng.uniform(0.05, 0.95, args.batch)).astype(np.float64)
    s = slice(0, args.scipy_slice)
    size = {"wilson": args.batch, "clopper-pearson": args.cp_batch}
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    print(f"{jax.devices()[0].platform}, median of {args.repeats} after compilation; "
          "ratio = scipy time / sdsl_jax time")
    print(f"{'':<50}{'sdsl_jax ms':>12}{'scipy ms':>14}{'ratio':>11}")
    scipy_loop = {}
    for method, scipy_method in (("wilson", "wilson"), ("clopper-pearson", "exact")):
        def loop(method=scipy_method):
            return [stats.binomtest(int(a), int(b)).proportion_ci(method=method)
                    for a, b in zip(k[s], n[s])]
        scipy_loop[method] = median_time(loop, 1) * size[method] / args.scipy_slice

    def scipy_ppf(m):
        t = 0.025
        return (stats.beta.ppf(t, np.maximum(k[:m], 1), n[:m] - k[:m] + 1),
                stats.beta.ppf(1 - t, k[:m] + 1, np.maximum(n[:m] - k[:m], 1)))

    for x64 in (False, True):
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32
            kj = jnp.asarray(k, dtype)
            nj = jnp.asarray(n, dtype)
            jitted = jax.jit(ae.wilson_interval)
            ours = median_time(lambda: jitted(kj, nj), args.repeats)
            row(f"wilson {jnp.dtype(dtype).name} x{args.batch} vs binomtest loop", ours,
                scipy_loop["wilson"])
            jitted = jax.jit(ae.clopper_pearson_interval)
            for m in dict.fromkeys((args.cp_batch, args.batch)):
                km, nm = kj[:m], nj[:m]
                ours_t, ppf_t = interleaved_times(
                    [lambda km=km, nm=nm: jitted(km, nm), lambda m=m: scipy_ppf(m)],
                    args.cp_repeats)
                name = f"clopper-pearson {jnp.dtype(dtype).name} x{m}"
                paired_row(f"{name} vs beta.ppf", ours_t, ppf_t)
                if m == args.cp_batch:
                    row(f"{name} vs binomtest loop", float(np.median(ours_t)),
                        scipy_loop["clopper-pearson"])

    # The prompt bootstrap of one run, and of a vmapped batch of runs.
    prompts, resamples, runs = 100, 1000, 100
    per_t = rng.integers(20, 60, (runs, prompts)).astype(np.float32)
    per_a = rng.binomial(per_t.astype(np.int64), rng.beta(12, 8, (runs, prompts))).astype(np.float32)
    key = jax.random.PRNGKey(0)
    one = jax.jit(lambda a, t_, key: ae.bootstrap_interval(a, t_, key, resamples))
    batched = jax.jit(jax.vmap(lambda a, t_, key: ae.bootstrap_interval(a, t_, key, resamples)))
    keys = jax.random.split(key, runs)

    def scipy_bootstrap(r):
        return stats.bootstrap((per_a[r], per_t[r]), lambda a, t_, axis: a.sum(axis) / t_.sum(axis),
                               paired=True, vectorized=True, n_resamples=resamples,
                               method="percentile", random_state=0).confidence_interval

    scipy_one = median_time(lambda: scipy_bootstrap(0), args.repeats)
    row(f"bootstrap 1 run ({prompts} prompts, {resamples})",
        median_time(lambda: one(per_a[0], per_t[0], key), args.repeats), scipy_one)
    row(f"bootstrap {runs} runs, vmapped",
        median_time(lambda: batched(per_a, per_t, keys), args.repeats), scipy_one * runs)


if __name__ == "__main__":
    main()
