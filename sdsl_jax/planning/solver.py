r"""The planners' shared solver: the draft size N that maximises an objective over log N.

Every planner (FLOP: :mod:`sdsl_jax.planning.flop`, wall-clock:
:mod:`sdsl_jax.planning.wallclock`, compute budget:
:mod:`sdsl_jax.planning.budget`) maximises a speedup S*(N) over the draft size,
the lookahead already optimised for each N. They differ only in how S* is
computed, which they hand over as an :class:`Objective`; the search is this
module's. Everything is pure JAX and vectorised over any broadcast shape of
configurations.

The search runs over s = log N in three steps:

1. The range: log N in [log M + log c_lo, log M + log c_hi], c the cost ratio
   N / M, (c_lo, c_hi) the public ``cost_ratio_bounds`` (:func:`search_range`),
   its lower end raised to where the draft's loss reaches half the log of
   the dtype's largest number (:func:`finite_floor`), so that the search,
   and the solution where nothing pays, never visit a draft whose
   perplexity overflows: that is what keeps every gradient finite.
2. The window: the range cut to where the acceptance plane lies inside
   (0, cap) (:func:`acceptance_window`): below it nothing pays, above it alpha
   is pinned at its cap and S* falls. Cutting there removes the kink the clip
   puts into S*.
3. The solve (:func:`solve_log_draft`). Two regimes it must survive, both found
   by brute force over wide random configurations: drafting may pay only in a
   band of N narrower than any affordable grid step, and as alpha nears its cap
   S* can rise again after an interior peak. So it maximises an objective F
   that is log S* where drafting pays and the log pay margin where it does not
   (pointing towards the paying band; :func:`flop_objective_at`), and always
   weighs the top end of the window against the interior peak.

   * ``method="bracket"`` (default): an 8-point log grid finds the best point
     of F, whose slope dF/ds picks the grid step on the peak's side; then
     Illinois (regula falsi) steps on dF/ds, with bisection across the edge of
     the paying band: 7 steps reach 1e-13 relative in float64 for the FLOP
     law, 6 reach float32's rounding. A large batch is solved in chunks that
     stay in cache (:func:`chunk_size`; ``Settings.chunked=False`` turns that off).
   * ``method="gradient"``: L-BFGS from optax on -log S* over s, one scalar
     problem per configuration under vmap, started from a coarse grid.

   Derivatives of the solution with respect to everything the objective
   depends on come from the implicit function theorem on dF/ds = 0 (a
   custom_jvp), not from unrolling the solver; the optimal speedup's gradient
   then follows by the envelope theorem.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import lambertw, throughput

METHODS = ("bracket", "gradient")


class Objective(NamedTuple):
    """What the solver maximises over s = log N (static: plain functions, hashable).

    value_and_flags(log_draft, ctx) -> (F, (pays, flat)): F quasi-concave in s
      and maximal where S* is; ``pays`` where drafting beats the target alone,
      ``flat`` where F carries no slope (alpha = 0, F = -inf). See
      :func:`flop_objective_at` for the FLOP law's F.
    log_speedup(log_draft, ctx) -> log S*: what the gradient method maximises.

    Both are elementwise in log_draft; ``ctx`` is the planner's pytree of
    everything else (differentiable leaves).
    """

    value_and_flags: Callable
    log_speedup: Callable


class Settings(NamedTuple):
    """Static solver settings (hashable: they key jit's cache)."""

    method: str
    min_cost_ratio: float
    max_cost_ratio: float
    grid_size: int
    root_steps: int
    root_steps_float32: int
    lbfgs_steps: int
    objective: Objective
    # False: the bracket solve runs over the whole batch in one pass, never in chunks.
    chunked: bool = True


def check_method(method: str) -> None:
    """Raise ValueError unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def checked_settings(method: str, cost_ratio_bounds, objective: Objective,
                     root_steps: int = 7, root_steps_float32: int | None = 6) -> Settings:
    """Solver settings from a public function's arguments, each checked and named.

    ``cost_ratio_bounds`` = (c_lo, c_hi) must satisfy 0 < c_lo < c_hi <= 1;
    ``root_steps`` is the number of Illinois steps of the bracket method after
    the grid, ``root_steps_float32`` their number in float32 (None: the same).
    The defaults are the FLOP law's: on 10^5 random configurations (M 1e5 to
    1e13, D and D' 1e5 to 1e14, and the benchmark's) 7 steps leave N* within
    1.2e-13 of a 30-step float64 solution, as 8 did before the grid
    returned slopes (6 steps: 5e-8); float32 reaches its rounding, a median
    of 1e-6, after 6. Another 10^5 (the same ranges, another seed) have three
    exceptions above 1e-12: 1.2e-11, 4.0e-8 and 8.7e-7. The worst barely pays
    (alpha 0.013, lookahead 3e-4): its grid bracket starts outside the paying
    band, where the steps bisect, and S* is flat around N* there.
    """
    check_method(method)
    lo, hi = (float(b) for b in cost_ratio_bounds)
    if not 0 < lo < hi <= 1:
        raise ValueError(f"cost_ratio_bounds must satisfy 0 < low < high <= 1, got {cost_ratio_bounds}")
    return Settings(method=method, min_cost_ratio=lo, max_cost_ratio=hi, grid_size=8,
                    root_steps=root_steps,
                    root_steps_float32=root_steps if root_steps_float32 is None else root_steps_float32,
                    lbfgs_steps=60, objective=objective)


class SearchRange(NamedTuple):
    """[log_lo, log_hi]: log N from the settings' cost-ratio bounds."""

    log_lo: jnp.ndarray
    log_hi: jnp.ndarray


def search_range(target_params, settings: Settings, log_floor=None, log_target_params=None
                 ) -> SearchRange:
    """log N in [log M + log c_lo, log M + log c_hi] (module doc, step 1), its
    lower end raised to ``log_floor`` where given (:func:`finite_floor`), but
    never above the upper end. ``log_target_params``: log M where the caller
    has it."""
    log_target = jnp.log(target_params) if log_target_params is None else log_target_params
    log_lo = log_target + jnp.log(settings.min_cost_ratio)
    log_hi = log_target + jnp.log(settings.max_cost_ratio)
    if log_floor is not None:
        log_lo = jnp.minimum(jnp.maximum(log_lo, log_floor), log_hi)
    return SearchRange(log_lo, log_hi)


def max_loss(dtype) -> float:
    """The largest draft loss the search visits: half the log of the dtype's
    largest number (44.4 nats in float32, 354.9 in float64).

    At that loss the perplexity is sqrt(max), so the perplexity times the
    factors its derivatives carry (powers of the loss's slope, a few tens)
    stays finite, and so do the solver's implicit derivatives and their
    transposes. Drafting pays only at perplexities far below it (alpha > 0
    needs x < (B y + C) / |A|, about 1e3 for the paper's plane).
    """
    return 0.5 * float(np.log(np.finfo(dtype).max))


def finite_floor(pretraining_law, other_loss):
    """log N at which the draft's loss ``other_loss`` + A / N^a reaches
    :func:`max_loss`; +inf where ``other_loss`` (the loss without the model
    term, or a bound on it) is already there.

    The default lower end of the search, 1e-8 M, is under one parameter for
    targets below 1e8, and A / N^a, and with it the perplexity, overflows
    there (in float32 already below a few hundred parameters). Where nothing
    pays the solver returns the lower end and the planners evaluate their
    fields there: the infinite perplexity then turns the zero derivative of
    the masked fields into NaN (0 * inf) in every gradient. Raising the lower
    end to this floor keeps every point the solver visits, and the solution,
    where the laws are finite.
    """
    pre = pretraining_law
    room = max_loss(jnp.result_type(other_loss)) - other_loss
    ok = room > 0
    log_n = (jnp.log(pre.param_coeff) - throughput.vector_log(jnp.where(ok, room, 1.0))
             ) / pre.param_exponent
    return jnp.where(ok, log_n, jnp.inf)


class Window(NamedTuple):
    """[log_lo, log_hi] within the search range where the solver looks; ``capped``
    where log_hi is the draft size at which alpha reaches its cap."""

    log_lo: jnp.ndarray
    log_hi: jnp.ndarray
    capped: jnp.ndarray


def acceptance_window(pretraining_law, acceptance_law, target_perplexity, draft_data_loss,
                      search: SearchRange) -> Window:
    """The search range narrowed to the draft sizes where 0 < raw alpha < MAX.

    For a draft trained on fixed data, its loss is draft_data_loss + A' / N^a
    (``draft_data_loss`` = E + B / D^b, the pre-training law without its model
    term). With the plane's draft coefficient A < 0 acceptance rises with N.
    Below the size N_0 where the plane crosses 0 nothing pays; above the size
    N_1 where it reaches the cap MAX_ACCEPTANCE, alpha is constant while the
    cost keeps growing, so S* falls. The optimum therefore lies in [N_0, N_1],
    and cutting the range there removes the kink the clip puts into S* (a root
    finder on dS*/dlogN crawls at a kink). Both ends are the plane and the
    pre-training law solved for N, differentiable in every coefficient.
    """
    acc, pre = acceptance_law, pretraining_law
    log_lo, log_hi = search
    rising = acc.draft_coeff < 0
    rest = acc.target_coeff * target_perplexity + acc.intercept

    def log_draft_at(alpha):
        # alpha = A x + rest  ->  x;  log x = draft_data_loss + A' N**-a  ->  log N.
        ppl = (alpha - rest) / jnp.where(rising, acc.draft_coeff, -1.0)
        # throughput.vector_log: these run once per configuration, where XLA's
        # float64 log is a libm call per element.
        log = throughput.vector_log
        excess = log(jnp.where(ppl > 0, ppl, 1.0)) - draft_data_loss
        ok = rising & (ppl > 0) & (excess > 0)
        log_n = (jnp.log(pre.param_coeff) - log(jnp.where(ok, excess, 1.0))) / pre.param_exponent
        return log_n, ok

    log_zero, has_zero = log_draft_at(0.0)
    log_cap, has_cap = log_draft_at(acceptance_lib.MAX_ACCEPTANCE)
    lo = jnp.where(has_zero, jnp.clip(log_zero, log_lo, log_hi), log_lo)
    capped = has_cap & (log_cap < log_hi)
    hi = jnp.where(capped, jnp.maximum(log_cap, lo), log_hi)
    return Window(lo, hi, capped)


def flop_objective_at(alpha, cost_ratio, log_cost_ratio):
    """The FLOP law's objective F and its flags (pays, flat) at raw alpha and c = N / M.

    F = log S* where drafting pays (the log keeps the slope well scaled when
    alpha nears 1 and S* grows steeply). Where it does not, S* is flat at 1 and
    useless for bracketing, so F continues as the log pay margin
    log(h(alpha) / c) < 0, h(alpha) = -alpha log(alpha) / (1 - alpha) being the
    largest cost ratio that still pays (throughput.speculation_pays). Both
    pieces are 0 on the boundary, and the margin rises towards the band where
    drafting pays however narrow that band is, so a coarse grid and the sign of
    dF/dlogN find it. Only where alpha = 0 (the plane clipped below) is F flat
    (-inf); ``flat`` marks those points. alpha is capped below 1 here;
    ``log_cost_ratio`` is log c, passed in so its derivative stays exact.
    """
    # Written out rather than through throughput.optimum, whose pay test and
    # peak each take log(alpha) on their own inputs: here one log(alpha)
    # serves the pay margin, kappa and S*, and one log serves both pieces of
    # F. The formulas are throughput.optimum's. Both logs are
    # throughput.positive_log, vector arithmetic in float64 where XLA's log
    # is a libm call per element.
    alpha = throughput.cap_acceptance(alpha)
    positive = alpha > 0
    safe = jnp.where(positive, alpha, 0.5)
    neg_log_alpha = -throughput.log_acceptance(safe)
    bound = safe * neg_log_alpha / (1 - safe)  # h(alpha): the largest c that pays
    pays = positive & (cost_ratio < bound)
    # A paying point stands in where drafting does not pay, so the unused
    # branch (and its derivative, multiplied by zero) stays finite.
    alpha_s = jnp.where(pays, alpha, 0.5)
    c_s = jnp.where(pays, cost_ratio, 0.1)
    neg_log_alpha_s = jnp.where(pays, neg_log_alpha, float(np.log(2.0)))  # -log(0.5)
    w, _ = lambertw.lambertw_negexp_parts(neg_log_alpha_s * (1 - c_s) / c_s, -1)
    peak = jnp.maximum(neg_log_alpha_s / ((1 - alpha_s) * c_s * -w), 1.0)
    value = (throughput.positive_log(jnp.where(pays, peak, bound))
             - jnp.where(pays, 0.0, log_cost_ratio))
    return jnp.where(positive, value, -jnp.inf), (pays, ~positive)


# --- The solve ------------------------------------------------------------------------

def _objective(objective: Objective, log_draft, ctx):
    return objective.value_and_flags(log_draft, ctx)[0]


def _slope_and_flat(objective: Objective, log_draft, ctx):
    """(dF/dlogN, (pays, flat)), elementwise: the objective is elementwise in log_draft."""
    (_, flags), (slope, _) = jax.jvp(
        lambda s: objective.value_and_flags(s, ctx), (log_draft,), (jnp.ones_like(log_draft),))
    return slope, flags


def _slope_and_curvature(objective: Objective, log_draft, ctx):
    slope = lambda s: _slope_and_flat(objective, s, ctx)[0]
    return jax.jvp(slope, (log_draft,), (jnp.ones_like(log_draft),))


def _expand(ctx):
    """Append a trailing axis so the context broadcasts against a grid."""
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[..., None], ctx)


def _grid_bracket(objective: Objective, ctx, log_lo, log_hi, grid_size):
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


def _better_of(objective: Objective, ctx, interior, value_hi, log_hi):
    """The interior solution or the top end, whichever has the larger objective."""
    return jnp.where(value_hi > _objective(objective, interior, ctx), log_hi, interior)


def _next_point(low, high, g_low, g_high, pays_low, pays_high):
    """The secant's root in [low, high], or the midpoint where the secant may
    not be taken. It may where both ends pay (across the edge of the paying
    band F changes scale, log S* against the log margin, and a secant through
    both pieces lands far from the root) and the slopes bracket the root, an
    end whose slope is exactly 0 included: that end is the root, and the
    secant lands on it. (Refused, every later step bisected towards it: seen
    on one configuration of the wall-clock planner, where 24 steps left N*
    4e-12 away.)"""
    secant_ok = pays_low & pays_high & (g_low >= 0) & (g_high <= 0) & (g_low > g_high)
    secant = (low * g_high - high * g_low) / jnp.where(secant_ok, g_high - g_low, -1.0)
    return jnp.where(secant_ok, jnp.clip(secant, low, high), 0.5 * (low + high))


def _bracket_solve(settings: Settings, ctx, log_lo, log_hi):
    objective = settings.objective
    best, below, above, first, value_hi = _grid_bracket(objective, ctx, log_lo, log_hi,
                                                        settings.grid_size)
    # The slope at the grid's best point says on which side of it the peak
    # lies, so the bracket is one grid step, not the two around the best
    # point: worth one root step, for the same two slopes.
    slope_best, (pays_best, flat_best) = _slope_and_flat(objective, best, ctx)
    # Where alpha = 0 there the slope says nothing; the root steps then head
    # towards the best point, and so does this choice.
    right = ~flat_best & (slope_best > 0)
    # The neighbour on that side; left of the bottom end it is the best point
    # itself, and the bottom end is then the answer (at_lo below).
    other = jnp.where(right, above, below)
    slope_other, (pays_other, _) = _slope_and_flat(objective, other, ctx)
    ends = lambda at_best, at_other: (jnp.where(right, at_best, at_other),
                                      jnp.where(right, at_other, at_best))
    low, high = ends(best, other)
    slope_low, slope_high = ends(slope_best, slope_other)
    pays_low, pays_high = ends(pays_best, pays_other)
    # The grid's best point is the bottom end and S falls away from it: the
    # optimum is that end, exactly.
    at_lo = first & ~right
    side = jnp.where(right, 1, -1).astype(jnp.int32)

    def illinois(_, state):
        low, high, g_low, g_high, pays_low, pays_high, side = state
        mid = _next_point(low, high, g_low, g_high, pays_low, pays_high)
        slope, (pays, flat) = _slope_and_flat(objective, mid, ctx)
        # Where alpha = 0 the objective is flat and its slope says nothing;
        # the grid's best point shows the way instead.
        go_right = jnp.where(flat, mid < best, slope > 0)
        # Illinois: an end kept twice in a row has its slope halved, which
        # turns regula falsi's one-sided crawl into superlinear convergence.
        g_high = jnp.where(go_right & (side > 0), 0.5 * g_high, g_high)
        g_low = jnp.where(~go_right & (side < 0), 0.5 * g_low, g_low)
        keep = lambda new, at_low, at_high: (jnp.where(go_right, new, at_low),
                                             jnp.where(go_right, at_high, new))
        return (*keep(mid, low, high), *keep(slope, g_low, g_high),
                *keep(pays, pays_low, pays_high),
                jnp.where(go_right, 1, -1).astype(side.dtype))

    state = (low, high, slope_low, slope_high, pays_low, pays_high, side)
    steps = settings.root_steps_float32 if low.dtype == jnp.float32 else settings.root_steps
    low, high, g_low, g_high, pays_low, pays_high, _ = jax.lax.fori_loop(0, steps, illinois, state)
    root = _next_point(low, high, g_low, g_high, pays_low, pays_high)
    return _better_of(objective, ctx, jnp.where(at_lo, log_lo, root), value_hi, log_hi)


def _gradient_solve(settings: Settings, ctx, log_lo, log_hi):
    objective = settings.objective
    start, _, _, _, value_hi = _grid_bracket(objective, ctx, log_lo, log_hi,
                                             max(4, settings.grid_size // 2))
    shape = start.shape
    flat_ctx = jax.tree_util.tree_map(
        lambda leaf: jnp.broadcast_to(leaf, shape).reshape(-1), ctx)
    # optax is imported here, its only use, so every sdsl plan does not pay its import.
    import optax

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


# Chunks of about this many bytes per array (51,200 configurations in
# float64, 102,400 in float32). Two effects set it. In cache: the bracket
# solve is a few dozen elementwise passes, and in chunks their intermediates
# stay in a core's cache instead of streaming through memory. In parallel:
# XLA's CPU cost model gives a memory-bound fusion one thread per 256 KiB of
# output, so a chunk of 20,000 float64 (160 KiB) ran every fusion of the solve
# on one core. On 10^6 configurations (2 cores, AVX-512 Xeon, 2 MiB L2 a
# core) the float64 plan took 0.51 s at 20,000, 0.44-0.46 s from 40,000 to
# 62,500 and 0.49 s at 100,000; float32 0.24 s at 20,000 and 0.20-0.22 s at
# 100,000.
CHUNK_BYTES = 400 << 10
# The smallest chunk (configurations) and the largest (bytes per array).
CHUNK_MIN = 4096
CHUNK_MAX_BYTES = 1 << 20
# A chunk size that is a multiple of this keeps each device's block of a
# batch laid along a mesh of up to this many devices whole (see in_chunks).
CHUNK_ALIGN = 32


@functools.lru_cache(maxsize=64)
def chunk_size(count: int, itemsize: int = 8) -> int | None:
    """The chunk size for ``count`` configurations of ``itemsize``-byte floats:
    the divisor of ``count`` from :data:`CHUNK_MIN` to :data:`CHUNK_MAX_BYTES`
    per array nearest :data:`CHUNK_BYTES` per array (a multiple of
    :data:`CHUNK_ALIGN` preferred), or None where none is (too few
    configurations, or a count without such a divisor): those are solved in
    one pass."""
    lo, hi = CHUNK_MIN, CHUNK_MAX_BYTES // itemsize
    if count < 2 * lo:
        return None
    divisors = [d for d in range(lo, min(hi, count // 2) + 1) if count % d == 0]
    if not divisors:
        return None
    aligned = [d for d in divisors if d % CHUNK_ALIGN == 0]
    target = CHUNK_BYTES / itemsize
    return min(aligned or divisors, key=lambda d: abs(np.log(d / target)))


def in_chunks(fn, *args):
    """``fn(*args)``, elementwise, run chunk by chunk (lax.map).

    The solve is a few dozen elementwise passes; over a large batch each pass
    streams every intermediate through memory, in chunks they stay in cache.
    ``args`` are pytrees whose array leaves broadcast to one batch shape;
    ``fn`` returns a pytree of arrays of that shape. The batch (flattened to
    n = rows x cols, rows = :func:`chunk_size`) is cut into the cols chunks of
    rows configurations spaced cols apart: as a [rows, cols] array transposed,
    so that a batch laid along a mesh in contiguous blocks (n = devices x
    block) keeps each device's block on that device (whole rows), and the loop
    runs over the unsplit axis. Scalar leaves (the laws' coefficients) are
    shared by every chunk.
    """
    leaves, tree = jax.tree_util.tree_flatten(args)
    shape = jnp.broadcast_shapes(*(jnp.shape(leaf) for leaf in leaves))
    count = int(np.prod(shape, dtype=np.int64))
    floats = [leaf for leaf in leaves if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)]
    itemsize = max((jnp.result_type(leaf).itemsize for leaf in floats), default=8)
    rows = chunk_size(count, itemsize)
    if rows is None:
        return fn(*args)
    cols = count // rows
    split = lambda x: jnp.broadcast_to(x, shape).reshape(rows, cols).T
    mapped = [jnp.ndim(leaf) > 0 for leaf in leaves]
    columns = [split(leaf) for leaf, m in zip(leaves, mapped) if m]

    def one_chunk(chunk_leaves):
        chunk_leaves = iter(chunk_leaves)
        return fn(*jax.tree_util.tree_unflatten(
            tree, [next(chunk_leaves) if m else leaf for leaf, m in zip(leaves, mapped)]))

    solved = jax.lax.map(one_chunk, columns)
    return jax.tree_util.tree_map(lambda x: x.T.reshape(shape), solved)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def solve_log_draft(settings: Settings, ctx: Any, log_lo, log_hi):
    """s* = argmax of the settings' objective F over log N in [log_lo, log_hi].

    ``settings.method`` picks the bracket or the gradient method (module doc).
    The derivative is the implicit function theorem's on g(s, ctx) = dF/ds = 0,
    ds* = -(dg/dctx . ctx_dot) / (dg/ds), where s* is an interior maximum; a
    solution on an end of the interval moves with that end.
    """
    if settings.method == "bracket":
        if not settings.chunked:
            return _bracket_solve(settings, ctx, log_lo, log_hi)
        return in_chunks(functools.partial(_bracket_solve, settings), ctx, log_lo, log_hi)
    return _gradient_solve(settings, ctx, log_lo, log_hi)


@solve_log_draft.defjvp
def _solve_log_draft_jvp(settings, primals, tangents):
    ctx, log_lo, log_hi = primals
    ctx_dot, log_lo_dot, log_hi_dot = tangents
    s = solve_log_draft(settings, ctx, log_lo, log_hi)
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


class Solution(NamedTuple):
    """log_draft: s*; clipped_at_cap: s* sits where the window was cut at the
    acceptance cap; at_bound: s* sits on an end of the search range."""

    log_draft: jnp.ndarray
    clipped_at_cap: jnp.ndarray
    at_bound: jnp.ndarray


def solve(settings: Settings, ctx: Any, search: SearchRange, window: Window) -> Solution:
    """:func:`solve_log_draft` over ``window`` and where its answer sits (module doc)."""
    log_draft = solve_log_draft(settings, ctx, window.log_lo, window.log_hi)
    return Solution(log_draft,
                    clipped_at_cap=window.capped & (log_draft >= window.log_hi),
                    at_bound=(log_draft <= search.log_lo) | (log_draft >= search.log_hi))
