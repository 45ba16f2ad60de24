"""The acceptance plane and its clipping rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdsl_jax as sd


def test_preset_is_the_paper_fit():
    law = sd.acceptance_preset("sdsl2026")
    assert (law.draft_coeff, law.target_coeff, law.intercept) == (-0.0067, 0.013, 0.642)
    with pytest.raises(ValueError, match="'nope'"):
        sd.acceptance_preset("nope")


def test_paper_example_llama_70b(x64):
    # The paper: for a LLaMA 3.1-70B target alpha rises from about 0.60 to 0.72
    # as draft perplexity falls from 30 to 12; the plane implies y ~= 12.2 there.
    y = 12.2
    assert float(sd.acceptance(sd.SDSL_2026, 30.0, y)) == pytest.approx(0.60, abs=5e-3)
    assert float(sd.acceptance(sd.SDSL_2026, 12.0, y)) == pytest.approx(0.72, abs=5e-3)


def test_plane_is_affine(x64):
    x, y = np.array([8.0, 15.0, 30.0]), np.array([6.0, 9.0, 12.0])
    np.testing.assert_allclose(sd.raw_acceptance(sd.SDSL_2026, x, y),
                               -0.0067 * x + 0.013 * y + 0.642, rtol=1e-14)


def test_clipping_rule_at_extreme_perplexities(dtype):
    # Huge draft perplexity drives the plane below 0; a weak target above 1.
    x = jnp.asarray([1e4, 200.0, 10.0, 6.2, 6.2], dtype)
    y = jnp.asarray([7.0, 7.0, 7.0, 40.0, 1e3], dtype)
    raw = sd.raw_acceptance(sd.SDSL_2026, x, y)
    clipped = sd.acceptance(sd.SDSL_2026, x, y)
    assert clipped.dtype == dtype
    assert float(raw[0]) < 0 and float(clipped[0]) == 0.0
    assert float(raw[4]) > 1 and float(clipped[4]) == sd.MAX_ACCEPTANCE
    assert float(clipped[4]) < 1.0  # representable below 1 in float32 too
    np.testing.assert_array_equal(sd.is_extrapolated(sd.SDSL_2026, x, y), [True, True, False, True, True])
    # Clipped points have zero gradient, never NaN.
    grads = jax.vmap(jax.grad(lambda a, b: sd.acceptance(sd.SDSL_2026, a, b), argnums=(0, 1)))(x, y)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    assert float(grads[0][0]) == 0.0 and float(grads[0][2]) == pytest.approx(-0.0067, rel=1e-6)


@pytest.mark.slow
def test_planner_survives_extreme_perplexities(x64, flop_jacobian):
    # A 100M target on 1B tokens has perplexity ~39: the plane exceeds 1 for
    # every draft better than perplexity ~22, so the planner works on the clip.
    plan = sd.optimal_draft_size(1e8, 1e9, 1e9)
    leaves = jax.tree_util.tree_leaves(plan)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves if leaf.dtype != bool)
    assert bool(plan.pays) and float(plan.acceptance) <= sd.MAX_ACCEPTANCE
    # Every derivative of N* and T* is finite there (test_planner's Jacobian:
    # its compilation is shared with that file's gradient tests).
    grads = jax.tree_util.tree_leaves(flop_jacobian(1e8, 1e9, 1e9))
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_grad_with_respect_to_law(x64):
    g = jax.grad(lambda law: sd.acceptance(law, 10.0, 7.0))(sd.SDSL_2026)
    assert (float(g.draft_coeff), float(g.target_coeff), float(g.intercept)) == (10.0, 7.0, 1.0)


def test_bad_perplexity_is_rejected():
    with pytest.raises(ValueError, match="draft_perplexity"):
        sd.acceptance(sd.SDSL_2026, 0.0, 7.0)
