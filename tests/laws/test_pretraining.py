"""The pre-training law as a pytree of coefficients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdsl_jax as sd


def test_presets_carry_the_published_coefficients():
    b = sd.pretraining_preset("besiroglu2024")
    assert (b.irreducible_loss, b.param_coeff, b.data_coeff, b.param_exponent, b.data_exponent) == (
        1.817, 482.0, 2085.0, 0.348, 0.366)
    h = sd.pretraining_preset("hoffmann2022")
    assert (h.irreducible_loss, h.param_coeff, h.data_coeff, h.param_exponent, h.data_exponent) == (
        1.69, 406.4, 410.7, 0.34, 0.28)
    assert sd.pretraining_preset() is sd.BESIROGLU_2024


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="'chinchilla3'"):
        sd.pretraining_preset("chinchilla3")


def test_loss_matches_formula_in_float64(x64):
    n = np.array([1e6, 1.25e8, 7e9, 7e10, 1e12])
    d = np.array([1e9, 3e11, 2e12, 15e12, 1e14])
    for law in (sd.BESIROGLU_2024, sd.HOFFMANN_2022):
        ref = (law.irreducible_loss + law.param_coeff / n ** law.param_exponent
               + law.data_coeff / d ** law.data_exponent)
        np.testing.assert_allclose(sd.loss(law, n, d), ref, rtol=1e-14)
        np.testing.assert_allclose(sd.perplexity(law, n, d), np.exp(ref), rtol=1e-14)


def test_chinchilla_70b_loss_is_plausible(x64):
    # Chinchilla (70B params, 1.4T tokens) under Hoffmann's own fit: ~1.94 nats.
    assert float(sd.loss(sd.HOFFMANN_2022, 70e9, 1.4e12)) == pytest.approx(1.937, abs=2e-3)


def test_float32_default_and_broadcasting():
    out = sd.loss(sd.BESIROGLU_2024, jnp.logspace(6, 12, 4)[:, None], jnp.logspace(9, 13, 3))
    assert out.shape == (4, 3) and out.dtype == jnp.float32
    # More parameters or more data never raise the loss.
    assert bool(jnp.all(jnp.diff(out, axis=0) < 0)) and bool(jnp.all(jnp.diff(out, axis=1) < 0))


def test_law_is_a_pytree_for_grad_and_vmap(x64):
    law = sd.BESIROGLU_2024
    grads = jax.grad(lambda l: sd.loss(l, 1e9, 1e12))(law)
    assert isinstance(grads, sd.PretrainingLaw)
    assert float(grads.irreducible_loss) == 1.0
    assert float(grads.param_coeff) == pytest.approx(1e9 ** -0.348, rel=1e-12)
    assert float(grads.param_exponent) == pytest.approx(-482.0 * np.log(1e9) * 1e9 ** -0.348, rel=1e-12)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), sd.BESIROGLU_2024, sd.HOFFMANN_2022)
    out = jax.vmap(lambda l: sd.loss(l, 1e9, 1e12))(stacked)
    np.testing.assert_allclose(out, [sd.loss(sd.BESIROGLU_2024, 1e9, 1e12),
                                     sd.loss(sd.HOFFMANN_2022, 1e9, 1e12)], rtol=1e-14)


@pytest.mark.parametrize("num_params,tokens,name", [(0.0, 1e12, "num_params"), (1e9, -5.0, "tokens"),
                                                    (float("nan"), 1e12, "num_params")])
def test_bad_sizes_are_rejected(num_params, tokens, name):
    with pytest.raises(ValueError, match=name):
        sd.loss(sd.BESIROGLU_2024, num_params, tokens)
