"""One minimiser for every fit: optax L-BFGS under a while_loop.

Every law fit in sdsl-jax is a smooth, small (3 to 8 parameter) problem over
many rows, so the cost is in evaluating the objective, not in the optimiser's
own algebra. L-BFGS with optax's zoom line search converges in tens of steps
where first-order methods need thousands, and a ``lax.while_loop`` keeps the
whole solve on the device: it jits once, vmaps over starting points or
bootstrap resamples, and never returns to the host between steps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu


class Solution(NamedTuple):
    """Result of :func:`minimize` (a pytree, so it vmaps)."""

    params: object
    value: jnp.ndarray
    grad_norm: jnp.ndarray
    steps: jnp.ndarray


def minimize(loss_fn: Callable, params, *, max_steps: int = 200,
             tolerance: float | None = None, memory_size: int = 10) -> Solution:
    """Minimise ``loss_fn(params)`` (a scalar) with L-BFGS from ``params``.

    Stops after ``max_steps`` or once the gradient's infinity norm falls to
    ``tolerance`` (default: 64 machine epsilons of the parameters' dtype times
    the size of the loss, a point past which float rounding, not the optimiser,
    limits progress). Pure JAX: usable inside jit and vmap.
    """
    optimizer = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(loss_fn)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    eps = jnp.finfo(dtype).eps

    def grad_norm(grad):
        return otu.tree_max(jax.tree_util.tree_map(jnp.abs, grad))

    def step(carry):
        params, state, _, _ = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad,
                                          value_fn=loss_fn)
        return optax.apply_updates(params, updates), state, value, grad_norm(grad)

    def keep_going(carry):
        _, state, value, norm = carry
        count = otu.tree_get(state, "count")
        limit = (64 * eps * jnp.maximum(jnp.abs(value), 1.0) if tolerance is None
                 else jnp.asarray(tolerance, dtype))
        return (count < max_steps) & (norm > limit) & jnp.isfinite(value)

    # value starts at 0 (finite) and the gradient norm at inf, so the loop always takes a step.
    init = (params, optimizer.init(params), jnp.zeros((), dtype), jnp.asarray(jnp.inf, dtype))
    params, state, _, _ = jax.lax.while_loop(keep_going, step, init)
    value, grad = jax.value_and_grad(loss_fn)(params)
    return Solution(params, value, grad_norm(grad), otu.tree_get(state, "count"))
