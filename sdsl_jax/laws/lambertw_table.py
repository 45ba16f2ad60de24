"""Both real branches of Lambert W in float64, read from tables of piecewise polynomials.

``lambertw(x, branch)`` in float64 is not iterated: each bin of a table
holds the Chebyshev interpolant of degree 8 of ``W``, written as a
polynomial about the bin's centre, so that one evaluation is an index read
off the bits of the argument, eight gathers and a polynomial (nine for
``1 + W``, below).  A third table serves the log-domain form the planners
call, ``W_-1(-exp(-1 - kappa))`` (``lambertw_negexp_parts``), by ``kappa``.
float32 and ``lambertw_negexp`` on branch 0 keep the tabulated guess and
refinement step of :mod:`sdsl_jax.laws.lambertw`.

Bins
----
Every bin is 1/16 of a binade of a *bin variable* ``v``, an exact function
of ``x``:

* *near* the branch point (``x < X_NEAR``, i.e. ``1 + e x < 1/2``), both
  branches: ``v = x + fl(1/e)``, exact by Sterbenz' lemma, in binades
  ``2^-54 .. 2^-3``.  ``fl(1/e)`` lies ~1.2e-17 above ``1/e``, so ``W`` is
  singular (like ``-1 +- sqrt(2 e (v - 1.2e-17))``) just below the smallest
  ``v`` a float argument gives, ``2^-54``, and smooth on every bin;
* *negative* ``x`` from ``X_NEAR`` up: ``v = -x``, binades ``2^-30 .. 2^-3``
  on branch 0 (below, ``W_0(x) = x - x^2`` to 2^-59) and ``2^-1022 ..
  2^-3`` on branch -1, every normal float64 (``W_-1`` runs to ``-inf`` like
  ``log(-x)``, but is smooth on every 1/16 binade);
* *positive* ``x``, branch 0: ``v = x``, binades ``2^-30 .. 2^1023``, every
  finite float64 from ``2^-30`` up;
* the log-domain table: ``v = kappa``, binades ``2^-56 .. 2^1023``
  (``W_-1(-exp(-1 - kappa))`` is singular like ``-1 - sqrt(2 kappa)`` at 0
  and near ``2 pi i k``, and smooth on every bin); below ``2^-56`` the
  branch-point series (:func:`negexp_parts`).

Write ``v = 2^e m`` with ``1 <= m < 2``: the bin is ``e`` with the top four
bits of ``m``'s fraction, that is the top 16 bits of ``v``'s bit pattern,
and the polynomial variable ``u = m - mid`` (``mid`` the bin's centre,
``|u| <= 1/32``) is exact, both ``m`` and ``mid`` being read off the bits.
Each bin stores ``W(centre)`` as a double word ``(hi, lo)`` and the
coefficients ``c_1 .. c_8`` of ``u``, and::

    w = hi + (lo + u (c_1 + c_2 u + ... + c_8 u^7))

The correction is at most a few percent of ``|w|``, so its own rounding
stays below ~0.01 ulp of ``w``: ``w`` is within the final rounding (0.5 ulp)
plus the interpolation error, which :func:`build_table` measures against
mpmath (at most ~0.03 ulp; degree 7 would be ~1 ulp at ``x ~ 8`` on branch 0).

Cost and layout
---------------
XLA on CPU evaluates this as one loop over the input, 4 lanes per AVX2
vector, each gather as four scalar loads merged by shuffles; the shuffles,
which share one execution port, are most of the time.  So the gathers are
few: the coefficients that need few bits share a 64-bit word (``c_6`` with 31
bits of fraction and ``lo`` with 9, ``c_7`` with 23 and ``c_8`` with 17; the
largest bit counts any bin needs for 0.005 ulp are 27, 7, 22 and 16), which
an ``and`` and a shift take apart.  Eight gathers per element instead of ten.
The near region's variable is exact, so no compensated ``1 + e x`` is formed.

``1 + W``, which the derivative divides by, is ``(1 + hi) + (lo + ...)``
with ``lo`` in full from a ninth word: ``1 + hi`` is exact near the branch
point (``-2 <= hi <= -1/2``), where ``1 + W`` then keeps its relative
precision.

The tables (18,144 bins for branch 0, 17,152 for branch -1 and 17,280 for
the log-domain form, 9 words each, a 2.7 MB compressed file) ship with the
package and are regenerated with mpmath by ``python -m
sdsl_jax.laws.lambertw_table`` (~1.5 minutes on 2 cores);
tests/laws/test_lambertw_table.py recomputes a sample of their bins and
measures ``lambertw`` at every bin edge.
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["X_NEAR", "TABLE_PATH", "build_table", "load_table", "lambertw_parts", "negexp_parts"]

TABLE_PATH = os.path.join(os.path.dirname(__file__), "lambertw_float64.npz")
BRANCHES = (0, -1)
# The tables: W_branch(x) for each branch, and W_-1(-exp(-1 - kappa)) by kappa.
NEGEXP = "negexp"
TABLES = (*BRANCHES, NEGEXP)

DEGREE = 8
_SUB_BITS = 4  # 2^4 bins per binade
_BINS_PER_BINADE = 1 << _SUB_BITS
_BIAS = 1023
_MANTISSA_BITS = 52
# (first, last) binade exponent of each section's v, in table order.
SECTIONS = {
    0: {"near": (-54, -3), "negative": (-30, -3), "positive": (-30, 1023)},
    -1: {"near": (-54, -3), "negative": (-1022, -3)},
    NEGEXP: {"kappa": (-56, 1023)},
}
# Below the kappa table, W_-1 = -1 - p - p^2 / 3 - ..., p = sqrt(2 kappa).
KAPPA_MIN = 2.0**-56
_COUNTS = {b: {k: (hi - lo + 1) * _BINS_PER_BINADE for k, (lo, hi) in sec.items()}
           for b, sec in SECTIONS.items()}
_OFFSETS = {b: dict(zip(c, np.cumsum([0] + list(c.values()))[:-1].tolist())) for b, c in _COUNTS.items()}
N_BINS = {b: sum(c.values()) for b, c in _COUNTS.items()}

# 1/e to ~60 digits (lambertw.py's constants derive from it too) and its
# nearest float64 (which lies above it).
INV_E = Fraction("0.367879441171442321595523770161460867445811131031767834507836801")
INV_E_HI = float(INV_E)
# Near/far switch: 1 + e x < 1/2, as a threshold on x.
X_NEAR = float((Fraction(1, 2) - 1) * INV_E)
TINY_X = 2.0**-30

# Stored words per bin: hi, c_1 .. c_5 as float64, two packed pairs (high
# value, low value, fraction bits of the high one; the low one keeps 40 minus
# that, both keep sign and exponent), and lo in full for 1 + W (see lambertw_parts).
_PAIRS = (("c6", "lo", 31), ("c7", "c8", 23))
N_WORDS = 9


# ----------------------------------------------------------------------------
# The table: layout, generation (mpmath), packing and loading


def bin_centres(table):
    """Every bin's section name, binade exponent e and centre of m, in the table's order."""
    names, exps, mids = [], [], []
    for name, (lo, hi) in SECTIONS[table].items():
        names += [name] * _COUNTS[table][name]
        exps.append(np.repeat(np.arange(lo, hi + 1), _BINS_PER_BINADE))
        j = np.tile(np.arange(_BINS_PER_BINADE), hi - lo + 1)
        mids.append(1 + (j + 0.5) / _BINS_PER_BINADE)
    return np.array(names), np.concatenate(exps), np.concatenate(mids)


def reachable(name, e, mid):
    """Whether an argument can select this bin (two sections end inside a binade).

    Near the branch point v = x + fl(1/e) < X_NEAR + fl(1/e), and the negative
    section ends at X_NEAR; the rest of those binades is filled but unused.
    """
    start = 2.0**e * (mid - 1 / (2 * _BINS_PER_BINADE))
    if name == "near":
        return start < X_NEAR + INV_E_HI
    if name == "negative":
        return start < -X_NEAR
    return True


def _x_of_v(name, v, mp):
    if name == "kappa":
        return -mp.exp(-1 - v)
    if name == "near":
        return v - mp.mpf(INV_E_HI)
    return -v if name == "negative" else v


def _round_bits(v, bits):
    """v rounded to `bits` bits of fraction (to nearest; exponent kept)."""
    if v == 0 or not np.isfinite(v):
        return float(v)
    m, e = np.frexp(v)  # v = m 2^e, 0.5 <= |m| < 1: bits + 1 significant bits
    return float(np.ldexp(np.round(m * 2.0 ** (bits + 1)), int(e) - bits - 1))


def _pack(high, low, high_bits):
    """One word: high to high_bits of fraction, low's top bits below it."""
    h = np.float64(_round_bits(high, high_bits)).view(np.uint64)
    lo = np.float64(_round_bits(low, 40 - high_bits)).view(np.uint64)
    return (h | (lo >> np.uint64(12 + high_bits))).view(np.float64)


def _unpack_np(word, high_bits):
    bits = np.float64(word).view(np.uint64)
    mask = ~np.uint64((1 << (_MANTISSA_BITS - high_bits)) - 1)
    return (bits & mask).view(np.float64), (bits << np.uint64(12 + high_bits)).view(np.float64)


def _pack_row(coef):
    """(hi, lo, c_1 .. c_8) -> the N_WORDS stored words."""
    named = dict(zip(["hi", "lo"] + [f"c{k}" for k in range(1, DEGREE + 1)], coef))
    return [named["hi"]] + [named[f"c{k}"] for k in range(1, 6)] + [
        _pack(named[a], named[b], bits) for a, b, bits in _PAIRS] + [named["lo"]]


def _unpack_row(words):
    """The N_WORDS stored words -> (hi, lo, c_1 .. c_8) as the evaluation sees them."""
    named = {"hi": words[0], **{f"c{k}": words[k] for k in range(1, 6)}}
    for (a, b, bits), word in zip(_PAIRS, words[6:8]):
        named[a], named[b] = _unpack_np(word, bits)
    return [named["hi"], named["lo"]] + [named[f"c{k}"] for k in range(1, DEGREE + 1)]


def _bin_coefficients(table, name, e, mid, mp):
    """One bin's stored words, and the largest error of its polynomial in ulp of W_0.

    W_0 is sampled at the DEGREE + 1 Chebyshev points of u in [-1/32, 1/32];
    the interpolant's Chebyshev coefficients (discrete cosine sums) become
    monomial coefficients of u, all at mpmath's working precision.  The
    error is that of the stored (rounded and packed) coefficients, at points
    between the nodes and at both ends of the bin.
    """
    n = DEGREE + 1
    half = mp.mpf(1) / (2 * _BINS_PER_BINADE)
    scale = mp.ldexp(1, int(e))

    def w_of_u(u):
        return mp.lambertw(_x_of_v(name, scale * (mp.mpf(mid) + u), mp), -1 if table == NEGEXP else table).real

    theta = [mp.pi * (i + mp.mpf(1) / 2) / n for i in range(n)]
    vals = [w_of_u(half * mp.cos(t)) for t in theta]
    cheb = [(2 if k else 1) * mp.fsum(f * mp.cos(k * t) for f, t in zip(vals, theta)) / n
            for k in range(n)]
    # T_k(s) in the monomial basis, by T_{k+1} = 2 s T_k - T_{k-1}; s = u / half.
    mono = [mp.mpf(0)] * n
    t_prev, t_cur = [mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]
    mono[0] = cheb[0]
    for k in range(1, n):
        for i, c in enumerate(t_cur):
            mono[i] += cheb[k] * c
        t_next = [mp.mpf(0)] + [2 * c for c in t_cur]
        for i, c in enumerate(t_prev):
            t_next[i] -= c
        t_prev, t_cur = t_cur, t_next
    coef = [mono[k] / half**k for k in range(n)]
    hi = float(coef[0])
    words = _pack_row([hi, float(coef[0] - hi)] + [float(c) for c in coef[1:]])
    hi, lo, *cs = (mp.mpf(float(v)) for v in _unpack_row(words))
    worst = 0.0
    for s in (-1, -0.83, -0.51, -0.17, 0.23, 0.61, 0.91, 1):
        u = half * s
        exact = w_of_u(u)
        approx = hi + lo + mp.fsum(c * u**k for k, c in enumerate(cs, 1))
        worst = max(worst, float(abs(approx - exact)) / np.spacing(abs(float(exact))))
    return words, worst


def _bins_worker(job):
    import mpmath

    # 40 digits: near the branch point x + 1/e, and so 1 + W, keeps ~20.
    mpmath.mp.dps = 40
    table, *columns = job
    rows, worst = [], 0.0
    for name, e, mid in zip(*columns):
        words, err = _bin_coefficients(table, str(name), int(e), float(mid), mpmath)
        rows.append(words)
        if reachable(str(name), int(e), float(mid)):
            worst = max(worst, err)
    return np.array(rows, dtype=np.float64).reshape(-1, N_WORDS), worst


def build_table(table, indices=None, processes=1):
    """A table's rows computed with mpmath: (words, shape (n, N_WORDS); worst error in ulp).

    ``table`` is a branch (0 or -1) or NEGEXP; ``indices`` selects bins
    (default: all); the worst error is over the reachable ones.  Needs
    mpmath (the test extra).
    """
    names, exps, mids = bin_centres(table)
    idx = np.arange(N_BINS[table]) if indices is None else np.asarray(indices, dtype=np.int64)
    chunks = [c for c in np.array_split(idx, max(1, processes * 8)) if len(c)]
    jobs = [(table, names[c], exps[c], mids[c]) for c in chunks]
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.map(_bins_worker, jobs)
    else:
        parts = [_bins_worker(j) for j in jobs]
    if not parts:
        return np.zeros((0, N_WORDS)), 0.0
    return np.concatenate([p[0] for p in parts]), max(p[1] for p in parts)


def _key(table):
    return {0: "branch_0", -1: "branch_m1", NEGEXP: "negexp_m1"}[table]


@functools.lru_cache(maxsize=None)
def load_table(table):
    """A shipped table (a branch, or NEGEXP): N_WORDS float64 arrays of N_BINS[table] (one per stored word)."""
    regenerate = "regenerate it with python -m sdsl_jax.laws.lambertw_table"
    try:
        with np.load(TABLE_PATH) as data:
            words = data[_key(table)]
    except (OSError, KeyError) as exc:
        raise RuntimeError(f"cannot read the Lambert W table {TABLE_PATH}: {exc!r}; {regenerate}") from exc
    if words.shape != (N_BINS[table], N_WORDS) or words.dtype != np.float64:
        raise RuntimeError(f"{TABLE_PATH} holds a {_key(table)} table of shape {words.shape}, "
                           f"not {(N_BINS[table], N_WORDS)}; {regenerate}")
    return tuple(np.ascontiguousarray(words[:, k]) for k in range(N_WORDS))


# ----------------------------------------------------------------------------
# Evaluation (JAX, float64)


def _bits(v):
    return jax.lax.bitcast_convert_type(v, jnp.int64)


def _float(bits):
    return jax.lax.bitcast_convert_type(bits, jnp.float64)


def _unpack(word, high_bits):
    bits = _bits(word)
    mask = ~np.int64((1 << (_MANTISSA_BITS - high_bits)) - 1)
    return _float(bits & mask), _float(bits << (12 + high_bits))


def _evaluate(table, bits, start):
    """(W, 1 + W) from the table's bin ``(bits >> 48) - start`` at the exact offset u in it."""
    tables = [jnp.asarray(t) for t in load_table(table)]
    # The row: v's top 16 bits (exponent and 4 fraction bits), less the
    # section's first, plus the section's place in the table.
    row = jnp.clip((bits >> (_MANTISSA_BITS - _SUB_BITS)) - start, 0, N_BINS[table] - 1)
    one = np.int64(_BIAS) << _MANTISSA_BITS
    fraction = (np.int64(1) << _MANTISSA_BITS) - 1
    top = fraction ^ ((np.int64(1) << (_MANTISSA_BITS - _SUB_BITS)) - 1)
    half_bin = np.int64(1) << (_MANTISSA_BITS - _SUB_BITS - 1)
    u = _float((bits & fraction) | one) - _float((bits & top) | one | half_bin)
    hi, c1, c2, c3, c4, c5, pair6, pair7, lo_full = (jnp.take(t, row, mode="clip") for t in tables)
    (c6, lo), (c7, c8) = (_unpack(w, b) for w, (_, _, b) in zip((pair6, pair7), _PAIRS))
    # Estrin's scheme: a short dependency chain (lambertw._horner says why).
    u2 = u * u
    inner = ((c1 + u * c2) + u2 * (c3 + u * c4)) + (u2 * u2) * ((c5 + u * c6) + u2 * (c7 + u * c8))
    # 1 + W takes lo in full: near the branch point 1 + hi is exact and
    # small, and lo's 9 bits would limit it to ~1e-12 relative.  When only W
    # is used (the primal of lambertw), XLA drops this and its gather.
    return hi + (lo + u * inner), (1 + hi) + (lo_full + u * inner)


def _first(table):
    """Per section, what (bits >> 48) is subtracted to give the table row."""
    return {k: (_BIAS + lo) * _BINS_PER_BINADE - _OFFSETS[table][k] for k, (lo, _) in SECTIONS[table].items()}


def lambertw_parts(x, branch):
    """``(W(x), 1 + W(x))`` on the given branch for float64 ``x``, from the table.

    Accurate for ``-1/e < x < inf`` with ``|x| >= 2^-30`` on branch 0 and for
    ``-1/e < x <= -2^-1022`` on branch -1; other lanes get finite or
    non-finite values of no meaning, for the caller to replace
    (:func:`sdsl_jax.laws.lambertw.lambertw` does).  ``1 + W`` is formed as
    ``(1 + hi) + (lo + ...)``, exact in its first sum near the branch point,
    so that it keeps its relative precision as ``W -> -1``.
    """
    near = x < X_NEAR
    first = _first(branch)
    start = jnp.where(near, first["near"], first["negative"])
    if branch == 0:
        start = jnp.where(x < 0, start, first["positive"])
    return _evaluate(branch, _bits(jnp.where(near, x + INV_E_HI, jnp.abs(x))), start)


def negexp_parts(kappa):
    """``(W, 1 + W)``, ``W = W_-1(-exp(-1 - kappa))``, for float64 ``kappa``, from the NEGEXP table.

    Accurate for ``0 < kappa < inf``: the table covers ``2^-56 <= kappa``
    (bins of 1/16 binade of ``kappa`` itself, which is exact, so that no
    ``exp`` is taken), and below it ``1 + W = -p - p^2 / 3`` with ``p =
    sqrt(2 kappa)`` (the branch-point series, Corless et al. eq. 4.22, whose
    next term and the difference between ``kappa`` and ``1 - exp(-kappa)`` are
    below 2^-54 relative there).  0, inf, negative and NaN ``kappa`` get
    values of no meaning, for the caller to replace.
    """
    w, t = _evaluate(NEGEXP, _bits(kappa), _first(NEGEXP)["kappa"])
    below = kappa < KAPPA_MIN
    p = jnp.sqrt(2 * jnp.where(below, kappa, 0.0))
    t_below = -p - p * p * (1.0 / 3.0)
    return jnp.where(below, t_below - 1, w), jnp.where(below, t_below, t)


def _main(argv=None):
    import argparse
    import time

    p = argparse.ArgumentParser(description="Regenerate the float64 Lambert W tables with mpmath.")
    p.add_argument("--out", default=TABLE_PATH)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    tables = {}
    for table in TABLES:
        t0 = time.perf_counter()
        tables[_key(table)], worst = build_table(table, processes=args.processes)
        print(f"{_key(table)}: {len(tables[_key(table)])} bins, largest error {worst:.3g} ulp "
              f"(interpolation and packing), {time.perf_counter() - t0:.0f} s")
    np.savez_compressed(args.out, **tables)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    _main()
