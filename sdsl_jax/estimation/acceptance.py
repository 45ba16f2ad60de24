r"""Estimating the acceptance rate alpha from a speculative-decoding run.

The trial model
---------------
One iteration with lookahead gamma drafts gamma tokens; the target accepts a
prefix of K of them, 0 <= K <= gamma. Each drafted position the verifier
reaches is a Bernoulli trial with success probability alpha: the K accepted
ones are successes and the first rejection, if there is one, is a failure.
Positions after the rejection are never judged, so an iteration contributes

    K successes in  min(K + 1, gamma)  trials.

With i.i.d. acceptances K is a truncated geometric, P(K >= k) = alpha**k for
k <= gamma, and the log-likelihood of a run is

    sum K log(alpha) + (number of rejections) log(1 - alpha),

where the number of rejections is sum (trials - K). It is a binomial likelihood
in the pooled counts, so the maximum-likelihood estimate is the pooled ratio

    alpha_hat = sum K / sum min(K + 1, gamma),

whatever the lookahead of each iteration (it may vary; an iteration with
lookahead 0 drafts nothing and contributes nothing, which makes lookahead 0 a
convenient padding value for ragged runs under vmap).

Intervals for i.i.d. trials
---------------------------
If every judged position is an independent trial at one rate alpha, the pooled
counts behave like a binomial sample and the textbook binomial intervals apply:

* ``wilson``: the Wilson score interval, which inverts the score test. It
  stays inside [0, 1], is not degenerate at 0 or n successes, and covers close
  to the nominal level even for small n.
* ``clopper-pearson``: the exact interval that inverts the two one-sided
  binomial tests, with beta-quantile endpoints. It never covers less than the
  nominal level and is therefore conservative (wider than Wilson). The beta
  quantiles come from :mod:`sdsl_jax.estimation.beta_quantile` (Halley
  steps on the incomplete beta function from a normal-approximation start),
  which jits and vmaps.

(The number of trials is random here, since a rejection ends the iteration;
the likelihood is still binomial, and simulation shows both intervals keep
their coverage: see tests/estimation/test_acceptance.py.)

Why prompts are the units
-------------------------
Real runs are not i.i.d. at one rate. alpha = E_prefix[beta] averages a
per-position acceptance probability that varies a lot from prompt to prompt
(code is easier to draft than poetry), and iterations of one prompt share it.
The trials of one prompt are then positively correlated and the counts are
overdispersed relative to the binomial: the variance of alpha_hat is inflated
by a design effect of about 1 + (m - 1) rho, with m the trials per prompt and
rho the intra-prompt correlation. With 50 trials per prompt even rho = 0.05
more than triples the variance, so Wilson and Clopper-Pearson intervals,
which assume a binomial variance, are far too narrow and undercover badly
(0.47-0.92 instead of 0.95 in the heterogeneous rows of the table below).

The estimand is then the population ratio E[sum K] / E[sum trials] over the
prompt distribution, and the prompts, not the tokens, are the independent
units. (It is not the mean of the per-prompt rates: a prompt with a high rate
reaches more positions per iteration and weighs more. With per-prompt rates
~ Beta(mean 0.3, concentration 20) and lookahead 4 the ratio is 0.314.)

The cluster interval (``interval="cluster"``, :func:`cluster_interval`)
----------------------------------------------------------------------
With a_p accepted and t_p trials in prompt p, R = sum a_p / sum t_p is a
weighted mean of the prompt rates x_p = a_p / t_p with weights
w_p = t_p / T, T = sum t_p. The interval is built from four pieces:

1. The linearisation (cluster-robust, sandwich) variance of the ratio,
   sum_p w_p^2 (x_p - R)^2, in its CR2 form: each term divided by 1 - w_p
   (w_p is prompt p's leverage), which makes it unbiased when the prompt
   rates are homoscedastic and reduces to the usual P / (P - 1) factor for
   equal prompts (Bell & McCaffrey 2002).
2. The logit scale: logit R +- q se / (R (1 - R)), which keeps the interval
   inside (0, 1) and lets it be asymmetric near 0 and 1.
3. A t quantile q with Bell-McCaffrey degrees of freedom: the variance is a
   quadratic form in the prompt rates, and its Satterthwaite df under a
   working model, df = tr(B Omega)^2 / tr((B Omega)^2), says how many
   prompts' worth of information it holds (P - 1 for equal prompts, about 1
   when one or two prompts carry most trials). The working model is
   Var(x_p) = tau^2 + R (1 - R) / t_p: the binomial part is known and the
   between-prompt part tau^2 is estimated from Pearson's X^2 by moments
   (DerSimonian-Laird). df is at least 1; with one prompt it is infinite.
4. The Wilson interval of the pooled counts as the floor: the interval is
   widened to contain it. Prompts cannot show less than binomial variation,
   and a run that shows none between prompts (every draft accepted, one
   prompt) gets exactly Wilson's interval.

It has no resampling, so it is deterministic, O(P), and jit/vmap/grad-able;
per-position rates vmap it over positions
(:func:`sdsl_jax.estimation.positions.per_position_acceptance`) and
teacher-forced acceptance applies it to documents
(:mod:`sdsl_jax.decoding.teacher_forced`).

Chosen by simulation against the alternatives: P prompts, each with its own
rate ~ Beta(mean alpha, concentration c) (or alpha itself: i.i.d.), 4 to 30
iterations per prompt (uniform), lookahead 4; truth the population ratio
sum_j E[r^j] / sum_j E[r^(j - 1)] (j = 1..4, exact Beta moments);
4000 runs per cell in numpy, alpha = 0.3, 0.6, 0.9:

* the studentized bootstrap (``"bootstrap"``, the loop's interval before)
  covers, but is absurdly wide with few prompts: [0, 1] at 2 prompts
  (median width 1.000), and for the issue's 4 prompts (17/30, 13/29, 17/33,
  14/31) [0.409, 0.997] around 0.496, where this interval gives Wilson's
  [0.409, 0.583] (the prompts vary less than binomial noise);
* the percentile bootstrap undercovers with few prompts (table below);
* CR1 + t_(P - 1) on the logit scale with the Wilson floor covers 0.90-0.99
  here but 0.70-0.90 for teacher-forced documents of very unequal length
  (t_(P - 1) counts a 70-position document as a full unit);
* the binomial variance as a known floor plus the estimated excess with a
  Welch-Satterthwaite df between P - 1 and infinity undercovers with few
  heterogeneous prompts (0.75-0.92 at 2 to 8 prompts, c <= 20): the excess
  V_CR - V_binomial carries all of V_CR's noise, not a chi-square of its
  own, so the df is largest exactly when the run happens to understate the
  heterogeneity;
* quasi-binomial (dispersion X^2 / (P - 1), t_(P - 1)) covers 1.000 at 2
  and 4 prompts yet 0.89 at 32 prompts with c = 5, and Fieller's ratio
  interval is unbounded most of the time below 8 prompts.

Coverage of the 95% intervals (2000 runs per cell, per-cell seeds, float32,
in JAX; range over alpha = 0.3, 0.6, 0.9; standard error 0.005; the
studentized and percentile bootstraps with 1000 resamples; "cluster z=1" is
the cluster interval at the 68% level, which a coverage band must reject):

    P  c      wilson      bootstrap   percentile  cluster     cluster z=1 w bootstrap w cluster
    2  i.i.d. 0.946-0.953 0.999-1.000 0.949-0.956 0.991-0.996 0.812-0.826 1.000       0.585-0.847
    2  100    0.886-0.925 0.998-1.000 0.902-0.938 0.984-0.992 0.790-0.807 1.000       0.794-0.903
    2  20     0.691-0.799 0.994-0.999 0.757-0.835 0.974-0.984 0.732-0.733 1.000       0.935-0.970
    2  5      0.465-0.556 0.926-0.999 0.605-0.672 0.911-0.961 0.679-0.692 1.000       0.995-0.999
    4  i.i.d. 0.951-0.954 0.989-0.990 0.962-0.969 0.987-0.989 0.785-0.787 0.176-0.424 0.131-0.293
    4  100    0.878-0.922 0.975-0.981 0.920-0.944 0.974-0.982 0.730-0.748 0.235-0.463 0.169-0.325
    4  20     0.670-0.784 0.937-0.962 0.822-0.878 0.961-0.972 0.693-0.712 0.361-0.566 0.298-0.436
    4  5      0.471-0.521 0.919-0.941 0.738-0.774 0.948-0.964 0.640-0.680 0.683-0.912 0.523-0.676
    8  i.i.d. 0.946-0.962 0.969-0.980 0.954-0.968 0.973-0.982 0.736-0.768 0.070-0.163 0.067-0.153
    8  100    0.870-0.917 0.955-0.963 0.920-0.937 0.959-0.964 0.673-0.729 0.085-0.179 0.084-0.172
    8  20     0.687-0.787 0.936-0.945 0.875-0.896 0.953-0.959 0.682-0.689 0.129-0.245 0.135-0.241
    8  5      0.486-0.507 0.933-0.946 0.836-0.875 0.946-0.964 0.664-0.711 0.197-0.390 0.210-0.402
    32 i.i.d. 0.953-0.960 0.964-0.969 0.962-0.966 0.966-0.972 0.706-0.725 0.029-0.068 0.029-0.068
    32 100    0.883-0.919 0.949-0.960 0.940-0.948 0.950-0.960 0.677-0.705 0.036-0.075 0.036-0.075
    32 20     0.689-0.772 0.940-0.949 0.920-0.931 0.946-0.956 0.661-0.694 0.053-0.107 0.055-0.107
    32 5      0.481-0.523 0.941-0.953 0.911-0.938 0.944-0.960 0.671-0.691 0.077-0.189 0.078-0.187

Limits. With 2 prompts the df is 1 (t = 12.7): the interval is wide and
over-covers where prompts vary little, and at the most heterogeneous
corner (c = 5, alpha = 0.9, rates spread over most of [0, 1]) it covers
0.911; two units cannot tell those cases apart. With 4 and 8 prompts that
vary little it over-covers too (0.96-0.99): a variance estimated from a few
prompts of unequal size is noisy (df about 2.4 for 4 prompts of 4-30
iterations), and the t quantile pays for that noise whether or not the
prompts vary; it is what covering at c = 5-20 costs. With one prompt the run
shows nothing about variation between prompts and the interval is
Wilson's, which undercovers when prompts do vary: measure more than one
prompt. tests/estimation/test_acceptance.py checks the heterogeneous
(c = 20, alpha = 0.6) cells at 2, 4 and 32 prompts and that z = 1 fails.

The bootstrap (``interval="bootstrap"``)
----------------------------------------
:func:`bootstrap_interval` resamples whole prompts with replacement and
recomputes the ratio estimator for every resample (vmapped, one fixed-shape
draw per resample, so it jits). Two methods:

* ``"studentized"`` (default): the bootstrap-t on the logit scale with the
  cluster-robust standard error; it covers, but its ends are erratic with
  few prompts (above).
* ``"percentile"``: quantiles of the resampled ratios; it undercovers with
  few prompts, as the bootstrap variance is too small by (P - 1) / P and the
  percentile method ignores that the standard error itself is estimated.

Either is widened to contain the Wilson interval. It is kept for
comparison and for callers that ask for it; ``"cluster"`` is the interval
to use.

Coverage of the binomial intervals on i.i.d. runs and of the cluster
interval (2000 runs of 32 prompts x 16 iterations at lookahead 4, seeds
100-112; heterogeneous: concentration 20): tests/estimation/test_acceptance.py
(slow tier, ``pytest -s`` prints the table).

All functions are pure JAX: they broadcast, keep float32 by default and
float64 under ``jax_enable_x64``, and run under jit and vmap. Arguments that
fix array shapes (``num_prompts``, ``num_resamples``) and the method names are
static. Input checks run eagerly only (see :mod:`sdsl_jax.common.validation`); under a
transformation out-of-domain counts give meaningless intervals, not errors.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate
from sdsl_jax.common.student_t import student_t_quantile
from sdsl_jax.estimation.beta_quantile import betainccinv, betaincinv

INTERVALS = ("wilson", "clopper-pearson", "cluster", "bootstrap")
BOOTSTRAP_METHODS = ("studentized", "percentile")


@chex.dataclass(frozen=True)
class AcceptanceEstimate:
    """The pooled acceptance estimate of a run and its confidence interval.

    Attributes:
      acceptance: alpha_hat = accepted / trials (NaN when there are no trials).
      low: lower end of the interval.
      high: upper end of the interval.
      accepted: total accepted drafted tokens, sum K.
      trials: total judged drafted positions, sum min(K + 1, gamma).
    """

    acceptance: jnp.ndarray
    low: jnp.ndarray
    high: jnp.ndarray
    accepted: jnp.ndarray
    trials: jnp.ndarray


# --------------------------------------------------------------------------
# Eager checks (skipped for tracers, as everywhere in the package).


def _check_confidence(confidence) -> None:
    if not _validate.is_concrete(confidence):
        return
    _validate.check_finite("confidence", confidence)
    arr = _validate.as_float64(confidence)
    bad = ~((arr > 0) & (arr < 1))
    if np.any(bad):
        raise ValueError(f"confidence must lie in (0, 1), got {_validate.first_bad(arr, bad)}")


def _check_count(name: str, value) -> None:
    """Finite, >= 0 and a whole number."""
    if not _validate.is_concrete(value):
        return
    _validate.check_in_range(name, value, 0.0, float("inf"))
    arr = _validate.as_float64(value)
    bad = arr != np.round(arr)
    if np.any(bad):
        raise ValueError(f"{name} must be a whole number, got {_validate.first_bad(arr, bad)}")


def _check_at_most(name: str, value, bound_name: str, bound) -> None:
    if not _validate.is_concrete(value, bound):
        return
    arr, lim = np.broadcast_arrays(_validate.as_float64(value), _validate.as_float64(bound))
    bad = arr > lim
    if np.any(bad):
        idx = tuple(np.argwhere(np.atleast_1d(bad))[0])
        where = "" if arr.size == 1 else f" at index {tuple(int(i) for i in idx)}"
        a, b = np.atleast_1d(arr)[idx], np.atleast_1d(lim)[idx]
        raise ValueError(f"{name} must be <= {bound_name}, got {a!r} > {b!r}{where}")


def _check_broadcasts(name: str, value, other_name: str, other) -> None:
    """Shapes are static, so this check runs under jit as well."""
    shape, other_shape = np.shape(value), np.shape(other)
    try:
        np.broadcast_shapes(shape, other_shape)
    except ValueError:
        raise ValueError(f"{name} of shape {shape} does not broadcast against {other_name} "
                         f"of shape {other_shape}") from None


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# --------------------------------------------------------------------------
# Helpers.


def _float_dtype(*values):
    # Lists and tuples have no dtype of their own; jnp.asarray gives them the
    # default one (Python scalars stay weakly typed, so they do not promote).
    values = [jnp.asarray(v) if isinstance(v, (list, tuple)) else v for v in values]
    return jnp.result_type(*values, float)


def _two_sided_z(confidence, dtype):
    # The (1 + c) / 2 quantile of the standard normal.
    return ndtri((1 + jnp.asarray(confidence, dtype)) / 2)


def _logit(p):
    return jnp.log(p) - jnp.log1p(-p)


# --------------------------------------------------------------------------
# Public API.


def iteration_trials(accepted: ArrayLike, lookahead: ArrayLike) -> jnp.ndarray:
    """Judged drafted positions per iteration, min(accepted + 1, lookahead).

    The K accepted positions plus the rejected one, unless all gamma drafts
    were accepted (then there was no rejection). Lookahead 0 gives 0 trials.

    Args:
      accepted: K per iteration, whole numbers in [0, lookahead].
      lookahead: gamma per iteration (or one for all), a whole number >= 0.

    Returns:
      Trials per iteration, the broadcast shape and dtype of the inputs.
    """
    _check_broadcasts("lookahead", lookahead, "accepted", accepted)
    _check_count("accepted", accepted)
    _check_count("lookahead", lookahead)
    _check_at_most("accepted", accepted, "lookahead", lookahead)
    k = jnp.asarray(accepted)
    g = jnp.asarray(lookahead)
    dtype = jnp.result_type(k, g)
    return jnp.minimum(k.astype(dtype) + 1, g.astype(dtype))


def _checked_counts(success_name, successes, trial_name, trials):
    """Successes and trials checked (eagerly: >= 0, successes <= trials) as one float dtype."""
    _validate.check_in_range(success_name, successes, 0.0, float("inf"))
    _validate.check_in_range(trial_name, trials, 0.0, float("inf"))
    _check_at_most(success_name, successes, trial_name, trials)
    dtype = _float_dtype(successes, trials)
    return jnp.asarray(successes, dtype), jnp.asarray(trials, dtype)


def wilson_interval(successes: ArrayLike, trials: ArrayLike,
                    confidence: ArrayLike = 0.95) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Wilson score interval for a binomial proportion.

    With p = k/n and z the two-sided normal quantile,

        centre = (2 n p + z^2) / (2 (n + z^2)),
        half   = z sqrt(4 n p (1 - p) + z^2) / (2 (n + z^2)),

    the same formula as ``scipy.stats.binomtest(k, n).proportion_ci(method=
    "wilson")``. The ends are exactly 0 at k = 0 and 1 at k = n, and the
    interval is [0, 1] for n = 0 (no information). Differentiable in k and n
    where 0 < k < n.

    Args:
      successes: k >= 0, broadcasts against trials.
      trials: n >= k.
      confidence: two-sided level in (0, 1).

    Returns:
      (low, high) in the broadcast shape, float dtype.
    """
    _check_confidence(confidence)
    k, n = _checked_counts("successes", successes, "trials", trials)
    dtype = k.dtype
    return _wilson_ends(k, n, jnp.asarray(confidence, dtype))


# The numerical kernels are jitted so that eager calls (the CLI, fitting)
# compile once per shape and dtype instead of dispatching op by op or, for
# the bisection loops, re-tracing on every call. Under an outer jit they are
# inlined as usual.
@jax.jit
def _wilson_ends(k, n, confidence):
    dtype = k.dtype
    z = _two_sided_z(confidence, dtype)
    empty = n <= 0
    n_safe = jnp.where(empty, 1.0, n)
    p = k / n_safe
    denom = 2 * (n_safe + z * z)
    centre = (2 * n_safe * p + z * z) / denom
    half = z / denom * jnp.sqrt(jnp.maximum(4 * n_safe * p * (1 - p), 0.0) + z * z)
    # At k = 0 (k = n) the lower (upper) end is 0 (1) in exact arithmetic;
    # pinning it avoids a rounding-sized negative number.
    low = jnp.where((k <= 0) | empty, 0.0, jnp.clip(centre - half, 0.0, 1.0))
    high = jnp.where((k >= n) | empty, 1.0, jnp.clip(centre + half, 0.0, 1.0))
    return low.astype(dtype), high.astype(dtype)


@jax.jit
def _clopper_pearson_ends(k, n, tail):
    # Interior ends (2 <= k for the lower, k <= n - 2 for the upper; the rest
    # have closed forms below). Elsewhere the quantile is asked for the
    # median of Beta(2, 2), which its first step finds exactly, so those
    # elements neither cost Halley steps nor hold back the batch.
    # The ends are piecewise constant in the counts: no derivative in k or n
    # (the quantiles are differentiable in the tail, so in the confidence).
    k, n = jax.lax.stop_gradient(k), jax.lax.stop_gradient(n)
    interior_low = (k >= 2) & (k < n)
    interior_high = (k <= n - 2) & (k > 0)
    half = jnp.asarray(0.5, k.dtype)
    two = jnp.asarray(2.0, k.dtype)
    # lower: I_x(k, n - k + 1) = tail;  upper: 1 - I_x(k + 1, n - k) = tail.
    low = betaincinv(jnp.where(interior_low, k, two), jnp.where(interior_low, n - k + 1, two),
                     jnp.where(interior_low, tail, half))
    high = betainccinv(jnp.where(interior_high, k + 1, two), jnp.where(interior_high, n - k, two),
                       jnp.where(interior_high, tail, half))
    # Closed forms where the binomial tail is one term: P(X >= n) = x^n,
    # P(X >= 1) = 1 - (1 - x)^n, P(X <= 0) = (1 - x)^n, P(X <= n - 1) = 1 - x^n.
    # expm1 keeps the small ends (1 - t^(1/n) for large n) accurate.
    n_s = jnp.maximum(n, 1.0)
    log_tail = jnp.log(tail)
    log_keep = jnp.log1p(-tail)
    low = jnp.where(k <= 0, 0.0,
                    jnp.where(k >= n, jnp.exp(log_tail / n_s),
                              jnp.where(k <= 1, -jnp.expm1(log_keep / n_s), low)))
    high = jnp.where(k >= n, 1.0,
                     jnp.where(k <= 0, -jnp.expm1(log_tail / n_s),
                               jnp.where(k >= n - 1, jnp.exp(log_keep / n_s), high)))
    return low, high


def clopper_pearson_interval(successes: ArrayLike, trials: ArrayLike,
                             confidence: ArrayLike = 0.95) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Clopper-Pearson ("exact") interval for a binomial proportion.

    With tail mass t = (1 - confidence) / 2 the ends are beta quantiles,

        low  = Beta(k, n - k + 1).ppf(t)       (0 when k = 0),
        high = Beta(k + 1, n - k).ppf(1 - t)   (1 when k = n),

    as in ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``. They
    are :func:`~sdsl_jax.estimation.beta_quantile.betaincinv` and
    :func:`~sdsl_jax.estimation.beta_quantile.betainccinv` (Halley steps on
    the incomplete beta function, as many as the slowest element needs, about
    two), so the function jits and vmaps; ends whose binomial tail is a single
    term (k = 0, 1, n - 1, n) are closed forms. Errors against scipy: about
    1e-13 in float64 and a few float32 ulp (below 1e-6) in float32, for n up
    to 1e7. One exception in float32: an upper end near 0 (a few successes
    in 1e5 to 1e7 trials) is found next to 1 in the mirrored distribution, so
    it is right to about 3e-8 absolutely but only 1e-5 to 1e-2 relatively
    (see :mod:`sdsl_jax.estimation.beta_quantile`). The ends are piecewise
    constant in the counts, so gradients through them are zero.

    Args:
      successes: k >= 0, broadcasts against trials.
      trials: n >= k; n = 0 gives [0, 1].
      confidence: two-sided level in (0, 1).

    Returns:
      (low, high) in the broadcast shape, float dtype.
    """
    _check_confidence(confidence)
    k, n = _checked_counts("successes", successes, "trials", trials)
    dtype = k.dtype
    k, n = jnp.broadcast_arrays(k, n)
    tail = jnp.broadcast_to((1 - jnp.asarray(confidence, dtype)) / 2, k.shape)
    low, high = _clopper_pearson_ends(k, n, tail)
    return low.astype(dtype), high.astype(dtype)


def prompt_totals(accepted: ArrayLike, lookahead: ArrayLike, prompt_ids: ArrayLike,
                  num_prompts: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Accepted tokens and trials summed per prompt.

    Args:
      accepted: K per iteration.
      lookahead: gamma per iteration (broadcasts against accepted).
      prompt_ids: integer id in [0, num_prompts) of the prompt each iteration
        belongs to (broadcasts against accepted). Under jit, ids outside the
        range are dropped silently (segment-sum semantics).
      num_prompts: the number of prompts P, a static Python int.

    Returns:
      (accepted per prompt, trials per prompt), each of shape (P,), in the
      dtype of the counts. A prompt with no iterations has 0 trials.
    """
    num_prompts = _validate.check_static_int("num_prompts", num_prompts, 1, fixes="an array shape")
    ids = jnp.asarray(prompt_ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"prompt_ids must have an integer dtype, got {ids.dtype}")
    if _validate.is_concrete(prompt_ids):
        _validate.check_in_range(f"prompt_ids (num_prompts={num_prompts})", prompt_ids, 0,
                                 num_prompts - 1)
    trials = iteration_trials(accepted, lookahead)
    k = jnp.asarray(accepted).astype(trials.dtype)
    k, trials, ids = jnp.broadcast_arrays(k, trials, ids)
    ids = ids.ravel()
    per_accepted = jax.ops.segment_sum(k.ravel(), ids, num_segments=num_prompts)
    per_trials = jax.ops.segment_sum(trials.ravel(), ids, num_segments=num_prompts)
    return per_accepted, per_trials


def _prompt_counts(prompt_accepted, prompt_trials):
    """Per-prompt counts checked (eagerly) and as 1-D arrays of one float dtype."""
    a, t = _checked_counts("prompt_accepted", prompt_accepted, "prompt_trials", prompt_trials)
    if a.ndim != 1 or t.ndim != 1 or a.shape != t.shape:
        raise ValueError("prompt_accepted and prompt_trials must be 1-D of one shape "
                         f"(prompts on the axis; vmap for batches), got {a.shape} and {t.shape}")
    return a, t


def _resample_indices(key, num_resamples, size, count):
    """(num_resamples, size) uniform integers in [0, count), count traced.

    The index is floor(bits * count / 2**32) for 32 random bits (Lemire's
    multiply-high), done in 16-bit halves so it stays in uint32: no integer
    division (which dominates jax.random.randint on CPU) and a bias below
    count / 2**32. Needs count < 2**16; beyond that randint is used.
    """
    shape = (num_resamples, size)
    if size >= 2**16:
        return jax.random.randint(key, shape, 0, jnp.maximum(count, 1))
    # Drawn flat and reshaped: the same stream quality, and XLA on CPU
    # compiles the flat threefry draw several times faster than a 2-D one.
    bits = jax.random.bits(key, (num_resamples * size,), jnp.uint32).reshape(shape)
    m = jnp.asarray(count).astype(jnp.uint32)
    x = (bits >> 16) * m + (((bits & 0xFFFF) * m) >> 16)
    return (x >> 16).astype(jnp.int32)


def bootstrap_interval(prompt_accepted: ArrayLike, prompt_trials: ArrayLike, key,
                       num_resamples: int = 1000, confidence: ArrayLike = 0.95, *,
                       method: str = "studentized") -> tuple[jnp.ndarray, jnp.ndarray]:
    """Interval for the pooled ratio by resampling prompts with replacement.

    Prompts are the independent units (iterations within a prompt share its
    acceptance rate; see the module docstring). Each resample draws as many
    prompts as the run has non-empty ones, with replacement, and recomputes
    sum accepted / sum trials. Prompts with no trials (empty ids, padding)
    are left out of the resampling.

    ``method="studentized"`` (default) is the bootstrap-t on the logit scale
    with the cluster-robust standard error; ``"percentile"`` takes quantiles
    of the resampled ratios. Either result is widened to contain the Wilson
    interval of the pooled counts, the floor where the run shows no variation
    between prompts (e.g. every draft accepted, or a single prompt).

    Args:
      prompt_accepted: accepted tokens per prompt, shape (P,) (see
        :func:`prompt_totals`). For a batch of runs, vmap.
      prompt_trials: trials per prompt, shape (P,).
      key: a ``jax.random`` key; the same key gives the same interval.
      num_resamples: bootstrap resamples B (static); 1000 is plenty for a
        95% interval, more makes the ends less noisy.
      confidence: two-sided level in (0, 1).
      method: "studentized" or "percentile" (static).

    Returns:
      (low, high), scalars of the float dtype. [0, 1] when there are no trials.
    """
    _check_choice("method", method, BOOTSTRAP_METHODS)
    num_resamples = _validate.check_static_int("num_resamples", num_resamples, 2,
                                                fixes="an array shape")
    _check_confidence(confidence)
    a, t = _prompt_counts(prompt_accepted, prompt_trials)
    return _bootstrap_ends(a, t, key, jnp.asarray(confidence, a.dtype), num_resamples, method)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _bootstrap_ends(a, t, key, conf, num_resamples, method):
    dtype = a.dtype
    size = a.shape[0]
    tails = jnp.stack([(1 - conf) / 2, (1 + conf) / 2])

    # Non-empty prompts first, so that a resample of the m non-empty prompts is
    # m uniform draws from the front of the array; the fixed-shape draw has P
    # slots and the slots from m on are masked out.
    nonempty = t > 0
    m = jnp.sum(nonempty)
    order = jnp.argsort(~nonempty, stable=True)
    a_sorted, t_sorted = a[order], t[order]
    idx = _resample_indices(key, num_resamples, size, m)
    used = jnp.arange(size) < m
    a_star = jnp.where(used, a_sorted[idx], 0.0)
    t_star = jnp.where(used, t_sorted[idx], 0.0)
    total_a_star = jnp.sum(a_star, axis=1)
    total_t_star = jnp.sum(t_star, axis=1)
    ratio_star = total_a_star / jnp.maximum(total_t_star, 1.0)

    total_a, total_t = jnp.sum(a), jnp.sum(t)
    ratio = total_a / jnp.maximum(total_t, 1.0)

    if method == "percentile":
        ends = jnp.quantile(ratio_star, tails)
        low, high = ends[0], ends[1]
    else:
        # Linearisation (sandwich) standard error of a ratio estimator, from
        # the per-prompt residuals a_p - R t_p. The usual m / (m - 1)
        # small-sample factor scales se and every se* alike, so it cancels in
        # the bootstrap-t and is left out.
        def std_error(a_, t_, r, total):
            return jnp.sqrt(jnp.sum((a_ - r[..., None] * t_) ** 2, axis=-1)) / jnp.maximum(total, 1.0)

        se = std_error(jnp.where(nonempty, a, 0.0), t, ratio, total_t)
        se_star = std_error(a_star, t_star, ratio_star, total_t_star)

        # The logit of a ratio of exactly 0 or 1 is infinite; half a trial
        # away from the boundary is the usual guard. On the logit scale the
        # delta method divides the standard error by r (1 - r).
        def to_logit(r, se_r, total):
            eps = 0.5 / jnp.maximum(total, 1.0)
            r = jnp.clip(r, eps, 1 - eps)
            return _logit(r), se_r / (r * (1 - r))

        centre, se_logit = to_logit(ratio, se, total_t)
        centre_star, se_logit_star = to_logit(ratio_star, se_star, total_t_star)
        diff = centre_star - centre
        # A resample whose prompts all have the same ratio has se* = 0; its
        # t* is +-infinite unless it equals the estimate. A large finite
        # stand-in keeps the quantile interpolation free of inf - inf.
        big = jnp.asarray(1e30, dtype)
        t_star_stat = jnp.where(
            se_logit_star > 0, diff / jnp.where(se_logit_star > 0, se_logit_star, 1.0),
            jnp.sign(diff) * big)
        t_star_stat = jnp.clip(t_star_stat, -big, big)
        t_ends = jnp.quantile(t_star_stat, tails)
        # Invert the pivot: the upper t quantile gives the lower end.
        low = jax.nn.sigmoid(centre - t_ends[1] * se_logit)
        high = jax.nn.sigmoid(centre - t_ends[0] * se_logit)

    w_low, w_high = wilson_interval(total_a, total_t, conf)
    low = jnp.where(total_t > 0, jnp.minimum(low, w_low), 0.0)
    high = jnp.where(total_t > 0, jnp.maximum(high, w_high), 1.0)
    return low.astype(dtype), high.astype(dtype)


def cluster_interval(prompt_accepted: ArrayLike, prompt_trials: ArrayLike,
                     confidence: ArrayLike = 0.95) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Cluster-robust interval for the pooled ratio sum a_p / sum t_p over prompts p.

    The method of the module docstring ("The cluster interval"): the CR2
    linearisation variance of the ratio on the logit scale, a t quantile
    with Bell-McCaffrey degrees of freedom under a working model of
    binomial plus between-prompt variance, and the Wilson interval of the
    pooled counts as the floor. No resampling: it is deterministic, cheap
    (O(P)) and differentiable almost everywhere.

    Prompts with no trials (empty ids, padding) are left out. With one
    prompt, or when every prompt has the same rate (all accepted, say), the
    run shows no variation between prompts and the result is the Wilson
    interval.

    Args:
      prompt_accepted: accepted tokens per prompt, shape (P,) (see
        :func:`prompt_totals`). For a batch of runs or of draft positions,
        vmap.
      prompt_trials: trials per prompt, shape (P,).
      confidence: two-sided level in (0, 1).

    Returns:
      (low, high), scalars of the float dtype. [0, 1] when there are no trials.
    """
    _check_confidence(confidence)
    a, t = _prompt_counts(prompt_accepted, prompt_trials)
    return _cluster_ends(a, t, jnp.asarray(confidence, a.dtype))


def _bell_mccaffrey_traces(w, u, c, omega):
    """tr(B Omega) and tr((B Omega)^2) for B = M' diag(c) M, M = I - 1 w', in O(P).

    The variance is r' C r with residuals r = M x, so under Var(x) =
    diag(omega) the two traces are tr(C N) and sum_ij c_i c_j N_ij^2, with
    N = M Omega M' the residuals' covariance,

        N_ij = delta_ij omega_i - w_i omega_i - w_j omega_j + sum_k w_k^2 omega_k.

    Written that way the terms of a prompt that holds nearly all the trials
    (c_p ~ 1 / (1 - w_p) large, N_pj ~ 1 - w_p small) cancel to nothing in
    float32. So that prompt, the one with the largest weight (only one can
    have w > 1/2, so every other c is at most 2 w^2), is handled on its own,
    with N written in the exact 1 - w = u and the sum over the other prompts:

        N_ii = omega_i u_i^2 + sum_(k != i) w_k^2 omega_k,
        N_ij = -w_i u_i omega_i - w_j u_j omega_j + sum_(k != i, j) w_k^2 omega_k.

    The rest is a diagonal plus a rank-two sum, whose c are bounded.
    """
    top = jnp.argmax(w)
    is_top = jnp.arange(w.shape[0]) == top
    v = w * w * omega
    rest_top = jnp.sum(jnp.where(is_top, 0.0, v))  # sum over k != top
    w_t, u_t, o_t, c_t = w[top], u[top], omega[top], c[top]
    s2 = rest_top + v[top]
    # Diagonal of N.
    n_diag = jnp.where(is_top, o_t * u_t * u_t + rest_top, omega * u * u + (s2 - v))
    trace = jnp.sum(c * n_diag)
    # Row of N at the top prompt, j != top.
    n_top = -w_t * u_t * o_t - w * u * omega + (rest_top - v)
    n_top = jnp.where(is_top, 0.0, n_top)
    cross = 2 * c_t * jnp.sum(c * n_top * n_top)
    corner = (c_t * n_diag[top]) ** 2
    # The other prompts: N_ij = delta_ij omega_i + beta_i + beta_j with
    # beta_i = s2 / 2 - w_i omega_i, so sum_ij c_i c_j N_ij^2 over them is
    # sum c^2 omega^2 + 4 sum c^2 omega beta + 2 (sum c)(sum c beta^2) + 2 (sum c beta)^2.
    ck = jnp.where(is_top, 0.0, c)
    beta = s2 / 2 - w * omega
    others = (jnp.sum(ck * ck * omega * omega) + 4 * jnp.sum(ck * ck * omega * beta)
              + 2 * jnp.sum(ck) * jnp.sum(ck * beta * beta) + 2 * jnp.sum(ck * beta) ** 2)
    return trace, others + cross + corner


def _cluster_parts(a, t):
    """(ratio, total trials, CR2 variance, Bell-McCaffrey df) of sum a / sum t."""
    live = t > 0
    m = jnp.sum(live)
    total_a, total_t = jnp.sum(a), jnp.sum(t)
    total_safe = jnp.maximum(total_t, jnp.finfo(t.dtype).tiny)
    ratio = jnp.where(total_t > 0, total_a / total_safe, 0.0)
    t_safe = jnp.where(live, t, 1.0)
    w = t / total_safe  # each prompt's weight in the ratio, and its leverage
    # 1 - w_p from the other prompts' trials, exact even when prompt p holds
    # nearly all of them (1 - w would lose every digit there).
    u = (total_t - t) / total_safe
    resid = jnp.where(live, a / t_safe - ratio, 0.0)  # per-prompt rate minus the ratio
    # CR2: the linearised variance sum_p w_p^2 r_p^2, each term divided by
    # 1 - h_p (h_p = w_p, the leverage of prompt p) so that it is unbiased
    # when the rates are homoscedastic; with equal prompts 1 / (1 - h_p) is
    # the usual P / (P - 1).
    keep = live & (u > 0)
    c = jnp.where(keep, w * w / jnp.where(keep, u, 1.0), 0.0)
    variance = jnp.sum(c * resid * resid)

    # Working model for the degrees of freedom: prompt p's rate has variance
    # tau^2 + R (1 - R) / t_p, the binomial part known and the between-prompt
    # part tau^2 from the moments of Pearson's X^2 (DerSimonian-Laird),
    # E X^2 = (m - 1) + tau^2 (T - sum t_p^2 / T) / (R (1 - R)).
    pq = ratio * (1 - ratio)
    pq_safe = jnp.where(pq > 0, pq, 1.0)
    pearson = jnp.sum(t * resid * resid) / pq_safe
    spread = jnp.sum(t * u)  # T - sum t_p^2 / T
    excess = pq * (pearson - (m - 1)) / jnp.where(spread > 0, spread, 1.0)
    tau2 = jnp.where((pq > 0) & (spread > 0), jnp.maximum(excess, 0.0), 0.0)
    omega = jnp.where(keep, tau2 + pq / t_safe, 0.0)
    trace, frobenius = _bell_mccaffrey_traces(w, u, c, omega)
    ok = (m > 1) & (frobenius > 0) & (trace > 0)
    # One prompt's worth of information at the least: below one degree of
    # freedom the t quantile runs away (12.7 at df 1, 63.7 at df 0.5) on
    # what is only a working model's rounding.
    df = jnp.where(ok, jnp.maximum(trace * trace / jnp.where(ok, frobenius, 1.0), 1.0), jnp.inf)
    return ratio, total_t, variance, df


@jax.jit
def _cluster_ends(a, t, conf):
    dtype = a.dtype
    ratio, total_t, variance, df = _cluster_parts(a, t)
    q = student_t_quantile((1 + conf) / 2, df)
    # The logit of a ratio of exactly 0 or 1 is infinite; half a trial away
    # from the boundary is the usual guard (the interval there is Wilson's
    # anyway: every prompt has the same rate, so the variance is 0).
    eps = 0.5 / jnp.maximum(total_t, 1.0)
    r = jnp.clip(ratio, eps, 1 - eps)
    centre = _logit(r)
    half = q * jnp.sqrt(variance) / (r * (1 - r))
    low = jax.nn.sigmoid(centre - half)
    high = jax.nn.sigmoid(centre + half)
    w_low, w_high = wilson_interval(jnp.sum(a), total_t, conf)
    low = jnp.where(total_t > 0, jnp.minimum(low, w_low), 0.0)
    high = jnp.where(total_t > 0, jnp.maximum(high, w_high), 1.0)
    return low.astype(dtype), high.astype(dtype)


def estimate_acceptance(accepted: ArrayLike, lookahead: ArrayLike,
                        prompt_ids: ArrayLike | None = None, *, interval: str = "wilson",
                        confidence: ArrayLike = 0.95, num_prompts: int | None = None,
                        num_resamples: int = 1000, key=None) -> AcceptanceEstimate:
    """Pooled acceptance rate of a run with a confidence interval.

    alpha_hat = sum K / sum min(K + 1, gamma) over every iteration (the MLE
    under i.i.d. acceptances; the module docstring explains the trial model).

    Args:
      accepted: K per iteration, any shape; every element is one iteration.
        For a batch of runs, vmap.
      lookahead: gamma per iteration, broadcasts against accepted (0 marks a
        padding iteration that contributes nothing).
      prompt_ids: integer prompt id of each iteration, broadcasts against
        accepted; required for ``interval="cluster"`` and ``"bootstrap"``,
        ignored otherwise.
      interval: "wilson" (default), "clopper-pearson" (both assume i.i.d.
        trials), "cluster" (prompts as the units, :func:`cluster_interval`;
        use it whenever acceptance varies between prompts, i.e. almost always
        for real runs) or "bootstrap" (resamples prompts; erratic with few
        prompts, kept for comparison). Static.
      confidence: two-sided level in (0, 1).
      num_prompts: number of prompts (static) for "cluster" and "bootstrap";
        inferred as max(prompt_ids) + 1 when omitted outside jit.
      num_resamples: bootstrap resamples (static).
      key: ``jax.random`` key for the bootstrap; default PRNGKey(0).

    Returns:
      An :class:`AcceptanceEstimate`.

    Raises:
      ValueError: naming the argument, for an empty run, counts that are
        negative, fractional or above the lookahead, a lookahead of 0 for every
        iteration, prompt_ids of the wrong shape, dtype or range, or an unknown
        interval. The value checks run eagerly only: under jit, a run whose
        iterations are all padding gives a NaN acceptance and [0, 1].
    """
    _check_choice("interval", interval, INTERVALS)
    _check_confidence(confidence)
    trials = iteration_trials(accepted, lookahead)
    k = jnp.asarray(accepted).astype(trials.dtype)
    k = jnp.broadcast_to(k, jnp.broadcast_shapes(k.shape, trials.shape))
    if k.size == 0:
        raise ValueError(f"accepted is empty (shape {k.shape}): a run needs at least one iteration")
    if prompt_ids is not None:
        _check_broadcasts("prompt_ids", prompt_ids, "accepted", k)
    total_accepted = jnp.sum(k)
    total_trials = jnp.sum(trials)
    if _validate.is_concrete(total_trials) and not total_trials > 0:
        raise ValueError("no drafted position to estimate from: lookahead is 0 for every "
                         "iteration (lookahead must be >= 1 for at least one iteration; 0 only "
                         "marks padding)")
    dtype = _float_dtype(total_accepted, total_trials)
    acc_f = jnp.asarray(total_accepted, dtype)
    trials_f = jnp.asarray(total_trials, dtype)
    alpha_hat = jnp.where(trials_f > 0, acc_f / jnp.where(trials_f > 0, trials_f, 1.0), jnp.nan)

    if interval == "wilson":
        low, high = wilson_interval(acc_f, trials_f, confidence)
    elif interval == "clopper-pearson":
        low, high = clopper_pearson_interval(acc_f, trials_f, confidence)
    else:
        if prompt_ids is None:
            raise ValueError(f'prompt_ids is required for interval="{interval}" '
                             "(prompts are the independent units)")
        if num_prompts is None:
            if not _validate.is_concrete(prompt_ids):
                raise ValueError(f'num_prompts must be given for interval="{interval}" under '
                                 "jit/vmap (it fixes an array shape)")
            ids = np.asarray(jax.device_get(prompt_ids))
            num_prompts = int(ids.max()) + 1 if ids.size else 1
        per_accepted, per_trials = prompt_totals(accepted, lookahead, prompt_ids, num_prompts)
        per_accepted, per_trials = per_accepted.astype(dtype), per_trials.astype(dtype)
        if interval == "cluster":
            low, high = cluster_interval(per_accepted, per_trials, confidence)
        else:
            if key is None:
                key = jax.random.PRNGKey(0)
            low, high = bootstrap_interval(per_accepted, per_trials, key, num_resamples,
                                           confidence)
    return AcceptanceEstimate(acceptance=alpha_hat, low=low, high=high,
                              accepted=total_accepted, trials=total_trials)
