"""The throughput law against mpmath, scipy and brute force."""

import itertools

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import sdsl_jax as sd
from sdsl_jax.laws import throughput

mp.mp.dps = 40  # references must be far more precise than float64

ALPHAS = [0.05, 0.3, 0.6, 0.8, 0.95, 0.99, 1 - 1e-6, 1 - 1e-12]
COST_RATIOS = [1e-9, 1e-6, 1e-3, 1e-2, 0.1, 0.5, 0.9]


def mp_speedup(a, g, c):
    a, g, c = mp.mpf(a), mp.mpf(g), mp.mpf(c)
    return (1 - a ** (g + 1)) / ((1 - a) * (g * c + 1))


def mp_optimal_lookahead(a, c):
    """Root of dS/dgamma by bisection in 40 digits: no Lambert W involved.

    dS/dgamma has the sign of h(g) = -a^(g+1) log(a) (g c + 1) - c (1 - a^(g+1)),
    which is strictly decreasing in g.
    """
    with mp.workdps(40):
        a, c = mp.mpf(a), mp.mpf(c)
        L = mp.log(a)
        h = lambda g: -a ** (g + 1) * L * (g * c + 1) - c * (1 - a ** (g + 1))
        if h(0) <= 0:
            return mp.mpf(0)
        hi = mp.mpf(1)
        while h(hi) > 0:
            hi *= 2
        lo = mp.mpf(0)
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if h(mid) > 0 else (lo, mid)
        return (lo + hi) / 2


@pytest.mark.parametrize("alpha,c", list(itertools.product(ALPHAS, COST_RATIOS)))
@pytest.mark.slow
def test_optimal_lookahead_matches_mpmath_root(x64, alpha, c):
    ref = float(mp_optimal_lookahead(alpha, c))
    got = float(sd.optimal_lookahead(alpha, c))
    assert got == pytest.approx(ref, rel=1e-10, abs=1e-9)
    # The peak speedup's closed form agrees with the geometric sum at gamma*.
    ref_peak = float(mp_speedup(alpha, mp_optimal_lookahead(alpha, c), c))
    assert float(sd.optimal_speedup(alpha, c)) == pytest.approx(ref_peak, rel=1e-12)


@pytest.mark.parametrize("alpha,c", [(a, c) for a, c in itertools.product(ALPHAS[:6], COST_RATIOS)])
@pytest.mark.slow
def test_optimal_lookahead_beats_brute_force_maximisation(x64, alpha, c, speedup_reference):
    """scipy's bounded maximisation of S never finds a better lookahead, and the peak is the
    brute-force S* reference's (brentq on dS/dgamma)."""
    result = minimize_scalar(lambda g: -float(mp_speedup(alpha, g, c)), bounds=(0.0, 1e4),
                             method="bounded", options={"xatol": 1e-10})
    best = max(-result.fun, 1.0)  # gamma = 0 (no speculation) is always available
    ours = float(sd.speedup(alpha, sd.optimal_lookahead(alpha, c), c))
    assert ours >= best * (1 - 1e-12)
    assert ours == pytest.approx(best, rel=1e-9)
    assert float(sd.optimal_speedup(alpha, c)) == pytest.approx(speedup_reference.speedup(alpha, c),
                                                                rel=1e-12)


def test_optimal_lookahead_float32_close_to_float64(dtype):
    a = np.array([0.3, 0.6, 0.8, 0.95, 0.99], dtype)
    c = np.array([1e-3, 0.01, 0.05, 0.1, 0.2], dtype)
    got = np.asarray(sd.optimal_lookahead(a, c))
    assert got.dtype == dtype
    ref = np.array([float(mp_optimal_lookahead(float(x), float(y))) for x, y in zip(a, c)])
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, ref, rtol=tol)


@pytest.mark.parametrize("alpha,c", [(0.6, 0.01), (0.8, 0.05), (0.9, 0.002), (0.3, 0.2),
                                     (0.5, 0.69), (0.99, 1e-6)])
def test_integer_lookahead_is_brute_force_argmax(x64, alpha, c):
    gammas = np.arange(0, 5000, dtype=np.float64)
    values = np.asarray(sd.speedup(alpha, gammas, c))
    assert float(sd.optimal_integer_lookahead(alpha, c)) == gammas[np.argmax(values)]


def test_expected_tokens_matches_geometric_sum(x64):
    for alpha in [0.0, 1e-8, 0.3, 0.5, 0.5000001, 0.9, 0.999999, 1 - 1e-12, 1.0]:
        for gamma in [0, 1, 2, 5, 40]:
            ref = sum(mp.mpf(alpha) ** k for k in range(gamma + 1))
            assert float(sd.expected_tokens(alpha, gamma)) == pytest.approx(float(ref), rel=1e-13)


def test_expected_tokens_real_lookahead_matches_mpmath(x64):
    for alpha, gamma in [(0.2, 2.5), (0.7, 0.3), (0.9999, 7.25), (1 - 1e-10, 3.5), (0.5, 1e-3)]:
        a = mp.mpf(alpha)
        ref = (1 - a ** (mp.mpf(gamma) + 1)) / (1 - a)
        assert float(sd.expected_tokens(alpha, gamma)) == pytest.approx(float(ref), rel=1e-12)


def test_expected_tokens_within_two_ulp_of_mpmath(x64):
    # Every regime of the vectorised evaluation: alpha below and above 1/2 and
    # within 1e-16 of 1, lookaheads from 0 to 1e9 (the exprel series within
    # log 2 of 0 and exp(s) - 1 beyond), and the switch at alpha = 1/2.
    rng = np.random.default_rng(4)
    alphas = np.concatenate([rng.uniform(0, 1, 300), 1 - 10 ** rng.uniform(-16, -1, 150),
                             0.5 + rng.uniform(-1e-3, 1e-3, 50), [0.5, np.nextafter(0.5, 1), 1.0]])
    gammas = np.concatenate([rng.uniform(0, 20, 200), 10 ** rng.uniform(-3, 9, 200),
                             np.floor(rng.uniform(0, 10, alphas.size - 400))])
    got = np.asarray(jax.jit(sd.expected_tokens)(alphas, gammas))
    for a, g, value in zip(alphas, gammas, got):
        a_mp, n = mp.mpf(a), mp.mpf(g) + 1
        ref = n if a == 1 else (1 - a_mp ** n) / (1 - a_mp)
        assert abs(mp.mpf(value) / ref - 1) <= 2 * 2.0 ** -52, (a, g)


def test_expected_tokens_derivative_at_the_ends(x64):
    d_alpha = jax.grad(sd.expected_tokens, argnums=0)
    # E = 1 + a + ... + a^g: dE/da is g(g+1)/2 at a = 1 and 1 at a = 0.
    for gamma in [1.0, 3.0, 7.0]:
        assert float(d_alpha(1.0, gamma)) == pytest.approx(gamma * (gamma + 1) / 2, rel=1e-10)
        assert float(d_alpha(0.0, gamma)) == pytest.approx(1.0, rel=1e-12)


def test_speedup_and_tokens_per_flop_formulas(x64):
    alpha, gamma, n, m = 0.7, 4.0, 1e8, 7e10
    e = (1 - alpha ** 5) / (1 - alpha)
    assert float(sd.speedup(alpha, gamma, n / m)) == pytest.approx(e / (gamma * n / m + 1), rel=1e-14)
    assert float(sd.tokens_per_flop(alpha, gamma, n, m)) == pytest.approx(e / (2 * (gamma * n + m)), rel=1e-14)


def test_speculation_pays_boundary(x64):
    # Drafting pays iff c < -a log(a) / (1 - a).
    for alpha in [0.1, 0.5, 0.9]:
        bound = -alpha * np.log(alpha) / (1 - alpha)
        assert bool(sd.speculation_pays(alpha, bound * (1 - 1e-9)))
        assert not bool(sd.speculation_pays(alpha, bound * (1 + 1e-9)))
        assert float(sd.optimal_lookahead(alpha, bound * (1 + 1e-9))) == 0.0
    assert not bool(sd.speculation_pays(0.0, 1e-9))
    assert not bool(sd.speculation_pays(0.99, 1.0))


def _grid(dtype):
    alphas = np.concatenate([[0.0, 1e-30, 1e-12, 1e-6], np.linspace(0.01, 0.99, 25),
                             [1 - 1e-6, 1 - 1e-9, 1 - 1e-12, 1.0]]).astype(dtype)
    costs = np.logspace(-9, 0, 37).astype(dtype)
    a, c = np.meshgrid(alphas, costs)
    return jnp.asarray(a.ravel()), jnp.asarray(c.ravel())


FUNCS = {
    "optimal_lookahead": sd.optimal_lookahead,
    "optimal_speedup": sd.optimal_speedup,
    "speedup_at_optimum": lambda a, c: sd.speedup(a, sd.optimal_lookahead(a, c), c),
    "integer": lambda a, c: sd.speedup(a, sd.optimal_integer_lookahead(a, c), c),
    "expected_tokens": lambda a, c: sd.expected_tokens(a, 1.0 / c),
    "tokens_per_flop": lambda a, c: sd.tokens_per_flop(a, 3.0, c * 7e10, 7e10) * 7e10,
}


@jax.jit
def _values_and_gradients(a, c):
    """Every function of FUNCS and its gradient in (a, c) per point: one
    compilation per dtype instead of two per function."""
    return {name: (f(a, c), jax.vmap(jax.grad(f, argnums=(0, 1)))(a, c)) for name, f in FUNCS.items()}


@pytest.mark.slow
def test_no_nan_or_inf_in_domain_values_and_gradients(dtype):
    a, c = _grid(dtype)
    for fn, (values, grads) in _values_and_gradients(a, c).items():
        assert values.dtype == dtype, fn
        assert bool(jnp.all(jnp.isfinite(values))), fn
        for g in grads:
            assert g.dtype == dtype, fn
            assert bool(jnp.all(jnp.isfinite(g))), fn


def test_optimal_lookahead_gradients_match_mpmath(x64):
    def central(f, x):  # 40-digit central difference: truncation error ~ h^2
        h = mp.mpf(x) * mp.mpf("1e-12")
        return (f(mp.mpf(x) + h) - f(mp.mpf(x) - h)) / (2 * h)

    for alpha, c in [(0.6, 0.01), (0.8, 0.05), (0.95, 1e-4), (0.3, 0.1)]:
        g_alpha, g_c = jax.grad(sd.optimal_lookahead, argnums=(0, 1))(alpha, c)
        ref_alpha = central(lambda x: mp_optimal_lookahead(x, c), alpha)
        ref_c = central(lambda y: mp_optimal_lookahead(alpha, y), c)
        assert float(g_alpha) == pytest.approx(float(ref_alpha), rel=1e-9)
        assert float(g_c) == pytest.approx(float(ref_c), rel=1e-9)


def test_optimal_speedup_gradient_is_envelope(x64):
    # dS*/dc = dS/dc at fixed gamma* (the envelope theorem): an independent path.
    alpha, c = 0.7, 0.02
    gamma = float(sd.optimal_lookahead(alpha, c))
    envelope = jax.grad(sd.speedup, argnums=2)(alpha, gamma, c)
    assert float(jax.grad(sd.optimal_speedup, argnums=1)(alpha, c)) == pytest.approx(float(envelope), rel=1e-9)


@pytest.mark.slow
def test_jit_and_vmap_agree_with_eager(x64):
    # The float32-vs-float64 test's points: the eager run reuses its per-op compilations.
    a = jnp.asarray([0.3, 0.6, 0.8, 0.95, 0.99])
    c = jnp.asarray([1e-3, 0.01, 0.05, 0.1, 0.2])
    eager = sd.optimal_lookahead(a, c)
    np.testing.assert_allclose(jax.jit(sd.optimal_lookahead)(a, c), eager, rtol=1e-14)
    np.testing.assert_allclose(jax.vmap(sd.optimal_lookahead)(a, c), eager, rtol=1e-14)


def test_broadcasting():
    # Under jit: one compilation (eagerly, each operation compiles once per new shape).
    a, c = jnp.linspace(0.2, 0.9, 4), jnp.logspace(-3, -1, 3)
    out = jax.jit(sd.optimal_lookahead)(a[:, None], c[None, :])
    assert out.shape == (4, 3)
    np.testing.assert_array_equal(out[2], jax.jit(sd.optimal_lookahead)(jnp.full(3, a[2]), c))


@pytest.mark.parametrize("call,name", [
    (lambda: sd.optimal_lookahead(1.5, 0.1), "acceptance"),
    (lambda: sd.optimal_lookahead(-0.1, 0.1), "acceptance"),
    (lambda: sd.optimal_lookahead(0.5, 0.0), "cost_ratio"),
    (lambda: sd.speedup(0.5, -1.0, 0.1), "lookahead"),
    (lambda: sd.expected_tokens(float("nan"), 2.0), "acceptance"),
    (lambda: sd.tokens_per_flop(0.5, 2.0, -1.0, 7e10), "draft_params"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_positive_log_matches_mpmath_in_float64(x64):
    # Over the whole positive normal range, near 1 on both sides, and at the
    # ends of the reduction interval [sqrt(1/2), sqrt(2)).
    rng = np.random.default_rng(0)
    xs = np.concatenate([10 ** rng.uniform(-300, 300, 300), rng.uniform(0.5, 2.0, 300),
                         1 - 10 ** rng.uniform(-16, -1, 100), 1 + 10 ** rng.uniform(-15, -1, 100),
                         [1.0, 2.0, 0.5, np.sqrt(0.5), np.sqrt(2.0), np.nextafter(1.0, 0.0),
                          np.nextafter(1.0, 2.0), 2.3e-308, 1.7e308]])
    got = np.asarray(jax.jit(throughput.positive_log)(jnp.asarray(xs)))
    for x, y in zip(xs, got):
        ref = mp.log(mp.mpf(x))
        assert abs(mp.mpf(y) - ref) <= 2.3e-16 * max(abs(ref), mp.mpf(2) ** -1074), x
    # Its derivative is 1 / x.
    grad = jax.vmap(jax.grad(throughput.positive_log))(jnp.asarray(xs[:50]))
    np.testing.assert_allclose(grad, 1 / xs[:50], rtol=1e-15)


def test_log1p_nonnegative_matches_mpmath_in_float64(x64):
    rng = np.random.default_rng(5)
    xs = np.concatenate([[0.0, 2.3e-308, 1e-300, 1e-17, 1.0, 1e300],
                         10 ** rng.uniform(-300, 300, 300), rng.uniform(0, 2, 300),
                         10 ** rng.uniform(-17, -1, 200)])
    got = np.asarray(jax.jit(throughput.log1p_nonnegative)(jnp.asarray(xs)))
    for x, y in zip(xs, got):
        ref = mp.log1p(mp.mpf(x))
        assert abs(mp.mpf(y) - ref) <= 1.5 * 2.0 ** -52 * abs(ref), x
    grad = jax.vmap(jax.grad(throughput.log1p_nonnegative))(jnp.asarray(xs[:50]))
    np.testing.assert_allclose(grad, 1 / (1 + xs[:50]), rtol=1e-15)


def test_vector_log_is_log_for_every_input(x64):
    specials = jnp.asarray([0.0, np.inf, -1.0, -np.inf, np.nan])
    got = np.asarray(jax.jit(throughput.vector_log)(specials))
    np.testing.assert_array_equal(got[:2], [-np.inf, np.inf])
    assert np.isnan(got[2:]).all()
    # Subnormals: the CPU flushes them to zero (log -inf); where they are kept
    # (a GPU) the log is exact to the dtype's rounding.
    subnormals = np.array([5e-324, 1e-310, 2.2e-308])
    for x, y in zip(subnormals, np.asarray(jax.jit(throughput.vector_log)(subnormals))):
        ref = mp.log(mp.mpf(x))
        assert y == -np.inf or abs(mp.mpf(y) - ref) <= 2.3e-16 * abs(ref), x
    normals = 10 ** np.random.default_rng(6).uniform(-300, 300, 200)
    np.testing.assert_array_equal(throughput.vector_log(normals), throughput.positive_log(normals))
    grad = jax.vmap(jax.grad(throughput.vector_log))(jnp.asarray(normals[:20]))
    np.testing.assert_allclose(grad, 1 / normals[:20], rtol=1e-15)


def test_positive_log_keeps_the_dtype_in_float32():
    x = jnp.asarray([0.25, 0.9, 1.0, 3.0], jnp.float32)
    got = throughput.positive_log(x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np.log(np.asarray(x, np.float64)), rtol=2e-7, atol=1e-7)
