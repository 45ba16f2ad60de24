"""The N* planner against an independent scipy reference, and its gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

import sdsl_jax as sd

CONFIGS = [  # (M, D, D')
    (70e9, 15e12, 15e12), (13e9, 3e11, 1e12), (110e9, 1e12, 18e12),
    (7e9, 2e12, 2e12), (1e12, 1e13, 3e13), (1e9, 1e11, 1e11),
]


def _reference_log_draft(ref, m, d, d_target, pre=sd.BESIROGLU_2024, acc=sd.SDSL_2026):
    """N* by brentq on dS*/dlogN, written independently in numpy (``ref``: conftest's
    brute-force S* reference, for the laws in numpy and the optimal lookahead).

    By the envelope theorem dS*/ds = dS/dalpha * alpha'(s) + dS/dc * c at the
    optimal lookahead, which itself is the root of dS/dgamma (no Lambert W).
    """
    y = np.exp(ref.loss(pre, m, d_target))

    def slope(s):
        n = np.exp(s)
        x = np.exp(ref.loss(pre, n, d))
        a = acc.draft_coeff * x + acc.target_coeff * y + acc.intercept
        c = n / m
        if not 0 < a < 1:
            return np.nan  # outside the plane's range: not where the peak is
        g = ref.lookahead(a, c)
        if g == 0:
            return np.nan  # drafting does not pay here: S is flat
        p = a ** (g + 1)
        e = (1 - p) / (1 - a)
        de_da = (-(g + 1) * a ** g * (1 - a) + (1 - p)) / (1 - a) ** 2
        ds_da = de_da / (g * c + 1)
        ds_dc = -g * e / (g * c + 1) ** 2
        dx_ds = x * (-pre.param_exponent * pre.param_coeff * n ** -pre.param_exponent)
        return ds_da * acc.draft_coeff * dx_ds + ds_dc * c

    grid = np.log(m) + np.linspace(np.log(1e-5), np.log(0.5), 200)
    signs = np.array([slope(s) for s in grid])
    k = np.flatnonzero((signs[:-1] > 0) & (signs[1:] < 0))[0]
    return brentq(slope, grid[k], grid[k + 1], xtol=1e-14, rtol=1e-15)


@pytest.fixture(scope="module")
def reference(speedup_reference):
    return np.array([np.exp(_reference_log_draft(speedup_reference, *cfg)) for cfg in CONFIGS])


def _columns(configs, dtype):
    return [np.asarray([cfg[i] for cfg in configs], dtype) for i in range(3)]


def _random_configs(n=4096):
    rng = np.random.default_rng(0)
    return np.stack([10 ** rng.uniform(8, 13, n), 10 ** rng.uniform(9, 14, n), 10 ** rng.uniform(9, 14, n)], 1)


@pytest.mark.slow
def test_bracket_solver_matches_reference_and_is_finite_everywhere(dtype, reference):
    # The six reference configurations and 4096 random ones in one jit(vmap)
    # call: one compilation per dtype serves both checks.
    m, d, dp = _columns(np.concatenate([CONFIGS, _random_configs()]), dtype)
    plan = jax.tree_util.tree_map(np.asarray, jax.jit(jax.vmap(sd.optimal_draft_size))(m, d, dp))
    assert plan["draft_params"].dtype == dtype
    # float64 to the reference's 1e-6; float32 to 1e-3 (its rounding, amplified by the flat optimum).
    np.testing.assert_allclose(plan["draft_params"][:6], reference, rtol=1e-6 if dtype == np.float64 else 1e-3)
    assert not plan["at_bound"][:6].any()
    if dtype == np.float64:
        # jit(vmap) agrees with eager scalar calls to the solver's own precision.
        eager = [float(sd.optimal_draft_size(*cfg).draft_params) for cfg in CONFIGS]
        np.testing.assert_allclose(plan["draft_params"][:6], eager, rtol=1e-12)
    for name, leaf in plan.items():
        if leaf.dtype != bool and name != "draft_perplexity":
            assert np.all(np.isfinite(leaf)), name
    assert plan["pays"].all()
    assert np.all(plan["speedup"] >= 1) and np.all(plan["draft_params"] < m)


@pytest.mark.slow
def test_gradient_solver_agrees_with_bracket_solver(dtype, reference):
    # float64: the reference configurations and the first three hard ones in one
    # call; float32: the reference configurations, to 1e-3.
    configs = CONFIGS + HARD_CONFIGS[:3] if dtype == np.float64 else CONFIGS
    gradient = sd.optimal_draft_size(*_columns(configs, dtype), method="gradient")
    assert gradient.draft_params.dtype == dtype
    if dtype == np.float32:
        np.testing.assert_allclose(gradient.draft_params, reference, rtol=1e-3)
        return
    np.testing.assert_allclose(gradient.draft_params[:6], reference, rtol=1e-6)
    # The bracket solver by scalar calls (one compilation, shared across the file).
    bracket = [sd.optimal_draft_size(*cfg) for cfg in configs]
    np.testing.assert_allclose(gradient.draft_params[:6], [float(p.draft_params) for p in bracket[:6]], rtol=1e-6)
    np.testing.assert_allclose(gradient.speedup[6:], [float(p.speedup) for p in bracket[6:]], rtol=1e-9)


def test_plan_fields_are_consistent(x64):
    plan = sd.optimal_draft_size(70e9, 15e12, 15e12)
    n, m = float(plan.draft_params), 70e9
    assert float(plan.cost_ratio) == pytest.approx(n / m, rel=1e-14)
    assert float(plan.draft_perplexity) == pytest.approx(float(sd.perplexity(sd.BESIROGLU_2024, n, 15e12)), rel=1e-13)
    assert float(plan.target_perplexity) == pytest.approx(float(sd.perplexity(sd.BESIROGLU_2024, m, 15e12)), rel=1e-13)
    alpha = float(sd.acceptance(sd.SDSL_2026, plan.draft_perplexity, plan.target_perplexity))
    assert float(plan.acceptance) == pytest.approx(alpha, rel=1e-13)
    assert float(plan.lookahead) == pytest.approx(float(sd.optimal_lookahead(alpha, n / m)), rel=1e-12)
    assert float(plan.speedup) == pytest.approx(float(sd.speedup(alpha, plan.lookahead, n / m)), rel=1e-12)
    assert float(plan.tokens_per_flop) == pytest.approx(
        float(sd.tokens_per_flop(alpha, plan.lookahead, n, m)), rel=1e-12)
    assert float(plan.integer_lookahead) == float(sd.optimal_integer_lookahead(alpha, n / m))
    assert float(plan.integer_speedup) <= float(plan.speedup)
    # Perturbing N* either way lowers the throughput.
    for factor in (0.9, 1.1):
        other = sd.optimal_speedup(sd.acceptance(sd.SDSL_2026, sd.perplexity(sd.BESIROGLU_2024, n * factor, 15e12),
                                                 plan.target_perplexity), n * factor / m)
        assert float(other) < float(plan.speedup)


# The grid of `sdsl rule` (and test_linear_rule, test_sharded): the same
# shapes, so one compilation serves them all in a test session.
GRID_TARGETS = np.geomspace(13e9, 110e9, 6)[:, None]
GRID_TOKENS = np.array([3e11, 1e12, 3e12, 15e12])[None, :]


@pytest.mark.slow
def test_broadcasting(x64):
    plan = sd.optimal_draft_size(GRID_TARGETS, GRID_TOKENS, GRID_TOKENS)
    assert plan.draft_params.shape == (6, 4)
    assert all(leaf.shape == (6, 4) for leaf in jax.tree_util.tree_leaves(plan))
    # Each entry is the scalar call's answer (jit(vmap) is checked against those above).
    np.testing.assert_allclose(plan.draft_params[:, 3], [float(sd.optimal_draft_size(m, 15e12, 15e12).draft_params)
                                                         for m in GRID_TARGETS[:, 0]], rtol=1e-12)
    # Larger targets want larger drafts.
    assert bool(jnp.all(jnp.diff(plan.draft_params, axis=0) > 0))


def _central_difference(f, x, rel=1e-4):
    h = rel * x
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.fixture(scope="module")
def jacobian(flop_jacobian):
    with jax.enable_x64(True):
        return jax.tree_util.tree_map(np.asarray, flop_jacobian(70e9, 2e12, 15e12))


def test_draft_size_gradients_match_finite_differences(x64, jacobian):
    args = [70e9, 2e12, 15e12]
    for argnum, name in enumerate(("target_params", "draft_tokens", "target_tokens")):
        for out, field in enumerate(("draft_params", "tokens_per_flop")):
            def along(v):
                moved = list(args)
                moved[argnum] = v
                return float(sd.optimal_draft_size(*moved)[field])

            fd = _central_difference(along, args[argnum])
            assert float(jacobian[argnum][out]) == pytest.approx(fd, rel=2e-5), (field, name)


def test_gradients_with_respect_to_every_law_coefficient(x64, jacobian):
    pre, acc = sd.BESIROGLU_2024, sd.SDSL_2026
    n_star = lambda pre, acc: float(sd.optimal_draft_size(70e9, 2e12, 15e12, pretraining_law=pre,
                                                          acceptance_law=acc).draft_params)
    for law, grads, which in ((pre, jacobian[3], 0), (acc, jacobian[4], 1)):
        for field in law.keys():
            value = float(law[field])

            def along(v):
                moved = law.replace(**{field: v})
                return n_star(moved, acc) if which == 0 else n_star(pre, moved)

            fd = _central_difference(along, value, rel=1e-5)
            assert float(grads[field][0]) == pytest.approx(fd, rel=1e-4, abs=1e-6 * abs(fd) + 1e-3), field


def test_when_no_draft_pays_the_answer_is_no_draft(x64, flop_jacobian):
    hopeless = sd.AcceptanceLaw(draft_coeff=-0.0067, target_coeff=0.0, intercept=0.0)
    plan = sd.optimal_draft_size(70e9, 15e12, 15e12, acceptance_law=hopeless)
    assert not bool(plan.pays)
    assert float(plan.draft_params) == 0.0 and float(plan.speedup) == 1.0
    assert float(plan.lookahead) == 0.0 and float(plan.tokens_per_flop) == pytest.approx(1 / 140e9)
    assert float(flop_jacobian(70e9, 15e12, 15e12, acc=hopeless)[0][0]) == 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_params=-1.0), "target_params"),
    (dict(draft_tokens=0.0), "draft_tokens"),
    (dict(target_tokens=float("inf")), "target_tokens"),
    (dict(method="newton"), "method"),
    (dict(cost_ratio_bounds=(0.5, 0.1)), "cost_ratio_bounds"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(target_params=70e9, draft_tokens=15e12, target_tokens=15e12)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sd.optimal_draft_size(**args)


# Configurations where a coarse search goes wrong, found by comparing the solver
# with a 256-point grid over 1e6 random (M, D, D') in [1e6, 1e14] x [1e6, 1e16]^2.
HARD_CONFIGS = [  # (M, D, D'), what makes it hard
    (1.044e8, 1.036e9, 2.902e12),   # drafting pays only in a narrow band of N
    (5.545e10, 8.016e7, 3.265e10),  # ... so narrow that S* peaks at 1.0009
    (1.620e10, 2.274e12, 3.653e8),  # S* rises again as alpha nears its cap; the interior peak wins
    (1.335e11, 1.161e8, 1.205e8),   # ... and here the end where alpha reaches the cap wins
]


@pytest.mark.parametrize("config", HARD_CONFIGS)
def test_hard_configurations_reach_the_global_maximum(x64, config, speedup_reference):
    m, d, d_target = config
    plan = sd.optimal_draft_size(*config)
    assert bool(plan.pays)
    grid = np.log(m) + np.linspace(np.log(1e-8), 0.0, 4001)
    # S* at each log N: alpha from the laws in numpy, gamma* by brentq on dS/dgamma.
    brute = speedup_reference.over_draft_sizes(m, d, d_target, grid)
    best = int(np.argmax(brute))
    ours = speedup_reference.over_draft_sizes(m, d, d_target, np.log(float(plan.draft_params)))[0]
    # The solver's N* is at least as fast as the best of 4001 grid points, and
    # lies within one grid step (0.5% in N) of it.
    assert ours >= brute[best] * (1 - 1e-12)
    assert abs(np.log(float(plan.draft_params)) - grid[best]) <= grid[1] - grid[0]
    np.testing.assert_allclose(float(plan.speedup), ours, rtol=1e-9)


def test_optimum_where_alpha_reaches_its_cap_is_flagged(x64, flop_jacobian):
    m, d, d_target = HARD_CONFIGS[3]
    plan = sd.optimal_draft_size(m, d, d_target)
    assert bool(plan.extrapolated) and not bool(plan.at_bound)
    assert float(plan.acceptance) == pytest.approx(sd.MAX_ACCEPTANCE, abs=1e-12)
    # N* moves with the point where the plane meets the cap: its derivative in
    # the plane's intercept is finite and negative (a higher plane reaches the
    # cap with a smaller, cheaper draft).
    law = lambda c: sd.AcceptanceLaw(draft_coeff=-0.0067, target_coeff=0.013, intercept=c)
    n_star = lambda c: sd.optimal_draft_size(m, d, d_target, acceptance_law=law(c)).draft_params
    g = float(flop_jacobian(m, d, d_target, acc=law(0.642))[4].intercept[0])
    fd = (float(n_star(0.642 + 1e-7)) - float(n_star(0.642 - 1e-7))) / 2e-7
    assert np.isfinite(g) and g < 0
    assert g == pytest.approx(fd, rel=1e-4)
