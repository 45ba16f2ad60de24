r"""Acceptance per draft position, a test of the i.i.d. model, and why lookahead matters.

Per-position rates
------------------
One iteration at lookahead gamma accepts K drafts, 0 <= K <= gamma. Draft
position i (1-based) is judged only when the first i - 1 were accepted, so
the acceptance rate at position i, given that it is reached, is

    r_i = P(K >= i | K >= i - 1),  estimated by  #(K >= i) / #(K >= i - 1),

for i = 1..gamma. Each reached position is a Bernoulli trial, so the Wilson
interval of those counts is the i.i.d. interval. Iterations of one prompt
share its difficulty, so with prompt ids the honest interval treats prompts
as the units: r_i is a ratio of per-prompt totals, sum_p #_p(K >= i) /
sum_p #_p(K >= i - 1), and gets the cluster interval of the pooled
acceptance (:func:`sdsl_jax.estimation.acceptance.cluster_interval`, vmapped
over positions; the method and why are in that module's docstring). It
contains the Wilson interval by construction.

It replaces a plain percentile bootstrap over prompts, which is narrower than
the binomial with few prompts (for 16 of 30 it gave [0.50, 0.60], where
Wilson gives [0.36, 0.70]) and undercovers. Coverage of the 95% intervals at
positions 1..4 (lookahead 4; per-prompt rates ~ Beta(mean 0.6,
concentration 20), 4 to 30 iterations per prompt; truth the population
ratio E[r^i] / E[r^(i - 1)]; 2000 runs per row, seed 7 + P, float32;
standard error about 0.005; the bootstrap with 1000 resamples; z = 1 is the
cluster interval at the 68% level):

    prompts   percentile bootstrap (before)   cluster (now)         cluster z = 1
    2         0.53  0.49  0.48  0.42          0.98  0.99  0.98  0.98   0.76-0.79
    4         0.79  0.79  0.80  0.76          0.97  0.98  0.99  0.99   0.73-0.77
    8         0.88  0.87  0.87  0.88          0.96  0.96  0.97  0.98   0.72-0.74
    32        0.93  0.92  0.94  0.94          0.95  0.95  0.96  0.96   0.67-0.69

(positions 1 to 4 left to right). Later positions are reached by fewer
iterations, so the Wilson floor carries more of the interval and it is
more conservative there; with 2 and 4 prompts the t quantile on one to three
degrees of freedom makes it conservative as well (module docstring of
:mod:`sdsl_jax.estimation.acceptance`). tests/estimation/test_positions.py
checks the 4- and 32-prompt rows (slow tier) and the 16-of-30 case.

Goodness of fit of the i.i.d. model
-----------------------------------
The i.i.d. model (sdsl-theory.md, section 2) says r_i = alpha for every i: K is
a truncated geometric, P(K = k) = alpha^k (1 - alpha) for k < gamma and
P(K = gamma) = alpha^gamma, with maximum-likelihood estimate the pooled ratio
alpha_hat = sum K / sum min(K + 1, gamma). The free alternative gives every
position its own rate; it has gamma parameters and is the saturated
multinomial over K = 0..gamma (the counts of K and the per-position counts are
the same data). So the likelihood-ratio test of equal per-position rates and
the G-test of the truncated geometric are one statistic,

    G = 2 sum_k O_k log(O_k / E_k),  E_k = n P(K = k; alpha_hat),

chi-square with gamma + 1 - 1 - 1 = gamma - 1 degrees of freedom under the
i.i.d. model. Pearson's X^2 = sum (O_k - E_k)^2 / E_k is the alternative,
asymptotically equivalent. Both need several expected counts per cell
(n of a few hundred iterations at lookahead <= 8 is ample unless alpha is
extreme). Measured by tests/estimation/test_positions.py: under i.i.d. data the 5% test
rejects at its nominal size, and it detects rates that decay along the draft.

Why the serving stacks' ratio depends on the lookahead
------------------------------------------------------
See :func:`serving_stack_ratio`.

Everything here is pure JAX (jit and vmap over runs work; ``lookahead`` is
static as it fixes shapes); eager calls check their inputs.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaincc

from sdsl_jax.common import validation as _validate
from sdsl_jax.estimation.acceptance import cluster_interval, wilson_interval

FIT_METHODS = ("likelihood-ratio", "pearson")


@chex.dataclass(frozen=True)
class PositionRates:
    """Acceptance at draft positions 1..gamma (arrays of shape [..., gamma]).

    Attributes:
      rate: #(K >= i) / #(K >= i - 1); NaN where position i was never reached.
      low, high: Wilson interval (i.i.d. trials).
      bootstrap_low, bootstrap_high: the cluster interval across prompts
        (:func:`sdsl_jax.estimation.acceptance.cluster_interval`; NaN when no
        prompt ids were given). The names are kept from when this was a
        bootstrap; no resampling is involved any more.
      accepted: #(K >= i), the accepted drafts at position i.
      reached: #(K >= i - 1), the iterations that judged position i.
    """

    rate: jax.Array
    low: jax.Array
    high: jax.Array
    bootstrap_low: jax.Array
    bootstrap_high: jax.Array
    accepted: jax.Array
    reached: jax.Array


@chex.dataclass(frozen=True)
class GeometricFit:
    """Goodness of fit of the truncated geometric (i.i.d.) model.

    Attributes:
      acceptance: the MLE alpha_hat = sum K / sum min(K + 1, gamma).
      observed: counts of K = 0..gamma, shape [..., gamma + 1].
      expected: n P(K = k; alpha_hat), same shape.
      statistic: G (likelihood ratio) or X^2 (Pearson).
      df: gamma - 1.
      p_value: P(chi2_df >= statistic).
    """

    acceptance: jax.Array
    observed: jax.Array
    expected: jax.Array
    statistic: jax.Array
    df: int
    p_value: jax.Array


def _check_accepted(accepted, lookahead, mask):
    k = jnp.asarray(accepted)
    if not jnp.issubdtype(k.dtype, jnp.integer):
        raise ValueError(f"accepted must be integer counts K, got dtype {k.dtype}")
    if k.size == 0:
        raise ValueError(f"accepted is empty (shape {k.shape})")
    if mask is not None:
        m = jnp.asarray(mask)
        if m.dtype != jnp.bool_ or m.shape != k.shape:
            raise ValueError(f"mask must be bool of accepted's shape {k.shape}, got "
                             f"{m.dtype}{list(m.shape)}")
    if _validate.is_concrete(k):
        arr = np.asarray(k)
        valid = np.ones(arr.shape, bool) if mask is None else np.asarray(mask)
        bad = valid & ((arr < 0) | (arr > lookahead))
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"accepted must lie in [0, lookahead={lookahead}], got "
                             f"{arr[idx]} at index {idx}")
        if not np.any(valid):
            raise ValueError("mask leaves no iteration")
    return k


def count_histogram(accepted, lookahead: int, mask=None) -> jax.Array:
    """Counts of K = 0..lookahead over the (unmasked) iterations: float[gamma + 1]."""
    lookahead = _validate.check_static_int("lookahead", lookahead, 1)
    k = _check_accepted(accepted, lookahead, mask)
    return _histogram_jit(k, mask, lookahead)


def _histogram(k, mask, lookahead):
    dtype = jnp.result_type(float)
    onehot = (k[..., None] == jnp.arange(lookahead + 1)).astype(dtype)
    if mask is not None:
        onehot = onehot * mask[..., None]
    return jnp.sum(onehot.reshape(-1, lookahead + 1), axis=0)


# One compiled program per shape instead of a dozen small eager ones: the
# reports call these once per run, where compiling is most of the cost.
_histogram_jit = jax.jit(_histogram, static_argnums=2)


@jax.jit
def _rates_and_wilson(hist, confidence):
    acc, reached = _rates_from_histogram(hist)
    rate = jnp.where(reached > 0, acc / jnp.where(reached > 0, reached, 1.0), jnp.nan)
    low, high = wilson_interval(acc, reached, confidence)
    return rate, low, high, acc, reached


def _rates_from_histogram(hist):
    """(#(K >= i), #(K >= i - 1)) for i = 1..gamma, from counts of K = 0..gamma."""
    at_least = jnp.flip(jnp.cumsum(jnp.flip(hist, -1), -1), -1)  # #(K >= k), k = 0..gamma
    return at_least[..., 1:], at_least[..., :-1]


def per_position_acceptance(accepted, lookahead: int, prompt_ids=None, *, mask=None,
                            num_prompts: int | None = None, confidence: float = 0.95,
                            num_resamples: int = 1000, key=None) -> PositionRates:
    """The acceptance rate at each draft position 1..gamma, with intervals.

    Args:
      accepted: int K per iteration, any shape, in [0, lookahead].
      lookahead: gamma of every iteration (a Python int >= 1).
      prompt_ids: int prompt id per iteration (accepted's shape) for the
        cluster interval across prompts; without it those ends are NaN.
      mask: bool, accepted's shape; False marks padding iterations.
      num_prompts: the number of prompts (default max(prompt_ids) + 1).
      confidence: two-sided level.
      num_resamples, key: ignored; kept so that calls written for the
        bootstrap this interval replaced keep working.

    Returns:
      A :class:`PositionRates`, each field of shape [gamma].

    Example, from the loop's records (:func:`sdsl_jax.decoding.metrics.acceptance_inputs`)::

      acc, gam, ids = acceptance_inputs(records)
      rates = per_position_acceptance(acc, records[0]["lookahead"], ids, mask=gam > 0)
    """
    lookahead = _validate.check_static_int("lookahead", lookahead, 1)
    k = _check_accepted(accepted, lookahead, mask)
    _validate.check_open_unit("confidence", confidence)
    hist = _histogram_jit(k, mask, lookahead)
    rate, low, high, acc, reached = _rates_and_wilson(hist, jnp.asarray(confidence, hist.dtype))
    if prompt_ids is None:
        b_low = b_high = jnp.full_like(rate, jnp.nan)
    else:
        ids = jnp.asarray(prompt_ids)
        if ids.shape != k.shape or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"prompt_ids must be integers of accepted's shape {k.shape}, got "
                             f"{ids.dtype}{list(ids.shape)}")
        if num_prompts is None:
            num_prompts = int(np.max(np.asarray(ids))) + 1
        if np.min(np.asarray(ids)) < 0 or np.max(np.asarray(ids)) >= num_prompts:
            raise ValueError(f"prompt_ids must lie in [0, num_prompts={num_prompts})")
        m = jnp.ones(k.shape, bool) if mask is None else jnp.asarray(mask)
        b_low, b_high = _cluster_positions(k.ravel(), m.ravel(), ids.ravel(),
                                           jnp.asarray(confidence, rate.dtype), lookahead,
                                           int(num_prompts))
    return PositionRates(rate=rate, low=low, high=high, bootstrap_low=b_low,
                         bootstrap_high=b_high, accepted=acc, reached=reached)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _cluster_positions(k, mask, ids, confidence, lookahead, num_prompts):
    dtype = confidence.dtype
    onehot = (k[:, None] == jnp.arange(lookahead + 1)).astype(dtype) * mask[:, None]
    per_prompt = jax.ops.segment_sum(onehot, ids, num_segments=num_prompts)  # [P, gamma + 1]
    acc_p, reached_p = _rates_from_histogram(per_prompt)  # [P, gamma] each
    # Prompts that never reached position i have 0 trials there and drop out
    # of its interval. A position no prompt reached has no rate: NaN.
    low, high = jax.vmap(cluster_interval, in_axes=(1, 1, None))(acc_p, reached_p, confidence)
    reached = jnp.sum(reached_p, axis=0) > 0
    return jnp.where(reached, low, jnp.nan), jnp.where(reached, high, jnp.nan)


def truncated_geometric_pmf(acceptance, lookahead: int) -> jax.Array:
    """P(K = k), k = 0..gamma, under i.i.d. acceptances: shape [..., gamma + 1].

    alpha^k (1 - alpha) for k < gamma and alpha^gamma for k = gamma.
    """
    lookahead = _validate.check_static_int("lookahead", lookahead, 0)
    a = jnp.asarray(acceptance, jnp.result_type(acceptance, float))[..., None]
    k = jnp.arange(lookahead + 1)
    return jnp.where(k < lookahead, a ** k * (1 - a), a ** k)


def geometric_fit_test(accepted, lookahead: int, *, mask=None,
                       method: str = "likelihood-ratio") -> GeometricFit:
    """Test the i.i.d. (truncated geometric) model of the accepted counts K.

    The likelihood-ratio (G) statistic equals the likelihood-ratio test of
    equal per-position rates against free ones (module docstring); ``pearson``
    uses X^2 on the same cells. Both are chi-square with gamma - 1 degrees of
    freedom under the model, so lookahead must be >= 2 (at lookahead 1 the
    model is saturated: there is nothing to test).

    Args:
      accepted: int K per iteration, any shape, in [0, lookahead].
      lookahead: gamma (Python int >= 2).
      mask: bool, accepted's shape; False marks padding.
      method: "likelihood-ratio" (default) or "pearson".

    Returns:
      A :class:`GeometricFit`.
    """
    lookahead = _validate.check_static_int("lookahead", lookahead, 2)
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {FIT_METHODS}, got {method!r}")
    k = _check_accepted(accepted, lookahead, mask)
    return _fit_test(_histogram_jit(k, mask, lookahead), lookahead, method)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fit_test(hist, lookahead, method):
    n = jnp.sum(hist)
    kk = jnp.arange(lookahead + 1, dtype=hist.dtype)
    successes = jnp.sum(hist * kk)
    trials = jnp.sum(hist * jnp.minimum(kk + 1, lookahead))
    alpha = successes / trials
    expected = n * truncated_geometric_pmf(alpha, lookahead)
    if method == "likelihood-ratio":
        # 0 log 0 = 0; E > 0 wherever O > 0 unless alpha_hat is 0 or 1, where
        # the model fits the observed cells exactly.
        safe = jnp.where(hist > 0, hist / jnp.where(expected > 0, expected, 1.0), 1.0)
        stat = 2 * jnp.sum(jnp.where(hist > 0, hist * jnp.log(safe), 0.0))
    else:
        stat = jnp.sum(jnp.where(expected > 0, (hist - expected) ** 2
                                 / jnp.where(expected > 0, expected, 1.0), 0.0))
    stat = jnp.maximum(stat, 0.0)
    df = lookahead - 1
    p = gammaincc(df / 2, stat / 2)
    return GeometricFit(acceptance=alpha, observed=hist, expected=expected, statistic=stat, df=df,
                        p_value=p)


def serving_stack_ratio(accepted, lookahead: int, mask=None) -> jax.Array:
    r"""The "acceptance rate" serving stacks report: (mean accepted length - 1) / (budget - 1).

    An iteration's accepted length is the tokens it emits, K + 1 (the accepted
    drafts plus the target's correction or bonus token), and its budget is
    the most it could emit, gamma + 1. So the ratio is

        (E[K + 1] - 1) / (gamma + 1 - 1) = E[K] / gamma
                                         = accepted drafts / drafted tokens,

    the fraction of drafted tokens that were kept (vLLM's "draft acceptance
    rate" is this number).

    Why it is not the acceptance rate alpha: its denominator counts every
    drafted token, including the ones after the first rejection, which were
    never judged (the verifier stops at the first rejection, so their fate
    says nothing about the draft). Under the i.i.d. model E[K] =
    sum_{i=1..gamma} alpha^i, so

        E[K] / gamma = alpha (1 - alpha^gamma) / ((1 - alpha) gamma),

    which equals alpha only at gamma = 1 and falls towards alpha / ((1 - alpha)
    gamma) as gamma grows, while the draft has not changed at all: at alpha =
    0.8 it is 0.80, 0.72, 0.59, 0.42 at gamma = 1, 2, 4, 8. The estimate
    sum K / sum min(K + 1, gamma) (:mod:`sdsl_jax.estimation.acceptance`) divides
    by the judged positions only and is the same alpha at every lookahead;
    a change of it with gamma is real (acceptance that decays along the
    draft: see :func:`per_position_acceptance`).

    Args:
      accepted: int K per iteration, any shape, in [0, lookahead].
      lookahead: gamma (Python int >= 1).
      mask: bool, accepted's shape; False marks padding.

    Returns:
      The ratio, a float scalar.
    """
    lookahead = _validate.check_static_int("lookahead", lookahead, 1)
    k = _check_accepted(accepted, lookahead, mask)
    return _serving_ratio(_histogram_jit(k, mask, lookahead), lookahead)


@functools.partial(jax.jit, static_argnums=1)
def _serving_ratio(hist, lookahead):
    kk = jnp.arange(lookahead + 1, dtype=hist.dtype)
    mean_length = jnp.sum(hist * (kk + 1)) / jnp.sum(hist)
    return (mean_length - 1) / lookahead


def expected_serving_stack_ratio(acceptance, lookahead: int) -> jax.Array:
    """E[K] / gamma = alpha (1 - alpha^gamma) / ((1 - alpha) gamma) under i.i.d. acceptances."""
    lookahead = _validate.check_static_int("lookahead", lookahead, 1)
    a = jnp.asarray(acceptance, jnp.result_type(acceptance, float))
    return jnp.sum(a[..., None] ** jnp.arange(1, lookahead + 1), axis=-1) / lookahead


def summarize_positions(accepted, lookahead: int, prompt_ids=None, *, mask=None,
                        num_prompts: int | None = None, confidence: float = 0.95,
                        num_resamples: int = 1000, key=None) -> dict:
    """Per-position rates, the fit test and the serving stacks' ratio as plain numbers.

    What ``sdsl measure`` reports and ``sdsl plot positions`` draws, for one
    run at one lookahead (arguments as in :func:`per_position_acceptance`).
    Host-side: it returns Python lists and floats (None where a value does
    not exist), ready for JSON.

    Returns:
      A dict with
        position_rates, position_rates_low, position_rates_high: lists of
          gamma rates and their intervals (the cluster interval across
          prompts with prompt ids, where the position was reached; else
          Wilson);
        position_accepted, position_reached: the counts behind each rate;
        geometric_acceptance: the i.i.d. MLE alpha_hat;
        geometric_fit_statistic, geometric_fit_df, geometric_fit_p_value:
          the likelihood-ratio test of the truncated geometric (None at
          lookahead 1, where there is nothing to test);
        serving_ratio: (accepted length - 1) / (budget - 1) of the run;
        serving_ratio_iid: its expectation under i.i.d. acceptance at alpha_hat.
    """
    lookahead = _validate.check_static_int("lookahead", lookahead, 1)
    rates = per_position_acceptance(accepted, lookahead, prompt_ids, mask=mask,
                                    num_prompts=num_prompts, confidence=confidence,
                                    num_resamples=num_resamples, key=key)
    boot = prompt_ids is not None
    low = np.where(boot & np.isfinite(rates.bootstrap_low), rates.bootstrap_low, rates.low)
    high = np.where(boot & np.isfinite(rates.bootstrap_high), rates.bootstrap_high, rates.high)

    def floats(values):
        return [_validate.finite_or_none(v) for v in np.asarray(values, np.float64)]

    # The histogram's few numbers on the host: alpha_hat (as in the fit test)
    # and the serving ratio E[K] / gamma (as serving_stack_ratio computes it).
    hist = np.asarray(count_histogram(accepted, lookahead, mask=mask), np.float64)
    kk = np.arange(lookahead + 1)
    alpha = float(np.sum(hist * kk) / np.sum(hist * np.minimum(kk + 1, lookahead)))
    out = {"position_rates": floats(rates.rate), "position_rates_low": floats(low),
           "position_rates_high": floats(high),
           "position_accepted": [int(v) for v in np.asarray(rates.accepted)],
           "position_reached": [int(v) for v in np.asarray(rates.reached)],
           "geometric_acceptance": _validate.finite_or_none(alpha),
           "geometric_fit_statistic": None, "geometric_fit_df": None,
           "geometric_fit_p_value": None}
    if lookahead >= 2:
        fit = geometric_fit_test(accepted, lookahead, mask=mask)
        out.update(geometric_fit_statistic=float(fit.statistic), geometric_fit_df=lookahead - 1,
                   geometric_fit_p_value=float(fit.p_value))
    out["serving_ratio"] = float(np.sum(hist * kk) / np.sum(hist) / lookahead)
    out["serving_ratio_iid"] = (float(np.sum(alpha ** np.arange(1, lookahead + 1)) / lookahead)
                                if np.isfinite(alpha) else None)
    return out
