r"""Quantiles of the beta distribution: the inverse regularised incomplete beta function.

``betaincinv(a, b, p)`` is the x in (0, 1) with I_x(a, b) = p and
``betainccinv(a, b, q)`` the x with 1 - I_x(a, b) = q (scipy.special's names
and argument order). The exact (Clopper-Pearson) binomial interval has beta
quantiles as its ends (:mod:`sdsl_jax.estimation.acceptance`).

How
---
A bisection on ``jax.scipy.special.betainc`` costs 40-64 evaluations of a
continued fraction whose loop, batched, runs until its slowest element
converges, and in float32 its log-beta prefactor loses every digit once a
shape parameter is in the millions. Here instead:

1. A start from the normal approximation of Abramowitz & Stegun 26.5.22,
   x = a / (a + b e^(2w)), within a few percent of the tail probability for
   a, b >= 1 and much closer for large a and b.
2. Halley steps on H(v) = log I_x(a, b) - log p in v = logit x. The beta
   density in v, x^a (1 - x)^b / B(a, b), is log-concave, so its distribution
   function is too: H is concave and increasing, and the iteration converges
   from any start without a bracket. In v both tails are resolved
   (x = sigmoid(v) and 1 - x = sigmoid(-v) are each accurate to the last bit),
   and the derivatives are closed forms:
       H'  = x (1 - x) f(x) / I_x = D / I_x,   D = x^a (1 - x)^b / B(a, b),
       H'' = H' (a (1 - x) - b x - H').
   Steps run until each element's step is small on the scale of the
   distribution (then the next would change it by about eps): two from this
   start for most, up to five in far tails with a or b near 1.
3. I_x(a, b) = D / a * K(x), with K the continued fraction DLMF 8.17.22,
   which converges fast below (a + 1) / (a + b + 2); above it the symmetric
   form 1 - I_(1-x)(b, a) is used. The fraction runs in blocks of terms with
   one convergence test per block, as few blocks as the slowest element of
   the batch needs (about 150 terms at a 95% level for any n; the median of
   Beta(5e6, 5e6) needs about 1800).
4. log D without the cancellation of log-gammas in the millions:
       log D = -(bd0(a, n x) + bd0(b, n (1 - x))) + log sqrt(a b / (2 pi n))
               + delta(n) - delta(a) - delta(b),
   n = a + b, with bd0(k, m) = k log(k / m) + m - k (Loader 2000, by a series
   when k and m are close) and delta Stirling's error log Gamma(z) -
   (z - 1/2) log z + z - log sqrt(2 pi). In float32 this keeps the relative
   error of I_x near 1e-6 at a = 1e6, where log Gamma loses everything.

Domain: a, b >= 1 (the start and the Stirling terms are shaped for it; the
binomial intervals need a, b >= 1). p = 0 gives 0 and p = 1 gives 1.

Accuracy. The error in x is a few ulp of x (float32) or about 1e-13
(float64), except next to 1 when a >> b: the fraction then sees 1 - x only
to about eps a / b relatively, though x itself is right to about eps. So the
upper quantile of Beta(3, 1e7) (x near 7e-7, found next to 1 in Beta(1e7,
3)) is right to about 1e-9 relatively in float64 and a few percent in
float32, while an absolute error is all a float near 1 could hold.
Accuracy against scipy.special.betaincinv (Boost): tests/estimation/
test_beta_quantile.py. All functions broadcast, keep float32 by default and
float64 under ``jax_enable_x64``, and run under jit and vmap. They are
differentiable in the probability (dx/dp = 1 / density at x); a derivative
in a or b is refused with an error (no closed form; stop_gradient them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, ndtri
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate

_LOG_SQRT_2PI = 0.5 * float(np.log(2 * np.pi))
# Pairs of terms of the continued fraction per convergence test (2 measured
# fastest on CPU among 1, 2, 4 and 8).
_PAIRS_PER_BLOCK = 2
# The most pairs of terms: beyond it the fraction stops unconverged. The
# median of Beta(a, b) needs about 0.6 sqrt(a b / (a + b)) pairs, so this
# covers a and b up to about 1e8 at any level.
_MAX_PAIRS = 8192


def _stirling_error(z):
    """delta(z) = log Gamma(z) - (z - 1/2) log z + z - log sqrt(2 pi), z >= 1."""
    large = z >= 10
    # Asymptotic series from 10 on: the first omitted term, 691 / (360360 z^11),
    # is 2e-14 there.
    zl = jnp.where(large, z, 10.0)
    r = 1 / zl
    r2 = r * r
    series = r * (1 / 12 - r2 * (1 / 360 - r2 * (1 / 1260 - r2 * (1 / 1680 - r2 / 1188))))
    # Below 10 the terms are small (log Gamma(10) = 12.8), so the direct form
    # loses only a few ulp of them.
    zs = jnp.where(large, 1.0, z)
    direct = gammaln(zs) - (zs - 0.5) * jnp.log(zs) + zs - _LOG_SQRT_2PI
    return jnp.where(large, series, direct)


def _bd0(k, m):
    """k log(k / m) + m - k >= 0, the binomial deviance term, for k, m > 0.

    When k and m are close the direct form cancels; with v = (k - m) / (k + m)
    it is (k - m) v + 2 k (v^3 / 3 + v^5 / 5 + ...), summed while |v| < 0.1
    (eight terms reach v^17 < 1e-17).
    """
    d = k - m
    v = d / (k + m)
    close = jnp.abs(v) < 0.1
    vs = jnp.where(close, v, 0.0)
    v2 = vs * vs
    odd = v2 * (1 / 3 + v2 * (1 / 5 + v2 * (1 / 7 + v2 * (1 / 9 + v2 * (
        1 / 11 + v2 * (1 / 13 + v2 * (1 / 15 + v2 / 17)))))))
    series = d * vs + 2 * k * vs * odd
    ratio = jnp.where(close, 1.0, k / m)
    direct = k * jnp.log(ratio) + m - k
    return jnp.where(close, series, direct)


def _log_density_term(a, b, x, xc):
    """log D = log[x^a (1 - x)^b / B(a, b)], given x and xc = 1 - x."""
    n = a + b
    deviance = _bd0(a, n * x) + _bd0(b, n * xc)
    return (-deviance + 0.5 * jnp.log(a * b / n) - _LOG_SQRT_2PI
            + _stirling_error(n) - _stirling_error(a) - _stirling_error(b))


def _continued_fraction(a, b, x, tol, active):
    """K(x) with I_x(a, b) = D / a * K(x), DLMF 8.17.22, by Lentz's method.

    K = 1 / (1 + d1 / (1 + d2 / (1 + ...))) with
        d(2m+1) = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)),
        d(2m)   = m (b - m) x / ((a + 2m - 1)(a + 2m)).
    Each d is kept as a numerator P over a denominator Q so that a term costs
    two divisions. Runs whole blocks until every active element's last
    factor is within tol of 1 (inactive elements are not waited for).
    """
    dtype = x.dtype
    tiny = jnp.asarray(jnp.finfo(dtype).tiny ** 0.5, dtype)  # Lentz's guard against 0
    apb = a + b

    def term(p, q, c, d, f):
        # d_j = p / q:  D <- 1 / (1 + d_j D) = q / (q + p D),  C <- 1 + d_j / C.
        den_d = q + p * d
        den_d = jnp.where(den_d == 0, tiny, den_d)
        d = q / den_d
        c = 1 + p / (q * c)
        c = jnp.where(c == 0, tiny, c)
        factor = c * d
        return c, d, f * factor, factor

    def block(state):
        m, c, d, f, active = state
        f_block = f
        for _ in range(_PAIRS_PER_BLOCK):
            a2m = a + 2 * m
            c, d, f_block, _ = term(-(a + m) * (apb + m) * x, a2m * (a2m + 1), c, d, f_block)
            m = m + 1
            c, d, f_block, factor = term(m * (b - m) * x, (a2m + 1) * (a2m + 2), c, d, f_block)
        # A converged element keeps its value: further factors of 1 + O(eps)
        # would only add rounding while the slowest element converges.
        f = jnp.where(active, f_block, f)
        return m, c, d, f, active & (jnp.abs(factor - 1) > tol)

    def unconverged(state):
        m, _, _, _, active = state
        return jnp.any(active) & (m < _MAX_PAIRS)

    one = jnp.ones_like(x)
    state = (jnp.zeros((), dtype), one, jnp.zeros_like(x), one, active)
    _, _, _, f, _ = jax.lax.while_loop(unconverged, block, state)
    return 1 / f


def _log_cdf_and_slope(a, b, v, tol, active):
    """(log I_x(a, b), D / I_x, cancellation) at x = sigmoid(v).

    The first two are H + log p and H' of the module docstring; the third is
    the factor by which the continued fraction amplifies rounding (its
    relative error is about that many eps).
    """
    x = jax.nn.sigmoid(v)
    xc = jax.nn.sigmoid(-v)
    log_d = _log_density_term(a, b, x, xc)
    # Below (a + 1) / (a + b + 2) the fraction for I_x(a, b) converges fast;
    # above it, the one for the other tail, I_(1-x)(b, a). Its first term,
    # 1 - (a + b) x / (a + 1), cancels by a factor (a + 1) / ((a + b + 2)(1 -
    # x) - (b + 1)), about sqrt(a (a + b) / b) / z at z standard deviations
    # from the mean: the error it leaves in x is still about eps (the
    # distribution is narrow where it is large), but it is noise that Halley
    # steps cannot remove.
    gap_direct = (a + b + 2) * xc - (b + 1)
    gap_other = (a + b + 2) * x - (a + 1)
    direct = gap_direct > 0
    cancellation = jnp.where(direct, (a + 1) / jnp.where(direct, gap_direct, 1.0),
                             (b + 1) / jnp.where(direct, 1.0, jnp.maximum(gap_other, 1.0)))
    a_cf, b_cf = jnp.where(direct, a, b), jnp.where(direct, b, a)
    k = _continued_fraction(a_cf, b_cf, jnp.where(direct, x, xc), tol, active)
    log_tail = log_d - jnp.log(a_cf) + jnp.log(k)
    log_cdf = jnp.where(direct, log_tail, jnp.log1p(-jnp.exp(jnp.minimum(log_tail, 0.0))))
    return log_cdf, jnp.exp(log_d - log_cdf), cancellation


def _start(a, b, p):
    """logit of the A&S 26.5.22 approximation to the p quantile of Beta(a, b)."""
    y = -ndtri(p)
    lam = (y * y - 3) / 6
    ra, rb = 1 / (2 * a - 1), 1 / (2 * b - 1)
    h = 2 / (ra + rb)
    w = y * jnp.sqrt(h + lam) / h - (rb - ra) * (lam + 5 / 6 - 2 / (3 * h))
    return jnp.log(a) - jnp.log(b) - 2 * w


# At most this many Halley steps; two suffice from the start except in far
# tails with a or b near 1 (up to five, from the tests), or where rounding
# noise stops the steps from settling (see floor in _lower_tail_logit).
_MAX_STEPS = 8


@jax.jit
def _lower_tail_logit(a, b, p):
    """logit of the x with I_x(a, b) = p, for 0 < p <= 1/2 and a, b >= 1.

    Halley steps until each element's step is small on the scale of the
    distribution: H' = D / I_x is at least about 0.8 / (the standard deviation
    in v) below the median, so |step| H' < eps^(1/3) / 2 leaves an error of
    order eps / 8 of that scale after the step (Halley's error is cubed).
    """
    dtype = p.dtype
    eps = jnp.finfo(dtype).eps
    tol = jnp.asarray(eps, dtype)
    small_step = jnp.asarray(eps ** (1 / 3) / 2, dtype)
    log_p = jnp.log(p)

    def step(state):
        v, active, count = state
        log_cdf, slope, cancellation = _log_cdf_and_slope(a, b, v, tol, active)
        gap = log_cdf - log_p
        x, xc = jax.nn.sigmoid(v), jax.nn.sigmoid(-v)
        curvature = a * xc - b * x - slope  # H'' / H'
        # Halley's factor, kept within [1/2, 2]: H is concave, so plain
        # Newton (factor 1) converges from anywhere, and the bound stops a far
        # start from turning Halley's correction into a long jump.
        shrink = jnp.clip(1 - gap * curvature / (2 * slope), 0.5, 2.0)
        change = -gap / (slope * shrink)
        v = jnp.where(active, v + change, v)
        # A step within the rounding of the evaluation is noise, not progress.
        floor = jnp.maximum(small_step, 8 * eps * cancellation)
        active = active & (jnp.abs(change) * jnp.maximum(slope, 1.0) >= floor)
        return v, active, count + 1

    def unconverged(state):
        _, active, count = state
        return jnp.any(active) & (count < _MAX_STEPS)

    state = (_start(a, b, p), jnp.ones(p.shape, bool), 0)
    v, _, _ = jax.lax.while_loop(unconverged, step, state)
    return v


@jax.jit
def _quantile(a, b, p, q):
    """x with I_x(a, b) = p and q = 1 - p, whichever of p and q is the smaller
    solved directly so that neither is formed as 1 - (1 - tail)."""
    lower = p <= q
    # I_x(a, b) = p > 1/2 is I_(1-x)(b, a) = q < 1/2.
    tail = jnp.where(lower, p, q)
    a_t, b_t = jnp.where(lower, a, b), jnp.where(lower, b, a)
    safe = (tail > 0) & (a_t >= 1) & (b_t >= 1)
    v = _lower_tail_logit(jnp.where(safe, a_t, 1.0), jnp.where(safe, b_t, 1.0),
                          jnp.where(safe, tail, 0.25))
    x = jnp.where(lower, jax.nn.sigmoid(v), jax.nn.sigmoid(-v))
    x = jnp.where(tail > 0, x, jnp.where(lower, 0.0, 1.0))
    bad = (a < 1) | (b < 1) | ~(p >= 0) | ~(q >= 0) | jnp.isnan(a) | jnp.isnan(b)
    return jnp.where(bad, jnp.nan, x)


@jax.custom_jvp
def _quantile_differentiable(a, b, p, q):
    return _quantile(a, b, p, q)


def _is_zero(tangent):
    return type(tangent) is jax.custom_derivatives.SymbolicZero


def _quantile_jvp(primals, tangents):
    # I_x(a, b) = p = 1 - q, so dx = dp / f(x) = -dq / f(x), f the density.
    # The derivatives in a and b have no closed form; they are refused rather
    # than returned as zero.
    a, b, p, q = primals
    a_dot, b_dot, p_dot, q_dot = tangents
    if not (_is_zero(a_dot) and _is_zero(b_dot)):
        raise NotImplementedError(
            "beta quantiles are differentiable in the probability only; wrap a and b in "
            "jax.lax.stop_gradient")
    x = _quantile(a, b, p, q)
    xc = 1 - x
    density = jnp.exp(_log_density_term(a, b, x, xc)) / (x * xc)
    dp = jnp.zeros_like(x) if _is_zero(p_dot) else p_dot
    dq = jnp.zeros_like(x) if _is_zero(q_dot) else q_dot
    # Only one of p and q carries the caller's tangent (the other is derived
    # from it, 1 - p or 1 - q, and carries its negative).
    return x, (dp - dq) / 2 / density


_quantile_differentiable.defjvp(_quantile_jvp, symbolic_zeros=True)


def _prepare(a, b, prob, name):
    _validate.check_finite("a", a)
    _validate.check_finite("b", b)
    _validate.check_in_range("a", a, 1.0, float("inf"))
    _validate.check_in_range("b", b, 1.0, float("inf"))
    _validate.check_in_range(name, prob, 0.0, 1.0)
    values = [jnp.asarray(v) if isinstance(v, (list, tuple)) else v for v in (a, b, prob)]
    dtype = jnp.result_type(*values, float)
    a, b, prob = (jnp.asarray(v, dtype) for v in (a, b, prob))
    return jnp.broadcast_arrays(a, b, prob)


def betaincinv(a: ArrayLike, b: ArrayLike, p: ArrayLike) -> jnp.ndarray:
    """The x with I_x(a, b) = p: the p quantile of Beta(a, b).

    Args:
      a, b: shape parameters, >= 1; broadcast against p.
      p: probability in [0, 1].

    Returns:
      x in [0, 1] in the broadcast shape and float dtype (NaN outside the
      domain under jit).

    Raises:
      ValueError: eagerly, for a or b below 1 or not finite, or p outside [0, 1].
    """
    a, b, p = _prepare(a, b, p, "p")
    return _quantile_differentiable(a, b, p, 1 - p)


def betainccinv(a: ArrayLike, b: ArrayLike, q: ArrayLike) -> jnp.ndarray:
    """The x with 1 - I_x(a, b) = q: the upper q quantile of Beta(a, b).

    ``betainccinv(a, b, q)`` equals ``betaincinv(a, b, 1 - q)``, but a small
    q keeps all its digits instead of being rounded into 1 - q.

    Args:
      a, b: shape parameters, >= 1; broadcast against q.
      q: upper tail probability in [0, 1].

    Returns:
      x in [0, 1] in the broadcast shape and float dtype (NaN outside the
      domain under jit).

    Raises:
      ValueError: eagerly, for a or b below 1 or not finite, or q outside [0, 1].
    """
    a, b, q = _prepare(a, b, q, "q")
    return _quantile_differentiable(a, b, 1 - q, q)
