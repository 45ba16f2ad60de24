"""Real branches of the Lambert W function, accurate to a few ulp, in JAX.

The Lambert W function solves ``w * exp(w) = x``.  For real ``x`` there are
two real branches:

* ``W_0``  (principal), defined for ``x >= -1/e``, with ``W_0(x) >= -1``;
* ``W_-1``, defined for ``-1/e <= x < 0``, with ``W_-1(x) <= -1``.

Both meet at the branch point ``x = -1/e``, ``W = -1``, where
``dW/dx = W / (x (1 + W))`` is infinite.  References:

* R. M. Corless, G. H. Gonnet, D. E. G. Hare, D. J. Jeffrey and D. E. Knuth,
  "On the Lambert W function", Adv. Comput. Math. 5 (1996) 329-359
  (branch-point series, eq. 4.22-4.24; asymptotic series, eq. 4.19-4.20).
* F. N. Fritsch, R. E. Shafer and W. P. Crowley, "Algorithm 443: Solution of
  the transcendental equation w e^w = x", Comm. ACM 16 (1973) 123-124
  (the fourth-order iteration used here).

Method
------
*float64* :func:`lambertw`, and :func:`lambertw_negexp_parts` on branch -1
(what the planners call), read ``W`` from tables of piecewise polynomials of
degree 8, one bin per 1/16 binade of an exact function of the argument, to
within 0.53 ulp of the exact value (:mod:`sdsl_jax.laws.lambertw_table`,
which says how): an index from the argument's bits, eight gathers and a
polynomial, ~2.5 ms per 1e6 on one core of this project's CPU, against ~9
ms for the guess and step below.  The tables are a file of the package (2.7
MB).  float32 (where the step below is already cheap) and the log-domain
form on branch 0 (``W_0(-exp(-1 - kappa))`` runs to ``-exp(-1 - kappa)``,
which no table in ``kappa`` holds) keep the method below.

*Otherwise* each value is an initial guess, read from tables of piecewise cubics to
~3e-7 relative, refined by one Fritsch-Shafer-Crowley (FSC) step.  With the
residual ``z = log(x / w) - w`` of ``log w + w = log x``::

    q   = 2 (1 + w) (1 + w + 2 z / 3)
    eps = z / (1 + w) * (q - z) / (q - 2 z)
    w  <- w (1 + eps)

The iteration converges with order four; since ``|eps|`` is below ~1e-6, the
second quotient is expanded to second order in ``z / (1 + w)``
(:func:`_fsc_correction`), which keeps the step exact to ~1e-18 and leaves
one reciprocal, of ``1 + w``, off the dependency chain.  The final error is
then set by the rounding in the residual: an absolute error ``dz`` moves
``w`` by ``|w / (1 + w)| dz``.  All the care therefore goes into the residual.
One step from a tabulated guess replaced a computed guess (series, Winitzki
and asymptotic formulas, two or three logs) and two steps: the evaluation is
latency-bound (see the notes below), and this halves the dependency chain.

*Near the branch point* ``t = 1 + w`` is small and carries the information, so
the iteration state there is ``t`` itself (for ``-1 <= t <= 1/2``, so that
``1 + w`` is returned to an ulp) and, for ``-0.35 <= t <= 1/4``, the residual
is written as::

    z = L - g(t),   L = log(-e x) = log1p(-r),   r = 1 + e x,
                    g(t) = log1p(-t) + t = -t^2/2 - t^3/3 - ...

``r`` is formed without cancellation as ``e (x + 1/e)``: ``x + hi`` is exact
near ``-1/e`` by Sterbenz' lemma and the product with ``e`` is compensated
(Dekker), with the ``lo`` parts of ``1/e`` and ``e`` added in.  ``L`` comes
from a compensated ``log1p``, and ``g`` from the ``atanh`` series of
``log(1 - t)`` with its leading ``-t`` left out: ``g = -t^2/2 + s (t^2/2 +
s^2 T(s^2))``, ``s = -t / (2 - t)``, so that ``g`` keeps full *relative*
precision as ``t -> 0``.  This is the same series, on ``f = -t`` instead of
the reduced argument, as the logs of the far residuals below, so the step
evaluates one log per element whatever the region (:func:`_residual`).  In
the log-domain entry points ``L = -kappa`` is exact, which makes ``1 + w``
accurate to an ulp even for ``kappa ~ 1e-15``.

*Away from the branch point* the residual is
``log(x / w) - w`` on branch 0 (``x / w`` is close to ``exp(w)``, so tiny
``|x|`` loses nothing; the quotient is corrected by its exact remainder and
the log taken in double-word precision) and ``(log(-x) - w) - log(-w)`` on
branch -1 (``x / w`` could underflow), again with double-word logs and an
exact first difference.  In the log domain ``log(-x) = -1 - kappa`` is used
directly on branch -1, and on branch 0 ``x = -exp(-1 - kappa)`` is rebuilt in
double-word precision (Cody-Waite reduction and a Taylor polynomial).

Initial guesses come from tables (see :func:`_guess_tables`): for ``r < 1/2``
``t`` itself (``~ +-sqrt(2 r)``) tabulated in bins of 1/16 binade of ``r``
(``2^-56 <= r < 1``; no square root is taken, and ``r`` for the guess is a
short product, not the compensated ``r`` of the residual); elsewhere
``w = l g(y)`` with ``g = w / l`` tabulated in bins of 1/16 binade of ``y``: ``l = log1p(x)``, ``y = l + 1``
on branch 0 (this log is the one that also gives ``L`` in the series region),
``l = log(-x)``, ``y = -l`` on branch -1.  Both logs are the division-free
Taylor form of :func:`_log` (on branch -1 a log of its own, so that the guess
need not wait for the double-word log of the residual).  Bin indices and
offsets are read off the bits of ``r`` or ``y``; the near and far bins of a
branch share one table (896 + 176 or 896 + 160 bins), and the bin is selected
before the look-up, so each element makes four gathers.  ``lambertw_negexp``
can reach ``r < 2^-56`` (``2^-40`` in float32), where ``t = p - p^2 / 3``,
``p = +-sqrt(2 r)``, is used instead.  Beyond the table (``log(-x) < -2^10``, reached only
by ``lambertw_negexp``) branch -1 uses the asymptotic expansion
``L1 - L2 + L2/L1 + L2 (L2 - 2) / (2 L1^2)``, ``L1 = log(-x)``,
``L2 = log(-L1)`` (Corless et al., eq. 4.19), within 3e-7 there.  For
``|x| < 2^-30`` (``2^-12`` in float32) branch 0 is the Taylor series
``x - x^2 + 3/2 x^3 - 8/3 x^4``.

Measured against mpmath (tests/laws/test_lambertw.py, test_lambertw_table.py,
benchmarks/bench_lambertw.py) the error is at most 1 ulp in float64 on both
branches and both entry points (0.53 ulp from the exact value from the
tables), and about 1 ulp in float32, including arguments one ulp above
``-1/e``.

Floating-point and XLA notes
----------------------------
* Under ``jit`` XLA's algebraic simplifier rewrites compensated expressions
  (``(x + hi) + lo`` becomes ``x + (hi + lo)``, ``((1 + a) - 1) - a``
  becomes ``0``).  Every such step goes through :func:`_barrier`, a no-op
  ``reduce_precision`` the simplifier cannot see through
  (``optimization_barrier`` was not enough: it is removed before XLA's last
  simplification passes).
* XLA on CPU lowers float64 ``log`` to a scalar libm call per element, and
  its float64 ``log1p`` and ``expm1`` are off by up to ~130 and ~4 ulp, so
  ``log`` is implemented here with vectorisable arithmetic (also in
  double-word form) and ``log1p`` is built on it.
* Divisions are written as products with reciprocals and the two outputs are
  split off one materialised state, which keeps XLA from cutting the
  evaluation into many loops over memory (see :func:`_materialize`).
* XLA on CPU evaluates a fusion element by element (4 lanes per AVX2
  vector), each element's whole evaluation one dependent chain: when the
  chain is longer than the processor's reordering window, its speed is set by
  latency, not by the number of operations (a chain of 240 dependent
  multiply-adds ran 8x slower than 8 independent chains of 30).  Polynomials
  are therefore evaluated by Estrin's scheme, and the chain is kept short:
  one refinement step from a tabulated guess instead of a computed guess and
  two steps.
* A gather from a small constant table fuses into the loop and costs little
  (4 gathers and a cubic: ~0.6 ms per 1e6 float64 beyond a copy).
* (The guess and step.)  XLA splits the evaluation on its own into loops for the guess (on branch
  0 one for its log, one for the look-up) and one for the step, with the
  intermediate arrays materialised; in all about 8.6 ms (branch 0) and
  10.2 ms (branch -1) per 1e6 float64 on one core, of which the step is a
  little over half.  At this size the time follows the number of
  operations per element (~0.03 ms per operation per 1e6), not the memory
  passes (~0.25 ms each).  When a change made XLA fuse guess and step into
  one loop it ran ~35% slower (a chain too long to overlap iterations).
  Measured in CPU time on one pinned core (which the machine's load disturbs
  far less than wall time), these did not pay: the branch-0 residual as
  ``log(x) - log(w) - w`` (one more double-word log in place of the
  quotient), ``1 / w`` from tables instead of a division, the branch -1
  guess from the residual's double-word log, one gather of a row of four
  coefficients (XLA then materialises the rows), ``promise_in_bounds``
  gathers, NaN made as ``inf - inf`` instead of ``sqrt(-1)``, a guess
  rounded to 26 bits so that ``x - q w`` needs one split instead of two
  (<1%), and ``1 / y`` in the guess's ``log1m`` replaced by ``2 - y`` (no
  change).  Upper bounds, from timing wrong stand-ins: without the guess's
  log (series ``L`` kept) branch 0 would gain 5-9%; without the residual
  log's division ~4%; without Dekker's product ~6%.
* XLA on CPU flushes subnormal numbers to zero: subnormal inputs behave like
  (signed) zero and results that would be subnormal come back as zero.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.laws import lambertw_table

__all__ = ["lambertw", "lambertw_negexp", "lambertw_negexp_parts"]

# 1/e, e and log(2) to ~60 digits; the split constants are derived from these
# in exact rational arithmetic, so hi + lo is accurate to ~2x working precision.
_INV_E = lambertw_table.INV_E
_E = Fraction("2.71828182845904523536028747135266249775724709369995957496696763")
_LN2 = Fraction("0.693147180559945309417232121458176568075500134360255254120680009")

# Near/far switch for the initial guess, in r = 1 + e x: the near table
# covers r < 1/2, the far tables the rest.
_R_NEAR = 0.5
# Where the state is t = 1 + w and the residual L - g(t): up to t = 1/4 on
# branch 0 and down to t = -0.35 on branch -1, so that the atanh series of g
# shares the log's polynomial (|s| = |t / (2 - t)| < 0.15).  Beyond, the
# far residuals are accurate: they lose at most a factor |w / t| < 4.
_T_SERIES = {0: 0.25, -1: -0.35}
# Where the state is t: wider, up to t = 1/2 on branch 0 and down to t = -1 on
# branch -1, where w = t - 1 has a coarser ulp than t, so that 1 + w keeps
# full precision (the residual there is the far one; _refine accounts for the
# rounding of t - 1).
_T_STATE = {0: 0.5, -1: -1.0}


def _r_of_t(t):
    """r = 1 + e x at x = (t - 1) e^(t - 1)."""
    return 1.0 - (1.0 - t) * float(np.exp(t))


_R_SERIES = {b: _r_of_t(t) for b, t in _T_SERIES.items()}
_R_STATE = {b: _r_of_t(t) for b, t in _T_STATE.items()}


# Initial guesses are read from tables of piecewise cubic polynomials (one
# gather per coefficient), accurate to ~2.4e-7 relative far from the branch
# point (with the logs that feed them, within ~3e-7; 1.3e-7 the largest seen
# on 9000 points per branch) and ~9e-9 near it, so that a single step lands on the root
# (error ~1e-18 before rounding, see _fsc_correction).  Each
# table holds, per bin, the coefficients of a cubic in the offset d of the
# table variable from the bin's start:
#
# * near the branch point (r < 1/2): t as a function of r, in bins of 2^-4
#   of a binade from r = 2^-56 (t ~ +-sqrt(2 r) is smooth on each bin, so
#   the cubic keeps t's relative precision down to the smallest r);
# * branch 0 elsewhere: g = w / lambda as a function of lambda + 1,
#   lambda = log1p(x) in [-0.21, 710], in bins of 2^-4 of a binade
#   (g -> 1 as x -> 0, so w = lambda g keeps its relative precision);
# * branch -1 elsewhere: w / l as a function of -l, l = log(-x) in
#   [-2^10, -1.6], in bins of 2^-4 of a binade.
#
# The coefficients are least-squares fits to points (variable, value)
# generated from a grid in w (or t), where the variable is an explicit function
# of w (no W solver needed), in float64 numpy at first use (~0.1 s).
_SUB_BITS = 4  # bins per binade: 2^_SUB_BITS
_TABLE_DEG = 3
_FAR_EXPONENTS = {0: (-1, 9), -1: (0, 9)}  # binades of lambda + 1, resp. -l
# Binades of r in the near table.  lambertw's r is at least ~1.5e-16 (~8e-8 in
# float32); lambertw_negexp's can be smaller and uses t ~ p - p^2 / 3 below
# the table.  The top binade, [1/2, 1), only catches r rounded up to 1/2.
_NEAR_EXPONENTS = (-56, -1)
_NEAR_MIN = {np.dtype(np.float64): 2.0**-56, np.dtype(np.float32): 2.0**-40}


def _r_of_t_np(t):
    """r = 1 + e x = 1 - (1 - t) e^t at w = t - 1 (numpy, no cancellation)."""
    small = np.abs(t) < 1.0
    ts = np.where(small, t, 0.0)
    series = np.zeros_like(t)
    term = ts.copy()
    for k in range(2, 40):  # r = sum_{k >= 2} (k - 1) t^k / k!
        term = term * ts / k
        series = series + (k - 1) * term
    with np.errstate(over="ignore"):
        return np.where(small, series, 1 - (1 - t) * np.exp(t))


def _fit_bins(var, val, idx, starts, widths):
    """Per-bin least-squares cubic of val in (var - start), coefficients (n, deg + 1)."""
    coef = np.zeros((len(starts), _TABLE_DEG + 1))
    powers = np.arange(_TABLE_DEG + 1)
    order = np.argsort(idx, kind="stable")
    var, val, idx = var[order], val[order], idx[order]
    bounds = np.searchsorted(idx, np.arange(len(starts) + 1))
    for j in range(len(starts)):
        m = slice(bounds[j], bounds[j + 1])
        if bounds[j + 1] - bounds[j] <= 2 * (_TABLE_DEG + 1):
            continue  # a bin no argument reaches
        d = (var[m] - starts[j]) / widths[j]
        cs = np.linalg.lstsq(np.vander(d, _TABLE_DEG + 1, increasing=True), val[m], rcond=None)[0]
        coef[j] = cs / widths[j] ** powers
    return coef


def _log_bins(y, e_min, e_max):
    """Bin index of positive y, its bin starts and widths (2^_SUB_BITS bins per binade)."""
    e = np.floor(np.log2(y)).astype(np.int64)
    j = np.floor((y / 2.0**e - 1) * 2**_SUB_BITS).astype(np.int64)
    idx = (e - e_min) * 2**_SUB_BITS + j
    i = np.arange((e_max - e_min + 1) * 2**_SUB_BITS)
    scale = 2.0 ** (i // 2**_SUB_BITS + e_min)
    return idx, scale * (1 + (i % 2**_SUB_BITS) / 2**_SUB_BITS), scale / 2**_SUB_BITS


@functools.lru_cache(maxsize=None)
def _guess_tables(branch):
    """(near, far) coefficient arrays of shape (bins, 4), float64 (see above)."""
    n = 20001
    # Near: t on the branch's side of 0, from r ~ 2^-60 to a little past r = 1/2.
    t = np.geomspace(1e-10, 0.85, 200001)
    t = t if branch == 0 else -t * (2.0 / 0.85)
    r = _r_of_t_np(t)
    idx, starts, widths = _log_bins(r, *_NEAR_EXPONENTS)
    keep = (idx >= 0) & (r < 0.6)
    near = _fit_bins(r[keep], t[keep], idx[keep], starts, widths)
    e_min, e_max = _FAR_EXPONENTS[branch]
    if branch == 0:
        w = np.concatenate([np.linspace(-0.26, 5, n), np.geomspace(5, 715, n)])
        w = w[w != 0]
        # lambda = log1p(w e^w), written so that large w does not overflow.
        big = w > 1
        wb = np.where(big, w, 1.0)
        lam = np.where(big, wb + np.log(wb) + np.log1p(np.exp(-wb) / wb),
                       np.log1p(np.where(big, 0.0, w) * np.exp(np.where(big, 0.0, w))))
        var, val = lam + 1, w / lam
    else:
        w = -np.geomspace(2.5, 1100, n)
        l = w + np.log(-w)
        var, val = -l, w / l
    idx, starts, widths = _log_bins(var, e_min, e_max)
    return near, _fit_bins(var, val, idx, starts, widths)


def _round_to_bits(v, bits):
    """Round the positive rational v down to `bits` significant bits."""
    e = 0
    while v >= 1:
        v, e = v / 2, e + 1
    while v < Fraction(1, 2):
        v, e = v * 2, e - 1
    return Fraction(int(v * 2**bits), 2**bits) * Fraction(2) ** e


class _Consts:
    """Per-dtype constants, as numpy scalars so they never promote the input."""

    def __init__(self, dtype):
        dtype = np.dtype(dtype)
        f = lambda v: dtype.type(float(v))  # noqa: E731
        double = dtype == np.float64
        self.dtype = dtype
        self.split = f(2**27 + 1 if double else 2**12 + 1)  # Veltkamp splitter
        self.inv_e_hi = f(_INV_E)
        self.inv_e_lo = f(_INV_E - Fraction(float(self.inv_e_hi)))
        self.e_hi = f(_E)
        self.e_lo = f(_E - Fraction(float(self.e_hi)))
        e_hh = f(_round_to_bits(Fraction(float(self.e_hi)), 26 if double else 12))
        self.e_hh, self.e_hl = e_hh, f(Fraction(float(self.e_hi)) - Fraction(float(e_hh)))
        # Cody-Waite log(2): k * ln2_hi is exact for every k this module uses.
        ln2_hi = _round_to_bits(_LN2, 32 if double else 12)
        self.ln2_hi, self.ln2_lo = f(ln2_hi), f(_LN2 - ln2_hi)
        self.inv_ln2 = f(1 / _LN2)
        # log(1 + f) = 2 atanh(s), s = f / (2 + f), |s| <= 3 - 2 sqrt(2): the
        # series sum_k 2 s^(2k+1) / (2k+1) is truncated below 2^-58 (2^-28).
        n_log = 10 if double else 5
        self.log_t = [f(Fraction(2, 2 * k + 1)) for k in range(1, n_log + 1)]
        # log(1 + f) = f + f^2 sum_{n>=2} (-1)^(n+1) f^(n-2) / n, the Taylor series,
        # truncated at ~3e-7 (5e-6) for |f| <= sqrt(2) - 1, ample for a guess
        # (one fourth-order step squares its error twice), and below 2^-57
        # relative (float64) for |f| < 0.04: division-free, for the guess and
        # the series-region L.
        n_taylor = 13 if double else 10
        self.log_taylor = [f(Fraction((-1) ** (n + 1), n)) for n in range(2, n_taylor + 1)]
        self.int_dtype = np.int64 if double else np.int32
        # Bit pattern of sqrt(1/2): subtracting it centres the mantissa on 1.
        self.sqrt_half_bits = 0x3FE6A09E667F3BCD if double else 0x3F3504F3
        # exp(f) = 1 + f + f^2 Q(f) on |f| <= ln2/2, truncation < 2^-60 (2^-28).
        n_exp = 14 if double else 8
        fact = [1]
        for n in range(1, n_exp + 3):
            fact.append(fact[-1] * n)
        self.exp_q = [f(Fraction(1, fact[n])) for n in range(2, n_exp + 2)]
        self.exp_min = f(-1400.0 if double else -170.0)  # exp() underflows below; k/2 stays normal
        self.max_exp_bits = 52 if double else 23
        self.exp_bias = 1023 if double else 127
        # Initial-guess tables (see _guess_tables), one array per coefficient.
        tables = {b: _guess_tables(b) for b in (0, -1)}
        # float32 keeps only the near binades its r reaches (the cubic's
        # coefficients grow like r^-2.5 and would overflow further down).
        near_lo = (np.arange(len(tables[0][0])) >> _SUB_BITS) + _NEAR_EXPONENTS[0] < np.log2(_NEAR_MIN[dtype])
        self.guess_tab = {b: [np.concatenate([np.where(near_lo, 0, near[:, k]), far[:, k]]).astype(dtype)
                              for k in range(_TABLE_DEG + 1)] for b, (near, far) in tables.items()}
        self.n_near = len(tables[0][0])
        self.near_base = (self.exp_bias + _NEAR_EXPONENTS[0]) << _SUB_BITS
        self.near_min = f(_NEAR_MIN[dtype])
        self.n_far = {b: len(far) for b, (_, far) in tables.items()}
        self.far_base = {b: (self.exp_bias + e) << _SUB_BITS for b, (e, _) in _FAR_EXPONENTS.items()}
        self.far_top = {b: f(2.0 ** (e + 1)) for b, (_, e) in _FAR_EXPONENTS.items()}
        self.sub_shift = self.max_exp_bits - _SUB_BITS
        self.r_near = f(_R_NEAR)
        # The same switches as thresholds on x = (r - 1) / e and on kappa, so
        # that the masks are plain comparisons with the input (XLA treats the
        # reduce_precision fence inside r as expensive and would materialise
        # every mask derived from it).
        self.x_near = f((_R_NEAR - 1) / np.e)
        self.x_series = {b: f((v - 1) / np.e) for b, v in _R_SERIES.items()}
        self.x_state = {b: f((v - 1) / np.e) for b, v in _R_STATE.items()}
        self.kappa_near = f(-np.log1p(-_R_NEAR))
        self.kappa_series = {b: f(-np.log1p(-v)) for b, v in _R_SERIES.items()}
        self.kappa_state = {b: f(-np.log1p(-v)) for b, v in _R_STATE.items()}
        # Below this |x|, W0(x) = x - x^2 (+ 3/2 x^3 - 8/3 x^4 in float32) is
        # exact to << 1 ulp (see _small_x).
        self.tiny_x = f(2.0**-30 if double else 2.0**-12)
        # Above this |x / w| the Veltkamp split could overflow; the quotient's
        # rounding no longer matters there anyway (1 + w is large).
        self.split_max = f(2.0**900 if double else 2.0**100)


@functools.lru_cache(maxsize=None)
def _consts(dtype):
    return _Consts(dtype)


# ----------------------------------------------------------------------------
# Floating-point building blocks


def _barrier(x):
    """x, opaque to XLA's algebraic simplifier.

    Under jit XLA rewrites compensated expressions symbolically, e.g.
    (x + C1) + C2 -> x + (C1 + C2) or ((1 + a) - 1) - a -> 0, discarding the
    rounding error they exist to capture.  optimization_barrier is not enough:
    it is expanded before XLA's last simplification passes (seen to fold
    lo - ((s + lo) - s) to 0).  A reduce_precision to the type's own widths is
    a no-op that survives to code generation and still fuses.
    """
    info = jnp.finfo(x.dtype)
    return jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _materialize(v):
    """Return v, computed once into its own buffer.

    Used where the evaluation ends in
    two outputs (w and 1 + w) that are cheap functions of one state v: XLA on
    CPU would otherwise fuse the entire evaluation into each output and run it
    twice.  Neither optimization_barrier nor any elementwise op stops that
    fusion, but a conditional does.  Both branches return v unchanged (the
    no-op reduce_precision only keeps XLA from recognising the branches as
    identical), so the data-dependent predicate never matters; under vmap the
    cond becomes a select, which is also fine.
    """
    if v.size == 0:
        return v
    probe = v.ravel()[0]
    return jax.lax.cond(probe == probe, lambda a: a, _barrier, v)


def _horner(x, coeffs):
    """sum_k coeffs[k] x^k by Estrin's scheme.

    XLA on CPU runs one element's whole evaluation as a single dependent
    chain per loop iteration, so latency, not the number of operations, sets
    the speed: pairing terms and combining them with x^2, x^4, ... evaluates
    an n-term polynomial in depth ~log2(n) instead of n.
    """
    terms = []
    for i in range(0, len(coeffs), 2):
        if i + 1 < len(coeffs):
            terms.append(coeffs[i] + x * coeffs[i + 1])
        else:
            terms.append(jnp.full_like(x, coeffs[i]))
    power = x
    while len(terms) > 1:
        power = power * power
        terms = [terms[i] + power * terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def _split(a, c):
    """Veltkamp split a = hi + lo with half-width hi, lo (exact)."""
    s = c.split * a
    hi = s - _barrier(s - a)
    return hi, a - hi


def _two_prod(a, b, c):
    """p, e with p = fl(a * b) and p + e = a * b exactly (Dekker)."""
    p = a * b
    ah, al = _split(a, c)
    bh, bl = _split(b, c)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _two_sum(a, b):
    """s, e with s = fl(a + b) and s + e = a + b exactly (Knuth)."""
    s = _barrier(a + b)
    bb = _barrier(s - a)
    return s, (a - (s - bb)) + (b - bb)


def _log_reduce(y, c):
    """kf, f with y = 2^kf (1 + f) and 1 + f in [sqrt(1/2), sqrt(2)), exactly.

    Integer arithmetic on the bits of y (a positive normal number); f = m - 1
    is exact by Sterbenz' lemma.
    """
    bits = jax.lax.bitcast_convert_type(y, c.int_dtype)
    k = (bits - c.sqrt_half_bits) >> c.max_exp_bits
    m = jax.lax.bitcast_convert_type(bits - (k << c.max_exp_bits), y.dtype)
    return k.astype(y.dtype), m - 1


def _log1p_series(f, coeffs):
    """hfsq, tail with log(1 + f) = f - hfsq + tail: the atanh series.

    log(1 + f) = 2 atanh(s), s = f / (2 + f), rearranged so that the leading
    f is kept apart: tail = s (hfsq + s^2 T(s^2)), hfsq = f^2 / 2.
    """
    s = f * (1 / (2 + f))
    z = s * s
    hfsq = 0.5 * f * f
    return hfsq, s * (hfsq + z * _horner(z, coeffs))


def _log_parts(y, c):
    """k, f, hfsq, tail with log(y) = k log2 + f - hfsq + tail (see _log)."""
    kf, f = _log_reduce(y, c)
    hfsq, tail = _log1p_series(f, c.log_t)
    return kf, f, hfsq, tail + kf * c.ln2_lo


def _log(y, c, rough=False):
    """Natural log of positive normal y, vectorised, within ~1 ulp.

    XLA on CPU lowers float64 log to a scalar libm call per element, which in
    a large fusion also forces every live vector register to be spilled around
    each call; this version is plain arithmetic and fuses cleanly.  y is split
    as 2^k m with m in [sqrt(1/2), sqrt(2)) by integer arithmetic on its bits,
    then log(m) = f - f^2/2 + s (f^2/2 + T(s^2)), f = m - 1, s = f / (2 + f),
    the rearranged atanh series; k log(2) is added in two pieces.  Zero,
    negative, subnormal, infinite or NaN inputs give meaningless values; the
    callers only use lanes where y is a positive normal number.  rough=True
    uses the Taylor series of log(1 + f) instead (no division, a shorter
    dependency chain), accurate to ~3e-7 absolute in general and to ~1 ulp for
    |f| < 0.04, which is all the guesses and the series-region L need.
    """
    if rough:
        kf, f = _log_reduce(y, c)
        return (f + (f * f) * _horner(f, c.log_taylor)) + kf * c.ln2_hi
    kf, f, hfsq, tail = _log_parts(y, c)
    return ((tail - hfsq) + f) + kf * c.ln2_hi


def vectorised_log(y):
    """Natural log of positive normal float64 (or float32) ``y`` in plain vector arithmetic,
    within ~1 ulp: :func:`_log`, for other modules that need a float64 log without
    XLA's per-element libm call. Other inputs give meaningless values."""
    return _log(y, _consts(y.dtype))


def vectorised_log1p(x):
    """log(1 + x) for float64 (or float32) ``x`` > -1 with 1 + x finite, in plain
    vector arithmetic, within ~1 ulp (XLA's float64 log1p is a libm call per
    element, and off by up to 128 ulp near 0): the log of y = 1 + x, plus the
    rounding of that sum divided by y. Other inputs give meaningless values."""
    return _log1m(-x, jnp.zeros_like(x), _consts(x.dtype))


def _log_dd(y, c):
    """log(y) as hi + lo, accurate to ~2^-60 relative (same method as _log).

    Only the two additions that round in _log are made exact; the remaining
    terms are already small.  Used for the residual of the last step, whose
    rounding would otherwise dominate the final error.
    """
    kf, f, hfsq, tail = _log_parts(y, c)
    s1, e1 = _two_sum(kf * c.ln2_hi, f)
    s2, e2 = _two_sum(s1, -hfsq)
    lo = (tail + e1) + e2
    hi = _barrier(s2 + lo)
    return hi, lo - (hi - s2)  # |s2| > |lo|: Fast2Sum renormalisation


def _log1m(a_hi, a_lo, c, rough=False):
    """log(1 - (a_hi + a_lo)) to ~1 ulp, for a_lo << a_hi < 1.

    y = 1 - a_hi is rounded; (1 - y) - a_hi recovers that rounding exactly and
    log(1 - a) = log(y) + ((1 - a) - y) / y to first order.  (Written this
    way round because XLA folds (y - 1) + a_hi to 0 under jit.)  XLA's own
    log1p is not accurate enough in float64.
    """
    y = _barrier(1 - a_hi)
    return _log(y, c, rough) + (((1 - y) - a_hi) - a_lo) * (1 / y)


def _pow2(k, dtype, c):
    """2**k for integer-valued float k in the normal range, built from bits."""
    if dtype == np.float64:
        bits = (k.astype(jnp.int64) + c.exp_bias) << c.max_exp_bits
    else:
        bits = (k.astype(jnp.int32) + c.exp_bias) << c.max_exp_bits
    return jax.lax.bitcast_convert_type(bits, dtype)


def _neg_exp_dd(kappa, c):
    """-exp(-1 - kappa) as an unevaluated sum x_hi + x_lo (double-word).

    XLA's exp is only faithful to ~1 ulp, and W0 near x ~ -0.3 amplifies the
    relative error of x by 1 / (1 + w) ~ 2, so the log-domain branch 0 rebuilds
    x with Cody-Waite reduction and a Taylor polynomial whose leading 1 + f is
    kept exact.
    """
    dtype = kappa.dtype
    a, a_err = _two_sum(-kappa, jnp.full_like(kappa, -1))
    a = jnp.maximum(a, c.exp_min)
    k = jnp.round(a * c.inv_ln2)
    hi = a - k * c.ln2_hi  # exact: k * ln2_hi is exact and close to a
    lo = k * c.ln2_lo
    f = _barrier(hi - lo)
    f_lo = ((hi - f) - lo) + a_err
    s = _barrier(1 + f)
    s_err = (1 - s) + f
    tail = f * f * _horner(f, c.exp_q)
    # exp(f + f_lo) = exp(f) (1 + f_lo); f_lo reaches ~1e-13 (the rounding of
    # -1 - kappa), so it must multiply all of exp(f), not just 1 + f.
    rest = s_err + tail + (s + tail) * f_lo
    e_hi = _barrier(s + rest)
    e_lo = rest - (e_hi - s)
    # Two scalings keep each factor a normal number down to exp_min.
    k1 = jnp.floor(k / 2)
    s1, s2 = _pow2(k1, dtype, c), _pow2(k - k1, dtype, c)
    return -(e_hi * s1) * s2, -(e_lo * s1) * s2


def _r_rough(x, c):
    """r = 1 + e x to a few ulp relative near x = -1/e, for the guess only.

    x + 1/e_hi is exact there (Sterbenz), and 1/e's low part, which alone is
    worth ~3e-17 in r, is added before the product; only e's low part (a
    relative 5e-17) is left out.  A handful of operations instead of the
    compensated product of _r_from_x, which the guess would otherwise repeat.
    """
    return c.e_hi * (_barrier(x + c.inv_e_hi) + c.inv_e_lo)


def _r_from_x(x, c):
    """r = 1 + e x as r_hi + r_lo, accurate to ~1 ulp relative near x = -1/e."""
    d = _barrier(x + c.inv_e_hi)  # exact for -2/e <= x <= -1/(2e) (Sterbenz)
    r_hi = c.e_hi * d
    dh, dl = _split(d, c)
    err = ((c.e_hh * dh - r_hi) + c.e_hh * dl + c.e_hl * dh) + c.e_hl * dl
    return r_hi, err + (c.e_hi * c.inv_e_lo + c.e_lo * d)


def _cubic_from_table(tab, idx, d):
    """The bin idx's cubic of the table at offset d (one gather per coefficient)."""
    c0, c1, c2, c3 = (jnp.take(jnp.asarray(col), idx, mode="clip") for col in tab)
    return (c0 + d * c1) + (d * d) * (c2 + d * c3)


def _near_bin(r, c):
    """Near the branch point (r <= 1/2): bin, offset and factor 1 of t, binned by r (2^-4 binade).

    As in _far_bin, the bin and its start are read off the bits of r, so no
    square root is taken: t ~ +-sqrt(2 r) is tabulated directly, whose cubic
    over 1/16 of a binade is as accurate as the far ones.
    """
    bits = jax.lax.bitcast_convert_type(r, c.int_dtype)
    top = bits >> c.sub_shift
    start = jax.lax.bitcast_convert_type(top << c.sub_shift, r.dtype)
    j = jnp.clip(top - c.near_base, 0, c.n_near - 1)
    return j, r - start, jnp.ones_like(r)


def _far_bin(l, y, branch, c):
    """Elsewhere: bin, offset and factor l of w = l g, binned by y > 0 (2^-4 binade).

    Branch 0: l = log1p(x), y = l + 1; branch -1: l = log(-x), y = -l.  The bin
    index and its start are read off the bits of y (the start is y with the
    low mantissa bits cleared), so the offset y - start is exact.  Lanes whose
    y lies outside the table get a clipped index and are not used.  The far
    bins follow the near ones in the branch's table.
    """
    bits = jax.lax.bitcast_convert_type(y, c.int_dtype)
    top = bits >> c.sub_shift
    start = jax.lax.bitcast_convert_type(top << c.sub_shift, y.dtype)
    j = jnp.clip(top - c.far_base[branch], 0, c.n_far[branch] - 1) + c.n_near
    return j, y - start, l


def _guess(near, use_t, near_bin, far_bin, branch, c):
    """The initial state: t where use_t, else w, from one table look-up per element.

    The near and far bins are selected before the look-up, so each element
    reads one bin of one table (4 gathers) and evaluates one cubic.
    """
    j, d, factor = (jnp.where(near, a, b) for a, b in zip(near_bin, far_bin))
    v = factor * _cubic_from_table(c.guess_tab[branch], j, d)
    return jnp.where(near & ~use_t, v - 1, v)


def _asymptotic_m1(l1, c):
    """Branch -1 guess from l1 = log(-x) (Corless et al. 1996, eq. 4.19).

    Only for l1 < -2^10 (beyond the table, reached by lambertw_negexp alone),
    where its error O((log(-l1) / l1)^3) is below 3e-7.
    """
    l2 = _log(-l1, c, rough=True)
    inv_l1 = 1 / l1
    return l1 - l2 + l2 * inv_l1 * (1 + (0.5 * l2 - 1) * inv_l1)


# Divisions are written as products with a reciprocal throughout: XLA on CPU
# materialises a quotient a / b that has several users (it will not duplicate
# an "expensive" op into several fusions), splitting the evaluation into many
# loops over memory, whereas 1 / b fuses freely.  None of these quotients has
# to be correctly rounded.


def _fsc_correction(w, t, z):
    """Fritsch-Shafer-Crowley correction w * eps for the residual z, t = 1 + w.

    eps = z/t (q - z)/(q - 2z) with q = 2 t (t + 2z/3), i.e. with a = z / t and
    m = 2 (t + 2z/3): eps = a (1 + b), b = a / (m - 2a).  The guess is within
    ~1e-6, where |a / t| is of that order too, so b = a / (2t) (1 - a (2/3 - 1/t))
    to O(a^3 / t^3): the step stays exact to ~1e-18 relative, with one
    reciprocal, of t, which is known before the residual and so off the
    dependency chain (the exact form would put a division on it).  Working with
    a = z / t keeps t^2 from overflowing when |w| is huge (float32, u ~ -1e30).
    """
    inv_t = 1 / t
    a = z * inv_t
    b = (0.5 * a * inv_t) * (1 - a * ((2.0 / 3.0) - inv_t))
    wa = w * a
    return wa + wa * b


def _residual(w, t, use_t, big_l, far, c):
    """Residual z of log w + w = log x (in the form of the region), one log.

    Every residual here is ``d + sigma log(y)``, d = d_hi + d_lo:

    * near (use_t): ``L - g(t) = (L - t) - log(1 - t)``, sigma = -1;
    * far, branch 0: ``log(x / w) - w``, sigma = +1 (y = x / w, corrected by
      its exact remainder in d_lo);
    * far, branch -1: ``(log(-x) - w) - log(-w)``, sigma = -1 (y = -w).

    All share one evaluation of log(y) = k log2 + f - hfsq + tail: the far
    regions reduce y by its exponent, the near region takes k = 0, f = -t
    without rounding 1 - t, so that f + t = 0 cancels exactly and
    g(t) = -hfsq + tail keeps full relative precision as t -> 0.  Computing
    one log on selected inputs, instead of each region's residual for every
    element and selecting the results, halves the work of a step.

    ``far(w)`` gives y, sigma, d_hi and d_lo.  The large terms k log2_hi, f,
    d_hi and -hfsq are added in exact two-sums, so only the small terms round.
    """
    y, sigma, d_hi, d_lo = far(w)
    kf, f = _log_reduce(y, c)
    kf = jnp.where(use_t, 0, kf)
    f = jnp.where(use_t, -t, f)  # |t| <= 0.35 there: |s| < 0.15
    if not isinstance(sigma, int) or sigma != -1:
        sigma = jnp.where(use_t, -1, sigma).astype(w.dtype)
    hfsq, tail = _log1p_series(f, c.log_t)
    f_sum = jnp.where(use_t, 0, f)  # near: -f - t = 0, exactly
    d = jnp.where(use_t, big_l, d_hi)
    s1, e1 = _two_sum(sigma * (kf * c.ln2_hi), sigma * f_sum)
    s2, e2 = _two_sum(s1, d)
    s3, e3 = _two_sum(s2, -sigma * hfsq)
    small = jnp.where(use_t, 0, d_lo) + sigma * (tail + kf * c.ln2_lo)
    return s3 + ((e1 + e2) + e3 + small)


def _refine(v, step, c, materialize):
    """One FSC step on one state per element: t = 1 + w where use_t, else w.

    Near the branch point t carries the information and w = t - 1 is exact
    enough; elsewhere w does and t = w + 1 only feeds relative quantities.
    A single state (rather than updating both w and t) halves the work and
    lets XLA fuse the evaluation into one loop.

    The residual is L - g(t) where series (a subset of use_t), the far one
    elsewhere.  Where the state is t but the residual the far one, the far
    residual is taken at w = fl(t - 1): the correction it gives leads from
    that w to the root, so the rounding of t - 1 is subtracted from it.

    The guess is within ~3e-7 (the tables and the logs that feed them),
    which the step takes to ~1e-18: what remains is the rounding of the
    residual, computed with care (see _residual), and of the final addition.

    ``step = (use_t, series, big_l, far)`` are the argument's derived
    quantities.  Returns w and 1 + w.
    """
    use_t, series, big_l, far = step
    w, w_err = _two_sum(v, -jnp.ones_like(v))
    w = jnp.where(use_t, w, v)
    t = jnp.where(use_t, v, v + 1)
    z = _residual(w, t, series, big_l, far, c)
    dv = _fsc_correction(w, t, z) - jnp.where(use_t & ~series, w_err, 0)
    v = v + dv
    if materialize:
        v = _materialize(v)
    return jnp.where(use_t, v - 1, v), jnp.where(use_t, v, v + 1)


def _quotient_far(x_hi, x_lo, inv_x, c):
    """Branch-0 far residual parts: log(x / w) - w, y = fl(x / w).

    q = fl(x / w) is off by up to an ulp, which near w ~ -1/2 is worth two
    ulp of w; the exact remainder rho = x - q w restores it as rho / x.
    """

    def far(w):
        q = x_hi * (1 / w)
        ok = jnp.abs(q) < c.split_max
        qs = jnp.where(ok, q, 0)
        p, p_err = _two_prod(qs, w, c)
        rho = jnp.where(ok, ((x_hi - p) - p_err) + x_lo, 0)
        return q, 1, -w, rho * inv_x

    return far


def _log_diff_far(l_hi, l_lo):
    """Branch -1 far residual parts: (log(-x) - w) - log(-w), with log(-x) = l_hi + l_lo.

    The three terms are large and nearly cancel; log(-x) - w is formed exactly.
    """

    def far(w):
        d, d_err = _two_sum(l_hi, -w)
        return -w, -1, d, d_err + l_lo

    return far


def _nan_where(invalid, v):
    """NaN where invalid, else v.

    The NaN is made by sqrt(-1) in exactly the invalid lanes, so that a batch
    of valid inputs creates no NaN anywhere (jax_debug_nans stays quiet).
    """
    one = jnp.ones_like(v)
    return jnp.where(invalid, jnp.sqrt(jnp.where(invalid, -one, one)), v)


def _small_x(x):
    """W0(x) = x - x^2 + 3/2 x^3 - 8/3 x^4 + ..., used for |x| < tiny_x.

    In float64 (|x| < 2^-30) x - x^2 is already within 1.5 x^2 < 2^-59
    relative; float32's |x| < 2^-12 needs the cubic and quartic terms.
    """
    if x.dtype == np.float64:
        return x - x * x
    return x - x * x * (1 - x * (1.5 - x * (8.0 / 3.0)))


# ----------------------------------------------------------------------------
# Real-argument evaluation


def _special_x(x, branch, w, t, c):
    """(w, 1 + w) with the special and invalid arguments of :func:`lambertw` set.

    NaN outside the branch's domain (and for NaN), -1 and 0 at the branch
    point, the tiny-|x| series and +inf on branch 0, -inf at zero on branch -1
    (subnormals included on every backend: the float64 table starts at the
    smallest normal float, and XLA on CPU flushes them to zero anyway).
    """
    if branch == 0:
        invalid = ~(x >= -c.inv_e_hi)  # also catches NaN
        tiny = jnp.abs(x) < c.tiny_x
        small = _small_x(jnp.where(tiny, x, 0))
        w = jnp.where(tiny, small, w)
        t = jnp.where(tiny, 1 + small, t)
        w = jnp.where(x == jnp.inf, x, w)
        t = jnp.where(x == jnp.inf, x, t)
    else:
        invalid = ~((x >= -c.inv_e_hi) & (x <= 0))
        zero = x > -np.finfo(x.dtype).tiny
        w = jnp.where(zero, -jnp.inf, w)
        t = jnp.where(zero, -jnp.inf, t)
    at_bp = x == -c.inv_e_hi
    w = jnp.where(at_bp, -1, w)
    t = jnp.where(at_bp, 0, t)
    return _nan_where(invalid, w), _nan_where(invalid, t)


def _lambertw_x_impl(x, branch):
    c = _consts(x.dtype)
    if x.dtype == np.float64:
        # float64 reads the tables of lambertw_table (module doc).
        return _special_x(x, branch, *lambertw_table.lambertw_parts(x, branch), c)

    def substitute(x):
        """x with special and invalid arguments replaced by an ordinary one."""
        # One comparison per bound: NaN fails them all, and the strict bound
        # at -1/e leaves out the branch point.
        if branch == 0:
            ordinary = (x > -c.inv_e_hi) & (jnp.abs(x) >= c.tiny_x) & (x < jnp.inf)
            return jnp.where(ordinary, x, jnp.ones_like(x))
        ordinary = (x > -c.inv_e_hi) & (x < 0)
        return jnp.where(ordinary, x, jnp.full_like(x, -0.25))

    xs = substitute(x)
    r_hi, r_lo = _r_from_x(jnp.minimum(xs, 1), c)
    near = xs < c.x_near
    series = xs < c.x_series[branch]
    use_t = xs < c.x_state[branch]
    near_bin = _near_bin(jnp.where(near, _r_rough(xs, c), c.r_near), c)

    if branch == 0:
        # One log gives L = log1p(-r) (series) and lambda = log1p(x) (far guess).
        la = _log1m(jnp.where(series, r_hi, -xs), jnp.where(series, r_lo, 0), c, rough=True)
        big_l = la
        v0 = _guess(near, use_t, near_bin, _far_bin(la, la + 1, branch, c), branch, c)
        far = _quotient_far(xs, 0, 1 / xs, c)
    else:
        # One log gives L = log1p(-r) (series) and log(-x) (far).
        y_near = _barrier(1 - r_hi)
        # The rounding of y_near, as in _log1m; taken from y_near itself, not
        # from the select below, which XLA could simplify through.
        err_near = ((1 - y_near) - r_hi) - r_lo
        y = jnp.where(series, y_near, -xs)
        ly, ly_lo = _log_dd(y, c)
        big_l = ly + jnp.where(series, err_near * (1 / y), 0)
        # The guess takes its own division-free log of -x: it then need not
        # wait for the double-word one, which only the residual uses.
        lg = _log(-xs, c, rough=True)
        v0 = _guess(near, use_t, near_bin, _far_bin(lg, -lg, branch, c), branch, c)
        far = _log_diff_far(ly, ly_lo)
    # lambertw() itself only needs w (XLA then drops 1 + w), so the state is
    # not materialised here; the log-domain form is used for both outputs.
    w, t = _refine(v0, (use_t, series, big_l, far), c, materialize=False)
    return _special_x(x, branch, w, t, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _lambertw_x_parts(x, branch):
    return _lambertw_x_impl(x, branch)


@_lambertw_x_parts.defjvp
def _lambertw_x_parts_jvp(branch, primals, tangents):
    (x,), (dx,) = primals, tangents
    w, t = _lambertw_x_parts(x, branch)
    # W' = W / (x (1 + W)) = exp(-W) / (1 + W).  The exponential form is used
    # for |W| <= 1 (it is regular at x = 0, and x * (1 + W) can underflow for
    # tiny x), the quotient elsewhere (exp(-W) overflows for W_-1 near 0-).
    # Substitutes keep the unselected side finite, so its zero cotangent
    # cannot become NaN under a second differentiation.
    small = jnp.abs(w) <= 1
    x_s = jnp.where(small, 1, x)
    w_s = jnp.where(small, w, 0)
    deriv = jnp.where(small, jnp.exp(-w_s) / t, w / (x_s * t))
    dw = deriv * dx
    return (w, t), (dw, dw)


# ----------------------------------------------------------------------------
# Log-domain evaluation: W(-exp(-1 - kappa))


def _negexp_table_impl(kappa):
    """W_-1(-exp(-1 - kappa)) in float64 from the kappa table of lambertw_table, with the special values."""
    w, t = lambertw_table.negexp_parts(kappa)
    invalid = ~(kappa >= 0)  # also catches NaN
    w = jnp.where(kappa == 0, -1, w)
    t = jnp.where(kappa == 0, 0, t)
    w = jnp.where(kappa == jnp.inf, -jnp.inf, w)
    t = jnp.where(kappa == jnp.inf, -jnp.inf, t)
    return _nan_where(invalid, w), _nan_where(invalid, t)


def _negexp_impl(kappa, branch):
    if branch == -1 and kappa.dtype == np.float64:
        return _negexp_table_impl(kappa)
    c = _consts(kappa.dtype)
    invalid = ~(kappa >= 0)
    at_bp = kappa == 0
    at_inf = kappa == jnp.inf

    ks = jnp.where(invalid | at_bp | at_inf, jnp.ones_like(kappa), kappa)
    big_l = -ks  # log(-e x), exact
    near = ks < c.kappa_near
    series = ks < c.kappa_series[branch]
    use_t = ks < c.kappa_state[branch]
    # r only feeds the initial guess, so XLA's expm1 (a few ulp) is fine.
    r = -jnp.expm1(-jnp.where(near, ks, c.kappa_near))
    near_bin = _near_bin(jnp.maximum(r, c.near_min), c)
    # Below the near table: the branch-point series t = p - p^2/3 + O(p^3),
    # p = +-sqrt(2 r), within ~1e-9 there.
    below = r < c.near_min
    p = jnp.sqrt(2 * jnp.where(below, r, 0))
    p = p if branch == 0 else -p
    t_below = p - p * p * (1.0 / 3.0)

    if branch == 0:
        x_hi, x_lo = _neg_exp_dd(ks, c)
        tiny = jnp.abs(x_hi) < c.tiny_x  # includes exp() underflow to 0
        xs = jnp.where(tiny, -0.25, x_hi)
        xs_lo = jnp.where(tiny, 0, x_lo)
        la = _log1m(jnp.where(near, 0, -xs), 0, c, rough=True)
        v0 = _guess(near, use_t, near_bin, _far_bin(la, la + 1, branch, c), branch, c)
        far = _quotient_far(xs, xs_lo, 1 / xs, c)
    else:
        # log(-x) = -1 - kappa, formed exactly as a double word.
        u_hi, u_lo = _two_sum(-ks, jnp.full_like(ks, -1))
        in_table = u_hi > -c.far_top[branch]
        v_table = _guess(near, use_t, near_bin, _far_bin(u_hi, -u_hi, branch, c), branch, c)
        w_asym = _asymptotic_m1(jnp.where(in_table, -2 * c.far_top[branch], u_hi), c)
        v0 = jnp.where(near | in_table, v_table, w_asym)
        far = _log_diff_far(u_hi, u_lo)
    v0 = jnp.where(below, t_below, v0)
    w, t = _refine(v0, (use_t, series, big_l, far), c, materialize=True)

    if branch == 0:
        small = _small_x(jnp.where(tiny, x_hi, 0))
        w = jnp.where(tiny, small, w)
        t = jnp.where(tiny, 1 + small, t)
        w = jnp.where(at_inf, -jnp.zeros_like(w), w)
        t = jnp.where(at_inf, 1, t)
    else:
        w = jnp.where(at_inf, -jnp.inf, w)
        t = jnp.where(at_inf, -jnp.inf, t)
    w = jnp.where(at_bp, -1, w)
    t = jnp.where(at_bp, 0, t)
    return _nan_where(invalid, w), _nan_where(invalid, t)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _negexp_parts(kappa, branch):
    return _negexp_impl(kappa, branch)


@_negexp_parts.defjvp
def _negexp_parts_jvp(branch, primals, tangents):
    (kappa,), (dkappa,) = primals, tangents
    w, t = _negexp_parts(kappa, branch)
    dw = -w / t * dkappa
    return (w, t), (dw, dw)


# ----------------------------------------------------------------------------
# Public API


def _check_branch(branch):
    if isinstance(branch, bool) or not isinstance(branch, (int, np.integer)):
        raise ValueError(f"branch must be the Python int 0 or -1, got {branch!r}")
    if int(branch) not in (0, -1):
        raise ValueError(f"branch must be 0 or -1 (real branches only), got {branch!r}")
    return int(branch)


def _as_float_array(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError("only real arguments are supported")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _run(fn, x, branch):
    # Half-precision inputs are evaluated in float32 and rounded back.
    if x.dtype in (jnp.float32, jnp.float64):
        return fn(x, branch)
    w, t = fn(x.astype(jnp.float32), branch)
    return w.astype(x.dtype), t.astype(x.dtype)


def lambertw(x, branch=0):
    """Real Lambert W function ``W_branch(x)``, the solution of ``w e^w = x``.

    Args:
      x: real array-like.  float32 and float64 keep their dtype, integers are
        promoted to the default float dtype.
      branch: static Python int: ``0`` (principal branch, ``W >= -1``, domain
        ``x >= -1/e``) or ``-1`` (``W <= -1``, domain ``-1/e <= x <= 0``).

    Returns:
      ``W_branch(x)``, same shape and dtype as ``x``.  Outside the real domain
      of the branch the result is NaN (complex values are never produced), and
      NaN input gives NaN.  ``-1/e`` means the float nearest ``-1/e`` (which
      lies just below the true value): there ``W = -1`` exactly and anything
      smaller is NaN.  ``W_0(0) = 0`` (sign of zero kept), ``W_0(+inf) = +inf``,
      ``W_-1(0) = W_-1(-0.0) = -inf``.  Subnormal inputs behave as zero where
      XLA flushes them (on CPU), and on branch -1 in float64 everywhere;
      elsewhere ``W_0`` of a subnormal is the subnormal itself.

    The error is within a few ulp of the exact value of ``W`` at the given
    float over the whole domain, including a few ulp above the branch point:
    in float64 within 0.53 ulp, from tables of piecewise polynomials of
    degree 8 (:mod:`sdsl_jax.laws.lambertw_table`); in float32 about 1 ulp,
    from a tabulated initial guess (near ``-1/e`` of ``1 + W`` as a function
    of ``1 + e x``, Corless et al. (1996): ``~ sqrt(2 (1 + e x))``) refined by
    one step of the fourth-order iteration of Fritsch, Shafer and Crowley
    (1973) with cancellation-free residuals.  The module docstring says more.

    Differentiable (``jax.custom_jvp``): ``W'(x) = W / (x (1 + W))``, taken in
    the equivalent form ``exp(-W) / (1 + W)`` where ``|W| <= 1`` (so ``x = 0``
    is regular), written in terms of the primal outputs so that higher
    derivatives follow by autodiff.  ``W'`` is infinite at the branch point.
    """
    branch = _check_branch(branch)
    x = _as_float_array(x)
    return _run(_lambertw_x_parts, x, branch)[0]


def lambertw_negexp_parts(kappa, branch):
    """``(w, 1 + w)`` with ``w = W_branch(-exp(-1 - kappa))`` for ``kappa >= 0``.

    ``1 + w`` is produced directly (never as ``1 + w``), so it keeps full
    relative precision as ``kappa -> 0`` where it behaves like
    ``+-sqrt(2 kappa)``.  ``kappa = 0`` gives ``(-1, 0)`` exactly,
    ``kappa = inf`` gives ``(-0.0, 1)`` on branch 0 and ``(-inf, -inf)`` on
    branch -1, negative ``kappa`` or NaN gives NaN.  Differentiable
    (``jax.custom_jvp``): ``dw/dkappa = d(1 + w)/dkappa = -w / (1 + w)``.
    """
    branch = _check_branch(branch)
    kappa = _as_float_array(kappa)
    return _run(_negexp_parts, kappa, branch)


def lambertw_negexp(u, branch=-1):
    """``W_branch(-exp(u))`` for ``u <= -1``, without forming ``exp(u)``.

    The log-domain form of :func:`lambertw`: accurate when ``exp(u)``
    underflows (``u = -1e3``, ``-1e30``) and near the branch point ``u = -1``,
    where ``W = -1`` exactly.  ``u > -1`` gives NaN; ``u = -inf`` gives ``-inf``
    on branch -1 and ``0`` on branch 0.  Same method as :func:`lambertw` with
    ``log(-e x) = 1 + u`` known exactly.  Differentiable:
    ``dW/du = W / (1 + W)``.
    """
    branch = _check_branch(branch)
    u = _as_float_array(u)
    # -1 - u is exact for |u| < 2^53 (Sterbenz below 2, an exact shift above).
    return lambertw_negexp_parts(-1 - u, branch)[0]
