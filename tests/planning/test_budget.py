"""The compute-budget planner against brute force, and the value of budget against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import sdsl_jax as sd
from sdsl_jax.planning import budget

PRE, ACC = sd.BESIROGLU_2024, sd.SDSL_2026
# (M, D', C): a 7B target with a modest budget; 70B with more; 405B with a lot;
# and a budget so small that the draft's Chinchilla point is the binding scale.
CONFIGS = np.array([(7e9, 15e12, 1e20), (70e9, 15e12, 1e21), (405e9, 15e12, 1e22), (70e9, 15e12, 1e18)])


def _loss(n, tokens):
    return PRE.irreducible_loss + PRE.param_coeff / n**PRE.param_exponent + PRE.data_coeff / tokens**PRE.data_exponent


@jax.jit
def _plan_and_jacobian(target_params, target_tokens, log_flops, acceptance_law):
    """The plan at C = exp(log_flops), with d(speedup, N*) / d(log C, M) by reverse mode.

    Scalar float64 inputs: every call in this file but the float32 one is this
    one compiled program (the planner and its reverse mode under jit), so the
    solver is compiled once rather than once plain and once differentiated.
    """
    def answer(log_flops, target_params):
        result = budget.optimal_draft_under_budget(target_params, target_tokens, jnp.exp(log_flops),
                                                   acceptance_law=acceptance_law)
        return jnp.stack([result.speedup, result.draft_params]), result

    jacobian, plan = jax.jacrev(answer, argnums=(0, 1), has_aux=True)(log_flops, target_params)
    return plan, jacobian


def _plans(configs):
    """The plans at (M, D', C) rows, stacked, and the Jacobians (d/dlog C, d/dM), stacked."""
    out = [_plan_and_jacobian(m, d_target, np.log(flops), ACC) for m, d_target, flops in configs]
    stack = lambda *leaves: np.stack([np.asarray(v) for v in leaves])
    return jax.tree_util.tree_map(stack, *[p for p, _ in out]), jax.tree_util.tree_map(stack, *[j for _, j in out])


@pytest.fixture(scope="module")
def plan_and_jacobian():
    with jax.enable_x64(True):
        return _plans(CONFIGS)


@pytest.fixture(scope="module")
def plan(plan_and_jacobian):
    return plan_and_jacobian[0]


@pytest.mark.slow
def test_matches_brute_force_over_draft_size(plan, speedup_reference):
    for i, (m, d_target, flops) in enumerate(CONFIGS):
        # S* at each log N with D = C / (6 N): alpha in numpy, gamma* by brentq on dS/dgamma.
        on_budget = lambda log_draft: speedup_reference.over_draft_sizes(
            m, lambda n: flops / (6 * n), d_target, log_draft, PRE, ACC)
        grid = np.log(m) + np.linspace(np.log(1e-6), np.log(0.5), 3001)
        brute = on_budget(grid)
        best = int(np.argmax(brute))
        ours = on_budget(np.log(plan["draft_params"][i]))[0]
        assert ours >= brute[best] * (1 - 1e-12), i
        assert abs(np.log(plan["draft_params"][i]) - grid[best]) <= grid[1] - grid[0], i
        np.testing.assert_allclose(plan["speedup"][i], ours, rtol=1e-9)
    assert plan["pays"].all() and not plan["at_bound"].any()


@pytest.mark.slow
def test_budget_is_spent_and_chinchilla_bounds_the_draft(plan):
    np.testing.assert_allclose(6 * plan["draft_params"] * plan["draft_tokens"], CONFIGS[:, 2], rtol=1e-12)
    for i, (m, d_target, flops) in enumerate(CONFIGS):
        # The loss-optimal size for this budget, by scipy on the loss along 6 N D = C.
        result = minimize_scalar(lambda s: _loss(np.exp(s), flops / (6 * np.exp(s))),
                                 bounds=(np.log(1e3), np.log(1e13)), method="bounded",
                                 options={"xatol": 1e-12})
        np.testing.assert_allclose(plan["chinchilla_params"][i], np.exp(result.x), rtol=1e-6)
        assert plan["draft_params"][i] < plan["chinchilla_params"][i]
        np.testing.assert_allclose(plan["tokens_per_flop"][i], plan["speedup"][i] / (2 * m), rtol=1e-14)


@pytest.mark.slow
def test_value_of_budget_matches_finite_differences(x64, plan):
    h = 1e-4
    up, _ = _plans(CONFIGS * [1, 1, np.exp(h)])
    down, _ = _plans(CONFIGS * [1, 1, np.exp(-h)])
    for field, name in (("speedup", "speedup_per_log_budget"),
                        ("tokens_per_flop", "tokens_per_flop_per_log_budget"),
                        ("draft_params", "draft_params_per_log_budget")):
        fd = (np.asarray(up[field]) - np.asarray(down[field])) / (2 * h)
        np.testing.assert_allclose(plan[name], fd, rtol=1e-6, err_msg=name)
    # More budget never hurts.
    assert np.all(plan["speedup_per_log_budget"] > 0)


@pytest.mark.slow
def test_grad_through_the_planner(x64, plan_and_jacobian):
    # Reverse mode, jitted, with respect to the budget and the target size at
    # once, at every configuration: against the planner's own value of budget
    # (the envelope theorem) and against central differences of N* in M.
    plan, (d_log_flops, d_target) = plan_and_jacobian
    np.testing.assert_allclose(d_log_flops[:, 0], plan["speedup_per_log_budget"], rtol=1e-9)
    np.testing.assert_allclose(d_log_flops[:, 1], plan["draft_params_per_log_budget"], rtol=1e-9)
    up, _ = _plans(CONFIGS * [1 + 1e-5, 1, 1])
    down, _ = _plans(CONFIGS * [1 - 1e-5, 1, 1])
    fd = (up["draft_params"] - down["draft_params"]) / (2 * CONFIGS[:, 0] * 1e-5)
    np.testing.assert_allclose(d_target[:, 1], fd, rtol=1e-6)


@pytest.mark.slow
def test_when_no_draft_pays(x64):
    hopeless = sd.AcceptanceLaw(draft_coeff=-0.0067, target_coeff=0.0, intercept=0.0)
    # (numpy scalars, as in _plans: Python floats would be weakly typed, another compilation)
    plan, _ = _plan_and_jacobian(*np.array([70e9, 15e12, np.log(1e21)]), hopeless)
    assert not bool(plan.pays)
    assert float(plan.draft_params) == 0.0 and float(plan.speedup) == 1.0
    assert float(plan.speedup_per_log_budget) == 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(training_flops=0.0), "training_flops"),
    (dict(target_params=-1.0), "target_params"),
    (dict(target_tokens=float("nan")), "target_tokens"),
    (dict(method="newton"), "method"),
    (dict(cost_ratio_bounds=(0.5, 0.1)), "cost_ratio_bounds"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(target_params=70e9, target_tokens=15e12, training_flops=1e21)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        budget.optimal_draft_under_budget(**args)
