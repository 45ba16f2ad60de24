r"""The N* planner: the draft size that maximises throughput for a target.

The chain (Bozorgkhoo & Molybog 2026, sec. "the optimum"):

    N  -> x = ppl(N, D)          draft perplexity (pre-training law)
    M  -> y = ppl(M, D')         target perplexity
    alpha = clip(A x + B y + C)  acceptance law
    T(N) = max_gamma E(alpha, gamma) / (2 (gamma N + M))

For fixed (M, D, D') the target cost 2M is a constant, so maximising T over N
is maximising the speedup S(N) = max_gamma E / (gamma N/M + 1). S is unimodal
in N: a small draft is rejected too often, a large one costs too much.

The search over N is the shared solver's (:mod:`sdsl_jax.planning.solver`:
the acceptance window, an 8-point grid and Illinois steps or L-BFGS,
implicit-function derivatives); this module supplies the chain above as its
objective (:data:`FLOP_OBJECTIVE`) and the plan's fields. The wall-clock
planner (:mod:`sdsl_jax.planning.wallclock`) reuses the chain's context
(:class:`Context`, :func:`acceptance_at`) with its own objective.

Derivatives of N* with respect to M, D, D' and every law coefficient come from
the implicit function theorem on dS/dlogN = 0, not from unrolling the solver;
the optimal throughput's gradient then follows by the envelope theorem.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sdsl_jax.common import saved_programs
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining
from sdsl_jax.laws import throughput
from sdsl_jax.planning import inputs, result, solver


@chex.dataclass(frozen=True)
class DraftPlan:
    """The planner's answer for each configuration (all leaves share one shape).

    Attributes:
      draft_params: N*, the throughput-optimal draft size (0 where no draft
        size makes speculation pay).
      cost_ratio: N* / M.
      draft_perplexity: ppl(N*, D) (inf where no draft pays).
      target_perplexity: ppl(M, D').
      acceptance: alpha at N*, clipped as the acceptance law documents.
      lookahead: the continuous optimal lookahead gamma* at N*.
      speedup: S at (N*, gamma*) over target-only decoding.
      tokens_per_flop: T at (N*, gamma*).
      integer_lookahead: the best integer lookahead at N*.
      integer_speedup: S at (N*, integer_lookahead).
      integer_tokens_per_flop: T at (N*, integer_lookahead).
      pays: whether some draft size beats target-only decoding.
      extrapolated: whether the acceptance plane was clipped at N*.
      at_bound: whether N* sits on an end of the searched draft-size range
        (widen ``cost_ratio_bounds`` if this is unexpected).
    """

    draft_params: jnp.ndarray
    cost_ratio: jnp.ndarray
    draft_perplexity: jnp.ndarray
    target_perplexity: jnp.ndarray
    acceptance: jnp.ndarray
    lookahead: jnp.ndarray
    speedup: jnp.ndarray
    tokens_per_flop: jnp.ndarray
    integer_lookahead: jnp.ndarray
    integer_speedup: jnp.ndarray
    integer_tokens_per_flop: jnp.ndarray
    pays: jnp.ndarray
    extrapolated: jnp.ndarray
    at_bound: jnp.ndarray


class Context(NamedTuple):
    """Everything the FLOP objective needs besides log N, for a draft trained on
    fixed data; all differentiable."""

    target_params: jnp.ndarray
    log_target_params: jnp.ndarray  # log M, which every objective evaluation needs
    draft_data_loss: jnp.ndarray  # E + B / D**b: the draft's loss without its model term
    target_perplexity: jnp.ndarray
    pretraining_law: pretraining.PretrainingLaw
    acceptance_law: acceptance_lib.AcceptanceLaw


def context(target_params, draft_tokens, target_tokens, pretraining_law, acceptance_law) -> Context:
    """The chain's constants for (M, D, D'): log M, y = ppl(M, D') and E + B / D^b."""
    # pretraining.perplexity's loss, with log M kept for the objective and
    # every log vectorised (throughput.positive_log).
    pre, log = pretraining_law, throughput.positive_log
    log_target = log(target_params)
    target_ppl = jnp.exp(pre.irreducible_loss + pretraining.model_term(pre, log_target)
                         + pretraining.data_term(pre, log(target_tokens)))
    draft_data_loss = pre.irreducible_loss + pretraining.data_term(pre, log(draft_tokens))
    return Context(target_params, log_target, draft_data_loss, target_ppl, pretraining_law,
                   acceptance_law)


def _alpha_and_perplexity(log_draft, ctx: Context):
    draft_loss = ctx.draft_data_loss + pretraining.model_term(ctx.pretraining_law, log_draft)
    draft_ppl = jnp.exp(draft_loss)
    alpha = acceptance_lib.acceptance(ctx.acceptance_law, draft_ppl, ctx.target_perplexity)
    return alpha, draft_ppl


def acceptance_at(log_draft, ctx: Context):
    """(alpha, draft perplexity x, cost ratio N / M) at N = exp(log_draft).

    x = exp(E + B / D^b + A' / N^a), alpha = clip(A x + B y + C) as the
    acceptance law documents (not yet capped below 1).
    """
    alpha, draft_ppl = _alpha_and_perplexity(log_draft, ctx)
    return alpha, draft_ppl, jnp.exp(log_draft) / ctx.target_params


def search_range(ctx: Context, settings: solver.Settings) -> solver.SearchRange:
    """The settings' range of log N, its lower end raised to where the draft's
    perplexity stays finite (:func:`solver.finite_floor`)."""
    return solver.search_range(ctx.target_params, settings,
                               solver.finite_floor(ctx.pretraining_law, ctx.draft_data_loss),
                               log_target_params=ctx.log_target_params)


def window(ctx: Context, search: solver.SearchRange) -> solver.Window:
    """The search range cut to where 0 < alpha < cap (:func:`solver.acceptance_window`)."""
    return solver.acceptance_window(ctx.pretraining_law, ctx.acceptance_law,
                                    ctx.target_perplexity, ctx.draft_data_loss, search)


@jax.jit
def _value_and_flags(log_draft, ctx: Context):
    """The FLOP law's objective F at N (:func:`solver.flop_objective_at`)."""
    alpha, _ = _alpha_and_perplexity(log_draft, ctx)
    # c = exp(log N - log M): one exp, and log c comes free.
    log_cost_ratio = log_draft - ctx.log_target_params
    return solver.flop_objective_at(alpha, jnp.exp(log_cost_ratio), log_cost_ratio)


@jax.jit
def _log_speedup(log_draft, ctx: Context):
    """log S*(alpha(N), N / M): what the gradient method maximises."""
    alpha, _, cost_ratio = acceptance_at(log_draft, ctx)
    return jnp.log(throughput.optimum(throughput.cap_acceptance(alpha), cost_ratio)[1])


FLOP_OBJECTIVE = solver.Objective(value_and_flags=_value_and_flags, log_speedup=_log_speedup)


@functools.partial(jax.jit, static_argnums=0)
def _plan(settings: solver.Settings, target_params, draft_tokens, target_tokens,
          pretraining_law, acceptance_law) -> DraftPlan:
    target_params, draft_tokens, target_tokens = jnp.broadcast_arrays(
        target_params, draft_tokens, target_tokens)
    ctx = context(target_params, draft_tokens, target_tokens, pretraining_law, acceptance_law)
    search = search_range(ctx, settings)
    solution = solver.solve(settings, ctx, search, window(ctx, search))
    log_draft = solution.log_draft

    alpha, draft_ppl, cost_ratio = acceptance_at(log_draft, ctx)
    gamma, speedup, pays = throughput.optimum(throughput.cap_acceptance(alpha), cost_ratio)
    # The integer lookahead from gamma* found here, not from a second optimum.
    integer_gamma, integer_speedup = throughput.integer_optimum(alpha, gamma, cost_ratio)
    fields = result.assemble(
        pays,
        dict(draft_params=jnp.exp(log_draft), cost_ratio=cost_ratio, draft_perplexity=draft_ppl,
             acceptance=alpha, lookahead=gamma, speedup=speedup, integer_lookahead=integer_gamma,
             integer_speedup=integer_speedup),
        raw_acceptance=acceptance_lib.raw_acceptance(acceptance_law, draft_ppl, ctx.target_perplexity),
        clipped_at_cap=solution.clipped_at_cap, at_bound=solution.at_bound)
    two_m = 2 * target_params
    return DraftPlan(**fields, target_perplexity=ctx.target_perplexity,
                     tokens_per_flop=fields["speedup"] / two_m,
                     integer_tokens_per_flop=fields["integer_speedup"] / two_m)


def optimal_draft_size(
    target_params: ArrayLike,
    draft_tokens: ArrayLike,
    target_tokens: ArrayLike,
    *,
    pretraining_law: pretraining.PretrainingLaw | None = None,
    acceptance_law: acceptance_lib.AcceptanceLaw | None = None,
    method: str = "bracket",
    cost_ratio_bounds: tuple[float, float] = (1e-8, 1.0),
) -> DraftPlan:
    """The throughput-optimal draft size N* and everything that goes with it.

    Args:
      target_params: M, the target's parameter count, any shape.
      draft_tokens: D, tokens the draft is (or will be) trained on.
      target_tokens: D', tokens the target was trained on.
      pretraining_law: defaults to the paper's (Besiroglu et al. 2024).
      acceptance_law: defaults to the paper's joint fit.
      method: "bracket" (grid, then Illinois root finding) or "gradient" (optax L-BFGS).
      cost_ratio_bounds: the searched range of N / M (static).

    Returns:
      A :class:`DraftPlan` whose leaves have the broadcast shape of the inputs.
      jit, vmap and grad work through it; gradients of ``draft_params`` come
      from the implicit function theorem.

    Domain: every field and every gradient (with respect to M, D, D' and the
    laws' coefficients) is finite, whether or not a draft pays, wherever the
    target's loss L(M, D') and the loss of an unbounded draft, E + B / D^b,
    are below half the log of the dtype's largest number (44.4 nats in
    float32, 354.9 in float64): for the default laws, M, D, D' >= 1e5 in
    float32 and >= 1e3 in float64 (tests/planning/test_finite_gradients.py).
    ``draft_perplexity`` is inf where no draft pays, as documented.
    """
    settings = solver.checked_settings(method, cost_ratio_bounds, FLOP_OBJECTIVE)
    given = inputs.planner_inputs(dict(target_params=target_params, draft_tokens=draft_tokens,
                                       target_tokens=target_tokens),
                                  pretraining_law, acceptance_law)
    # Where the caller saves programs (the sdsl command line does), a new
    # process loads the compiled planner instead of tracing it again.
    return saved_programs.call("planning.flop", _plan, (settings,), *given.values,
                               given.pretraining_law, given.acceptance_law)
