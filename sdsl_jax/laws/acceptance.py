"""The acceptance law: how often the target accepts a drafted token.

    alpha = A * x + B * y + C

with x the draft's perplexity and y the target's, on the same prompts
(Bozorgkhoo & Molybog 2026, "Speculative Decoding Scaling Laws", eq. for the
alpha plane). Draft perplexity dominates (A < 0): a better draft is accepted
more often. The target term is small.

The plane is an empirical fit over perplexities of roughly 6 to 40. Far outside
that range it leaves the interval where an acceptance rate means anything
(a huge draft perplexity drives it below 0; a weak target can drive it above 1).
The rule, applied by :func:`acceptance` and everywhere the planner uses the law:

    alpha is clipped to [0, MAX_ACCEPTANCE], MAX_ACCEPTANCE = 1 - 2**-20.

At 0 speculation never pays (the planner reports lookahead 0, speedup 1).
The upper cap keeps the optimal lookahead finite: at alpha = 1 it is unbounded.
In the clipped regions the gradient with respect to the inputs and the law is
zero, as for any clip; :func:`raw_acceptance` gives the unclipped plane and
:func:`is_extrapolated` tells which points were clipped.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate

# 2**-20 is exactly representable in float32 and float64 alike, so the cap is
# the same number in both, and it lies far above any acceptance ever measured.
MAX_ACCEPTANCE = 1.0 - 2.0**-20


@chex.dataclass(frozen=True)
class AcceptanceLaw:
    """Coefficients of alpha = A x + B y + C, as a pytree.

    Attributes:
      draft_coeff: A, per unit of draft perplexity x (negative: better drafts
        are accepted more).
      target_coeff: B, per unit of target perplexity y.
      intercept: C.
    """

    draft_coeff: ArrayLike
    target_coeff: ArrayLike
    intercept: ArrayLike


# The paper's joint fit on HellaSwag prompts over 13 targets x 9 drafts.
SDSL_2026 = AcceptanceLaw(draft_coeff=-0.0067, target_coeff=0.013, intercept=0.642)

PRESETS: dict[str, AcceptanceLaw] = {"sdsl2026": SDSL_2026}
DEFAULT_PRESET = "sdsl2026"


def acceptance_preset(name: str = DEFAULT_PRESET) -> AcceptanceLaw:
    """A named preset: 'sdsl2026' (the paper's joint fit)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown acceptance law preset {name!r}; choose one of {sorted(PRESETS)}") from None


def raw_acceptance(law: AcceptanceLaw, draft_perplexity: ArrayLike,
                   target_perplexity: ArrayLike) -> jnp.ndarray:
    """The affine plane A x + B y + C, unclipped (may leave [0, 1])."""
    _validate.check_positive("draft_perplexity", draft_perplexity)
    _validate.check_positive("target_perplexity", target_perplexity)
    dtype = jnp.result_type(draft_perplexity, target_perplexity, float)
    x = jnp.asarray(draft_perplexity, dtype)
    y = jnp.asarray(target_perplexity, dtype)
    return law.draft_coeff * x + law.target_coeff * y + law.intercept


def acceptance(law: AcceptanceLaw, draft_perplexity: ArrayLike,
               target_perplexity: ArrayLike) -> jnp.ndarray:
    """alpha from perplexities, clipped to [0, MAX_ACCEPTANCE] (see module doc)."""
    raw = raw_acceptance(law, draft_perplexity, target_perplexity)
    return jnp.clip(raw, 0.0, MAX_ACCEPTANCE)


def is_extrapolated(law: AcceptanceLaw, draft_perplexity: ArrayLike,
                    target_perplexity: ArrayLike) -> jnp.ndarray:
    """True where the plane left [0, MAX_ACCEPTANCE] and :func:`acceptance` clipped it."""
    raw = raw_acceptance(law, draft_perplexity, target_perplexity)
    return (raw < 0.0) | (raw > MAX_ACCEPTANCE)
