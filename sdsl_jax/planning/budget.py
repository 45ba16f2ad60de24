r"""Compute-budget planning: the draft's size and training tokens under one budget.

The FLOP planner takes the draft's training tokens D as given. A team that has
C FLOPs to train a draft chooses N and D together under 6 N D <= C (6 FLOPs per
parameter per training token: forward and backward, Kaplan et al. 2020). More
data always lowers the draft's loss, so the constraint is active and
D = C / (6 N): the draft's loss along the budget line is

    L(N) = E + A / N^a + B (6 N / C)^b,

which falls with N up to the Chinchilla point N_c of this budget,

    N_c = (a A / (b B))^(1 / (a + b)) (C / 6)^(b / (a + b)),

and rises after it. The serving throughput (tokens per FLOP, the FLOP law)
at N is the speedup S*(alpha(N), N / M) over 2M; past N_c the acceptance falls
while the cost rises, so the optimum lies below N_c, in the window where the
acceptance plane lies inside (0, cap) on the rising branch. That window's ends
solve L(N) = const, found by Newton's method (convex and decreasing on the
branch, so Newton from the left converges monotonically); its derivatives come
from one final Newton step taken from the converged point held fixed, which
is the implicit function theorem. N* inside it comes from the planners' shared
solver (:mod:`sdsl_jax.planning.solver`) with the FLOP law's objective along
the budget line, with implicit-function gradients.

The value of more budget: by the envelope theorem d T* / d log C is the
partial derivative at N* (the move of N* does not count to first order).
The plan reports it, computed by forward-mode differentiation through the
solver (:func:`jax.jvp`), with d N* / d log C and d S* / d log C.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining
from sdsl_jax.laws import throughput
from sdsl_jax.planning import inputs, result, solver

FLOPS_PER_PARAM_TOKEN = 6.0
WINDOW_NEWTON_STEPS = 40


@chex.dataclass(frozen=True)
class BudgetPlan:
    """The budget planner's answer (leaves share the inputs' broadcast shape).

    Attributes:
      draft_params: N*, the draft size that maximises serving throughput
        (0 where no draft pays).
      draft_tokens: D* = C / (6 N*), the training tokens that spend the budget.
      cost_ratio, draft_perplexity, target_perplexity, acceptance, lookahead,
      speedup, tokens_per_flop, integer_lookahead, integer_speedup, pays,
      extrapolated, at_bound: as in :class:`~sdsl_jax.planning.flop.DraftPlan`.
      chinchilla_params: N_c, the loss-optimal draft size for this budget
        (an upper bound on N*).
      tokens_per_flop_per_log_budget: d T* / d ln C, the serving throughput
        one more e-fold of training budget buys (divide by C for per FLOP).
      speedup_per_log_budget: d S* / d ln C.
      draft_params_per_log_budget: d N* / d ln C.
    """

    draft_params: jnp.ndarray
    draft_tokens: jnp.ndarray
    cost_ratio: jnp.ndarray
    draft_perplexity: jnp.ndarray
    target_perplexity: jnp.ndarray
    acceptance: jnp.ndarray
    lookahead: jnp.ndarray
    speedup: jnp.ndarray
    tokens_per_flop: jnp.ndarray
    integer_lookahead: jnp.ndarray
    integer_speedup: jnp.ndarray
    pays: jnp.ndarray
    extrapolated: jnp.ndarray
    at_bound: jnp.ndarray
    chinchilla_params: jnp.ndarray
    tokens_per_flop_per_log_budget: jnp.ndarray
    speedup_per_log_budget: jnp.ndarray
    draft_params_per_log_budget: jnp.ndarray


class _Context(NamedTuple):
    target_params: jnp.ndarray
    log_token_budget: jnp.ndarray  # log(C / 6): D = exp(log_token_budget - log N)
    target_perplexity: jnp.ndarray
    pretraining_law: pretraining.PretrainingLaw
    acceptance_law: acceptance_lib.AcceptanceLaw


def _draft_loss(log_draft, ctx: _Context):
    pre = ctx.pretraining_law
    return (pre.irreducible_loss + pretraining.model_term(pre, log_draft)
            + pretraining.data_term(pre, ctx.log_token_budget - log_draft))


def _acceptance_at(log_draft, ctx: _Context):
    draft_ppl = jnp.exp(_draft_loss(log_draft, ctx))
    alpha = acceptance_lib.acceptance(ctx.acceptance_law, draft_ppl, ctx.target_perplexity)
    return alpha, draft_ppl, jnp.exp(log_draft) / ctx.target_params


def _value_and_flags(log_draft, ctx: _Context):
    alpha, _, cost_ratio = _acceptance_at(log_draft, ctx)
    return solver.flop_objective_at(alpha, cost_ratio, log_draft - jnp.log(ctx.target_params))


def _log_speedup(log_draft, ctx: _Context):
    alpha, _, cost_ratio = _acceptance_at(log_draft, ctx)
    return jnp.log(throughput.optimum(throughput.cap_acceptance(alpha), cost_ratio)[1])


_OBJECTIVE = solver.Objective(value_and_flags=_value_and_flags, log_speedup=_log_speedup)


def _chinchilla_log_draft(ctx: _Context):
    """log N_c, where the loss along the budget line is lowest (module doc)."""
    pre = ctx.pretraining_law
    a, b = pre.param_exponent, pre.data_exponent
    return (jnp.log(a * pre.param_coeff / (b * pre.data_coeff)) + b * ctx.log_token_budget) / (a + b)


def _log_draft_at_loss(target_loss, ctx: _Context, log_peak):
    """(log N, found): where the loss on the falling branch (N < N_c) equals target_loss.

    g(s) = A e^(-a s) + B e^(-b (log(C/6) - s)) - (target - E) is convex and
    decreasing for s < log N_c. Newton from the root of the model term alone,
    which lies left of the root (g > 0 there), climbs to it monotonically.
    """
    pre = ctx.pretraining_law
    excess = target_loss - pre.irreducible_loss
    found = (excess > 0) & (_draft_loss(log_peak, ctx) < target_loss)
    safe_excess = jnp.where(found, excess, 1.0)

    def g(s, ctx):
        return _draft_loss(s, ctx) - ctx.pretraining_law.irreducible_loss - safe_excess

    # The iteration runs on constants (no derivatives taken through it, so no
    # NaN from iterates that overflow where no crossing exists and the result
    # is discarded); the derivative comes from the final step below.
    fixed = jax.lax.stop_gradient(ctx)
    fixed_excess = jax.lax.stop_gradient(safe_excess)
    start = (jnp.log(fixed.pretraining_law.param_coeff) - jnp.log(fixed_excess)) / fixed.pretraining_law.param_exponent
    start = jnp.where(found, jnp.minimum(start, jax.lax.stop_gradient(log_peak)), 0.0)

    def newton(_, s):
        value, slope = jax.jvp(lambda v: _draft_loss(v, fixed) - fixed.pretraining_law.irreducible_loss
                               - fixed_excess, (s,), (jnp.ones_like(s),))
        return s - value / jnp.where(slope < 0, slope, -1.0)

    s = jax.lax.fori_loop(0, WINDOW_NEWTON_STEPS, newton, start)
    # One more Newton step from the converged point, held constant, carries the
    # implicit-function derivative -g_theta / g_s (and changes the value by ~0).
    # Where nothing was found the step is taken at a harmless point and discarded.
    s = jnp.where(found, s, 0.0)
    value, slope = jax.jvp(lambda v: g(v, ctx), (s,), (jnp.ones_like(s),))
    s = s - value / jnp.where(found & (slope < 0), slope, -1.0)
    return jnp.where(found, s, log_peak), found


def _search_range(ctx: _Context, settings) -> solver.SearchRange:
    """The settings' range of log N, its lower end raised to where the draft's
    loss stays finite (:func:`solver.finite_floor`).

    On the falling branch (N < N_c) the data term B (6 N / C)^b is at most its
    value at N_c, so the floor taken with that bound keeps every N of the
    window between it and N_c below the loss bound. Where even the Chinchilla
    draft is past the bound the floor is N_c itself.
    """
    pre = ctx.pretraining_law
    log_peak = _chinchilla_log_draft(ctx)
    bound = pre.irreducible_loss + pretraining.data_term(pre, ctx.log_token_budget - log_peak)
    floor = solver.finite_floor(pre, bound)
    return solver.search_range(ctx.target_params, settings,
                               jnp.where(jnp.isfinite(floor), floor, log_peak))


def _budget_window(ctx: _Context, search: solver.SearchRange) -> solver.Window:
    """[lo, hi] on the rising branch where 0 < alpha < cap; see solver.acceptance_window."""
    log_lo, log_hi = search
    acc = ctx.acceptance_law
    rising = acc.draft_coeff < 0
    rest = acc.target_coeff * ctx.target_perplexity + acc.intercept
    log_peak = jnp.clip(_chinchilla_log_draft(ctx), log_lo, log_hi)

    def log_draft_at(alpha):
        ppl = (alpha - rest) / jnp.where(rising, acc.draft_coeff, -1.0)
        ok = rising & (ppl > 0)
        log_n, found = _log_draft_at_loss(jnp.log(jnp.where(ok, ppl, 1.0)), ctx, log_peak)
        return log_n, ok & found

    log_zero, has_zero = log_draft_at(0.0)
    log_cap, has_cap = log_draft_at(acceptance_lib.MAX_ACCEPTANCE)
    lo = jnp.where(has_zero, jnp.clip(log_zero, log_lo, log_peak), log_lo)
    capped = has_cap & (log_cap < log_peak)
    hi = jnp.where(capped, jnp.maximum(log_cap, lo), jnp.maximum(log_peak, lo))
    return solver.Window(lo, hi, capped)


def _plan_core(settings, log_budget, target_params, target_tokens, pretraining_law, acceptance_law):
    target_ppl = pretraining.perplexity(pretraining_law, target_params, target_tokens)
    ctx = _Context(target_params, log_budget - jnp.log(FLOPS_PER_PARAM_TOKEN), target_ppl,
                   pretraining_law, acceptance_law)
    search = _search_range(ctx, settings)
    solution = solver.solve(settings, ctx, search, _budget_window(ctx, search))
    log_draft = solution.log_draft

    alpha, draft_ppl, cost_ratio = _acceptance_at(log_draft, ctx)
    gamma, speedup, pays = throughput.optimum(throughput.cap_acceptance(alpha), cost_ratio)
    integer_gamma = throughput.optimal_integer_lookahead(alpha, cost_ratio)
    fields = result.assemble(
        pays,
        dict(draft_params=jnp.exp(log_draft), draft_tokens=jnp.exp(ctx.log_token_budget - log_draft),
             cost_ratio=cost_ratio, draft_perplexity=draft_ppl, acceptance=alpha, lookahead=gamma,
             speedup=speedup, integer_lookahead=integer_gamma,
             integer_speedup=throughput.speedup(alpha, integer_gamma, cost_ratio)),
        raw_acceptance=acceptance_lib.raw_acceptance(acceptance_law, draft_ppl, target_ppl),
        clipped_at_cap=solution.clipped_at_cap, at_bound=solution.at_bound)
    return dict(fields, target_perplexity=target_ppl,
                tokens_per_flop=fields["speedup"] / (2 * target_params),
                chinchilla_params=jnp.exp(_chinchilla_log_draft(ctx)))


@functools.partial(jax.jit, static_argnums=0)
def _plan(settings, log_budget, target_params, target_tokens, pretraining_law, acceptance_law):
    log_budget, target_params, target_tokens = jnp.broadcast_arrays(
        log_budget, target_params, target_tokens)
    core = lambda lb: _plan_core(settings, lb, target_params, target_tokens,
                                 pretraining_law, acceptance_law)
    values, tangents = jax.jvp(core, (log_budget,), (jnp.ones_like(log_budget),))
    return BudgetPlan(
        **values,
        tokens_per_flop_per_log_budget=tangents["tokens_per_flop"],
        speedup_per_log_budget=tangents["speedup"],
        draft_params_per_log_budget=tangents["draft_params"],
    )


def optimal_draft_under_budget(
    target_params: ArrayLike,
    target_tokens: ArrayLike,
    training_flops: ArrayLike,
    *,
    pretraining_law: pretraining.PretrainingLaw | None = None,
    acceptance_law: acceptance_lib.AcceptanceLaw | None = None,
    method: str = "bracket",
    cost_ratio_bounds: tuple[float, float] = (1e-8, 1.0),
) -> BudgetPlan:
    """The draft (N*, D* = C / (6 N*)) that maximises serving throughput for a budget C.

    Args:
      target_params: M, any shape (broadcast with the others).
      target_tokens: D', tokens the target was trained on.
      training_flops: C, the draft's training budget in FLOPs (6 N D <= C).
      pretraining_law, acceptance_law, method, cost_ratio_bounds: as for
        :func:`sdsl_jax.optimal_draft_size`.

    Returns:
      A :class:`BudgetPlan`, with the marginal value of budget. jit, vmap and
      grad work through it (gradients of N* by the implicit function theorem).

    Domain: as :func:`sdsl_jax.optimal_draft_size`'s, with the budget's
    Chinchilla-optimal draft in place of the unbounded one: fields and
    gradients are finite wherever its loss and the target's are below half
    the log of the dtype's largest number (default laws, float32: M, D' >= 1e5
    and C >= 1e11 FLOPs).
    """
    settings = solver.checked_settings(method, cost_ratio_bounds, _OBJECTIVE)
    given = inputs.planner_inputs(dict(target_params=target_params, target_tokens=target_tokens,
                                       training_flops=training_flops),
                                  pretraining_law, acceptance_law)
    target_params, target_tokens, training_flops = given.values
    return _plan(settings, jnp.log(training_flops), target_params, target_tokens,
                 given.pretraining_law, given.acceptance_law)
