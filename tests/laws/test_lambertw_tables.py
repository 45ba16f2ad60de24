"""Lambert W at the edges of the initial-guess tables, against mpmath.

The guess tables serve float32 and the log-domain entry points (float64
lambertw reads tables of its own, tested in test_lambertw_table.py, and is
checked here at these arguments too).  The guess is a piecewise cubic per table bin (sdsl_jax.laws.lambertw); a bin
fitted badly, or an index off by one, would show at the bin edges first.  The
arguments here sit on and next to every edge: near the branch point the bins
are 1/16 of a binade of r = 1 + e x (the edges of the earlier bins, uniform
in |p| = sqrt(2 r), are kept as well), elsewhere 1/16 of a binade of
log1p(x) + 1 (branch 0) or -log(-x) (branch -1), and lambertw_negexp leaves
the branch -1 table at log(-x) = -2^10.  Same ulp budget as test_lambertw.py.
"""

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from sdsl_jax.laws.lambertw import lambertw, lambertw_negexp, lambertw_negexp_parts

mpmath.mp.dps = 50
ULP_BUDGET = 4.0


def _edges(branch):
    """Table-variable values at the bin edges, mapped to x (float64)."""
    p = np.arange(1, 33) / 32  # near: |p| = j / 32, r = p^2 / 2 <= 1/2
    xs = [(p * p / 2 - 1) / np.e]
    sub = 1 + np.arange(16) / 16
    r = np.concatenate([2.0**e * sub for e in range(-52, -1)])  # near: r < 1/2
    xs.append((r - 1) / np.e)
    if branch == 0:
        y = np.concatenate([2.0**e * sub for e in range(-1, 10)])  # y = log1p(x) + 1
        y = y[(y > 0.8) & (y < 700)]
        xs.append(np.expm1(y - 1))
    else:
        y = np.concatenate([2.0**e * sub for e in range(0, 10)])  # y = -log(-x)
        y = y[(y > 1.7) & (y < 700)]
        xs.append(-np.exp(-y))
    x = np.concatenate(xs)
    x = np.concatenate([x, np.nextafter(x, -np.inf), np.nextafter(x, np.inf)])
    inv_e = float(1 / mpmath.e)
    keep = x > -inv_e
    if branch == -1:
        keep &= x < 0
    return x[keep]


@functools.lru_cache(maxsize=None)
def _ref(branch, dtype):
    x = _edges(branch)
    x = x[np.abs(x) < np.finfo(dtype).max].astype(dtype)
    x = x[np.abs(x) >= np.finfo(dtype).tiny]  # subnormals are flushed to zero
    return x, np.array([float(mpmath.lambertw(mpmath.mpf(float(v)), branch).real) for v in x])


def _ulp(y, ref, dtype):
    y = np.asarray(y, np.float64)
    err = np.abs(y - ref) / np.spacing(np.abs(ref).astype(dtype)).astype(np.float64)
    err[y == ref] = 0.0
    return err


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("branch", [0, -1])
def test_bin_edges(branch, dtype):
    with jax.enable_x64(dtype is np.float64):
        x, ref = _ref(branch, dtype)
        y = jax.jit(lambda v: lambertw(v, branch))(jnp.asarray(x))
        assert y.dtype == dtype
        err = _ulp(y, ref, dtype)
    assert err.max() <= ULP_BUDGET, f"{err.max()} ulp at x={x[err.argmax()]!r}"


def test_negexp_leaves_table(x64):
    """Branch -1 switches from the table to the asymptotic guess at log(-x) = -2^10."""
    u = np.concatenate([-1024 + np.arange(-8, 9) * np.spacing(1024.0), [-1000.0, -1030.0, -5000.0]])
    w = np.asarray(jax.jit(lambda v: lambertw_negexp(v, -1))(jnp.asarray(u)))
    ref = np.array([float(mpmath.lambertw(-mpmath.exp(mpmath.mpf(float(v))), -1).real) for v in u])
    assert _ulp(w, ref, np.float64).max() <= ULP_BUDGET


@pytest.mark.parametrize("branch", [0, -1])
def test_negexp_below_near_table(branch, x64):
    """lambertw_negexp_parts switches to t = p - p^2/3 below r = 2^-56 (kappa ~ r)."""
    kappa = 2.0**-56 * np.array([0.25, 0.5, 0.99, 1.0, 1.01, 2.0, 4.0])
    kappa = np.concatenate([kappa, np.nextafter(kappa, 0), np.nextafter(kappa, 1), [1e-300, 1e-30]])
    w, t = (np.asarray(a) for a in jax.jit(lambda k: lambertw_negexp_parts(k, branch))(jnp.asarray(kappa)))
    with mpmath.workdps(400):
        ref = [mpmath.lambertw(-mpmath.exp(-1 - mpmath.mpf(float(k))), branch).real for k in kappa]
        ref_w = np.array([float(v) for v in ref])
        ref_t = np.array([float(1 + v) for v in ref])
    assert _ulp(w, ref_w, np.float64).max() <= ULP_BUDGET
    assert _ulp(t, ref_t, np.float64).max() <= ULP_BUDGET
