r"""The throughput law of speculative decoding.

One iteration drafts ``lookahead`` (gamma) tokens with the draft model and
verifies them with ONE target forward pass. With acceptances i.i.d. at rate
alpha the accepted count is a truncated geometric, so an iteration emits

    E(alpha, gamma) = (1 - alpha**(gamma + 1)) / (1 - alpha)

tokens on average (Leviathan et al. 2023, eq. 1). An iteration costs gamma draft
steps plus one target step; with the cost ratio c = N / M (draft FLOPs per
token over target FLOPs per token) the speedup over decoding with the target
alone is

    S(alpha, gamma, c) = E(alpha, gamma) / (gamma c + 1),

and with 2 FLOPs per parameter per token the throughput is

    T = E(alpha, gamma) / (2 (gamma N + M))   tokens per FLOP.

S is quasi-concave in gamma, so its maximiser over real gamma >= 0 is the
stationary point when that is positive and 0 otherwise. The stationary point
has a closed form through the lower branch of Lambert W:

    gamma* = -1 + log(-v) / (-log alpha),
    v = W_{-1}(-exp(-1 - kappa)),   kappa = -log(alpha) (1 - c) / c.

(Written this way nothing cancels: the textbook form (1 + v)/log(alpha) - 1/c
subtracts two numbers of size 1/c.) For small c, kappa is huge and
exp(-1 - kappa) underflows, which is why W is evaluated in log space; for
alpha -> 1 or c -> 1, kappa -> 0 is the branch point, where 1 + v is carried
with full relative precision.

All functions broadcast over their arguments, keep the input float dtype, and
are safe under jit, vmap and grad: no NaN or inf for 0 <= alpha <= 1 and
1e-9 <= c <= 1, values and gradients alike.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate
from sdsl_jax.laws import lambertw as lambertw_module
from sdsl_jax.laws.lambertw import lambertw_negexp_parts


def _floats(*values):
    dtype = jnp.result_type(*values, float)
    return tuple(jnp.asarray(v, dtype) for v in values)


# Taylor coefficients of exprel(s) = expm1(s) / s = sum s**k / (k + 1)!, to the
# degree that reaches the dtype's rounding for |s| < log 2: the first omitted
# term, (log 2)**17 / 18!, is below 3e-19 (float64); (log 2)**9 / 10!, 1e-8 (float32).
_EXPREL_TAYLOR = {np.dtype(np.float64): [1 / math.factorial(k + 1) for k in range(17)],
                  np.dtype(np.float32): [1 / math.factorial(k + 1) for k in range(9)]}
_LOG2 = math.log(2.0)


def _exprel(s):
    """expm1(s) / s, smooth through s = 0 (value 1), in plain vector arithmetic.

    Within log 2 of 0 its Taylor series; beyond, exp(s) - 1 loses at most a
    bit to the subtraction (exp(s) <= 1/2 or >= 2). XLA's float64 expm1 is a
    libm call per element; its exp is vectorised.
    """
    small = jnp.abs(s) < _LOG2
    coeffs = _EXPREL_TAYLOR.get(np.dtype(s.dtype), _EXPREL_TAYLOR[np.dtype(np.float64)])
    # Each branch sees a stand-in where it is not used, so neither overflows
    # and no gradient turns into 0 * inf.
    s_small = jnp.where(small, s, 0.0)
    series = functools.reduce(lambda acc, coeff: acc * s_small + coeff, coeffs[::-1])
    s_safe = jnp.where(small, 1.0, s)
    return jnp.where(small, series, (jnp.exp(s_safe) - 1) / s_safe)


def cap_acceptance(acceptance: jnp.ndarray) -> jnp.ndarray:
    """min(alpha, 1 - ulp): alpha capped at the largest float below 1 of its dtype.

    :func:`optimum` takes alpha capped this way.
    """
    # At alpha = 1 the optimal lookahead is unbounded; the largest float below
    # 1 keeps every quantity finite and differs from 1 by one rounding.
    below_one = jnp.nextafter(jnp.ones((), acceptance.dtype), jnp.zeros((), acceptance.dtype))
    return jnp.minimum(acceptance, below_one)


def expected_tokens(acceptance: ArrayLike, lookahead: ArrayLike) -> jnp.ndarray:
    """Mean tokens per iteration, E = (1 - alpha**(gamma+1)) / (1 - alpha).

    Args:
      acceptance: alpha in [0, 1], any shape.
      lookahead: gamma >= 0 (real values allowed: the continuous relaxation).

    Returns:
      E, broadcast shape; equals gamma + 1 at alpha = 1 and 1 at alpha = 0.
    """
    _validate.check_in_range("acceptance", acceptance, 0.0, 1.0)
    _validate.check_in_range("lookahead", lookahead, 0.0, float("inf"))
    alpha, gamma = _floats(acceptance, lookahead)
    n = gamma + 1
    low = alpha <= 0.5
    # One log serves both branches. vector_log keeps every digit near 1 (as
    # log_acceptance does) and takes a subnormal alpha too.
    log_alpha = vector_log(jnp.where(alpha > 0, alpha, 0.5))
    # Below 1/2 the geometric sum is well conditioned as written.
    a_low = jnp.where(low, alpha, 0.5)
    power = jnp.where(low & (alpha > 0), jnp.exp(n * jnp.where(low, log_alpha, -_LOG2)), 0.0)
    e_low = (1 - power) / (1 - a_low)
    # Above 1/2, 1 - alpha is exact (Sterbenz) and the ratio is rewritten as
    # n * exprel(n log alpha) * log(alpha)/(alpha - 1), which is smooth
    # through alpha = 1 with the right value and derivative there.
    rejection = 1 - jnp.where(low, 0.75, alpha)
    log_high = jnp.where(low, math.log(0.75), log_alpha)
    e_high = n * _exprel(n * log_high) * _log_ratio(log_high, rejection)
    return jnp.where(low, e_low, e_high)


def _log_ratio(log_alpha, rejection):
    """log(alpha) / (alpha - 1) from log(alpha) and 1 - alpha (> 0, exact), smooth
    through alpha = 1 (value 1): its series in the rejection near 1."""
    small = rejection < 1e-2
    # Eight terms: the first omitted one, r**8 / 9, is below 2e-17 for r < 1e-2.
    r = rejection
    series = 1 + r * (1 / 2 + r * (1 / 3 + r * (1 / 4 + r * (
        1 / 5 + r * (1 / 6 + r * (1 / 7 + r / 8))))))
    return jnp.where(small, series, log_alpha / -jnp.where(small, 1.0, r))


def speedup(acceptance: ArrayLike, lookahead: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """Speedup over target-only decoding, S = E(alpha, gamma) / (gamma c + 1).

    Args:
      acceptance: alpha in [0, 1].
      lookahead: gamma >= 0.
      cost_ratio: c = draft cost / target cost per token (N / M under the FLOP
        model), > 0.
    """
    _validate.check_positive("cost_ratio", cost_ratio)
    alpha, gamma, c = _floats(acceptance, lookahead, cost_ratio)
    return expected_tokens(alpha, gamma) / (gamma * c + 1)


def tokens_per_flop(acceptance: ArrayLike, lookahead: ArrayLike,
                    draft_params: ArrayLike, target_params: ArrayLike) -> jnp.ndarray:
    """Throughput T = E(alpha, gamma) / (2 (gamma N + M)) in tokens per FLOP.

    Decoding is memory-bound, so verifying gamma + 1 positions is costed as one
    target step; each step costs 2 FLOPs per parameter per token.
    """
    _validate.check_positive("draft_params", draft_params)
    _validate.check_positive("target_params", target_params)
    alpha, gamma, n, m = _floats(acceptance, lookahead, draft_params, target_params)
    return expected_tokens(alpha, gamma) / (2 * (gamma * n + m))


@jax.custom_jvp
def positive_log(x: jnp.ndarray) -> jnp.ndarray:
    """log(x) for positive, finite, normal x (anything else gives a meaningless value).

    XLA on CPU lowers the float64 log to a scalar libm call per element (four
    times the cost of a multiply-add pass over the array, and it splits the
    fusion around it); in float64 this is plain vector arithmetic within an
    ulp or so, near 1 as well. Other dtypes take XLA's log, already vectorised.
    """
    if x.dtype == jnp.float64:
        # Lambert W's own vectorised log (fdlibm's rearranged atanh series on
        # the mantissa, k log 2 in two pieces): one implementation for both.
        return lambertw_module.vectorised_log(x)
    return jnp.log(x)


@positive_log.defjvp
def _positive_log_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return positive_log(x), x_dot / x


def vector_log(x: jnp.ndarray) -> jnp.ndarray:
    """log(x), as jnp.log for every input (-inf at 0, inf at inf, NaN below 0),
    through :func:`positive_log`: vector arithmetic in float64.

    Subnormal x (which the CPU flushes to zero, but a GPU keeps) is scaled
    into the normal range first.
    """
    x = jnp.asarray(x)
    info = jnp.finfo(x.dtype)
    scale = float(2.0 ** (info.nmant + 1))
    subnormal = (x > 0) & (x < info.tiny)
    normal = (x > 0) & (x < jnp.inf)
    y = positive_log(jnp.where(normal, jnp.where(subnormal, x * scale, x), 1.0))
    y = y - jnp.where(subnormal, math.log(scale), 0.0)
    return jnp.where(normal, y, jnp.where(x == 0, -jnp.inf, jnp.where(x > 0, jnp.inf, jnp.nan)))


@jax.custom_jvp
def log1p_nonnegative(x: jnp.ndarray) -> jnp.ndarray:
    """log(1 + x) for finite x >= 0 (anything else gives a meaningless value).

    As :func:`positive_log`: in float64 plain vector arithmetic within an ulp
    or so, where XLA's log1p is a libm call per element (and off by up to 128
    ulp near 0); other dtypes take XLA's log1p.
    """
    if x.dtype == jnp.float64:
        return lambertw_module.vectorised_log1p(x)
    return jnp.log1p(x)


@log1p_nonnegative.defjvp
def _log1p_nonnegative_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return log1p_nonnegative(x), x_dot / (1 + x)


def log_acceptance(alpha: jnp.ndarray) -> jnp.ndarray:
    """log(alpha) to full relative precision for 0 < alpha <= 1 (log(1/2) where alpha <= 0).

    The caller masks alpha <= 0, where the log does not exist; the stand-in
    1/2 keeps that branch, and its gradient, finite.
    """
    # positive_log keeps every digit near alpha = 1 too (the reduced argument
    # alpha - 1 is exact there), where XLA's float64 log1p is off by up to
    # 128 ulp, and costs one vector pass rather than a libm call.
    return positive_log(jnp.where(alpha > 0, alpha, 0.5))


def speculation_pays(acceptance: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """True where some lookahead > 0 beats target-only decoding.

    dS/dgamma at gamma = 0 is -alpha log(alpha) - c (1 - alpha), so drafting
    pays exactly when c < -alpha log(alpha) / (1 - alpha). The bound tends to 1
    as alpha -> 1 and to 0 as alpha -> 0.
    """
    alpha, c = _floats(acceptance, cost_ratio)
    alpha = cap_acceptance(alpha)
    safe = jnp.where(alpha > 0, alpha, 0.5)
    # Above 1/2, 1 - alpha is exact and log1p(alpha - 1) keeps every digit, so
    # the ratio is accurate all the way to alpha -> 1 (where the bound -> 1).
    bound = safe * -log_acceptance(safe) / (1 - safe)
    return (alpha > 0) & (c < bound)


@jax.jit
def optimum(alpha: jnp.ndarray, c: jnp.ndarray):
    """(gamma*, S*, pays): the optimal real lookahead, the speedup there, and
    whether drafting pays, for alpha already capped below 1
    (:func:`cap_acceptance`) and cost ratio c > 0, unchecked.

    gamma* = log(-W_{-1}) / (-log alpha) - 1 and S* = -log(alpha) / ((1 - alpha)
    c (-W_{-1})), W_{-1} = W_{-1}(-exp(-1 - kappa)), kappa = -log(alpha)
    (1 - c) / c (module doc); (0, 1, False) where drafting does not pay
    (:func:`speculation_pays`). The unchecked core of :func:`optimal_lookahead`
    and :func:`optimal_speedup`, for callers inside jit (the planners).
    """
    pays = speculation_pays(alpha, c)
    # Substitute a paying point where it does not pay, so the unused branch
    # stays finite and its gradient (multiplied by zero) cannot become NaN.
    alpha_s = jnp.where(pays, alpha, 0.5)
    c_s = jnp.where(pays, c, 0.1)
    neg_log_alpha = -log_acceptance(alpha_s)
    kappa = neg_log_alpha * (1 - c_s) / c_s
    w, one_plus_w = lambertw_negexp_parts(kappa, -1)
    gamma = log1p_nonnegative(-one_plus_w) / neg_log_alpha - 1
    # Stationarity gives alpha**(gamma*+1) = -1/w, so the peak speedup needs
    # no geometric sum: S* = -log(alpha) / ((1 - alpha) c (-w)).
    peak = neg_log_alpha / ((1 - alpha_s) * c_s * -w)
    return (jnp.where(pays, jnp.maximum(gamma, 0.0), 0.0),
            jnp.where(pays, jnp.maximum(peak, 1.0), 1.0),
            pays)


def optimal_lookahead(acceptance: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """The real lookahead gamma* >= 0 that maximises the speedup (module doc).

    Closed form through W_{-1} in log space; 0 where speculating does not pay
    (see :func:`speculation_pays`). At alpha = 1 the optimum is unbounded, so
    alpha is capped at the largest float below 1 (the answer is then finite
    but very large). Gradients are exact where gamma* > 0 and zero where it is
    clamped at 0.

    Args:
      acceptance: alpha in [0, 1].
      cost_ratio: c in (0, 1]; larger c never pays (gamma* = 0).
    """
    _validate.check_in_range("acceptance", acceptance, 0.0, 1.0)
    _validate.check_positive("cost_ratio", cost_ratio)
    alpha, c = _floats(acceptance, cost_ratio)
    return optimum(cap_acceptance(alpha), c)[0]


def optimal_speedup(acceptance: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """max over real gamma >= 0 of S(alpha, gamma, c): the speedup at gamma*.

    Equal to speedup(alpha, optimal_lookahead(alpha, c), c) but cheaper and
    smoother: at the stationary point the geometric sum collapses to
    -log(alpha) / ((1 - alpha) c (-W_{-1})). It is 1 where drafting does not pay.
    """
    _validate.check_in_range("acceptance", acceptance, 0.0, 1.0)
    _validate.check_positive("cost_ratio", cost_ratio)
    alpha, c = _floats(acceptance, cost_ratio)
    return optimum(cap_acceptance(alpha), c)[1]


def integer_optimum(alpha: jnp.ndarray, gamma: jnp.ndarray, c: jnp.ndarray):
    """(the best integer lookahead, S there) around the real optimum ``gamma``
    (gamma* from :func:`optimum`) for alpha in [0, 1] and c > 0, unchecked: the
    core of :func:`optimal_integer_lookahead`, for callers inside jit (the
    planners) that already have gamma*."""
    low = jnp.floor(gamma)
    high = low + 1
    speedup_low, speedup_high = speedup(alpha, low, c), speedup(alpha, high, c)
    better_high = speedup_high > speedup_low
    return jnp.where(better_high, high, low), jnp.where(better_high, speedup_high, speedup_low)


def optimal_integer_lookahead(acceptance: ArrayLike, cost_ratio: ArrayLike) -> jnp.ndarray:
    """The best integer lookahead: floor or ceiling of gamma*, whichever is faster.

    S is quasi-concave in gamma, so the integer optimum is one of the two
    integers around the real one. Returned in the input float dtype (values are
    integers; a float avoids overflow when gamma* is astronomically large as
    alpha -> 1). Ties go to the shorter lookahead, which costs less latency.
    """
    alpha, c = _floats(acceptance, cost_ratio)
    return integer_optimum(alpha, optimal_lookahead(alpha, c), c)[0]
