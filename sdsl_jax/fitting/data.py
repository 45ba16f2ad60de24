"""The arrays a fit consumes, built once from a measurement set.

A :class:`~sdsl_jax.estimation.measurements.MeasurementSet` is host-side data with names
and provenance; a fit wants device arrays it can jit, vmap and resample. Two
kinds of observation feed the fits:

* acceptance rows: (N, D, M, D', x, y, alpha) with a weight 1 / sigma^2 taken
  from the measurement's interval (a 95% interval is +- 1.96 sigma): from the
  accepted/trials counts by the Wilson interval, or from the reported
  acceptance_low/acceptance_high. A measurement with ten times the trials
  counts ten times as much, which is what an inverse-variance fit means.
* perplexity points: each distinct (num_params, tokens, perplexity) model that
  appears as a draft or a target, for the pre-training law. A target measured
  against nine drafts is one point, not nine: duplicating it would weight the
  pre-training fit by how many drafts happened to be paired with it.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np

from sdsl_jax.estimation.acceptance import wilson_interval

Z_95 = 1.959963984540054  # the normal quantile a reported 95% interval spans on each side

WEIGHTINGS = ("auto", "interval", "equal")


@chex.dataclass(frozen=True)
class AcceptanceRows:
    """One entry per measurement; every leaf has shape (n,)."""

    draft_params: jnp.ndarray
    draft_tokens: jnp.ndarray
    target_params: jnp.ndarray
    target_tokens: jnp.ndarray
    draft_perplexity: jnp.ndarray
    target_perplexity: jnp.ndarray
    acceptance: jnp.ndarray
    weight: jnp.ndarray  # inverse variance, normalised to mean 1 (only ratios matter)
    target_index: jnp.ndarray  # int32 index into the fit's list of targets


@chex.dataclass(frozen=True)
class PerplexityPoints:
    """Distinct (num_params, tokens, perplexity) models; leaves have shape (k,)."""

    num_params: jnp.ndarray
    tokens: jnp.ndarray
    perplexity: jnp.ndarray


def acceptance_sigma(measurements) -> np.ndarray:
    """Standard error of each row's acceptance, NaN where the row gives no interval."""
    return _sigma(measurements.columns, np.asarray(measurements.has_counts))


def _sigma(cols, has_counts) -> np.ndarray:
    n = len(has_counts)
    sigma = np.full(n, np.nan)
    if "acceptance_low" in cols and "acceptance_high" in cols:
        low = np.asarray(cols["acceptance_low"], np.float64)
        high = np.asarray(cols["acceptance_high"], np.float64)
        given = np.isfinite(low) & np.isfinite(high)
        sigma[given] = (high[given] - low[given]) / (2 * Z_95)
    if np.any(has_counts):
        accepted = np.asarray(cols["accepted"], np.float64)[has_counts]
        trials = np.asarray(cols["trials"], np.float64)[has_counts]
        low, high = wilson_interval(accepted, trials)
        # Counts are the primary data; they win over a reported interval.
        sigma[has_counts] = (np.asarray(high, np.float64) - np.asarray(low, np.float64)) / (2 * Z_95)
    return sigma


def acceptance_rows(measurements, weighting: str = "auto", dtype=None):
    """(AcceptanceRows, target names) from a measurement set.

    weighting: "interval" weights each row by 1 / sigma^2 from its interval
    (an error if a row has none), "equal" weights rows equally, "auto" uses
    intervals when every row has one and equal weights otherwise.
    """
    if len(measurements) == 0:
        raise ValueError("the measurement set is empty")
    return rows_from_columns(measurements.columns, measurements.acceptance,
                             np.asarray(measurements.has_counts), measurements.target_names,
                             weighting, dtype)


def rows_from_columns(columns, acceptance, has_counts, target_names, weighting: str = "auto",
                      dtype=None):
    """(AcceptanceRows, target names) from measurement columns that are already valid.

    What :func:`acceptance_rows` does after a MeasurementSet has checked its
    rows: ``columns`` maps the format's column names to float64 arrays,
    ``acceptance`` is alpha per row, ``has_counts`` says which rows give
    accepted/trials counts, ``target_names`` names each row's target. For
    generated data (:func:`sdsl_jax.fitting.synthetic.synthetic_fit_inputs`),
    where validating a million rows cell by cell would cost more than the fit.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    sigma = _sigma(columns, has_counts)
    has_interval = np.isfinite(sigma) & (sigma > 0)
    if weighting == "interval" and not np.all(has_interval):
        row = int(np.flatnonzero(~has_interval)[0]) + 1
        raise ValueError(
            f"weighting='interval' needs an interval for every measurement; row {row} has "
            "neither accepted/trials counts nor acceptance_low/acceptance_high (or a zero-width one)")
    if weighting == "equal" or (weighting == "auto" and not np.all(has_interval)):
        weight = np.ones(len(has_counts))
    else:
        weight = 1.0 / sigma**2
    weight = weight / weight.mean()

    # Targets in order of first appearance; a dict, not list.index, so that
    # this is O(rows), not O(rows x targets).
    targets, first, index = np.unique(np.asarray(target_names), return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    as_float = lambda v: jnp.asarray(np.asarray(v, np.float64), dtype or jnp.result_type(float))
    rows = AcceptanceRows(
        draft_params=as_float(columns["draft_params"]),
        draft_tokens=as_float(columns["draft_tokens"]),
        target_params=as_float(columns["target_params"]),
        target_tokens=as_float(columns["target_tokens"]),
        draft_perplexity=as_float(columns["draft_perplexity"]),
        target_perplexity=as_float(columns["target_perplexity"]),
        acceptance=as_float(acceptance),
        weight=as_float(weight),
        target_index=jnp.asarray(rank[index.ravel()], jnp.int32),
    )
    return rows, [str(t) for t in targets[order]]


def perplexity_points(measurements, dtype=None) -> PerplexityPoints:
    """Every distinct draft and target model of the set, for the pre-training law."""
    return points_from_columns(measurements.columns, dtype)


def points_from_columns(cols, dtype=None) -> PerplexityPoints:
    """:func:`perplexity_points` from measurement columns that are already valid."""
    stacked = np.concatenate([
        np.stack([cols["draft_params"], cols["draft_tokens"], cols["draft_perplexity"]], axis=1),
        np.stack([cols["target_params"], cols["target_tokens"], cols["target_perplexity"]], axis=1),
    ]).astype(np.float64)
    unique = np.unique(stacked, axis=0)
    as_float = lambda v: jnp.asarray(v, dtype or jnp.result_type(float))
    return PerplexityPoints(num_params=as_float(unique[:, 0]), tokens=as_float(unique[:, 1]),
                            perplexity=as_float(unique[:, 2]))
