r"""Quantiles of Student's t distribution, in JAX, for any real degrees of freedom.

Every interval with few independent units (prompts, batches, models) needs a
t quantile rather than a normal one, and some need it at a fractional number
of degrees of freedom (a Welch-Satterthwaite df) that is only known inside a
jitted computation. JAX has the regularised incomplete beta function but no
t quantile, so this inverts

    P(|T| > t) = I_x(df / 2, 1 / 2),   x = df / (df + t^2),

for x by bisection (I_x rises with x from 0 to 1), then t = sqrt(df (1 - x) / x).
A fixed number of steps keeps it jit- and vmap-able.

float32 ``betainc`` loses accuracy when a shape parameter is large, so from
df = 1000 on the quantile is the Cornish-Fisher expansion of t about the
normal quantile z (Abramowitz & Stegun 26.7.5, four terms), whose error there
is below 1e-12; in float32, from df = 100 on (error below 1e-7). df = inf
gives z.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc, ndtri
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate



def _expansion_from(dtype) -> float:
    """From this many degrees of freedom on, the expansion replaces the inversion."""
    return 1000.0 if jnp.finfo(dtype).bits > 32 else 100.0


def _cornish_fisher(z, df):
    z2 = z * z
    g1 = z * (z2 + 1) / 4
    g2 = z * (5 * z2 * z2 + 16 * z2 + 3) / 96
    g3 = z * (3 * z2**3 + 19 * z2 * z2 + 17 * z2 - 15) / 384
    g4 = z * (79 * z2**4 + 776 * z2**3 + 1482 * z2 * z2 - 1920 * z2 - 945) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def _quantile(p, df):
    dtype = p.dtype
    # The smaller tail, never formed as 1 - (1 - tail), which would round
    # away a small tail's digits.
    lower = jnp.minimum(p, 1 - p)
    tail = 2 * lower
    switch = _expansion_from(dtype)
    small = df < switch
    df_b = jnp.where(small, df, 1.0)
    steps = 64 if jnp.finfo(dtype).bits > 32 else 40

    # On log x: far tails at small df put x near the smallest normal float,
    # where a bisection on x itself could not resolve it.
    def step(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        too_small = betainc(df_b / 2, jnp.asarray(0.5, dtype), jnp.exp(mid)) < tail
        return jnp.where(too_small, mid, lo), jnp.where(too_small, hi, mid)

    shape = jnp.broadcast_shapes(p.shape, df.shape)
    lowest = jnp.full(shape, jnp.log(jnp.finfo(dtype).tiny), dtype)
    lo, hi = jax.lax.fori_loop(0, steps, step, (lowest, jnp.zeros(shape, dtype)))
    x = jnp.exp((lo + hi) / 2)
    t_inverted = jnp.sqrt(df_b * (1 - x) / x)
    z = -ndtri(lower)
    df_e = jnp.where(small, switch, df)
    t_expanded = jnp.where(jnp.isinf(df), z, _cornish_fisher(z, jnp.where(jnp.isinf(df_e), 1.0, df_e)))
    t = jnp.where(small, t_inverted, t_expanded)
    t = jnp.where(lower >= 0.5, 0.0, t)
    return jnp.where(p >= 0.5, t, -t)


# The derivative in p is exact, 1 / density at the quantile; the one in df (a
# Satterthwaite df depends on the data) is a central difference, as betainc
# has no derivative in its shape parameters.
@jax.custom_jvp
@jax.jit
def _quantile_jit(p, df):
    return _quantile(p, df)


@_quantile_jit.defjvp
def _quantile_jvp(primals, tangents):
    p, df = primals
    p_dot, df_dot = tangents
    t = _quantile_jit(p, df)
    finite = jnp.isfinite(df)
    df_f = jnp.where(finite, df, 1.0)
    log_density = (jax.scipy.special.gammaln((df_f + 1) / 2) - jax.scipy.special.gammaln(df_f / 2)
                   - 0.5 * jnp.log(df_f * jnp.pi) - (df_f + 1) / 2 * jnp.log1p(t * t / df_f))
    log_density = jnp.where(finite, log_density, -0.5 * t * t - 0.5 * jnp.log(2 * jnp.pi))
    h = 1e-3 * df_f
    by_df = (_quantile(p, df_f + h) - _quantile(p, df_f - h)) / (2 * h)
    return t, p_dot * jnp.exp(-log_density) + jnp.where(finite, by_df, 0.0) * df_dot


def student_t_quantile(probability: ArrayLike, df: ArrayLike) -> jnp.ndarray:
    """t with P(T <= t) = probability, T Student's t with ``df`` degrees of freedom.

    Args:
      probability: in (0, 1); broadcasts against df.
      df: degrees of freedom, real and > 0 (fractional values, as a
        Welch-Satterthwaite approximation gives, are fine); ``inf`` gives the
        normal quantile.

    Returns:
      The quantile, float32 by default and float64 under ``jax_enable_x64``
      (the float dtype of the inputs). Relative error against
      ``scipy.stats.t.ppf`` about 1e-12 in float64 and 1e-5 in float32 for
      probabilities in [1e-6, 1 - 1e-6] (tests/common/test_student_t.py).
      Input checks run eagerly only.
    """
    if _validate.is_concrete(probability):
        _validate.check_finite("probability", probability)
        arr = _validate.as_float64(probability)
        bad = ~((arr > 0) & (arr < 1))
        if np.any(bad):
            raise ValueError(f"probability must lie in (0, 1), got {_validate.first_bad(arr, bad)}")
    if _validate.is_concrete(df):
        arr = _validate.as_float64(df)
        bad = ~(arr > 0)
        if np.any(bad):
            raise ValueError(f"df must be > 0, got {_validate.first_bad(arr, bad)}")
    dtype = jnp.result_type(probability, df, float)
    p, d = jnp.broadcast_arrays(jnp.asarray(probability, dtype), jnp.asarray(df, dtype))
    return _quantile_jit(p, d)


def student_t_quantile_float(probability: float, df: float) -> float:
    """:func:`student_t_quantile` as a Python float, computed in float64 in any JAX mode.

    For host-side summaries (latency tables, reports) that print more digits
    than float32 holds.
    """
    with jax.enable_x64(True):
        return float(student_t_quantile(float(probability), float(df)))
