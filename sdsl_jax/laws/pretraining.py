"""The pre-training law: loss (and perplexity) from parameters and training tokens.

    L(N, D) = E + A / N**a + B / D**b        (nats per token)
    ppl(N, D) = exp(L(N, D))

This is the Chinchilla parametric form (Hoffmann et al. 2022, "Training
Compute-Optimal Large Language Models", approach 3). The speculative decoding
scaling laws use it to turn a draft size N trained on D tokens, and a target
size M trained on D' tokens, into the perplexities that drive acceptance.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate


@chex.dataclass(frozen=True)
class PretrainingLaw:
    """Coefficients of L(N, D) = E + A / N**a + B / D**b, as a pytree.

    Attributes:
      irreducible_loss: E, the entropy of text the law cannot remove (nats/token).
      param_coeff: A, the scale of the finite-model term.
      param_exponent: a, how fast loss falls with parameters.
      data_coeff: B, the scale of the finite-data term.
      data_exponent: b, how fast loss falls with training tokens.

    Every leaf may be a scalar or an array; jit, vmap and grad treat the law
    like any other pytree, so the same object is evaluated, fitted and
    differentiated.
    """

    irreducible_loss: ArrayLike
    param_coeff: ArrayLike
    param_exponent: ArrayLike
    data_coeff: ArrayLike
    data_exponent: ArrayLike


# Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt": the
# refit of Hoffmann et al.'s data that the speculative decoding paper uses.
BESIROGLU_2024 = PretrainingLaw(
    irreducible_loss=1.817, param_coeff=482.0, param_exponent=0.348,
    data_coeff=2085.0, data_exponent=0.366)

# Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", approach 3.
HOFFMANN_2022 = PretrainingLaw(
    irreducible_loss=1.69, param_coeff=406.4, param_exponent=0.34,
    data_coeff=410.7, data_exponent=0.28)

PRESETS: dict[str, PretrainingLaw] = {
    "besiroglu2024": BESIROGLU_2024,
    "hoffmann2022": HOFFMANN_2022,
}
DEFAULT_PRESET = "besiroglu2024"


def pretraining_preset(name: str = DEFAULT_PRESET) -> PretrainingLaw:
    """A named preset: 'besiroglu2024' (the paper's default) or 'hoffmann2022'."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown pre-training law preset {name!r}; choose one of {sorted(PRESETS)}") from None


def loss(law: PretrainingLaw, num_params: ArrayLike, tokens: ArrayLike) -> jnp.ndarray:
    """L(N, D) in nats per token for N = ``num_params`` trained on D = ``tokens``.

    Broadcasts over num_params, tokens and the law's leaves. Non-positive sizes
    are rejected when the inputs are concrete; under tracing they give NaN or inf.
    """
    _validate.check_positive("num_params", num_params)
    _validate.check_positive("tokens", tokens)
    num_params, tokens = _as_float(num_params, tokens)
    return (law.irreducible_loss + model_term(law, jnp.log(num_params))
            + data_term(law, jnp.log(tokens)))


def model_term(law: PretrainingLaw, log_params: ArrayLike) -> jnp.ndarray:
    """A / N**a from log N: the part of the loss a bigger model removes."""
    # exp(-a log N) rather than N**-a: one transcendental fewer, and the
    # gradient with respect to the exponent is the one a fit needs.
    return law.param_coeff * jnp.exp(-law.param_exponent * log_params)


def data_term(law: PretrainingLaw, log_tokens: ArrayLike) -> jnp.ndarray:
    """B / D**b from log D: the part of the loss more training data removes."""
    return law.data_coeff * jnp.exp(-law.data_exponent * log_tokens)


def perplexity(law: PretrainingLaw, num_params: ArrayLike, tokens: ArrayLike) -> jnp.ndarray:
    """exp(L(N, D)): the perplexity the acceptance law takes as its input."""
    return jnp.exp(loss(law, num_params, tokens))


def _as_float(*values):
    dtype = jnp.result_type(*values, float)
    return tuple(jnp.asarray(v, dtype) for v in values)
