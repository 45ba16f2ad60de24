"""The bracket solver (solver.solve_log_draft) on objectives whose root is known exactly."""

import jax.numpy as jnp
import numpy as np

from sdsl_jax.planning import solver


def _quadratic_objective(root):
    """F(s) = -(s - root)**2, paying everywhere: a root the grid can land on exactly."""
    value_and_flags = lambda s, ctx: (-(s - ctx) ** 2, (jnp.ones(s.shape, bool), jnp.zeros(s.shape, bool)))
    return solver.Objective(value_and_flags=value_and_flags, log_speedup=lambda s, ctx: -(s - ctx) ** 2)


def test_a_root_hit_exactly_ends_the_bracket_solve(x64):
    # On [0, 3.5] the 8-point grid holds s = 2, the root, where the slope is
    # exactly 0. The secant must take that end (it is the root); bisecting
    # towards it instead leaves 7 steps 2e-3 short.
    settings = solver.checked_settings("bracket", (1e-8, 1.0), _quadratic_objective(2.0))
    root = 2.0 * jnp.ones(3)
    solved = solver.solve_log_draft(settings._replace(chunked=False), root, jnp.zeros(3),
                                    jnp.full(3, 3.5))
    np.testing.assert_allclose(solved, 2.0, rtol=0, atol=1e-15)
    # A root between grid points is found to the same precision.
    solved = solver.solve_log_draft(settings._replace(chunked=False), root - 0.1, jnp.zeros(3),
                                    jnp.full(3, 3.5))
    np.testing.assert_allclose(solved, 1.9, rtol=0, atol=1e-14)
