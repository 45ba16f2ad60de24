r"""The N* planner: the draft size that maximises throughput for a target.

The chain (Bozorgkhoo & Molybog 2026, sec. "the optimum"):

    N  -> x = ppl(N, D)          draft perplexity (pre-training law)
    M  -> y = ppl(M, D')         target perplexity
    alpha = clip(A x + B y + C)  acceptance law
    T(N) = max_gamma E(alpha, gamma) / (2 (gamma N + M))

For fixed (M, D, D') the target cost 2M is a constant, so maximising T over N
is maximising the speedup S(N) = max_gamma E / (gamma N/M + 1). S is unimodal
in N: a small draft is rejected too often, a large one costs too much.

Two solvers, both pure JAX and vectorised over any broadcast shape of inputs:

Before either runs, the range of N is cut to where the acceptance plane lies
inside (0, cap): below it nothing pays, above it alpha is pinned and S falls
(_acceptance_window). Two regimes the search must survive, both found by
brute force over wide random configurations: drafting may pay only in a band
of N narrower than any affordable grid step, and as alpha nears its cap S can
rise again after an interior peak. So the search maximises an objective F
that is log S* where drafting pays and the log pay margin where it does not
(it points towards the paying band), and the top end of the range is always
weighed against the interior peak.

* ``method="bracket"`` (default): an 8-point log grid brackets the peak of F,
  then 8 Illinois (regula falsi) steps on dF/dlogN, with bisection across
  the edge of the paying band, reach 1e-13 relative in float64.
* ``method="gradient"``: L-BFGS from optax on -log S over log N, one scalar
  problem per configuration under vmap, started from a coarse grid.

Derivatives of N* with respect to M, D, D' and every law coefficient come from
the implicit function theorem on dS/dlogN = 0 (a custom_jvp), not from
unrolling the solver; the optimal throughput's gradient then follows by the
envelope theorem.

The solvers take the objective as a static setting (:class:`_Objective`), so
the wall-clock planner (:mod:`sdsl_jax.planning.wallclock`) and the
compute-budget planner (:mod:`sdsl_jax.planning.budget`) reuse them with their own.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining
from sdsl_jax.laws import throughput


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


class _Objective(NamedTuple):
    """What the solvers maximise over log N (static: plain functions, hashable).

    value_and_flags(log_draft, ctx) -> (F, (pays, flat)): F quasi-concave in
    log N and maximal where the speedup is (see :func:`_objective_and_flat`).
    log_speedup(log_draft, ctx) -> log S*: what the gradient solver maximises.
    Elementwise in log_draft. The FLOP law is one such pair; the wall-clock
    and compute-budget planners supply their own and reuse these solvers.
    """

    value_and_flags: Callable
    log_speedup: Callable


class _Settings(NamedTuple):
    """Static solver settings (hashable: they key jit's cache)."""

    method: str
    min_cost_ratio: float
    max_cost_ratio: float
    grid_size: int
    root_steps: int
    lbfgs_steps: int
    objective: _Objective


class _Context(NamedTuple):
    """Everything the objective needs besides log N; all differentiable."""

    target_params: jnp.ndarray
    draft_data_loss: jnp.ndarray  # E + B / D**b: the draft's loss without its model term
    target_perplexity: jnp.ndarray
    pretraining_law: pretraining.PretrainingLaw
    acceptance_law: acceptance_lib.AcceptanceLaw


def _acceptance_at(log_draft, ctx: _Context):
    """(alpha, draft perplexity, cost ratio) at N = exp(log_draft)."""
    draft_loss = ctx.draft_data_loss + pretraining.model_term(ctx.pretraining_law, log_draft)
    draft_ppl = jnp.exp(draft_loss)
    alpha = acceptance_lib.acceptance(ctx.acceptance_law, draft_ppl, ctx.target_perplexity)
    return alpha, draft_ppl, jnp.exp(log_draft) / ctx.target_params


def _speedup_and_pays(log_draft, ctx: _Context):
    alpha, _, cost_ratio = _acceptance_at(log_draft, ctx)
    _, peak, pays = throughput._optimum(throughput._cap_acceptance(alpha), cost_ratio)
    return peak, pays


def _speedup(log_draft, ctx):
    return _speedup_and_pays(log_draft, ctx)[0]


def _objective_and_flat(log_draft, ctx: _Context):
    """(F, flat) with F quasi-concave in log N and maximal where S* is.

    F = log S* where drafting pays (the log keeps the slope well scaled when
    alpha nears 1 and S* grows steeply). Where it does not, S* is flat at 1 and
    useless for bracketing, so F continues as the log pay margin
    log(h(alpha) / c) < 0, h(alpha) = -alpha log(alpha) / (1 - alpha) being the
    largest cost ratio that still pays (throughput.speculation_pays). Both
    pieces are 0 on the boundary, and the margin rises towards the band where
    drafting pays however narrow that band is, so a coarse grid and the sign of
    dF/dlogN find it. Only where alpha = 0 (the plane clipped below) is F flat
    (-inf); ``flat`` marks those points.
    """
    alpha, _, cost_ratio = _acceptance_at(log_draft, ctx)
    return _flop_objective_at(alpha, cost_ratio, log_draft - jnp.log(ctx.target_params))


def _flop_objective_at(alpha, cost_ratio, log_cost_ratio):
    """F and its flags from alpha (uncapped) and the cost ratio N / M (and its log)."""
    alpha = throughput._cap_acceptance(alpha)
    _, peak, pays = throughput._optimum(alpha, cost_ratio)
    positive = alpha > 0
    safe = jnp.where(positive, alpha, 0.5)
    log_margin = jnp.log(safe * -throughput._log_acceptance(safe) / (1 - safe)) - log_cost_ratio
    value = jnp.where(pays, jnp.log(peak), jnp.where(positive, log_margin, -jnp.inf))
    return value, (pays, ~positive)


FLOP_OBJECTIVE = _Objective(
    value_and_flags=_objective_and_flat,
    log_speedup=lambda log_draft, ctx: jnp.log(_speedup(log_draft, ctx)))


def _objective(objective: _Objective, log_draft, ctx):
    return objective.value_and_flags(log_draft, ctx)[0]


def _slope_and_flat(objective: _Objective, log_draft, ctx):
    """(dF/dlogN, (pays, flat)), elementwise: the objective is elementwise in log_draft."""
    (_, flags), (slope, _) = jax.jvp(
        lambda s: objective.value_and_flags(s, ctx), (log_draft,), (jnp.ones_like(log_draft),))
    return slope, flags


def _slope_and_curvature(objective: _Objective, log_draft, ctx):
    slope = lambda s: _slope_and_flat(objective, s, ctx)[0]
    return jax.jvp(slope, (log_draft,), (jnp.ones_like(log_draft),))


def _acceptance_window(ctx: _Context, log_lo, log_hi):
    """Narrow [log_lo, log_hi] to the draft sizes where 0 < raw alpha < MAX.

    With A < 0 acceptance rises with N. Below the size N_0 where the plane
    crosses 0 nothing pays; above the size N_1 where it reaches the cap
    MAX_ACCEPTANCE, alpha is constant while the cost keeps growing, so S*
    falls. The optimum therefore lies in [N_0, N_1], and cutting the range
    there removes the kink the clip puts into S* (a root finder on dS*/dlogN
    crawls at a kink). Both ends are the plane and the pre-training law solved
    for N, differentiable in every coefficient. Returns (lo, hi, capped_high).
    """
    acc, pre = ctx.acceptance_law, ctx.pretraining_law
    rising = acc.draft_coeff < 0
    rest = acc.target_coeff * ctx.target_perplexity + acc.intercept

    def log_draft_at(alpha):
        # alpha = A x + rest  ->  x;  log x = draft_data_loss + A' N**-a  ->  log N.
        ppl = (alpha - rest) / jnp.where(rising, acc.draft_coeff, -1.0)
        excess = jnp.log(jnp.where(ppl > 0, ppl, 1.0)) - ctx.draft_data_loss
        ok = rising & (ppl > 0) & (excess > 0)
        log_n = (jnp.log(pre.param_coeff) - jnp.log(jnp.where(ok, excess, 1.0))) / pre.param_exponent
        return log_n, ok

    log_zero, has_zero = log_draft_at(0.0)
    log_cap, has_cap = log_draft_at(acceptance_lib.MAX_ACCEPTANCE)
    lo = jnp.where(has_zero, jnp.clip(log_zero, log_lo, log_hi), log_lo)
    capped = has_cap & (log_cap < log_hi)
    hi = jnp.where(capped, jnp.maximum(log_cap, lo), log_hi)
    return lo, hi, capped


def _expand(ctx: _Context) -> _Context:
    """Append a trailing axis so the context broadcasts against a grid."""
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[..., None], ctx)


def _grid_bracket(objective: _Objective, ctx, log_lo, log_hi, grid_size):
    """Bracket the interior peak on a log-spaced grid.

    Returns the best grid point below the top end, its two neighbours, whether
    it is the bottom end, and the objective at the top end. The top end is
    kept out of the argmax because S* need not be unimodal there: as the plane
    drives alpha towards its cap, S* ~ 1 / (1 - alpha) can rise again after an
    interior peak. The solvers find the interior peak and then compare it with
    the top end, which is the other candidate.
    """
    frac = jnp.linspace(0.0, 1.0, grid_size, dtype=log_lo.dtype)
    grid = log_lo[..., None] + (log_hi - log_lo)[..., None] * frac
    values = _objective(objective, grid, _expand(ctx))
    k = jnp.argmax(values[..., :-1], axis=-1)
    pick = lambda idx: jnp.take_along_axis(
        grid, jnp.clip(idx, 0, grid_size - 1)[..., None], axis=-1)[..., 0]
    return pick(k), pick(k - 1), pick(k + 1), k == 0, values[..., -1]


def _better_of(objective: _Objective, ctx, interior, value_hi, log_hi):
    """The interior solution or the top end, whichever has the larger objective."""
    return jnp.where(value_hi > _objective(objective, interior, ctx), log_hi, interior)


def _bracket_solve(settings: _Settings, ctx, log_lo, log_hi):
    objective = settings.objective
    best, low, high, first, value_hi = _grid_bracket(objective, ctx, log_lo, log_hi,
                                                     settings.grid_size)
    slope_low, (pays_low, _) = _slope_and_flat(objective, low, ctx)
    slope_high, (pays_high, _) = _slope_and_flat(objective, high, ctx)
    # The grid's best point is the bottom end and S falls away from it: the
    # optimum is that end, exactly.
    at_lo = first & (slope_low <= 0)

    def illinois(_, state):
        low, high, g_low, g_high, pays_low, pays_high, side = state
        # The secant only between two points where drafting pays: across the
        # edge of the paying band F changes scale (log S* vs the log margin),
        # and a secant through both pieces lands far from the root.
        secant_ok = pays_low & pays_high & (g_low > 0) & (g_high < 0)
        denom = jnp.where(secant_ok, g_high - g_low, -1.0)
        secant = (low * g_high - high * g_low) / denom
        mid = jnp.where(secant_ok, jnp.clip(secant, low, high), 0.5 * (low + high))
        slope, (pays, flat) = _slope_and_flat(objective, mid, ctx)
        # Where alpha = 0 the objective is flat and its slope says nothing;
        # the grid's best point shows the way instead.
        go_right = jnp.where(flat, mid < best, slope > 0)
        # Illinois: an end kept twice in a row has its slope halved, which
        # turns regula falsi's one-sided crawl into superlinear convergence.
        g_high = jnp.where(go_right & (side > 0), 0.5 * g_high, g_high)
        g_low = jnp.where(~go_right & (side < 0), 0.5 * g_low, g_low)
        return (jnp.where(go_right, mid, low), jnp.where(go_right, high, mid),
                jnp.where(go_right, slope, g_low), jnp.where(go_right, g_high, slope),
                jnp.where(go_right, pays, pays_low), jnp.where(go_right, pays_high, pays),
                jnp.where(go_right, 1, -1).astype(side.dtype))

    state = (low, high, slope_low, slope_high, pays_low, pays_high,
             jnp.zeros(low.shape, jnp.int32))
    low, high, g_low, g_high, pays_low, pays_high, _ = jax.lax.fori_loop(
        0, settings.root_steps, illinois, state)
    secant_ok = pays_low & pays_high & (g_low > 0) & (g_high < 0)
    secant = (low * g_high - high * g_low) / jnp.where(secant_ok, g_high - g_low, -1.0)
    root = jnp.where(secant_ok, jnp.clip(secant, low, high), 0.5 * (low + high))
    return _better_of(objective, ctx, jnp.where(at_lo, log_lo, root), value_hi, log_hi)


def _gradient_solve(settings: _Settings, ctx, log_lo, log_hi):
    objective = settings.objective
    start, _, _, _, value_hi = _grid_bracket(objective, ctx, log_lo, log_hi,
                                             max(4, settings.grid_size // 2))
    shape = start.shape
    flat_ctx = jax.tree_util.tree_map(
        lambda leaf: jnp.broadcast_to(leaf, shape).reshape(-1), ctx)
    optimizer = optax.lbfgs()

    def solve_one(s0, one_ctx, lo, hi):
        def loss(s):
            s = jnp.clip(s, lo, hi)
            return -objective.log_speedup(s, one_ctx)

        value_and_grad = optax.value_and_grad_from_state(loss)

        def step(carry):
            s, state, _ = carry
            value, grad = value_and_grad(s, state=state)
            updates, state = optimizer.update(
                grad, state, s, value=value, grad=grad, value_fn=loss)
            return optax.apply_updates(s, updates), state, jnp.abs(grad)

        def keep_going(carry):
            _, state, grad_norm = carry
            count = optax.tree_utils.tree_get(state, "count")
            tol = 8 * jnp.finfo(s0.dtype).eps
            return (count < settings.lbfgs_steps) & (grad_norm > tol)

        init = (s0, optimizer.init(s0), jnp.asarray(jnp.inf, s0.dtype))
        s, _, _ = jax.lax.while_loop(keep_going, step, init)
        return jnp.clip(s, lo, hi)

    lo = jnp.broadcast_to(log_lo, shape).reshape(-1)
    hi = jnp.broadcast_to(log_hi, shape).reshape(-1)
    solved = jax.vmap(solve_one)(start.reshape(-1), flat_ctx, lo, hi)
    return _better_of(objective, ctx, solved.reshape(shape), value_hi, log_hi)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _solve_log_draft(settings: _Settings, ctx, log_lo, log_hi):
    if settings.method == "bracket":
        return _bracket_solve(settings, ctx, log_lo, log_hi)
    return _gradient_solve(settings, ctx, log_lo, log_hi)


@_solve_log_draft.defjvp
def _solve_log_draft_jvp(settings, primals, tangents):
    ctx, log_lo, log_hi = primals
    ctx_dot, log_lo_dot, log_hi_dot = tangents
    s = _solve_log_draft(settings, ctx, log_lo, log_hi)
    # Implicit function theorem on g(s, ctx) = dS/ds = 0:
    #   ds = -(dg/dctx . ctx_dot) / (dg/ds).
    objective = settings.objective
    _, g_ctx_dot = jax.jvp(lambda c: _slope_and_flat(objective, s, c)[0], (ctx,), (ctx_dot,))
    _, curvature = _slope_and_curvature(objective, s, ctx)
    interior = (s > log_lo) & (s < log_hi) & (curvature < 0)
    s_dot = -g_ctx_dot / jnp.where(interior, curvature, -1.0)
    # A solution pinned to an end of the range moves with that end.
    s_dot = jnp.where(interior, s_dot,
                      jnp.where(s <= log_lo, log_lo_dot,
                                jnp.where(s >= log_hi, log_hi_dot, jnp.zeros_like(s))))
    return s, s_dot


@functools.partial(jax.jit, static_argnums=0)
def _plan(settings: _Settings, target_params, draft_tokens, target_tokens,
          pretraining_law, acceptance_law) -> DraftPlan:
    target_params, draft_tokens, target_tokens = jnp.broadcast_arrays(
        target_params, draft_tokens, target_tokens)
    target_ppl = pretraining.perplexity(pretraining_law, target_params, target_tokens)
    draft_data_loss = (pretraining_law.irreducible_loss
                       + pretraining.data_term(pretraining_law, jnp.log(draft_tokens)))
    ctx = _Context(target_params, draft_data_loss, target_ppl, pretraining_law, acceptance_law)
    log_target = jnp.log(target_params)
    log_lo = log_target + jnp.log(settings.min_cost_ratio)
    log_hi = log_target + jnp.log(settings.max_cost_ratio)
    window_lo, window_hi, capped = _acceptance_window(ctx, log_lo, log_hi)
    log_draft = _solve_log_draft(settings, ctx, window_lo, window_hi)

    alpha, draft_ppl, cost_ratio = _acceptance_at(log_draft, ctx)
    gamma, speedup, pays = throughput._optimum(throughput._cap_acceptance(alpha), cost_ratio)
    draft_params = jnp.exp(log_draft)
    integer_gamma = throughput.optimal_integer_lookahead(alpha, cost_ratio)
    integer_speedup = throughput.speedup(alpha, integer_gamma, cost_ratio)
    raw_alpha = acceptance_lib.raw_acceptance(acceptance_law, draft_ppl, target_ppl)
    no_draft = lambda value, fallback: jnp.where(pays, value, fallback)
    two_m = 2 * target_params
    return DraftPlan(
        draft_params=no_draft(draft_params, 0.0),
        cost_ratio=no_draft(cost_ratio, 0.0),
        draft_perplexity=no_draft(draft_ppl, jnp.inf),
        target_perplexity=target_ppl,
        acceptance=no_draft(alpha, 0.0),
        lookahead=no_draft(gamma, 0.0),
        speedup=no_draft(speedup, 1.0),
        tokens_per_flop=no_draft(speedup, 1.0) / two_m,
        integer_lookahead=no_draft(integer_gamma, 0.0),
        integer_speedup=no_draft(integer_speedup, 1.0),
        integer_tokens_per_flop=no_draft(integer_speedup, 1.0) / two_m,
        pays=pays,
        # At N_1 the plane meets the cap; rounding may leave raw alpha a hair below it.
        extrapolated=pays & ((raw_alpha < 0) | (raw_alpha > acceptance_lib.MAX_ACCEPTANCE)
                             | (capped & (log_draft >= window_hi))),
        at_bound=pays & ((log_draft <= log_lo) | (log_draft >= log_hi)),
    )


METHODS = ("bracket", "gradient")


def _checked_settings(method: str, cost_ratio_bounds, objective: _Objective,
                      root_steps: int = 8) -> _Settings:
    """Solver settings from a public function's arguments, each checked and named."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    lo, hi = (float(b) for b in cost_ratio_bounds)
    if not 0 < lo < hi <= 1:
        raise ValueError(f"cost_ratio_bounds must satisfy 0 < low < high <= 1, got {cost_ratio_bounds}")
    return _Settings(method=method, min_cost_ratio=lo, max_cost_ratio=hi, grid_size=8,
                     root_steps=root_steps, lbfgs_steps=60, objective=objective)


def _laws_or_defaults(pretraining_law, acceptance_law):
    """The paper's laws where none are given."""
    return (pretraining.BESIROGLU_2024 if pretraining_law is None else pretraining_law,
            acceptance_lib.SDSL_2026 if acceptance_law is None else acceptance_law)


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
    """
    settings = _checked_settings(method, cost_ratio_bounds, FLOP_OBJECTIVE)
    _validate.check_positive("target_params", target_params)
    _validate.check_positive("draft_tokens", draft_tokens)
    _validate.check_positive("target_tokens", target_tokens)
    pretraining_law, acceptance_law = _laws_or_defaults(pretraining_law, acceptance_law)
    dtype = jnp.result_type(target_params, draft_tokens, target_tokens, float)
    as_float = lambda v: jnp.asarray(v, dtype)
    return _plan(settings, as_float(target_params), as_float(draft_tokens),
                 as_float(target_tokens),
                 jax.tree_util.tree_map(as_float, pretraining_law),
                 jax.tree_util.tree_map(as_float, acceptance_law))
