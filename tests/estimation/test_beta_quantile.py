"""Beta quantiles (the inverse regularised incomplete beta function) against scipy (Boost)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from sdsl_jax.estimation.beta_quantile import betainccinv, betaincinv


@pytest.fixture(scope="module")
def cases():
    """(a, b, p) over the hard places: a, b from 1 to 1e7 in every pairing
    (a >> b puts the quantile next to 1, a << b next to 0), tails from 1e-12
    to the median, and beyond it (p > 1/2 is solved through the other tail)."""
    shapes = np.array([1.0, 2.0, 3.0, 7.5, 40.0, 999.0, 2e4, 1e6, 1e7])
    probs = np.array([1e-12, 1e-6, 0.005, 0.025, 0.1, 0.45, 0.5, 0.9, 0.975])
    a, b, p = (x.ravel() for x in np.meshgrid(shapes, shapes, probs, indexing="ij"))
    return a, b, p


# float64: measured 2.3e-13 (at 1e-12 tails of a, b ~ 1e6, where scipy's own
# inverse is off by 6e-13; the round trip through scipy's betainc below is
# the sharper check). float32: a few ulp of x, 1.5e-6 at worst next to 1 with
# b = 1, where x itself holds 1 - x to only about eps / (1 - x).
TOLERANCE = {np.float64: 2e-12, np.float32: 3e-6}


def test_quantiles_match_scipy(cases, dtype):
    a, b, p = cases
    args = [jnp.asarray(x, dtype) for x in (a, b, p)]
    for fn, ref in ((betaincinv, special.betaincinv(a, b, p)),
                    (betainccinv, special.betainccinv(a, b, p))):
        x = fn(*args)
        assert x.dtype == dtype and x.shape == a.shape
        err = np.abs(np.asarray(x, np.float64) - ref)
        worst = np.argmax(err)
        assert err.max() <= TOLERANCE[dtype], (
            f"{fn.__name__} {dtype.__name__}: error {err.max():.3g} at a={a[worst]}, "
            f"b={b[worst]}, p={p[worst]}")
    if dtype == np.float64:
        # Round trip: the quantile reproduces its probability through
        # scipy's betainc to 2e-9 of the smaller tail, beyond what x's own
        # rounding moves it (density times a few ulp of x). Measured 7.7e-10
        # at a = 3, b = 1e7, p = 0.975: solved next to 1 in Beta(1e7, 3),
        # where the continued fraction sees 1 - x to eps b / a (module
        # docstring); 1e-10 elsewhere.
        x = np.asarray(betaincinv(*args))
        inside = (x > 0) & (x < 1)
        back = special.betainc(a, b, x)
        density = np.exp((a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - special.betaln(a, b))
        excess = np.maximum(np.abs(back - p) - 4 * density * x * np.finfo(float).eps, 0.0)
        err = excess / np.minimum(p, 1 - p)
        assert np.all(err[inside] < 2e-9), err[inside].max()


def test_edges_broadcasting_and_transformations():
    # Exact ends, and a small upper tail keeps its digits (no 1 - (1 - q)).
    a = jnp.array([3.0, 3.0, 1e6, 5.0, 5.0])
    b = jnp.array([4.0, 4.0, 3.0, 9.0, 9.0])
    q = jnp.array([0.0, 1.0, 1e-9, 0.2, 0.7])
    upper = betainccinv(a, b, q)
    np.testing.assert_array_equal(upper[:2], [1.0, 0.0])
    np.testing.assert_allclose(upper[2:], special.betainccinv(*(np.asarray(v, np.float64)[2:]
                                                                  for v in (a, b, q))), rtol=3e-6)
    # Under jit and vmap (of a scalar call) as well.
    lower = jax.jit(jax.vmap(betaincinv))(a, b, q)
    np.testing.assert_array_equal(lower[:2], [0.0, 1.0])
    np.testing.assert_allclose(lower[2:], special.betaincinv(*(np.asarray(v, np.float64)[2:]
                                                               for v in (a, b, q))), rtol=3e-6)


def test_derivative_in_the_probability():
    # dx/dp = 1 / density at x, against central differences of scipy's
    # quantile; a derivative in a or b is refused, not returned as zero.
    a, b, p = jnp.array([5.0, 40.0]), jnp.array([9.0, 3.0]), jnp.array([0.2, 0.97])
    grad = jax.vmap(jax.grad(betainccinv, argnums=2))(a, b, p)
    a64, b64, p64 = (np.asarray(v, np.float64) for v in (a, b, p))
    h = 1e-6
    ref = (special.betainccinv(a64, b64, p64 + h) - special.betainccinv(a64, b64, p64 - h)) / (2 * h)
    np.testing.assert_allclose(grad, ref, rtol=1e-4)
    with pytest.raises(NotImplementedError, match="stop_gradient"):
        jax.grad(betaincinv)(5.0, 9.0, 0.2)


@pytest.mark.parametrize("call, message", [
    (lambda: betaincinv(0.5, 2.0, 0.1), r"a must lie in"),
    (lambda: betaincinv(2.0, np.inf, 0.1), r"b must be finite"),
    (lambda: betaincinv(2.0, 3.0, 1.5), r"p must lie in"),
    (lambda: betainccinv(2.0, 3.0, -0.1), r"q must lie in"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
