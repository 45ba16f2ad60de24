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
             tolerance: float | None = None, value_tolerance: float | None = None,
             memory_size: int = 10, run=True) -> Solution:
    """Minimise ``loss_fn(params)`` (a scalar) with L-BFGS from ``params``.

    Stops after ``max_steps``, or once the gradient's infinity norm falls to
    ``tolerance``, or once a step lowers the loss by no more than
    ``value_tolerance * max(|loss|, 1)``.

    The defaults are set by rounding, not by a guess at the problem's scale:
    the gradient tolerance is 64 machine epsilons of the parameters' dtype
    times max(|loss|, 1), and the value tolerance is 4 epsilons. A step that
    gains less than a few ulps of the loss means the line search can no longer
    tell the next point from this one: the iterate sits at the floor that float
    rounding sets, and further steps only spin (before this rule the loop ran
    to ``max_steps`` on most fits). Pass ``value_tolerance=0`` to stop on the
    gradient alone.

    ``run`` (a boolean, may be traced) False takes no step: under vmap, the
    members that need no search (converged by other means) then cost
    nothing, and a batch whose members all need none skips the loop.
    Pure JAX: usable inside jit and vmap.
    """
    optimizer = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(loss_fn)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    eps = jnp.finfo(dtype).eps
    value_tolerance = 4 * eps if value_tolerance is None else value_tolerance

    def grad_norm(grad):
        return otu.tree_max(jax.tree_util.tree_map(jnp.abs, grad))

    def step(carry):
        params, state, value, _, _ = carry
        new_value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=new_value, grad=grad,
                                          value_fn=loss_fn)
        return optax.apply_updates(params, updates), state, new_value, value, grad_norm(grad)

    def keep_going(carry):
        # value is the loss where the last step started, previous the one before:
        # their difference is what the step before last gained.
        _, state, value, previous, norm = carry
        count = otu.tree_get(state, "count")
        scale = jnp.maximum(jnp.abs(value), 1.0)
        limit = 64 * eps * scale if tolerance is None else jnp.asarray(tolerance, dtype)
        progressing = (count < 2) | (previous - value > value_tolerance * scale)
        return run & (count < max_steps) & (norm > limit) & progressing & jnp.isfinite(value)

    # The progress test needs two steps' values, so the first two steps are
    # always taken; the gradient norm starts at inf for the same reason.
    zero, inf = jnp.zeros((), dtype), jnp.asarray(jnp.inf, dtype)
    init = (params, optimizer.init(params), zero, zero, inf)
    params, state, _, _, _ = jax.lax.while_loop(keep_going, step, init)
    value, grad = jax.value_and_grad(loss_fn)(params)
    return Solution(params, value, grad_norm(grad), otu.tree_get(state, "count"))


# Damping the Newton step tries, all at once, relative to the Hessian's
# largest eigenvalue: 0 is the pure Newton step, the largest a short
# gradient step. Levenberg-Marquardt style damping, not a line search along
# one direction, because the fits have flat directions (a poorly determined
# coefficient) along which the pure step overshoots by orders of magnitude.
NEWTON_DAMPING = (0.0, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def newton(loss_fn: Callable, params: jnp.ndarray, *, steps: int = 8) -> Solution:
    """``steps`` damped Newton steps on a flat parameter vector, a fixed count.

    For refining a point already near the optimum (a warm start, or an L-BFGS
    result): converges quadratically, and because the number of steps is
    fixed it vmaps without the cost of a batched while_loop, in which every
    member runs as long as the slowest and every line search as long as the
    longest. Each step solves (|H| + mu I) d = -g for every damping mu in
    NEWTON_DAMPING (times the largest eigenvalue), with |H| the Hessian with
    its eigenvalues replaced by their absolute values so that it descends
    where the loss is not convex, and moves to the best candidate, or stays
    if none is better. ``Solution.grad_norm`` is the Newton decrement
    sqrt(g' |H|^-1 g) where the last step started (for a negative
    log-likelihood, the distance to the optimum in standard errors);
    ``steps=0`` takes no step and gives the decrement at ``params``.
    """
    damping = jnp.asarray(NEWTON_DAMPING, params.dtype)
    eps = jnp.finfo(params.dtype).eps
    grad_fn = jax.grad(loss_fn)

    def grad_twice(x):
        g = grad_fn(x)
        return g, g

    # The Hessian as the forward derivative of the gradient, with the gradient
    # itself as the aux output: one reverse pass traced, not two.
    hessian_and_grad = jax.jacfwd(grad_twice, has_aux=True)

    def decomposed(x):
        hessian, g = hessian_and_grad(x)
        eigenvalues, vectors = jnp.linalg.eigh(hessian)
        size = jnp.abs(eigenvalues)
        largest = jnp.max(size)
        size = jnp.maximum(size, 1e-12 * largest)
        projected = vectors.T @ g
        return vectors, size, largest, projected, jnp.sqrt(jnp.sum(projected**2 / size))

    if steps == 0:
        # No step: only the decrement where the search ended.
        return Solution(params, loss_fn(params), decomposed(params)[-1], jnp.asarray(0))

    def step(x, _):
        vectors, size, largest, projected, decrement = decomposed(x)
        steps_ = -(projected / (size + damping[:, None] * largest)) @ vectors.T
        candidates = jnp.concatenate([x + steps_, x[None]])
        values = jax.vmap(loss_fn)(candidates)
        values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        # The best value, with values that rounding cannot tell from it counted
        # as ties and won by the least damped step: near the optimum every
        # candidate's loss is the same to the last ulps, and picking among
        # them by value would stall at sqrt(eps) instead of converging.
        best = jnp.min(values)
        tied = values <= best + 8 * eps * jnp.maximum(jnp.abs(best), 1.0)
        return candidates[jnp.argmax(tied)], decrement

    # One Hessian per step and none after: the decrement reported is the one
    # at the start of the last step. With quadratic convergence the result is
    # much closer than that, so it bounds the remaining error from above.
    params, decrements = jax.lax.scan(step, params, None, length=steps)
    return Solution(params, loss_fn(params), decrements[-1], jnp.asarray(steps))
