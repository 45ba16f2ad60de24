"""Benchmark sdsl_jax.laws.lambertw against scipy.special.lambertw (speed and ulp error).

    python benchmarks/bench_lambertw.py [--n 1000000] [--repeats 7] [--subsample 20000]

Draws the same float64 points for both implementations:

* branch 0 on (-1/e, 1e3]: a third uniform, a third log-spaced offsets from
  -1/e (1e-16 .. 1e3), a third log-spaced magnitudes (1e-300 .. 1e3 positive,
  1e-300 .. 1/e negative);
* branch -1 on (-1/e, 0): a third uniform, a third log-spaced offsets from
  -1/e (1e-16 .. 1/e), a third -10^U(-300, log10(1/e)).

Times scipy and the jitted JAX function (after compilation, with
block_until_ready) and reports medians over repeats.  The ulp error of both is
measured against mpmath (50 digits, at the exact float input) on a subsample,
per region; 2000 extra points 10^U(3, 308) cover the "huge" region of branch 0,
which the timing range [-1/e, 1e3] does not reach.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import mpmath  # noqa: E402
import numpy as np  # noqa: E402
import scipy.special  # noqa: E402

from sdsl_jax.laws.lambertw import lambertw

INV_E = float(1 / mpmath.e)  # nearest double, just above the true 1/e


def draw(branch, n, rng):
    k = n // 3
    m = n - 2 * k
    if branch == 0:
        n_neg = m // 2
        parts = [
            rng.uniform(-INV_E, 1e3, k),
            -INV_E + 10 ** rng.uniform(-16, np.log10(1e3 + INV_E), k),
            10 ** rng.uniform(-300, 3, m - n_neg),
            -(10 ** rng.uniform(-300, np.log10(INV_E), n_neg)),
        ]
    else:
        parts = [
            rng.uniform(-INV_E, 0, k),
            -INV_E + 10 ** rng.uniform(-16, np.log10(INV_E), k),
            -(10 ** rng.uniform(-300, np.log10(INV_E), m)),
        ]
    x = np.concatenate(parts)
    # Offsets below one ulp of 1/e round onto the branch point itself; keep
    # every point strictly inside the domain so both libraries see real input.
    x = np.where(x <= -INV_E, np.nextafter(-INV_E, 0), x)
    if branch == -1:
        x = np.minimum(x, -1e-300)
    return rng.permutation(x)


def region_of(x):
    near = np.abs(x + INV_E) < 1e-8
    tiny = (np.abs(x) < 1e-5) & ~near
    huge = (x > 1e2) & ~near
    moderate = ~(near | tiny | huge)
    return {"near -1/e (<1e-8)": near, "moderate": moderate, "tiny |x|<1e-5": tiny, "huge x>1e2": huge}


def timeit(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def ulp_errors(y, ref):
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(y - ref) / np.spacing(np.abs(ref))
    err[y == ref] = 0.0
    return np.where(np.abs(ref) < np.finfo(np.float64).tiny, 0.0, err)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="points per branch (default 1e6)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    ap.add_argument("--subsample", type=int, default=20_000, help="points checked against mpmath")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    mpmath.mp.dps = 50

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float64, n = {args.n:,} per branch, "
          f"median of {args.repeats}")
    print(f"{'branch':>6} {'scipy ms':>10} {'ours ms':>9} {'(min)':>7} {'speedup':>8}")
    accuracy = []
    for branch in (0, -1):
        x = draw(branch, args.n, rng)
        xj = jnp.asarray(x)
        f = jax.jit(lambda v: lambertw(v, branch))
        f(xj).block_until_ready()  # compile
        t_ours, t_ours_min = timeit(lambda: f(xj).block_until_ready(), args.repeats)
        t_scipy, _ = timeit(lambda: scipy.special.lambertw(x, branch).real, max(3, args.repeats // 2))
        print(f"{branch:>6} {t_scipy * 1e3:>10.1f} {t_ours * 1e3:>9.1f} {t_ours_min * 1e3:>7.1f} "
              f"{t_scipy / t_ours:>7.1f}x")

        sub = x[rng.choice(x.size, min(args.subsample, x.size), replace=False)]
        if branch == 0:
            sub = np.concatenate([sub, 10 ** rng.uniform(3, 308, 2000)])
        ref = np.array([float(mpmath.lambertw(mpmath.mpf(float(v)), branch).real) for v in sub])
        ours = ulp_errors(np.asarray(f(jnp.asarray(sub))), ref)
        theirs = ulp_errors(scipy.special.lambertw(sub, branch).real, ref)
        for name, mask in region_of(sub).items():
            if mask.any():
                accuracy.append((branch, name, int(mask.sum()), ours[mask].max(), theirs[mask].max()))

    print(f"\nmax error in ulp vs mpmath (subsample of {args.subsample:,} per branch)")
    print(f"{'branch':>6} {'region':<18} {'n':>6} {'ours':>7} {'scipy':>10}")
    for branch, name, n, e_ours, e_scipy in accuracy:
        print(f"{branch:>6} {name:<18} {n:>6} {e_ours:>7.2f} {e_scipy:>10.3g}")


if __name__ == "__main__":
    main()
