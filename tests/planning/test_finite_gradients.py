"""Every planner's gradients are finite across the documented domain, paying or not,
and agree with central differences where drafting pays.

The domain (optimal_draft_size's docstring): M, D, D' from 1e5 up, where the
default laws' perplexities are finite in float32. Before the search range had
a finite floor, a third of the non-paying configurations below gave NaN
gradients (the solver returned a draft of under one parameter, whose
perplexity overflows), in both dtypes and in all three planners.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdsl_jax as sd

# The issue's configurations: M = D = D' = 1e6, and the same with a target
# trained so long that no draft pays; the domain's corner; then a wide
# log-uniform grid over it (seed 0), about a quarter of which does not pay.
EDGES = np.array([[1e6, 1e6, 1e6], [1e6, 1e6, 1e12], [1e5, 1e5, 1e5], [1e5, 1e5, 1e16],
                  [1e13, 1e5, 1e16], [1e13, 1e16, 1e5]])
_rng = np.random.default_rng(0)
GRID = np.concatenate([EDGES, 10 ** np.stack([_rng.uniform(5, 13, 250), _rng.uniform(5, 16, 250),
                                              _rng.uniform(5, 16, 250)], 1)])


def _laws(dtype):
    cast = lambda law: jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), law)
    return cast(sd.BESIROGLU_2024), cast(sd.SDSL_2026)


def _flop(log_m, log_d, log_dp, pre, acc, hardware):
    return sd.optimal_draft_size(jnp.exp(log_m), jnp.exp(log_d), jnp.exp(log_dp),
                                 pretraining_law=pre, acceptance_law=acc)


def _budget(log_m, log_d, log_dp, pre, acc, hardware):
    # A budget of 6 N D with N = M / 100, from the domain's least (1e11 FLOPs,
    # where the Chinchilla-optimal draft has 1e4 parameters) to beyond Chinchilla's.
    return sd.optimal_draft_under_budget(jnp.exp(log_m), jnp.exp(log_dp),
                                         1e11 + 6e-2 * jnp.exp(log_m + log_d),
                                         pretraining_law=pre, acceptance_law=acc)


def _wallclock(log_m, log_d, log_dp, pre, acc, hardware):
    return sd.optimal_draft_size_wallclock(jnp.exp(log_m), jnp.exp(log_d), jnp.exp(log_dp),
                                           pretraining_law=pre, acceptance_law=acc,
                                           hardware=hardware)


def _gradient(planner):
    """jit(grad) of sum(weight * (log1p N* + S*)) w.r.t. log M, log D, log D' and both
    laws, with the plan: one compilation per planner and dtype serves values,
    gradients and the central differences below (the hardware is an argument,
    so every preset shares it too)."""
    def score(log_m, log_d, log_dp, pre, acc, hardware, weight):
        plan = planner(log_m, log_d, log_dp, pre, acc, hardware)
        # log1p keeps N* = 0 (no draft) differentiable and the sizes' scales comparable.
        return jnp.sum(weight * (jnp.log1p(plan.draft_params) + plan.speedup)), plan
    return jax.jit(jax.grad(score, argnums=(0, 1, 2, 3, 4), has_aux=True))


GRADIENTS = {name: _gradient(planner) for name, planner in
             dict(flop=_flop, budget=_budget, wallclock=_wallclock).items()}


def _assert_finite(tree, skip=()):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = jax.tree_util.keystr(path)
        leaf = np.asarray(leaf)
        if leaf.dtype == bool or any(s in name for s in skip):
            continue
        bad = np.flatnonzero(~np.isfinite(leaf.reshape(-1)))
        where = GRID[bad[:5]] if leaf.size == len(GRID) else ""
        assert bad.size == 0, f"{name}: {bad.size} non-finite, e.g. {where}"


def _columns(dtype):
    return [np.log(GRID[:, i]).astype(dtype) for i in range(3)]


def test_flop_gradient_is_finite_where_nothing_pays(x64, flop_jacobian):
    # The non-paying configuration and the domain's corner, by the
    # shared scalar Jacobian (its compilation serves the whole session).
    for config in EDGES[1:4]:
        _assert_finite(flop_jacobian(*config))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flop", "budget", "wallclock"])
def test_values_and_gradients_are_finite_across_the_domain_float32(name):
    # (Replaces the budget's and the wall-clock planner's float32 value checks.)
    columns, laws = _columns(np.float32), _laws(np.float32)
    presets = ("A100", "TPU-v5e", "CPU") if name == "wallclock" else (None,)
    for preset in presets:
        hardware = None if preset is None else jax.tree_util.tree_map(
            lambda v: jnp.asarray(v, np.float32), sd.hardware_preset(preset))
        grads, plan = GRADIENTS[name](*columns, *laws, hardware, np.ones(len(GRID), np.float32))
        plan = jax.tree_util.tree_map(np.asarray, plan)
        assert plan["draft_params"].dtype == np.float32
        _assert_finite(grads)
        _assert_finite(plan, skip=("draft_perplexity",))  # inf where no draft pays, as documented
        assert 0 < plan["pays"].mean() < 1, preset
        assert np.all(plan["speedup"] >= 1), preset
        if name == "budget":
            assert np.all(plan["draft_params"] <= plan["chinchilla_params"] * 1.0001)


@pytest.mark.slow
def test_flop_gradients_are_finite_and_match_central_differences_float64(x64):
    columns = _columns(np.float64)
    pre, acc = _laws(np.float64)
    gradient = lambda *args, weight: GRADIENTS["flop"](*args, None, weight)
    grads, plan = gradient(*columns, pre, acc, weight=np.ones(len(GRID)))
    _assert_finite(grads)
    # Central differences where drafting pays clearly (not at the edge of
    # paying, where N* jumps to 0) and N* is an interior optimum of a smooth
    # S* (not at the acceptance cap's kink or the range's end).
    smooth = np.asarray(plan.pays & ~plan.extrapolated & ~plan.at_bound & (plan.speedup > 1.01))
    assert 50 < smooth.sum() < len(GRID)
    weight = smooth.astype(np.float64)
    grads, _ = gradient(*columns, pre, acc, weight=weight)
    score = lambda *args: np.asarray(
        (lambda p: weight * (np.log1p(p.draft_params) + p.speedup))(gradient(*args, weight=weight)[1]))
    h = 1e-5
    for i in range(3):  # elementwise: each configuration's own derivative
        up, down = list(columns), list(columns)
        up[i], down[i] = columns[i] + h, columns[i] - h
        fd = (score(*up, pre, acc) - score(*down, pre, acc)) / (2 * h)
        np.testing.assert_allclose(np.asarray(grads[i])[smooth], fd[smooth], rtol=1e-4, atol=1e-6)
    for law, law_grads, which in ((pre, grads[3], 3), (acc, grads[4], 4)):
        for field in law.keys():
            value = float(law[field])
            step = 1e-6 * abs(value)
            moved = lambda v: law.replace(**{field: jnp.asarray(v, np.float64)})
            laws = lambda v: (moved(v), acc) if which == 3 else (pre, moved(v))
            fd = (score(*columns, *laws(value + step)).sum()
                  - score(*columns, *laws(value - step)).sum()) / (2 * step)
            assert float(law_grads[field]) == pytest.approx(fd, rel=1e-4), field
