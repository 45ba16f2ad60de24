"""Synthetic measurement sets drawn from known laws, for tests, benchmarks and demos.

A fit is only trustworthy if it recovers coefficients it was not told; this
module makes data where the truth is known. Targets and drafts get sizes and
training tokens spread log-uniformly over realistic ranges; each model's
perplexity is the pre-training law's, times log-normal noise (the scatter of
real runs around a fitted law); each (draft, target) pair's true acceptance is
the plane's, plus normal noise (the pair-to-pair scatter the plane does not
explain), and the measured acceptance is a binomial draw over ``trials``
verified positions, so it comes with accepted/trials counts.
"""

from __future__ import annotations

import jax
import numpy as np

from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining
from sdsl_jax.fitting import data as fit_data
from sdsl_jax.estimation.measurements import MeasurementSet


def synthetic_columns(*, num_targets: int = 8, num_drafts: int = 9, seed: int = 0,
                      pretraining_law=pretraining.BESIROGLU_2024,
                      acceptance_law=acceptance_lib.SDSL_2026,
                      perplexity_noise: float = 0.01, acceptance_noise: float = 0.01,
                      trials: int = 4000, lookahead: int = 4,
                      target_range=(1e9, 1e11), draft_range=(1e8, 3e9),
                      tokens_range=(1e11, 1.5e13), names: bool = True) -> dict:
    """The columns of :func:`synthetic_measurements`, as numpy arrays (no validation).

    ``names=False`` leaves out the model-name columns (a million f-strings
    cost more than generating the numbers).
    """
    rng = np.random.default_rng(seed)

    def models(count, size_range):
        params = np.exp(rng.uniform(*np.log(size_range), count))
        tokens = np.exp(rng.uniform(*np.log(tokens_range), count))
        # In float64 whatever the caller's JAX precision, so that a seed gives
        # the same data in every mode.
        with jax.enable_x64(True):
            law_ppl = np.asarray(pretraining.perplexity(pretraining_law, params, tokens), np.float64)
        return params, tokens, law_ppl * np.exp(rng.normal(0.0, perplexity_noise, count))

    target_params, target_tokens, target_ppl = models(num_targets, target_range)
    draft_params, draft_tokens, draft_ppl = models(num_drafts, draft_range)
    t, d = (v.ravel() for v in np.meshgrid(np.arange(num_targets), np.arange(num_drafts), indexing="ij"))
    a, b, c = (float(getattr(acceptance_law, f)) for f in ("draft_coeff", "target_coeff", "intercept"))
    truth = a * draft_ppl[d] + b * target_ppl[t] + c + rng.normal(0.0, acceptance_noise, t.size)
    truth = np.clip(truth, 0.0, 1.0)
    accepted = rng.binomial(trials, truth)
    columns = dict(
        draft_params=draft_params[d], target_params=target_params[t],
        draft_tokens=draft_tokens[d], target_tokens=target_tokens[t],
        draft_perplexity=draft_ppl[d], target_perplexity=target_ppl[t],
        lookahead=np.full(t.size, float(lookahead)),
        accepted=accepted.astype(np.float64), trials=np.full(t.size, float(trials)))
    if names:
        columns["draft_model"] = np.array([f"draft-{i}" for i in d], object)
        columns["target_model"] = np.array([f"target-{i}" for i in t], object)
    else:
        columns["target_index"] = t
    return columns


def synthetic_measurements(**kwargs) -> MeasurementSet:
    """Every draft paired with every target: num_targets x num_drafts rows.

    Keyword arguments as :func:`synthetic_columns`: perplexity_noise is the
    log-normal sigma on each model's perplexity; acceptance_noise the normal
    sigma of each pair's true acceptance about the plane; trials the verified
    positions per measurement (binomial noise).
    """
    return MeasurementSet.from_columns(synthetic_columns(**kwargs), source="synthetic")


def synthetic_fit_inputs(*, weighting: str = "auto", dtype=None, **kwargs):
    """(AcceptanceRows, target names, PerplexityPoints) for a synthetic set, without a MeasurementSet.

    The same numbers as fitting ``synthetic_measurements(**kwargs)`` through
    :func:`~sdsl_jax.fitting.data.acceptance_rows`, minus the cell-by-cell
    validation a MeasurementSet does: for benchmarks with a million rows.
    """
    columns = synthetic_columns(names=False, **kwargs)
    target_index = columns.pop("target_index")
    acceptance = columns["accepted"] / columns["trials"]
    rows, targets = fit_data.rows_from_columns(columns, acceptance, np.ones(acceptance.size, bool),
                                               target_index, weighting, dtype)
    return rows, [f"target-{t}" for t in targets], fit_data.points_from_columns(columns, dtype)
