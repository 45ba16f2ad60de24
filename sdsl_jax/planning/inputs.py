"""The planners' shared preamble: check the inputs, fill in the laws, pick a dtype, cast.

Every public planner (:func:`~sdsl_jax.planning.flop.optimal_draft_size`,
:func:`~sdsl_jax.planning.wallclock.optimal_draft_size_wallclock`,
:func:`~sdsl_jax.planning.wallclock.evaluate_draft_wallclock`,
:func:`~sdsl_jax.planning.budget.optimal_draft_under_budget`,
:func:`~sdsl_jax.planning.sharded.plan_sharded`) starts the same way:

* each named size or token count must be finite and > 0 (checked eagerly, the
  first bad one named; under jit, vmap or grad the values are unknown and the
  checks stay out of the way, see :mod:`sdsl_jax.common.validation`);
* a law not given is the paper's: the pre-training law of Besiroglu et al.
  (2024) and the acceptance plane of the joint fit;
* the result dtype is the inputs' float type: float32 by default, float64
  under jax_enable_x64 (Python numbers are weak and follow it);
* the inputs and every leaf of the laws are cast to it, so that one jitted
  program serves float32 and one float64 whatever Python types came in.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining


def default_laws(pretraining_law: pretraining.PretrainingLaw | None,
                 acceptance_law: acceptance_lib.AcceptanceLaw | None):
    """(pre-training law, acceptance law), the paper's where one is None."""
    return (pretraining.BESIROGLU_2024 if pretraining_law is None else pretraining_law,
            acceptance_lib.SDSL_2026 if acceptance_law is None else acceptance_law)


def checked_laws(positive: Mapping[str, ArrayLike],
                 pretraining_law: pretraining.PretrainingLaw | None = None,
                 acceptance_law: acceptance_lib.AcceptanceLaw | None = None):
    """Check every value of ``positive`` finite and > 0, in order, naming it by its
    key; return :func:`default_laws`. For callers that cast on their own."""
    for name, value in positive.items():
        _validate.check_positive(name, value)
    return default_laws(pretraining_law, acceptance_law)


def _as_array(value, dtype):
    """``value`` as a jax array of ``dtype``.

    Host values (Python numbers, lists, numpy) are converted on the host and
    transferred: ``jnp.asarray`` would compile and load a conversion program for
    each, the only program a warm ``sdsl plan`` would otherwise lower. Jax arrays
    and tracers keep ``jnp.asarray``, which leaves a sharded array where it is.
    """
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return jnp.asarray(value, dtype)
    return jax.device_put(np.asarray(value, dtype))


def cast(dtype, tree):
    """Every leaf of the pytree ``tree`` (a law, a hardware roofline) as a jax array of ``dtype``."""
    return jax.tree_util.tree_map(lambda value: _as_array(value, dtype), tree)


class PlannerInputs(NamedTuple):
    """The preamble's result: ``values`` in the order named, and the laws, all ``dtype``."""

    values: tuple
    pretraining_law: pretraining.PretrainingLaw
    acceptance_law: acceptance_lib.AcceptanceLaw
    dtype: jnp.dtype


def planner_inputs(positive: Mapping[str, ArrayLike],
                   pretraining_law: pretraining.PretrainingLaw | None = None,
                   acceptance_law: acceptance_lib.AcceptanceLaw | None = None) -> PlannerInputs:
    """The module doc's preamble: checks (:func:`checked_laws`), the dtype
    jnp.result_type(*values, float), and everything cast to it."""
    pretraining_law, acceptance_law = checked_laws(positive, pretraining_law, acceptance_law)
    dtype = jnp.result_type(*positive.values(), float)
    # An input is one array-like (a list of sizes is one array, not a pytree).
    return PlannerInputs(tuple(_as_array(value, dtype) for value in positive.values()),
                         cast(dtype, pretraining_law), cast(dtype, acceptance_law), dtype)
