"""The FLOP planner on a batch large enough to be solved chunk by chunk
(solver.in_chunks): the same plan as in one pass, and gradients through it."""

import jax
import jax.numpy as jnp
import numpy as np

import sdsl_jax as sd
from sdsl_jax.planning import flop, solver

N = 8192  # two chunks of 4096 (solver.chunk_size)


def _configs(dtype):
    rng = np.random.default_rng(3)
    return [jnp.asarray(10 ** rng.uniform(lo, hi, N), dtype) for lo, hi in ((8, 13), (9, 14), (9, 14))]


def test_chunked_plan_equals_the_plan_in_one_pass(x64):
    assert solver.chunk_size(N) == 4096
    m, d, dp = _configs(jnp.float64)
    chunked = sd.optimal_draft_size(m, d, dp)
    laws = [jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), law)
            for law in (sd.BESIROGLU_2024, sd.SDSL_2026)]
    settings = solver.checked_settings("bracket", (1e-8, 1.0), flop.FLOP_OBJECTIVE)._replace(
        chunked=False)
    one_pass = flop._plan(settings, m, d, dp, *laws)
    # Two programs: equal to the solver's precision, the decisions exactly
    # (as tests/planning/test_sharded.py compares sharded and single plans).
    for name in chunked.keys():
        a, b = np.asarray(chunked[name]), np.asarray(one_pass[name])
        if a.dtype == bool or name == "integer_lookahead":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=name)
    assert chunked.pays.any()


def test_gradients_flow_through_the_chunked_plan(x64):
    m, d, dp = _configs(jnp.float64)
    total = lambda m, d: jnp.sum(sd.optimal_draft_size(m, d, dp).draft_params)
    grad_m, grad_d = jax.jit(jax.grad(total, argnums=(0, 1)))(m, d)
    # Against the same gradient over the first chunk's configurations alone,
    # planned in one pass (4096 < 2 x 4096).
    rows = np.arange(N).reshape(4096, 2)[:, 0]  # the first chunk: every second configuration
    sub_m, sub_d = jax.grad(lambda m, d: jnp.sum(
        sd.optimal_draft_size(m, d, dp[rows]).draft_params), argnums=(0, 1))(m[rows], d[rows])
    assert np.all(np.isfinite(grad_m)) and np.all(np.isfinite(grad_d))
    np.testing.assert_allclose(grad_m[rows], sub_m, rtol=1e-9)
    np.testing.assert_allclose(grad_d[rows], sub_d, rtol=1e-9)
