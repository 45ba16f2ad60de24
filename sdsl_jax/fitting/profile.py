"""Profile-likelihood intervals for the pre-training law's five coefficients.

Why. The end-to-end fit's delta intervals (the clustered CR3 covariance
with t(models - 1), :mod:`sdsl_jax.fitting.joint`) are symmetric in log E,
log A, a, log B and b. For the data term they cannot cover when models
scatter about the law: E, B and b trade off along a long curved ridge
(17 models over 1e11-1.5e13 tokens), the likelihood is far from quadratic,
and a quarter to a third of the fits stop on that ridge (``converged``
False). An interval that follows the likelihood's own shape can be
asymmetric, or unbounded where the data do not bound a coefficient.

Method. Each coefficient is a linear functional s = u . theta of the fit's
pre-training coordinates theta = (log E, log A - a c_N, log B - b c_D, a,
b): log E, log A = theta_1 + c_N theta_3, a, log B = theta_2 + c_D theta_4
and b (:func:`functionals`). Its profile is f(s) = min Q(theta) over
u . theta = s, with theta = theta_hat + (s - s_hat) u / |u|^2 + N z, N an
orthonormal basis of u's null space, z (4,) by damped Newton steps
(:func:`sdsl_jax.common.optimize.newton`) warm-started along a grid of s
(from the previous point's optimum or its linear extrapolation, whichever
is lower): lax.scan along the grid, vmapped over the five coefficients and
both directions, one compiled program (:func:`profile_scan`; about 10 s to
compile on a CPU, 0.1 s a fit after that).

* Q is the fit's least-squares objective with each block's noise variance
  held at its estimate: sum over the acceptance and loss blocks of
  SSR_b / (2 s_b^2), s_b^2 = SSR_b(theta_hat) / n_b, the plane profiled
  out in closed form as in the fit. That is the profile t of nonlinear
  regression (Bates and Watts 1988): exactly quadratic for a linear model.
  Not the fit's concentrated likelihood (n_b / 2) log SSR_b: it grows only
  logarithmically far from the optimum, and the cluster adjustment, which
  reads the profile at several iid standard errors, then widened even
  well-determined intervals 5-30% past the Wald ones (12 x 12 design at
  0.3% scatter).
* The statistic W(s) = 2 (f(s) - f_min) V_iid / V_robust, the scalar
  adjustment of a one-parameter likelihood-ratio statistic under
  clustering or misspecification. V_iid = u' H^-1 u with H the Hessian of
  Q at the estimate (the objective's own curvature, no degrees-of-freedom
  correction), V_robust = max(V_cluster, V_iid), V_cluster = u' V u with V
  the fit's ``cluster_covariance``. For an exactly quadratic Q,
  W = (s - s_hat)^2 / V_robust and the interval is the clustered Wald one
  (tests/fitting/test_profile.py: widths within 0.1%). The max keeps the
  interval from being narrower than the plain profile. A clustered variance
  below the model-based one comes from fits stopped on the ridge (E near 0,
  where both the curvature and the scores along log E vanish), and there
  it is not reliable (Angrist and Pischke 2009's max of conventional and
  robust standard errors). On converged fits the scale V_iid / V_cluster is
  0.2-0.8 and the max does not bind. f_min is the lowest value seen (the
  fit's, or one a profile found where the fit stopped short).
* The ends: where W crosses q^2, q Student's t with the fit's
  ``cluster_df`` (normal without), outside the outermost grid points with
  W <= q^2 (a profile that dips back is covered whole), interpolated in
  sqrt(W), which is nearly linear in s. The grid runs in V_robust standard
  errors: steps of 0.25 to 6, geometric to PROFILE_REACH = 100. Where the
  outermost point inside is the last the profile reached (the reach, or a
  value that could not be evaluated), the end is unbounded: 0 or inf for
  E, A and B, -inf or inf for a and b, never a made-up number.

Coverage of nominal 95% intervals, measured: 100 sets per perplexity noise
from :func:`sdsl_jax.fitting.synthetic.synthetic_measurements` (9 drafts x
8 targets, seeds 10000-10099, acceptance noise 0.01, 4000 trials), float64,
:func:`~sdsl_jax.fitting.joint.fit_joint` as ``sdsl fit`` calls it; truth
pretraining.BESIROGLU_2024. Every fit counts, converged or not ("conv": over
the converged fits only). "delta" is the clustered delta interval, log
scale for E, A, B; "profile" this module's:

    perplexity noise          0.01          0.03          0.05
                          delta profile delta profile delta profile
    E  irreducible_loss    0.97  0.97    0.72  0.78    0.60  0.70
    A  param_coeff         0.95  0.95    0.96  0.96    0.95  0.96
    a  param_exponent      0.95  0.95    0.96  0.96    0.96  0.96
    B  data_coeff          0.95  0.97    0.71  0.83    0.55  0.77
    b  data_exponent       0.96  0.96    0.72  0.93    0.57  0.91
    fits converged            0.99          0.73          0.67
    conv: E / B / b   .98/.96/.97 .97/.98/.97 .96/.97/.97 .97/.96/.99 .82/.82/.85 .94/.90/.90
    unbounded ends (low, high) of the profile intervals, of 100:
      E                      35, 0         85, 3         91, 11
      A, a                   0, 0          0, 1          4-5, 5-6
      B                      0, 0          10, 25        24, 43
      b                      0, 0          9, 27         25, 48
    median width, profile / delta (natural units): a 1.01-1.02; A 1.04 /
    1.25 / 1.9 (its upper end longer); b 1.00 / 1.17 / 6.6; E and B wider
    (their unbounded ends).

The profile interval fixes b (0.93 and 0.91 where the delta one covers 0.72
and 0.57) and improves B and E, but does not bring them to 0.95 at noise
0.03 and 0.05: the misses are the fits that stopped on the ridge (at E
near 0, b near 0.02, B near 3, where the truth is E 1.8, b 0.37, B 2085),
where the least-squares surface itself, not its curvature, favours the
wrong branch and no adjustment read at the estimate repairs it (over the
unconverged fits E is covered 0.2-0.3 of the time, B 0.5, b 0.8-0.9). On
converged fits the profile covers E, B and b 0.90-0.99 at every noise.
E's lower end is unbounded in a third of the sets even at 0.01: as E
tends to 0, B and b absorb it and W levels off below q^2, so the data do
not exclude E = 0, and the interval says so.

Alternatives measured on the same sets (E / B / b coverage at 0.03 and
0.05): V_robust = V_cluster without the max (reach 30) 0.72 / 0.81 /
0.90 and 0.61 / 0.70 / 0.85; a reach of 30 standard errors instead of 100
0.78 / 0.84 / 0.97 and 0.70 / 0.76 / 0.93 (more ends unbounded).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.optimize import newton
from sdsl_jax.common.student_t import student_t_quantile_float
from sdsl_jax.fitting import joint as joint_fit
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.fitting.data import AcceptanceRows, PerplexityPoints

# The profile grid, in standard errors (sqrt(V_robust), module doc) of the
# coefficient's functional from the estimate: fine (0.25) where a 95% end usually lies,
# geometric beyond, out to PROFILE_REACH. An end not crossed within the reach
# is reported unbounded (inf), never extrapolated.
PROFILE_REACH = 100.0
PROFILE_GRID = np.concatenate([np.arange(0.25, 6.0 + 1e-9, 0.25),
                               np.geomspace(6.0, PROFILE_REACH, 21)[1:]])
# Newton steps per grid point, warm-started from the previous point's optimum
# (or its linear extrapolation from the two before, whichever is lower).
PROFILE_NEWTON_STEPS = 5
# The pre-training coefficients in laws.COEFFICIENTS order, and which of them
# the fit (and the profile) handles as logs.
PRETRAINING = laws_lib.PRETRAINING_FIELDS
LOG_SCALE = np.array([name in ("irreducible_loss", "param_coeff", "data_coeff") for name in PRETRAINING])


@chex.dataclass(frozen=True)
class ProfileIntervals:
    """Result of :func:`profile_intervals`, for the five pre-training coefficients.

    Attributes:
      low, high: (5,) the interval's ends in natural coefficients
        (laws.COEFFICIENTS order: E, A, a, B, b). An end the profile never
        crosses within PROFILE_REACH standard errors is unbounded:
        0 for E, A and B (their logs' -inf), -inf for a and b; +inf above.
      quantile: the threshold's root q (Student t with the fit's
        ``cluster_df``, normal without); the ends are where W(s) = q^2.
      scale: (5,) the adjustment V_iid,u / V_cluster,u of each statistic.
      decrement: (5, 2) the Newton decrement (in standard errors of the
        profile's inner problem) at the grid point past each end (low, high):
        how far from the constrained optimum the profile was when it crossed.
    """

    low: jnp.ndarray
    high: jnp.ndarray
    quantile: jnp.ndarray
    scale: jnp.ndarray
    decrement: jnp.ndarray


def functionals(data: joint_fit.JointData) -> np.ndarray:
    """(5, 5) rows u with u . theta[:5] = (log E, log A, a, log B, b).

    theta[:5] = (log E, log A - a c_N, log B - b c_D, a, b), c_N and c_D the
    centres of log N and log D (:func:`sdsl_jax.fitting.joint.prepare`).
    """
    c_n, c_d = float(data.log_params_centre), float(data.log_tokens_centre)
    return np.array([[1.0, 0, 0, 0, 0],
                     [0, 1.0, 0, c_n, 0],
                     [0, 0, 0, 1.0, 0],
                     [0, 0, 1.0, 0, c_d],
                     [0, 0, 0, 0, 1.0]])


def _null_bases(u: np.ndarray) -> np.ndarray:
    """(k, 5, 4) orthonormal bases of each row's null space (by SVD)."""
    return np.stack([np.linalg.svd(row[None, :])[2][1:].T for row in u])


def _block_objectives(pre_theta, data, moments, point_weight, fit_target_coeff):
    """The fit's two blocks (acceptance, loss), each (n_b / 2) log(SSR_b / n_b), the plane profiled."""
    _, plane = joint_fit.profiled_objective(pre_theta, data, moments, point_weight, fit_target_coeff)
    return jnp.stack(joint_fit.moment_objective(jnp.concatenate([pre_theta, plane]), data, moments,
                                                point_weight))


def _least_squares(pre_theta, data, moments, point_weight, fit_target_coeff, reference, counts):
    """sum_b SSR_b(theta) / (2 s_b^2), s_b^2 = SSR_b / n_b at the estimate: the profile's objective.

    From the blocks of the fit's objective, l_b = (n_b / 2) log(SSR_b / n_b):
    SSR_b / (2 s_b^2) = (n_b / 2) exp(2 (l_b - l_b(estimate)) / n_b).
    """
    blocks = _block_objectives(pre_theta, data, moments, point_weight, fit_target_coeff)
    return jnp.sum(0.5 * counts * jnp.exp(2 * (blocks - reference) / counts))


def _setup(theta, data, row_weight, point_weight, fit_target_coeff):
    moments = joint_fit.acceptance_moments(data, row_weight)
    reference = _block_objectives(theta, data, moments, point_weight, fit_target_coeff)
    counts = jnp.stack([moments.observations, jnp.sum(point_weight)])
    return lambda t: _least_squares(t, data, moments, point_weight, fit_target_coeff, reference,
                                    counts)


@functools.partial(jax.jit, static_argnames=("fit_target_coeff", "steps"))
def profile_scan(theta, data, row_weight, point_weight, directions, bases, offsets, *,
                 fit_target_coeff: bool = True, steps: int = PROFILE_NEWTON_STEPS):
    """The profile of the least-squares objective (module doc) along lines of constrained optima.

    ``theta`` (5,): the fit's pre-training coordinates, where each block's
    variance is fixed. For member k: theta + offsets[k, g] * directions[k]
    + bases[k] z, minimised over z (4,) at every offset g in turn
    (lax.scan, warm-started), vmapped over members. ``directions[k]`` =
    u / |u|^2 so that the offset is the change in u . theta. Returns
    (values (k, G), Newton decrements (k, G)).
    """
    objective = _setup(theta, data, row_weight, point_weight, fit_target_coeff)

    def one(direction, basis, offset_row):
        def step(carry, offset):
            z, z_before, offset_before, offset_before2 = carry
            inner = lambda v: objective(theta + offset * direction + basis @ v)
            # Linear extrapolation along the path of optima, if it starts lower.
            ratio = (offset - offset_before) / jnp.where(offset_before == offset_before2, 1.0,
                                                         offset_before - offset_before2)
            guess = z + ratio * (z - z_before)
            start = jnp.where(inner(guess) < inner(z), guess, z)
            solution = newton(inner, start, steps=steps)
            return (solution.params, z, offset, offset_before), (solution.value, solution.grad_norm)

        zero = jnp.zeros(basis.shape[1], theta.dtype)
        init = (zero, zero, jnp.zeros((), theta.dtype), jnp.zeros((), theta.dtype))
        _, (values, decrements) = jax.lax.scan(step, init, offset_row)
        return values, decrements

    return jax.vmap(one)(directions, bases, offsets)


@functools.partial(jax.jit, static_argnames=("fit_target_coeff",))
def _objective_and_hessian(theta, data, row_weight, point_weight, *, fit_target_coeff):
    objective = _setup(theta, data, row_weight, point_weight, fit_target_coeff)
    return objective(theta), jax.hessian(objective)(theta)


def interval_ends(statistic, offsets, threshold):
    """(low, high, index past low, index past high) of {offset: W <= q^2} on one profile.

    ``statistic`` (2G + 1,) at ``offsets`` (2G + 1,), increasing, the
    estimate in the middle. Beyond a non-finite value (the profile could not
    be evaluated) a side counts as unexplored. The ends are the crossings
    outside the outermost points at or below the threshold (a profile that
    dips back below it is covered whole), interpolated linearly in sqrt(W)
    (nearly linear in the offset, so the interpolation is close to exact on
    the fine part of the grid); where that outermost point is the last one
    explored, the end is unbounded (+-inf). The set is never empty: the
    lowest value seen has W = 0.
    """
    centre = statistic.size // 2
    finite = np.isfinite(statistic)
    valid = np.ones(statistic.size, bool)
    valid[centre:] = np.cumprod(finite[centre:]).astype(bool)
    valid[:centre + 1] = np.cumprod(finite[:centre + 1][::-1])[::-1].astype(bool)
    inside = np.flatnonzero(valid & (statistic <= threshold**2))
    ends, past = [], []
    for k, outward in ((inside[0], -1), (inside[-1], 1)):
        j = k + outward
        if j < 0 or j >= statistic.size or not valid[j]:
            ends.append(outward * np.inf)
            past.append(-1)
            continue
        r0, r1 = np.sqrt(max(statistic[k], 0.0)), np.sqrt(statistic[j])
        ends.append(offsets[k] + (threshold - r0) / (r1 - r0) * (offsets[j] - offsets[k]))
        past.append(j)
    return ends[0], ends[1], past[0], past[1]


def profile_intervals(fit: joint_fit.JointFit, rows: AcceptanceRows, points: PerplexityPoints, *,
                      confidence: float = 0.95, data: joint_fit.JointData | None = None,
                      fit_target_coeff: bool | None = None, cap: bool = True) -> ProfileIntervals:
    """Cluster-adjusted profile-likelihood intervals for E, A, a, B and b (module doc).

    ``fit`` from :func:`~sdsl_jax.fitting.joint.fit_joint` on ``rows`` and
    ``points`` (its ``cluster_covariance`` and ``cluster_df`` are used);
    ``data`` may pass the :func:`~sdsl_jax.fitting.joint.prepare` layout to
    skip recomputing it. ``fit_target_coeff`` as the fit had it (by default,
    whether its target coefficient is nonzero). ``cap`` (default True):
    V_robust = max(V_cluster, V_iid); False uses V_cluster alone (kept for
    the comparison in the module doc). A host-level driver around one
    compiled program (:func:`profile_scan`) for all ten half-profiles.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if fit.cluster_covariance is None:
        raise ValueError("fit has no cluster_covariance: fit it with fit_joint")
    if fit_target_coeff is None:
        fit_target_coeff = bool(fit.laws.acceptance_law.target_coeff != 0)
    data = joint_fit.prepare(rows, points, padded=True) if data is None else data
    dtype = fit.theta.dtype
    theta = jnp.asarray(fit.theta[:5])
    point_weight = data.point_mask
    row_weight = joint_fit.pad_rows(data, rows.weight)
    value, hessian = _objective_and_hessian(theta, data, row_weight, point_weight,
                                            fit_target_coeff=fit_target_coeff)
    value, hessian = float(value), np.asarray(hessian, np.float64)
    u = functionals(data)
    # The statistic's scale: the variance the objective's curvature implies
    # (the inverse Hessian, no degrees-of-freedom correction, so that a
    # quadratic objective reproduces the clustered Wald interval exactly)
    # over the clustered one.
    iid = np.einsum("ki,ij,kj->k", u, np.linalg.pinv(hessian, hermitian=True), u)
    coefficients = np.asarray(fit.laws.coefficients, np.float64)[:5]
    cluster = np.diagonal(np.asarray(fit.cluster_covariance, np.float64))[:5].copy()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cluster[LOG_SCALE] /= coefficients[LOG_SCALE] ** 2  # var(log c) = var(c) / c^2
        # Never narrower than the plain profile: a clustered variance below
        # the model-based one (module doc) is not trusted.
        robust = np.fmax(cluster, iid) if cap else cluster
        scale = iid / robust
        se = np.sqrt(robust)
    # Without a usable clustered variance, the profile itself (unadjusted).
    bad = ~(np.isfinite(scale) & (scale > 0) & np.isfinite(se) & (se > 0))
    scale[bad], se[bad] = 1.0, np.sqrt(np.abs(iid[bad]))
    df = None if fit.cluster_df is None else float(fit.cluster_df)
    q = student_t_quantile_float(0.5 + confidence / 2, df if df is not None else np.inf)

    grid = PROFILE_GRID
    signs = np.array([-1.0, 1.0])
    directions = np.repeat(u / np.sum(u**2, axis=1, keepdims=True), 2, axis=0)  # (10, 5)
    bases = np.repeat(_null_bases(u), 2, axis=0)
    offsets = (np.tile(signs, 5)[:, None] * np.repeat(se, 2)[:, None]) * grid[None, :]  # (10, G)
    values, decrements = profile_scan(theta, data, row_weight, point_weight,
                                      jnp.asarray(directions, dtype), jnp.asarray(bases, dtype),
                                      jnp.asarray(offsets, dtype), fit_target_coeff=fit_target_coeff)
    values, decrements = np.asarray(values, np.float64), np.asarray(decrements, np.float64)
    # The lowest objective seen: the fit's own, or one the profiles found
    # (a fit stopped short on a flat ridge), so that W >= 0.
    floor = min(value, np.nanmin(np.where(np.isfinite(values), values, np.inf)))
    estimate = u @ np.asarray(theta, np.float64)
    low, high = np.empty(5), np.empty(5)
    decrement = np.full((5, 2), np.nan)
    line = np.concatenate([-grid[::-1], [0.0], grid])
    for k in range(5):
        profile = np.concatenate([values[2 * k][::-1], [value], values[2 * k + 1]])
        with np.errstate(invalid="ignore"):
            statistic = 2 * (profile - floor) * scale[k]
        lo, hi, past_low, past_high = interval_ends(statistic, line, q)
        low[k], high[k] = estimate[k] + lo * se[k], estimate[k] + hi * se[k]
        moves = np.concatenate([decrements[2 * k][::-1], [0.0], decrements[2 * k + 1]])
        decrement[k] = [moves[i] if i >= 0 else np.nan for i in (past_low, past_high)]
    with np.errstate(over="ignore"):
        low = np.where(LOG_SCALE, np.exp(low), low)
        high = np.where(LOG_SCALE, np.exp(high), high)
    return ProfileIntervals(low=jnp.asarray(low, dtype), high=jnp.asarray(high, dtype),
                            quantile=jnp.asarray(q, dtype), scale=jnp.asarray(scale, dtype),
                            decrement=jnp.asarray(decrement, dtype))
