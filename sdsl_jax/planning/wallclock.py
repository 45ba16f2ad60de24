r"""The wall-clock planner: the draft size and lookahead that maximise tokens per second.

The FLOP planner (:mod:`sdsl_jax.planning.flop`) maximises tokens per FLOP. On real
hardware a step's time is a roofline (:mod:`sdsl_jax.planning.hardware`): at small
batches a small draft is bandwidth bound or overhead bound, so its time does
not shrink with N the way its FLOPs do, and the fastest draft is larger than
the FLOP-optimal one. Here one iteration (gamma drafted tokens, one
verification) takes

    D(gamma) = gamma t_draft(N) + t_target(M, gamma + 1)

seconds, where the verification scores gamma + 1 positions per sequence in
one target step, and each of the B sequences of the batch emits
E(alpha, gamma) = (1 - alpha^(gamma+1)) / (1 - alpha) tokens on average, so

    tokens per second = B E(alpha(N), gamma) / D(gamma).

The speedup over decoding with the target alone (one token per
t_target(M, 1)) is S = E t_target(M, 1) / D. The planner maximises S over
gamma for each N, then over N, with the same solvers as the FLOP planner
(acceptance window, 8-point grid, Illinois steps; implicit-function
gradients).

The lookahead for a given N. D is convex in gamma (a smooth maximum of a
linear function and a constant, plus a linear term) and E is concave, so S is
quasi-concave and its maximiser is unique: the root of

    phi(gamma) = d/dgamma log S = L / expm1((gamma + 1) L) - D'(gamma) / D(gamma),

L = -log alpha, where phi(0) > 0 (drafting pays), else 0. With a hard maximum
D is piecewise linear and the root lies on one piece (where the Lambert W form
of :mod:`sdsl_jax.laws.throughput` with that piece's cost ratio gives it) or at
the corner between them; that answer, from the leading terms of W's series,
starts a safeguarded Newton iteration on phi (the bracket, kept by the sign
of phi, catches any step that leaves it). Its derivatives come from the
implicit function theorem on phi = 0, not from the iteration.

Limits (tests/planning/test_wallclock.py checks each against an independent
brute force):

* Bandwidth bound (peak_flops = inf): t_target does not depend on gamma, so S
  is the FLOP law's speedup with the cost ratio t_draft / t_target, a ratio
  of bytes (with zero overhead): the memory law. With equal precisions and no
  KV cache that ratio is N / M and the FLOP law's N* returns.
* Compute bound (bandwidth = inf), zero overhead, no attention: a
  verification of gamma + 1 positions costs gamma + 1 target steps, so
  drafting never pays (S < 1 for every gamma > 0). The FLOP law's accounting,
  a verification costed as ONE target step (``verify="one_step"``), gives
  the cost ratio N / M and reproduces the FLOP planner's N* exactly.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining
from sdsl_jax.laws import throughput
from sdsl_jax.planning import flop
from sdsl_jax.planning import hardware as hw
from sdsl_jax.planning import inputs, result, solver

VERIFY_MODES = ("scored", "one_step")
# Safeguarded Newton steps for the lookahead: on 3000 random problems (sharpness
# 2 to 64, alpha 0.3 to 0.999, both verification modes) 10 already leave none
# below scipy's bounded search (xatol 1e-13); 12 keep a margin.
NEWTON_STEPS = 12
# Illinois steps on dF/dlogN. Eight (the FLOP planner's count at the time)
# left N* within ~1e-10 here (70B target, H100, batch 8: a finite difference
# of N* in M was off by 1e-6), and 24 were needed for the configurations that
# converged slowly. The one examined (configuration 13 of
# tests/planning/test_sharded.py) converged by halving: the solve hit a point
# whose slope was exactly 0, and the secant then refused that end
# (solver._next_point takes it now). Since then, on 4000
# random configurations at three hardware and batch settings, 12 steps leave
# N* within 1.1e-14 of a 40-step solution and 16 within 7.1e-15, and on the
# 101 of tests/planning/test_sharded.py run sharded over 4 devices 16 agree
# with one device to 3.7e-15 (the noise floor).
ROOT_STEPS = 16


@chex.dataclass(frozen=True)
class WallClockPlan:
    """The wall-clock planner's answer (all leaves share the inputs' broadcast shape).

    Attributes:
      draft_params: N*, the tokens-per-second-optimal draft size (0 where no
        draft size pays).
      cost_ratio: draft step seconds over the target's one-token step seconds at N*.
      draft_perplexity, target_perplexity, acceptance: as in :class:`DraftPlan`.
      lookahead: the continuous optimal lookahead gamma* at N*.
      integer_lookahead: the better of floor and ceiling of gamma*.
      speedup: tokens per second over target-only decoding, at gamma*.
      integer_speedup: the same at the integer lookahead.
      tokens_per_second: B S / t_target(M, 1), all sequences of the batch together.
      integer_tokens_per_second: the same at the integer lookahead.
      draft_step_seconds: t_draft(N*).
      target_step_seconds: t_target(M, 1), a target-only decoding step.
      verify_step_seconds: t_target(M, k) at the integer lookahead (k = gamma + 1,
        or 1 with ``verify="one_step"``).
      pays, extrapolated, at_bound: as in :class:`DraftPlan`.
    """

    draft_params: jnp.ndarray
    cost_ratio: jnp.ndarray
    draft_perplexity: jnp.ndarray
    target_perplexity: jnp.ndarray
    acceptance: jnp.ndarray
    lookahead: jnp.ndarray
    integer_lookahead: jnp.ndarray
    speedup: jnp.ndarray
    integer_speedup: jnp.ndarray
    tokens_per_second: jnp.ndarray
    integer_tokens_per_second: jnp.ndarray
    draft_step_seconds: jnp.ndarray
    target_step_seconds: jnp.ndarray
    verify_step_seconds: jnp.ndarray
    pays: jnp.ndarray
    extrapolated: jnp.ndarray
    at_bound: jnp.ndarray


class _Iteration(NamedTuple):
    """One speculative iteration's pieces for a fixed N (all differentiable).

    acceptance: alpha, already capped below 1.
    draft_seconds: t_draft(N), one draft step.
    target_compute: the target's compute seconds per new position per sequence
      (the whole batch), before the smooth maximum.
    target_memory: the target's memory seconds per step.
    overhead_seconds, sharpness: of the hardware.
    """

    acceptance: jnp.ndarray
    draft_seconds: jnp.ndarray
    target_compute: jnp.ndarray
    target_memory: jnp.ndarray
    overhead_seconds: jnp.ndarray
    sharpness: jnp.ndarray


def _target_seconds(positions, it: _Iteration):
    return hw.smooth_max(it.target_compute * positions, it.target_memory, it.sharpness) + it.overhead_seconds


def _iteration_seconds(gamma, it: _Iteration, scored: bool):
    positions = gamma + 1 if scored else jnp.ones_like(gamma)
    return gamma * it.draft_seconds + _target_seconds(positions, it)


def _iteration_seconds_and_slope(gamma, it: _Iteration, scored: bool):
    """(D, dD/dgamma), the slope in closed form: written out rather than taken
    with jax.jvp, it keeps the nested derivatives the planner takes (through
    phi, the lookahead's implicit derivative and N*'s) small to compile."""
    if not scored:
        seconds = _iteration_seconds(gamma, it, scored)
        return seconds, jnp.broadcast_to(it.draft_seconds, seconds.shape)
    # d smax(x, y) / dx = (x / smax)^(p - 1), with x = a (gamma + 1) the compute time.
    compute = it.target_compute * (gamma + 1)
    target = hw.smooth_max(compute, it.target_memory, it.sharpness)
    seconds = gamma * it.draft_seconds + target + it.overhead_seconds
    share = jnp.where(compute > 0, jnp.exp((it.sharpness - 1) * (
        jnp.log(jnp.where(compute > 0, compute, 1.0)) - jnp.log(target))), 0.0)
    return seconds, it.draft_seconds + it.target_compute * share


def _neg_log_acceptance(alpha):
    safe = jnp.where(alpha > 0, alpha, 0.5)
    return -throughput.log_acceptance(safe)


def _log_speedup_slope(gamma, it: _Iteration, scored: bool):
    """phi = d log S / d gamma (module doc)."""
    rate = _neg_log_acceptance(it.acceptance)
    tokens_slope = rate / jnp.expm1((gamma + 1) * rate)
    seconds, seconds_slope = _iteration_seconds_and_slope(gamma, it, scored)
    return tokens_slope - seconds_slope / seconds


def _piecewise_start(it: _Iteration, scored: bool):
    """gamma* under the hard maximum, to start Newton's method (module doc)."""
    alpha = it.acceptance
    if not scored:
        one_step = _target_seconds(jnp.ones_like(alpha), it)
        return _approximate_linear_optimum(_neg_log_acceptance(alpha), it.draft_seconds / one_step)
    # Memory piece: D = gamma t_draft + (b + o); compute piece: D = gamma
    # (t_draft + a) + (a + o). They meet at the corner gamma_k + 1 = b / a. Both
    # pieces give log S a single peak; the signs of their slopes at the corner
    # say which peak is the answer (or the corner itself), so one closed form
    # is evaluated, not two.
    a, b, o, t_draft = it.target_compute, it.target_memory, it.overhead_seconds, it.draft_seconds
    finite = a > 0
    corner = jnp.maximum(b / jnp.where(finite, a, 1.0) - 1, 0.0)
    rate = _neg_log_acceptance(alpha)
    tokens_slope = rate / jnp.expm1((corner + 1) * rate)
    memory_slope = tokens_slope - t_draft / (corner * t_draft + b + o)
    compute_slope = tokens_slope - (t_draft + a) / (corner * (t_draft + a) + a + o)
    use_memory = ~finite | (memory_slope <= 0)
    use_compute = ~use_memory & (compute_slope > 0)
    cost_ratio = jnp.where(use_memory, t_draft / (b + o), (t_draft + a) / (a + o))
    gamma = _approximate_linear_optimum(rate, cost_ratio)
    return jnp.where(use_memory | use_compute, gamma, corner)


def _approximate_linear_optimum(rate, cost_ratio):
    """gamma* of E / (gamma c + 1) from the asymptotic series of W_{-1}, for a start.

    The exact form (throughput module doc) is gamma* = log(-v) / L - 1 with
    v = W_{-1}(-exp(-1 - kappa)), kappa = L (1 - c) / c, L = -log alpha. The
    first terms of W_{-1}'s expansion at 0-, v ~ l1 - l2 + l2 / l1 with
    l1 = -(1 + kappa), l2 = log(1 + kappa), are exact at kappa = 0 and
    within a few percent beyond; Newton's method then polishes. Evaluating
    Lambert W itself here would put its whole iteration into every nested
    derivative the planner takes, which triples the compile time.
    """
    kappa = jnp.maximum(rate * (1 - cost_ratio) / cost_ratio, 0.0)
    l1 = -(1 + kappa)
    l2 = jnp.log1p(kappa)
    v = l1 - l2 + l2 / l1
    return jnp.maximum(jnp.log(-v) / rate - 1, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _optimal_lookahead(scored: bool, it: _Iteration):
    """gamma* >= 0 maximising S for one N; 0 where drafting does not pay."""
    it = _Iteration(*jnp.broadcast_arrays(*it))
    alpha = it.acceptance
    zero = jnp.zeros_like(alpha)
    pays = (alpha > 0) & (_log_speedup_slope(zero, it, scored) > 0)
    # S(gamma*) >= S(0) and E < 1 / (1 - alpha) bound gamma*: with D(gamma) >=
    # gamma t_draft + D(0), gamma* < D(0) alpha / ((1 - alpha) t_draft).
    limit = _iteration_seconds(zero, it, scored) * alpha / ((1 - alpha) * it.draft_seconds)
    limit = jnp.where(pays, limit, 1.0)
    start = jnp.clip(jnp.where(pays, _piecewise_start(it, scored), 0.0), 0.0, limit)

    def newton(_, state):
        x, lo, hi = state
        slope, curvature = jax.jvp(lambda g: _log_speedup_slope(g, it, scored), (x,), (jnp.ones_like(x),))
        lo = jnp.where(slope > 0, x, lo)
        hi = jnp.where(slope > 0, hi, x)
        step = x - slope / jnp.where(curvature < 0, curvature, -1.0)
        inside = (curvature < 0) & (step >= lo) & (step <= hi)
        # A step that leaves the bracket is replaced by its geometric midpoint
        # (in log(1 + gamma): the bracket can span many decades).
        middle = jnp.expm1(0.5 * (jnp.log1p(lo) + jnp.log1p(hi)))
        return jnp.where(inside, step, middle), lo, hi

    x, _, _ = jax.lax.fori_loop(0, NEWTON_STEPS, newton, (start, zero, limit))
    return jnp.where(pays, x, 0.0)


@_optimal_lookahead.defjvp
def _optimal_lookahead_jvp(scored, primals, tangents):
    (it,), (it_dot,) = primals, tangents
    gamma = _optimal_lookahead(scored, it)
    # Implicit function theorem on phi(gamma, it) = 0.
    _, phi_dot = jax.jvp(lambda i: _log_speedup_slope(gamma, i, scored), (it,), (it_dot,))
    _, curvature = jax.jvp(lambda g: _log_speedup_slope(g, it, scored), (gamma,), (jnp.ones_like(gamma),))
    interior = (gamma > 0) & (curvature < 0)
    return gamma, jnp.where(interior, -phi_dot / jnp.where(interior, curvature, -1.0), 0.0)


class _Context(NamedTuple):
    """The FLOP planner's context plus the hardware; every leaf differentiable."""

    base: flop.Context
    hardware: hw.Hardware
    workload: hw.Workload
    draft_bytes_per_param: jnp.ndarray
    target_compute: jnp.ndarray  # target compute seconds per position (module doc)
    target_memory: jnp.ndarray


def _iteration_at(log_draft, ctx: _Context) -> _Iteration:
    alpha, _, _ = flop.acceptance_at(log_draft, ctx.base)
    compute, memory = hw.roofline_times(ctx.hardware, jnp.exp(log_draft), 1.0,
                                        ctx.draft_bytes_per_param, ctx.workload)
    hardware = ctx.hardware
    draft_seconds = hw.smooth_max(compute, memory, hardware.sharpness) + hardware.overhead_seconds
    return _Iteration(throughput.cap_acceptance(alpha), draft_seconds, ctx.target_compute,
                      ctx.target_memory, hardware.overhead_seconds, hardware.sharpness)


def _log_speedup_at(it: _Iteration, gamma, scored: bool):
    one_step = _target_seconds(jnp.ones_like(gamma), it)
    return (jnp.log(throughput.expected_tokens(it.acceptance, gamma)) + jnp.log(one_step)
            - jnp.log(_iteration_seconds(gamma, it, scored)))


def _value_and_flags(log_draft, ctx: _Context, scored: bool):
    """The solver's objective F (see solver.flop_objective_at) in wall-clock terms.

    Where drafting pays, F = log S*. Where it does not, F is the log pay
    margin log(phi_E(0) / phi_D(0)): the slope of log E over that of log D at
    gamma = 0, which is 1 exactly where drafting starts to pay; it reduces to
    the FLOP planner's log(h(alpha) / c).
    """
    it = _iteration_at(log_draft, ctx)
    gamma = _optimal_lookahead(scored, it)
    zero = jnp.zeros_like(log_draft)
    seconds, seconds_slope = _iteration_seconds_and_slope(zero, it, scored)
    rate = _neg_log_acceptance(it.acceptance)
    margin = jnp.log(rate / jnp.expm1(rate)) - jnp.log(seconds_slope / seconds)
    positive = it.acceptance > 0
    pays = positive & (gamma > 0)
    value = jnp.where(pays, _log_speedup_at(it, gamma, scored),
                      jnp.where(positive, margin, -jnp.inf))
    return value, (pays, ~positive)


def _log_speedup(log_draft, ctx, scored):
    it = _iteration_at(log_draft, ctx)
    return _log_speedup_at(it, _optimal_lookahead(scored, it), scored)


# One objective per verification mode, built once so jit's cache sees the same key.
_OBJECTIVES = {
    scored: solver.Objective(
        value_and_flags=functools.partial(_value_and_flags, scored=scored),
        log_speedup=functools.partial(_log_speedup, scored=scored))
    for scored in (True, False)
}


def _context(target_params, draft_tokens, target_tokens, pretraining_law, acceptance_law,
             hardware, workload, draft_bytes, target_bytes) -> _Context:
    base = flop.context(target_params, draft_tokens, target_tokens, pretraining_law, acceptance_law)
    target_compute, target_memory = hw.roofline_times(hardware, target_params, 1.0,
                                                      target_bytes, workload)
    return _Context(base, hardware, workload, jnp.asarray(draft_bytes, target_params.dtype),
                    target_compute, target_memory)


def _report(ctx: _Context, log_draft, scored: bool, clipped_at_cap, at_bound) -> WallClockPlan:
    """Every field of the plan at draft size exp(log_draft), with its best lookahead."""
    it = _iteration_at(log_draft, ctx)
    gamma = _optimal_lookahead(scored, it)
    pays = (it.acceptance > 0) & (gamma > 0)
    log_s = lambda g: _log_speedup_at(it, g, scored)
    low = jnp.floor(gamma)
    integer_gamma = jnp.where(log_s(low + 1) > log_s(low), low + 1, low)
    one_step = _target_seconds(jnp.ones_like(gamma), it)
    positions = integer_gamma + 1 if scored else jnp.ones_like(gamma)
    _, draft_ppl, _ = flop.acceptance_at(log_draft, ctx.base)
    fields = result.assemble(
        pays,
        dict(draft_params=jnp.exp(log_draft), cost_ratio=it.draft_seconds / one_step,
             draft_perplexity=draft_ppl, acceptance=it.acceptance, lookahead=gamma,
             integer_lookahead=integer_gamma, speedup=jnp.exp(log_s(gamma)),
             integer_speedup=jnp.exp(log_s(integer_gamma)), draft_step_seconds=it.draft_seconds,
             # Where no draft pays, a verification is a target-only step.
             verify_step_seconds=_target_seconds(positions, it)),
        fallbacks=dict(verify_step_seconds=one_step),
        raw_acceptance=acceptance_lib.raw_acceptance(ctx.base.acceptance_law, draft_ppl,
                                                     ctx.base.target_perplexity),
        clipped_at_cap=clipped_at_cap, at_bound=at_bound)
    rate = ctx.workload.batch_size / one_step
    return WallClockPlan(**fields, target_perplexity=ctx.base.target_perplexity,
                         tokens_per_second=fields["speedup"] * rate,
                         integer_tokens_per_second=fields["integer_speedup"] * rate,
                         target_step_seconds=one_step)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _plan(settings: solver.Settings, scored: bool, target_params, draft_tokens, target_tokens,
          *laws_and_hardware):
    target_params, draft_tokens, target_tokens = jnp.broadcast_arrays(
        target_params, draft_tokens, target_tokens)
    ctx = _context(target_params, draft_tokens, target_tokens, *laws_and_hardware)
    search = flop.search_range(ctx.base, settings)
    solution = solver.solve(settings, ctx, search, flop.window(ctx.base, search))
    return _report(ctx, solution.log_draft, scored, solution.clipped_at_cap, solution.at_bound)


@functools.partial(jax.jit, static_argnums=0)
def _evaluate(scored: bool, draft_params, target_params, draft_tokens, target_tokens,
              *laws_and_hardware):
    draft_params, target_params, draft_tokens, target_tokens = jnp.broadcast_arrays(
        draft_params, target_params, draft_tokens, target_tokens)
    ctx = _context(target_params, draft_tokens, target_tokens, *laws_and_hardware)
    no = jnp.zeros(draft_params.shape, bool)
    return _report(ctx, jnp.log(draft_params), scored, no, no)


def _bytes(name, precision, dtype):
    if isinstance(precision, str):
        try:
            return jnp.asarray(hw.bytes_per_param(precision), dtype)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    _validate.check_positive(name, precision)
    return jnp.asarray(precision, dtype)


def _prepare(positive, hardware, workload, draft_precision, target_precision, verify,
             pretraining_law, acceptance_law):
    """The planners' preamble (:func:`inputs.planner_inputs`) and the hardware's:
    (scored, the positive inputs, then laws and hardware, all arrays of one dtype),
    shared by both entry points."""
    given = inputs.planner_inputs(positive, pretraining_law, acceptance_law)
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    hardware = hw.hardware_preset(hardware) if isinstance(hardware, str) else hardware
    workload = hw.Workload() if workload is None else workload
    hw.check_hardware(hardware)
    hw.check_workload(workload)
    dtype = given.dtype
    return verify == "scored", given.values + (
        given.pretraining_law, given.acceptance_law,
        inputs.cast(dtype, hardware), inputs.cast(dtype, workload),
        _bytes("draft_precision", draft_precision, dtype),
        _bytes("target_precision", target_precision, dtype))


def optimal_draft_size_wallclock(
    target_params: ArrayLike,
    draft_tokens: ArrayLike,
    target_tokens: ArrayLike,
    *,
    hardware: hw.Hardware | str,
    workload: hw.Workload | None = None,
    draft_precision: ArrayLike | str = "bf16",
    target_precision: ArrayLike | str = "bf16",
    verify: str = "scored",
    pretraining_law: pretraining.PretrainingLaw | None = None,
    acceptance_law: acceptance_lib.AcceptanceLaw | None = None,
    method: str = "bracket",
    cost_ratio_bounds: tuple[float, float] = (1e-8, 1.0),
) -> WallClockPlan:
    """The draft size N* and lookahead that maximise tokens per second on ``hardware``.

    Args:
      target_params, draft_tokens, target_tokens: M, D, D' as for
        :func:`sdsl_jax.optimal_draft_size`, any broadcast shape.
      hardware: a :class:`~sdsl_jax.planning.hardware.Hardware` or a preset name
        ("H100", "A100", "H200", "TPU-v5e", "CPU").
      workload: batch size, context and model-shape assumptions
        (:class:`~sdsl_jax.planning.hardware.Workload`; default batch size 1, context 2048).
      draft_precision, target_precision: weight precision, a name ("bf16",
        "fp8", "int4", ...) or bytes per parameter.
      verify: "scored" (the verification scores gamma + 1 positions, its
        compute grows with gamma) or "one_step" (the FLOP law's accounting:
        a verification costs one target step whatever gamma).
      pretraining_law, acceptance_law, method, cost_ratio_bounds: as for
        :func:`sdsl_jax.optimal_draft_size`; the bounds are on N / M.

    Returns:
      A :class:`WallClockPlan`. jit, vmap and grad work through it: gradients
      of N* (with respect to M, D, D', the laws, the hardware and the
      workload) come from the implicit function theorem, and those of the
      speedup by the envelope theorem. They are finite, paying or not, over
      :func:`sdsl_jax.optimal_draft_size`'s domain.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    settings = solver.checked_settings(method, cost_ratio_bounds, _OBJECTIVES[verify == "scored"],
                                       root_steps=ROOT_STEPS, root_steps_float32=ROOT_STEPS)
    scored, arrays = _prepare(
        dict(target_params=target_params, draft_tokens=draft_tokens, target_tokens=target_tokens),
        hardware, workload, draft_precision, target_precision, verify, pretraining_law,
        acceptance_law)
    return _plan(settings, scored, *arrays)


def evaluate_draft_wallclock(
    draft_params: ArrayLike,
    target_params: ArrayLike,
    draft_tokens: ArrayLike,
    target_tokens: ArrayLike,
    *,
    hardware: hw.Hardware | str,
    workload: hw.Workload | None = None,
    draft_precision: ArrayLike | str = "bf16",
    target_precision: ArrayLike | str = "bf16",
    verify: str = "scored",
    pretraining_law: pretraining.PretrainingLaw | None = None,
    acceptance_law: acceptance_lib.AcceptanceLaw | None = None,
) -> WallClockPlan:
    """What a given draft size N achieves on ``hardware``, with its best lookahead.

    The same fields as :func:`optimal_draft_size_wallclock`, at N =
    ``draft_params`` instead of N*: e.g. the wall-clock speedup of the
    FLOP-optimal draft, to see what optimising FLOPs costs on this machine.
    ``at_bound`` and the window part of ``extrapolated`` are False.
    """
    scored, arrays = _prepare(
        dict(draft_params=draft_params, target_params=target_params, draft_tokens=draft_tokens,
             target_tokens=target_tokens),
        hardware, workload, draft_precision, target_precision, verify, pretraining_law,
        acceptance_law)
    return _evaluate(scored, *arrays)
