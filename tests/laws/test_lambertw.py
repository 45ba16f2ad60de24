"""Lambert W: ulp accuracy against mpmath, special values, derivatives.

References are mpmath at 50 digits, evaluated at the exact float input; the
ulp of a reference is numpy.spacing of the reference rounded to the dtype.
Subnormal inputs and results are excluded (XLA on CPU flushes them to zero).
float64 cases run inside ``jax.enable_x64`` so nothing leaks to other tests.
"""

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.special

from sdsl_jax.laws.lambertw import lambertw, lambertw_negexp, lambertw_negexp_parts

mpmath.mp.dps = 50

ULP_BUDGET = 4.0
DTYPES = [np.float32, np.float64]
BRANCHES = [0, -1]
# Op-by-op (eager) evaluation compiles every op again per dtype: the slow tier runs it.
MODES = [pytest.param("eager", marks=pytest.mark.slow), "jit"]

# Max ulp errors seen, printed at the end of the module (pytest -s) for the report.
RECORD = {}


@pytest.fixture(scope="module", autouse=True)
def _print_record():
    yield
    if RECORD:
        print("\nmax ulp error (ours | scipy.special.lambertw):")
        for key in sorted(RECORD, key=str):
            print("  ", key, RECORD[key])


@pytest.fixture(params=DTYPES, ids=lambda d: d.__name__)
def dt(request):
    """float32 by default, float64 inside jax.enable_x64 (scoped to the test)."""
    if request.param is np.float64:
        with jax.enable_x64(True):
            yield np.float64
    else:
        yield np.float32


# ----------------------------------------------------------------------------
# Sample points and cached references


def _inv_e(dt):
    return dt(float(1 / mpmath.e))  # nearest float; just above the true 1/e


@functools.lru_cache(maxsize=None)
def _points(dt, branch, region):
    rng = np.random.default_rng(abs(hash((dt.__name__, branch, region))) % 2**32)
    hi = _inv_e(dt)
    tiny = np.finfo(dt).tiny
    big = np.finfo(dt).max
    if region == "near_branch_point":
        steps = -hi + np.arange(1, 1001) * np.spacing(hi)
        n_dec = 15 if dt is np.float64 else 7
        decades = -hi + 10.0 ** -np.arange(1, n_dec + 1)
        x = np.concatenate([steps.astype(dt), decades.astype(dt)])
    elif region == "moderate":
        if branch == 0:
            x = np.concatenate([rng.uniform(-0.3678, 10.0, 300),
                                10 ** rng.uniform(1, 3, 100)])
        else:
            x = rng.uniform(-0.3678, -1e-3, 400)
    elif region == "tiny":
        mag = 10 ** rng.uniform(np.log10(tiny), -5, 300)
        x = np.concatenate([mag, -mag]) if branch == 0 else -mag
    elif region == "huge":
        x = np.concatenate([10 ** rng.uniform(1, np.log10(big), 300), [big]])
    else:
        raise ValueError(region)
    x = np.asarray(x, dtype=dt)
    return x[(x > -hi) & (np.abs(x) >= tiny)]


@functools.lru_cache(maxsize=None)
def _ref_x(dt, branch, region):
    x = _points(dt, branch, region)
    return np.array([float(mpmath.lambertw(mpmath.mpf(float(v)), branch).real) for v in x])


@functools.lru_cache(maxsize=None)
def _u_points(dt):
    rng = np.random.default_rng(3 if dt is np.float64 else 4)
    one = dt(1)
    below = -one - np.arange(1, 201) * np.spacing(one)  # u = -1 - tiny
    u = np.concatenate([
        below.astype(dt),
        -1 - 10 ** rng.uniform(-15 if dt is np.float64 else -7, 0, 300),
        -1 - 10 ** rng.uniform(0, 30, 300),
        [-1e3, -1e6, -1e30],
    ])
    return np.asarray(u, dtype=dt)


@functools.lru_cache(maxsize=None)
def _ref_negexp(dt, branch):
    ws = [mpmath.lambertw(-mpmath.exp(mpmath.mpf(float(u))), branch).real for u in _u_points(dt)]
    return np.array([float(w) for w in ws]), np.array([float(1 + w) for w in ws])


def _ulp_errors(y, ref, dt):
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        err = np.abs(y - ref) / np.spacing(np.abs(ref).astype(dt)).astype(np.float64)
    err[y == ref] = 0.0  # includes infinities
    # A result that would be subnormal is flushed to zero by XLA on CPU.
    subnormal = np.abs(ref) < np.finfo(dt).tiny
    return np.where(subnormal, 0.0, err)


# Every evaluation is padded to one length, so the eager (op-by-op) runs of all
# branches and both entry points share XLA's per-op compilation cache.
PAD = 4096


def _call(fn, mode, x, branch, fill=0.5):
    x = np.asarray(x)
    n = x.size
    assert n <= PAD
    padded = np.full(PAD, fill, dtype=x.dtype)
    padded[:n] = x.ravel()
    if mode == "jit":
        out = _jitted(fn, branch)(jnp.asarray(padded))
    else:
        out = fn(jnp.asarray(padded), branch)
    if isinstance(out, tuple):
        return tuple(np.asarray(o)[:n].reshape(x.shape) for o in out)
    return np.asarray(out)[:n].reshape(x.shape)


@functools.lru_cache(maxsize=None)
def _jitted(fn, branch):
    return jax.jit(lambda x: fn(x, branch))


# ----------------------------------------------------------------------------
# Accuracy


REGIONS = [(0, "near_branch_point"), (0, "moderate"), (0, "tiny"), (0, "huge"),
           (-1, "near_branch_point"), (-1, "moderate"), (-1, "tiny")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("branch,region", REGIONS)
def test_ulp_accuracy(dt, branch, region, mode):
    x = _points(dt, branch, region)
    ref = _ref_x(dt, branch, region)
    y = _call(lambertw, mode, x, branch, fill=-0.25)
    assert y.dtype == dt
    err = _ulp_errors(y, ref, dt)
    worst = float(err.max())
    RECORD[(dt.__name__, f"W{branch}", region, mode)] = round(worst, 2)
    assert worst <= ULP_BUDGET, f"{worst} ulp at x={x[err.argmax()]!r}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("branch", BRANCHES)
def test_negexp_ulp_accuracy(dt, branch, mode):
    u = _u_points(dt)
    ref_w, ref_t = _ref_negexp(dt, branch)
    w = _call(lambertw_negexp, mode, u, branch, fill=-2.0)
    err = _ulp_errors(w, ref_w, dt)
    RECORD[(dt.__name__, f"W{branch}(-exp(u))", "u in [-1e30, -1]", mode)] = round(float(err.max()), 2)
    assert err.max() <= ULP_BUDGET, f"{err.max()} ulp at u={u[err.argmax()]!r}"

    # 1 + w must keep full relative precision, also as kappa -> 0.
    kappa = -1 - u  # exact
    w2, t = _call(lambertw_negexp_parts, mode, kappa, branch, fill=1.0)
    np.testing.assert_array_equal(w2, w)
    err_t = _ulp_errors(t, ref_t, dt)
    RECORD[(dt.__name__, f"1+W{branch}(-exp(-1-kappa))", "parts", mode)] = round(float(err_t.max()), 2)
    assert err_t.max() <= ULP_BUDGET, f"{err_t.max()} ulp at kappa={kappa[err_t.argmax()]!r}"


@pytest.mark.parametrize("branch", BRANCHES)
def test_scipy_loses_digits_near_branch_point(x64, branch):
    """scipy.special.lambertw is far off near -1/e; ours stays within budget."""
    x = _points(np.float64, branch, "near_branch_point")
    ref = _ref_x(np.float64, branch, "near_branch_point")
    # Padded like test_ulp_accuracy's eager runs, so the per-op compilations are shared.
    ours = _ulp_errors(_call(lambertw, "eager", x, branch, fill=-0.25), ref, np.float64).max()
    theirs = _ulp_errors(scipy.special.lambertw(x, branch).real, ref, np.float64).max()
    RECORD[("float64", f"W{branch}", "near_branch_point", "scipy")] = float(f"{theirs:.3g}")
    print(f"\nW{branch} near -1/e: ours {ours:.2f} ulp, scipy {theirs:.3g} ulp")
    assert theirs > 1000
    assert ours <= ULP_BUDGET


# ----------------------------------------------------------------------------
# Special values and domain


@pytest.mark.parametrize("mode", MODES)
def test_special_values(dt, mode):
    hi = _inv_e(dt)
    below = np.nextafter(-hi, dt(-1))
    omega = dt(0.56714329040978387299996866221035554975381578718651)
    nan, inf = np.nan, np.inf
    cases = {
        0: [(0.0, 0.0), (-0.0, -0.0), (-hi, -1.0), (inf, inf), (1.0, omega),
            (below, nan), (-1.0, nan), (-inf, nan), (nan, nan)],
        -1: [(-hi, -1.0), (0.0, -inf), (-0.0, -inf), (below, nan), (-1.0, nan),
             (1e-30, nan), (1.0, nan), (inf, nan), (-inf, nan), (nan, nan)],
    }
    for branch, pairs in cases.items():
        x = np.array([p[0] for p in pairs], dtype=dt)
        want = np.array([p[1] for p in pairs], dtype=dt)
        got = _call(lambertw, mode, x, branch, fill=-0.25)
        assert got.dtype == dt
        np.testing.assert_array_equal(got, want, err_msg=f"branch {branch}")
        num = ~np.isnan(want)
        np.testing.assert_array_equal(np.signbit(got[num]), np.signbit(want[num]), err_msg=f"branch {branch}")


@pytest.mark.parametrize("mode", MODES)
def test_subnormal_arguments(dt, mode):
    """Where XLA flushes subnormals (CPU) they are zero; elsewhere (GPU) W_0 keeps them exactly.

    W_0(s) = s to far below an ulp for subnormal s; on branch -1 a subnormal
    argument behaves as zero everywhere, -inf.
    """
    sub = np.finfo(dt).tiny * np.array([0.25, -0.25], dtype=dt)
    w0 = _call(lambertw, mode, sub, 0, fill=-0.25)
    assert np.all((w0 == sub) | (w0 == 0)), w0
    assert np.array_equal(np.signbit(w0), np.signbit(sub))
    assert _call(lambertw, mode, sub[1:], -1, fill=-0.25)[0] == -np.inf


@pytest.mark.parametrize("mode", MODES)
def test_negexp_special_values(dt, mode):
    one = dt(1)
    below = -one - np.spacing(one)
    above = np.nextafter(-one, dt(0))
    u = np.array([-1.0, -np.inf, below, above, 0.0, 1.0, np.inf, np.nan, -1e30], dtype=dt)
    w0 = _call(lambertw_negexp, mode, u, 0, fill=-2.0)
    wm = _call(lambertw_negexp, mode, u, -1, fill=-2.0)
    assert w0[0] == -1.0 and wm[0] == -1.0
    assert w0[1] == 0.0 and wm[1] == -np.inf
    assert w0[2] > -1.0 > wm[2]
    assert np.all(np.isnan(w0[3:8])) and np.all(np.isnan(wm[3:8]))
    # exp(u) underflows here, yet W_-1 ~ u - log(-u) is still correctly rounded.
    assert w0[8] == 0.0 and wm[8] == dt(-1e30)
    for b in BRANCHES:
        w, t = _call(lambertw_negexp_parts, mode, np.array([0.0, -1.0, np.inf], dt), b, fill=1.0)
        assert w[0] == -1.0 and t[0] == 0.0
        assert np.isnan(w[1]) and np.isnan(t[1])
        assert w[2] == (0.0 if b == 0 else -np.inf)


def test_no_nan_created_for_valid_inputs(x64):
    """Unused branches get safe inputs: valid batches never create a NaN."""
    hi = _inv_e(np.float64)

    def padded(values, fill):  # the shared eager shape: reuses compiled ops
        out = np.full(PAD, fill)
        out[: len(values)] = values
        return jnp.asarray(out)

    x0 = padded([-hi, -hi + 1e-16, -0.3, -1e-300, -0.0, 0.0, 1e-300, 0.5, 1e3, 1e308, np.inf], -0.25)
    xm = padded([-hi, -hi + 1e-16, -0.3, -0.1, -1e-300, -0.0, 0.0], -0.25)
    kappa = padded([0.0, 1e-15, 0.5, 3.0, 800.0, 1e12, np.inf], 1.0)
    g0 = padded([-0.3, -1e-300, 0.0, 0.5, 1e3], -0.25)
    gm = padded([-0.3, -0.1, -1e-300], -0.25)
    with jax.debug_nans(True):  # eager: every primitive's output is checked
        lambertw(x0, 0)
        lambertw(xm, -1)
        for b in BRANCHES:
            lambertw_negexp_parts(kappa, b)
        jax.grad(lambda v: lambertw(v, 0).sum())(g0)
        jax.grad(lambda v: lambertw(v, -1).sum())(gm)


def test_invalid_branch():
    for bad in (1, -2, 0.0, "0", None, True):
        with pytest.raises(ValueError, match="branch"):
            lambertw(0.5, bad)
        with pytest.raises(ValueError, match="branch"):
            lambertw_negexp(-2.0, bad)
        with pytest.raises(ValueError, match="branch"):
            lambertw_negexp_parts(1.0, bad)


def test_dtypes_and_array_likes():
    def out_dtype(fn, x, *args):
        return jax.eval_shape(lambda: fn(x, *args)).dtype

    assert out_dtype(lambertw, np.ones(3, np.float32)) == jnp.float32
    assert out_dtype(lambertw, 1) == jnp.float32  # ints promote to the default float
    assert out_dtype(lambertw, [0, 1]) == jnp.float32
    assert jax.eval_shape(lambda: lambertw([[0, 1]])).shape == (1, 2)
    assert out_dtype(lambertw, jnp.ones(2, jnp.float16)) == jnp.float16
    assert out_dtype(lambertw_negexp, -2) == jnp.float32
    with jax.enable_x64(True):
        assert out_dtype(lambertw, np.ones(3, np.float32)) == jnp.float32
        assert out_dtype(lambertw, np.ones(3, np.float64)) == jnp.float64
        assert out_dtype(lambertw, 1) == jnp.float64
        assert out_dtype(lambertw_negexp, -2) == jnp.float64
        assert jax.eval_shape(lambda: lambertw_negexp_parts(np.float32(1), -1))[1].dtype == jnp.float32
    # Python scalars and lists evaluate (eagerly) too.
    np.testing.assert_allclose(jax.jit(lambertw)(1.0), 0.5671433, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambertw)(jnp.asarray([0, 1])), [0.0, 0.5671433], rtol=1e-6)


# ----------------------------------------------------------------------------
# Transformations


def _mp_derivs(x, branch):
    """W, W', W'' at x from closed forms (no finite differences)."""
    w = mpmath.lambertw(mpmath.mpf(float(x)), branch).real
    d1 = mpmath.exp(-w) / (1 + w)  # = W / (x (1 + W)), also valid at x = 0
    d2 = -d1 * d1 * (2 + w) / (1 + w)
    return float(w), float(d1), float(d2)


# Extremes chosen so that W'' is representable in the dtype.
GRAD_POINTS = {0: [-0.3, -0.1, 0.0, 1e-20, 0.5, 3.0, 1e3, 1e15],
               -1: [-0.35, -0.2, -1e-3, -1e-15]}
GRAD_POINTS_F64 = {0: [1e-200, 1e200], -1: [-1e-100]}


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.slow
def test_grad_and_second_derivative(dt, branch):
    rtol = 1e-13 if dt is np.float64 else 3e-6
    f = lambda x: lambertw(x, branch)  # noqa: E731
    d1 = jax.jit(jax.grad(f))
    d2 = jax.jit(jax.grad(jax.grad(f)))
    extra = GRAD_POINTS_F64[branch] if dt is np.float64 else []
    for x in GRAD_POINTS[branch] + extra:
        _, ref1, ref2 = _mp_derivs(dt(x), branch)
        xa = jnp.asarray(x, dt)
        np.testing.assert_allclose(d1(xa), ref1, rtol=rtol, err_msg=f"W' at {x}")
        np.testing.assert_allclose(d2(xa), ref2, rtol=rtol, err_msg=f"W'' at {x}")
    # Near the branch point the derivative is huge but still exact to rounding.
    x = -_inv_e(dt) + 64 * np.spacing(_inv_e(dt))
    _, ref1, _ = _mp_derivs(x, branch)
    np.testing.assert_allclose(d1(jnp.asarray(x)), ref1, rtol=1e-5 if dt is np.float32 else 1e-12)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.slow
def test_negexp_derivatives(dt, branch):
    rtol = 1e-13 if dt is np.float64 else 3e-6
    f = lambda u: lambertw_negexp(u, branch)  # noqa: E731
    d1 = jax.jit(jax.grad(f))
    d2 = jax.jit(jax.grad(jax.grad(f)))
    for u in (-1.001, -1.5, -3.0, -40.0):
        w = mpmath.lambertw(-mpmath.exp(mpmath.mpf(float(dt(u)))), branch).real
        ua = jnp.asarray(u, dt)
        np.testing.assert_allclose(d1(ua), float(w / (1 + w)), rtol=rtol)
        np.testing.assert_allclose(d2(ua), float(w / (1 + w) ** 3), rtol=rtol)
    # parts: both outputs share the tangent -w / (1 + w).
    kappa = jnp.asarray(0.25, dt)
    parts = lambda k: lambertw_negexp_parts(k, branch)  # noqa: E731
    (w, t), (dw, dt_) = jax.jit(lambda k: jax.jvp(parts, (k,), (jnp.ones_like(k),)))(kappa)
    np.testing.assert_allclose(dw, -w / t, rtol=rtol)
    np.testing.assert_allclose(dt_, -w / t, rtol=rtol)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.slow
def test_vmap_jit_consistency(x64, branch):
    x = jnp.asarray(_points(np.float64, branch, "moderate")[:64].reshape(8, 8))
    # The direct run is test_ulp_accuracy's jitted one (padded: one compilation shared).
    direct = _call(lambertw, "jit", np.asarray(x), branch, fill=-0.25)
    nested = jax.jit(jax.vmap(jax.vmap(lambda v: lambertw(v, branch))))(x)
    np.testing.assert_array_equal(nested, direct)
    grads = jax.jit(jax.vmap(jax.grad(lambda v: lambertw(v, branch))))(x.ravel())
    w = np.asarray(direct).ravel()
    np.testing.assert_allclose(grads, w / (np.asarray(x).ravel() * (1 + w)), rtol=1e-12)
    # Gradients stay finite on a batch mixing special and ordinary inputs.
    mixed = jnp.asarray([0.0, -0.2, 2.0, 1e300] if branch == 0 else [-0.3, -0.2, -1e-100])
    gs = jax.jit(jax.vmap(jax.grad(jax.grad(lambda v: lambertw(v, branch)))))(mixed)
    assert np.all(np.isfinite(np.asarray(gs)))
    kappas = jnp.asarray([0.0, 1e-15, 0.5, 1e12])
    w, t = jax.jit(jax.vmap(lambda k: lambertw_negexp_parts(k, branch)))(kappas)
    w2, t2 = jax.jit(lambda k: lambertw_negexp_parts(k, branch))(kappas)
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_array_equal(t, t2)
