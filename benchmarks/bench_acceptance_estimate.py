"""Acceptance intervals: sdsl_jax against scipy on a large batch.

    python benchmarks/bench_acceptance_estimate.py [--batch 100000]
        [--cp-batch 5000] [--repeats 3]

Wilson and Clopper-Pearson intervals for a batch of (accepted, trials) counts
(trials log-uniform in [1, 1e6]), jitted, against scipy: binomtest(k, n)
.proportion_ci one count at a time (timed on a slice, scaled to the batch),
and for Clopper-Pearson also the vectorised beta.ppf that binomtest calls.
Clopper-Pearson runs on the first --cp-batch counts only: its fixed-step
bisection on jax.scipy.special.betainc is slow for large batches (every step
runs the batched continued fraction until its slowest element converges).
Then the prompt bootstrap of one run (100 prompts, 1000 resamples) against
scipy.stats.bootstrap resampling the same prompts (paired, percentile), and a
vmapped batch of runs. Medians after compilation; ratio = scipy / sdsl_jax.
Coverage is not measured here: tests/estimation/test_acceptance.py does that.
"""

from __future__ import annotations

import argparse
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--cp-batch", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scipy-slice", type=int, default=300,
                        help="counts timed one by one with binomtest (scaled to the batch)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    n = np.round(10 ** rng.uniform(0, 6, args.batch))
    k = rng.binomial(n.astype(np.int64), rng.uniform(0.05, 0.95, args.batch)).astype(np.float64)
    s = slice(0, args.scipy_slice)
    size = {"wilson": args.batch, "clopper-pearson": args.cp_batch}

    print(f"{jax.devices()[0].platform}, median of {args.repeats} after compilation; "
          "ratio = scipy time / sdsl_jax time")
    print(f"{'':<50}{'sdsl_jax ms':>12}{'scipy ms':>14}{'ratio':>11}")
    scipy_loop = {}
    for method, scipy_method in (("wilson", "wilson"), ("clopper-pearson", "exact")):
        def loop(method=scipy_method):
            return [stats.binomtest(int(a), int(b)).proportion_ci(method=method)
                    for a, b in zip(k[s], n[s])]
        scipy_loop[method] = median_time(loop, 1) * size[method] / args.scipy_slice
    t, c = 0.025, slice(0, args.cp_batch)
    scipy_ppf = median_time(lambda: (stats.beta.ppf(t, np.maximum(k[c], 1), n[c] - k[c] + 1),
                                     stats.beta.ppf(1 - t, k[c] + 1, np.maximum(n[c] - k[c], 1))),
                            args.repeats)

    for x64 in (False, True):
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32
            for method, fn in (("wilson", ae.wilson_interval),
                               ("clopper-pearson", ae.clopper_pearson_interval)):
                kj = jnp.asarray(k[:size[method]], dtype)
                nj = jnp.asarray(n[:size[method]], dtype)
                jitted = jax.jit(fn)
                ours = median_time(lambda: jitted(kj, nj), args.repeats)
                name = f"{method} {jnp.dtype(dtype).name} x{size[method]}"
                row(f"{name} vs binomtest loop", ours, scipy_loop[method])
                if method == "clopper-pearson":
                    row(f"{name} vs beta.ppf", ours, scipy_ppf)

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
