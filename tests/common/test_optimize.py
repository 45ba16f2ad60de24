"""The minimisers every fit uses: L-BFGS under a while_loop, and fixed-count Newton steps.

References: scipy.optimize on the same functions, and known minima.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from sdsl_jax.common.optimize import minimize, newton


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def logistic_nll(w, X, y):
    """A strictly convex negative log-likelihood with an interior minimum."""
    z = X @ w
    return jnp.sum(jnp.logaddexp(0.0, z) - y * z) + 0.5 * jnp.sum(w**2)


@pytest.fixture(scope="module")
def logistic_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (rng.uniform(size=200) < 1 / (1 + np.exp(-X @ np.array([1.0, -2.0, 0.5, 0.0])))).astype(float)
    return X, y


def test_lbfgs_reaches_the_minimum_and_stops_before_its_step_limit(x64):
    # The progress rule stops the loop at the rounding floor: before this rule
    # it ran to max_steps on most fits.
    start = jnp.array([-1.2, 1.0, -0.5, 0.8])
    solution = jax.jit(lambda x: minimize(rosenbrock, x, max_steps=500))(start)
    assert int(solution.steps) < 500
    np.testing.assert_allclose(np.asarray(solution.params), np.ones(4), rtol=1e-7)
    reference = scipy.optimize.minimize(scipy.optimize.rosen, np.asarray(start), jac=scipy.optimize.rosen_der,
                                        method="L-BFGS-B", options=dict(ftol=1e-15, gtol=1e-12))
    np.testing.assert_allclose(np.asarray(solution.params), reference.x, rtol=1e-6)
    assert float(solution.value) < 1e-14


@pytest.mark.slow
def test_lbfgs_in_float32_stops_at_the_rounding_floor():
    start = jnp.array([-1.2, 1.0], jnp.float32)
    solution = minimize(rosenbrock, start, max_steps=1000)
    assert solution.params.dtype == jnp.float32
    assert int(solution.steps) < 1000
    np.testing.assert_allclose(np.asarray(solution.params), np.ones(2), atol=2e-3)


@pytest.mark.slow
def test_lbfgs_vmaps_over_starts(x64):
    starts = jnp.array([[-1.2, 1.0, -0.5, 0.8], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    batched = jax.jit(jax.vmap(lambda s: minimize(rosenbrock, s, max_steps=500)))(starts)
    np.testing.assert_allclose(np.asarray(batched.params), np.ones((3, 4)), rtol=1e-7)
    # Each member stopped on its own test (their step counts differ).
    steps = np.asarray(batched.steps)
    assert np.all(steps < 500) and len(set(steps.tolist())) > 1


def test_newton_converges_quadratically_to_scipys_minimum(x64, logistic_data):
    X, y = logistic_data
    loss = lambda w: logistic_nll(w, jnp.asarray(X), jnp.asarray(y))
    p = lambda w: 1 / (1 + np.exp(-X @ w))
    reference = scipy.optimize.minimize(
        lambda w: np.sum(np.logaddexp(0, X @ w) - y * (X @ w)) + 0.5 * w @ w, np.zeros(4),
        jac=lambda w: X.T @ (p(w) - y) + w,
        hess=lambda w: X.T @ (X * (p(w) * (1 - p(w)))[:, None]) + np.eye(4),
        method="trust-exact", options=dict(gtol=1e-13))
    one_step = jax.jit(lambda w: newton(loss, w, steps=1))
    iterates, decrements = [jnp.zeros(4)], []
    for _ in range(8):
        solution = one_step(iterates[-1])
        iterates.append(solution.params)
        decrements.append(float(solution.grad_norm))  # where the step began
    np.testing.assert_allclose(np.asarray(iterates[-1]), reference.x, rtol=1e-9)
    # grad_norm is the Newton decrement sqrt(g' H^-1 g): it falls to rounding level...
    assert decrements[-1] < 1e-8
    # ...and the error converges quadratically: e_{k+1} <= C e_k^2.
    errors = [np.max(np.abs(np.asarray(x) - reference.x)) for x in iterates[1:4]]
    assert errors[1] < 10 * errors[0] ** 2 and errors[2] < max(10 * errors[1] ** 2, 1e-13), errors


@pytest.mark.slow
def test_newton_never_increases_the_loss_and_vmaps(x64):
    # Rosenbrock is not convex: the step uses |H| and keeps the best damping.
    starts = jnp.array([[-1.2, 1.0], [0.5, -0.5], [1.5, 1.5]])
    previous = jax.vmap(rosenbrock)(starts)
    batched = jax.vmap(lambda s: newton(rosenbrock, s, steps=40))(starts)
    assert np.all(np.asarray(batched.value) <= np.asarray(previous))
    np.testing.assert_allclose(np.asarray(batched.params), np.ones((3, 2)), atol=1e-6)
    single = newton(rosenbrock, starts[0], steps=40)
    np.testing.assert_allclose(np.asarray(batched.params[0]), np.asarray(single.params), rtol=1e-12)
