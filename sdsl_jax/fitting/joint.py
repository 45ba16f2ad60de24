"""The end-to-end fit: acceptance from (N, D, M, D') through both laws at once.

The planner never sees a perplexity: it predicts the draft's and target's
perplexities from their sizes and data with the pre-training law, and the
acceptance from those with the plane. Fitting the two laws separately
minimises the wrong error for that use. This fit minimises, jointly over all
eight coefficients,

    l(theta) = (n_a / 2) log(sum_i w_i (alpha_i - alpha_hat(N_i, D_i, M_i, D'_i))^2 / n_a)
             + (n_p / 2) log(sum_j (log L_j - log L_hat(N_j, D_j))^2 / n_p),

the Gaussian log-likelihood of the measured acceptances (weighted by their
intervals, w = 1/sigma^2, normalised so that n_a = sum w is the row count)
and of the measured losses (L = log perplexity of each distinct model), each
block's noise variance profiled out. Profiling makes the relative weight of
the two blocks a property of the data, not a tuning knob, and makes the
inverse Hessian a covariance (delta method). Acceptances alone could not pin
down the pre-training law (E and A trade off against the plane's slope); the
loss points can.

How it is solved, and why it is fast:

* Coordinates. The pre-training law in (log E, log A - a c_N, log B - b c_D,
  a, b) with log N and log D centred on the data (c_N, c_D): log A - a log N
  is then a nearly uncorrelated pair of coordinates rather than two numbers
  of size 20 that cancel. The plane on perplexities standardised by the
  measured ones. Every coordinate is of order one.
* The plane is profiled out. For a given pre-training law the predicted
  perplexities are fixed and the plane is linear least squares, solved in
  closed form (:func:`profiled_objective`). The search runs over five
  coordinates, not eight; the optimum is the same point.
* Each distinct model is evaluated once, and no step touches the rows. A
  measurement set pairs every draft with many targets, so its rows refer to
  a few hundred or thousand models. Every sum over rows that the plane's
  least squares needs is a per-model (or per-pair) weighted moment of the
  acceptances (:class:`AcceptanceMoments`, computed once per weighting in
  O(rows)) against a per-model vector, so a step costs O(models + pairs):
  for a full draft x target grid, a matrix-vector product.
* L-BFGS (optax) from the separate Huber fit, then a few Newton steps
  (quadratic convergence to the rounding floor). A bootstrap resample starts
  at the point estimate with Newton steps, a fixed count that vmaps without
  the cost of a batched while_loop, and falls back on L-BFGS only where
  they fall short (:func:`bootstrap_joint`).

Uncertainty. A model's deviation from the pre-training law enters its loss
point and every acceptance row that uses it, as draft or target: the data
are crossed draft x target random effects plus iid row noise, and hold
about as many independent units as models (17 in the default 9 x 8 design),
not rows. So the default covariance is the two-way cluster-robust sandwich
over models (:func:`cluster_covariance`, :mod:`sdsl_jax.fitting.clusters`):
the scores of each model's rows and loss point summed, pairs' counted-twice
rows subtracted (Cameron, Gelbach and Miller 2011), bread the Hessian of l
at the optimum, each model's influence adjusted by its leverage as in CR3
(the one-step leave-one-model-out jackknife: with few clusters the plain
sandwich is too small, since a model's residuals are shrunk by its own
pull on the fit), and intervals from Student's t with (models - 1) degrees
of freedom (``laws.covariance_df``). The iid covariance (the inverse
Hessian, each block's variance with its own degrees-of-freedom correction,
:func:`sdsl_jax.fitting.uncertainty.delta_method_covariance`) stays
available as ``fit_joint(..., covariance="iid")``. The bootstrap resamples
models two-way (:func:`bootstrap_joint`).

Coverage of nominal 95% intervals, measured: 200 sets per perplexity noise
from :func:`sdsl_jax.fitting.synthetic.synthetic_measurements` (9 drafts x 8
targets, seeds 100-299, perplexity noise per model shared by its rows and
its loss point, acceptance noise 0.01, 4000 trials), float64; truth
BESIROGLU_2024 and SDSL_2026; intervals on E, A and B in log space; N* at
(M, D = D') = (7e9, 1e12), (7e10, 1.5e13), (7e10, 1e12) with sigma^2 = g' V g.
Every fit counts, converged or not. "before" is the iid covariance with z,
"after" the default:

    perplexity noise        0.01          0.03          0.05
                        before after  before after  before after
    E  irreducible_loss  0.91  0.94    0.85  0.70    0.76  0.64
    A  param_coeff       0.93  0.97    0.93  0.97    0.84  0.95
    a  param_exponent    0.94  0.97    0.93  0.97    0.85  0.95
    B  data_coeff        0.91  0.96    0.66  0.73    0.55  0.64
    b  data_exponent     0.91  0.95    0.67  0.75    0.56  0.65
    draft_coeff          0.93  0.96    0.95  0.96    0.94  0.96
    target_coeff         0.96  0.97    0.96  0.96    0.93  0.96
    intercept            0.97  0.98    0.96  0.98    0.93  0.96
    N* (3 configs)   .93-.94 .95-.96 .89-.93 .95-.96 .81-.87 .94-.95
    fits converged       0.99          0.76          0.69

At perplexity noise 0.03 and 0.05 the data term (B, b, and E with it) is
barely determined by 17 models over 1e11-1.5e13 tokens: a quarter to a
third of the fits stop short of an optimum (``converged`` False; E and B
run off along the flat direction) and no symmetric interval covers there.
Over the converged fits only, after: E 0.91 / 0.87, B 0.97 / 0.91,
b 0.99 / 0.92 at 0.03 / 0.05 (before: E 0.83 / 0.72, B 0.87 / 0.78).
Alternatives measured on the same sets (N* coverage at 0.01 / 0.03 / 0.05):
CR1 (G / (G - 1) only) with t(min(drafts, targets) - 1) 0.92-0.95 /
0.89-0.90 / 0.85-0.87; CR2 with the same t 0.94-0.95 / 0.93-0.94 / 0.92;
CR3 with z 0.95 / 0.94 / 0.93-0.96, with t(min(drafts, targets) - 1)
0.97-0.98 (too wide); refitted leave-one-model-out jackknife with z 0.97-0.98
/ 0.96-0.97 / 0.93-0.94 (it counts each row's own noise twice).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.fitting import clusters as clusters_lib
from sdsl_jax.fitting import laws as laws_lib
from sdsl_jax.fitting import pretraining as pretraining_fit
from sdsl_jax.fitting import acceptance as fit_acceptance
from sdsl_jax.fitting.acceptance import concentrated_nll
from sdsl_jax.fitting.data import AcceptanceRows, PerplexityPoints
from sdsl_jax.fitting.uncertainty import corrected_inverse_hessian, resample_weights
from sdsl_jax.common import saved_programs
from sdsl_jax.common.buckets import bucket
from sdsl_jax.common.optimize import minimize, newton
from sdsl_jax.laws import acceptance as acceptance_lib

TARGET_COEFF = 6  # index of B in theta and in laws.COEFFICIENTS


@chex.dataclass(frozen=True)
class PlaneScales:
    """Centre and spread of the measured perplexities (constants of the fit's coordinates)."""

    draft_mean: jnp.ndarray
    draft_std: jnp.ndarray
    target_mean: jnp.ndarray
    target_std: jnp.ndarray


@chex.dataclass(frozen=True)
class JointData:
    """A measurement set laid out for the end-to-end fit (see :func:`prepare`).

    Models: the distinct (params, tokens) among the rows' drafts (kd of them)
    and targets (kt), as log sizes minus the centres. Rows: the acceptance
    and the indices of the row's draft and target model. Pairs: the distinct
    (draft, target) model pairs (q of them; the full kd x kt grid, in
    row-major order, when that is at most twice as many), and each row's
    pair; where no pair has more than one row, also each pair's row, so
    that sums over a pair's rows are gathers (a scatter from rows to pairs
    costs several times a gather on a CPU, worst when the rows run across
    the grid's rows, with a stride of a power of two). Points: the loss
    points, with centred log sizes and log L.

    ``prepare(..., padded=True)`` pads every table to a bucket size
    (:func:`bucket`) so that one compiled fit serves a range of data sizes:
    the padded rows and points have ``row_mask`` and ``point_mask`` 0 (and
    must be given zero weight: :func:`pad_rows`), the padded models and
    pairs no row, and every padded entry repeats a real one's values, so
    each sum, mean and extreme of the fit is that of the real entries.
    """

    draft_log_params: jnp.ndarray  # (kd,)
    draft_log_tokens: jnp.ndarray  # (kd,)
    target_log_params: jnp.ndarray  # (kt,)
    target_log_tokens: jnp.ndarray  # (kt,)
    draft_model: jnp.ndarray  # (n,) int32
    target_model: jnp.ndarray  # (n,) int32
    row_pair: jnp.ndarray  # (n,) int32
    pair_draft: jnp.ndarray  # (q,) int32
    pair_target: jnp.ndarray  # (q,) int32
    pair_row: jnp.ndarray  # (q,) int32, each pair's row (n where none) if none has two; else (0,)
    acceptance: jnp.ndarray  # (n,)
    point_log_params: jnp.ndarray  # (p,)
    point_log_tokens: jnp.ndarray  # (p,)
    point_log_loss: jnp.ndarray  # (p,) log L = log(log perplexity)
    scales: PlaneScales
    log_params_centre: jnp.ndarray  # ()
    log_tokens_centre: jnp.ndarray  # ()
    clusters: clusters_lib.ModelClusters  # which model (cluster) each table entry is
    row_mask: jnp.ndarray  # (n,) 1 for a measured row, 0 for padding
    point_mask: jnp.ndarray  # (p,) 1 for a loss point, 0 for padding


@chex.dataclass(frozen=True)
class AcceptanceMoments:
    """Weighted moments of the acceptances that the profiled plane needs.

    For weights w (a fit's, or a bootstrap resample's), with W = sum w and
    abar the weighted mean acceptance: the weight share of each draft model,
    target model and pair, the weighted centred acceptance summed per draft
    and per target model, and the weighted variance of the acceptance. Every
    sum over rows that the plane's least squares needs is one of these
    against a per-model vector, so a step of the fit costs O(models + pairs),
    not O(rows). Computed once per weighting, in O(rows); the fit's
    covariance needs no other pass over the rows (its scores are per-pair
    residual sums, :func:`observation_scores`).
    """

    total: jnp.ndarray  # W
    observations: jnp.ndarray  # n: the rows counted (draw counts), not weighted
    mean: jnp.ndarray  # abar
    variance: jnp.ndarray  # sum w (alpha - abar)^2 / W
    draft_share: jnp.ndarray  # (kd,)
    target_share: jnp.ndarray  # (kt,)
    pair_share: jnp.ndarray  # (q,)
    draft_moment: jnp.ndarray  # (kd,) sum over the model's rows of w (alpha - abar) / W
    target_moment: jnp.ndarray  # (kt,)
    pair_moment: jnp.ndarray  # (q,) likewise per pair (the covariance's scores, not the fit)


@chex.dataclass(frozen=True)
class JointFit:
    """Result of :func:`fit_joint`.

    Attributes:
      laws: FittedLaws with the covariance ``fit_joint(covariance=...)``
        chose (by default the cluster-robust one, with its t degrees of
        freedom in ``laws.covariance_df``).
      theta: the optimum in the fit's coordinates (for warm starts).
      acceptance_r2: R^2 of acceptance predicted from sizes alone.
      acceptance_residuals: measured minus predicted acceptance per row.
      loss_r2: R^2 of the pre-training law on the loss points.
      loss_residuals: log L - log L_hat per loss point.
      objective: l(theta) at the optimum.
      converged: whether L-BFGS stopped at a stationary point (gradient at
        rounding level), not at its step limit.
      identifiable: whether the Hessian was positive definite (if not, some
        coefficient is not determined by the data and its variance is inf).
      iid_covariance: the inverse-Hessian covariance, every row and point
        independent (the old default; too narrow when models deviate from
        the law, see the module doc).
      cluster_covariance: the two-way cluster-robust covariance (models as
        clusters, :mod:`sdsl_jax.fitting.clusters`).
      cluster_df: degrees of freedom of the t quantile that goes with
        ``cluster_covariance``.
    """

    laws: laws_lib.FittedLaws
    theta: jnp.ndarray
    acceptance_r2: jnp.ndarray
    acceptance_residuals: jnp.ndarray
    loss_r2: jnp.ndarray
    loss_residuals: jnp.ndarray
    objective: jnp.ndarray
    converged: jnp.ndarray
    identifiable: jnp.ndarray
    iid_covariance: jnp.ndarray | None = None
    cluster_covariance: jnp.ndarray | None = None
    cluster_df: jnp.ndarray | None = None


COVARIANCES = ("cluster", "iid")


def plane_scales(rows: AcceptanceRows) -> PlaneScales:
    def stats(v):
        mean = jnp.mean(v)
        std = jnp.std(v)
        return mean, jnp.where(std > 0, std, 1.0)

    dm, ds = stats(rows.draft_perplexity)
    tm, ts = stats(rows.target_perplexity)
    return PlaneScales(draft_mean=dm, draft_std=ds, target_mean=tm, target_std=ts)


# Odd 64-bit multipliers (splitmix64's), one per round of hashing: a row's
# slot in a round's table is the top bits of its key times the multiplier.
_HASH_ROUNDS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)
# The first round's table: 2^16 slots stay in cache, and a few hundred or
# thousand models rarely collide in them; later rounds are sized to the rows left.
_HASH_FIRST_BITS = 16


def _distinct_models(params, tokens):
    """(distinct (params, tokens) as complex params + 1j tokens, index of each row's model).

    Models are numbered in order of first appearance: in a measurement set a
    model's rows are usually together or at a regular stride, and the fit's
    per-model and per-pair tables then follow the rows' order, which keeps its
    gathers local. Two layouts are recognised first, each costing a few
    passes over the rows: a column in runs (a target's rows together: the
    runs' first rows stand for them) and a column that repeats with a period
    (every target measured against the same drafts in the same order: one
    period stands for all). Otherwise :func:`_hashed_models`.
    """
    params = np.ascontiguousarray(params, np.float64)
    tokens = np.ascontiguousarray(tokens, np.float64)
    n = params.size
    if n > 1:
        starts = np.flatnonzero((params[1:] != params[:-1]) | (tokens[1:] != tokens[:-1])) + 1
        if starts.size < n // 8:
            starts = np.concatenate([[0], starts])
            models, index = _distinct_models(params[starts], tokens[starts])
            return models, np.repeat(index, np.diff(np.append(starts, n)))
        again = np.flatnonzero((params == params[0]) & (tokens == tokens[0]))
        period = int(again[1]) if again.size > 1 else 0
        repeats = lambda v: (np.array_equal(v[period:2 * period], v[:period])  # a cheap look first
                             and np.array_equal(v[period:], v[:-period]))
        if 0 < period <= n // 2 and repeats(params) and repeats(tokens):
            models, index = _hashed_models(params[:period], tokens[:period])
            return models, np.resize(index, n)
    return _hashed_models(params, tokens)


def _hashed_models(params, tokens):
    """:func:`_distinct_models` by hashing, whatever the layout.

    Hashing rather than sorting a million keys: each row goes to a slot by a
    hash of its (params, tokens); a slot's earliest row stands for its
    model, and a row whose values differ from its slot's (a collision)
    waits for the next round, hashed afresh into a table sized to the rows
    left. Where many rows are left (nearly every row a model of its own), or
    some remain after the rounds, they go through an exact sort.
    """
    params = np.ascontiguousarray(params, np.float64)
    tokens = np.ascontiguousarray(tokens, np.float64)
    # The key mixes both values' bits; computed in place (a million-row
    # temporary costs its page faults, more than the arithmetic).
    key = params.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    key ^= tokens.view(np.uint64)
    index = np.empty(params.size, np.intp)
    firsts, count = [], 0
    here = np.arange(params.size)  # the rows not yet assigned a model
    for round_, multiplier in enumerate(_HASH_ROUNDS):
        rows = here.size
        if round_ and rows > params.size // 8:
            break
        bits = _HASH_FIRST_BITS if round_ == 0 else max(_HASH_FIRST_BITS, (2 * rows - 1).bit_length())
        subset = (lambda v: v) if round_ == 0 else (lambda v: v[here])
        slot = subset(key) * np.uint64(multiplier)
        slot >>= np.uint64(64 - bits)
        slot = slot.view(np.intp)
        table = np.full(1 << bits, rows, np.intp)
        # Written backwards, so that each slot keeps its earliest row.
        table[slot[::-1]] = np.arange(rows - 1, -1, -1)
        used = np.flatnonzero(table < rows)
        used = used[np.argsort(table[used], kind="stable")]  # numbered by their first rows
        first = here[table[used]]
        slot_params, slot_tokens = np.empty(1 << bits), np.empty(1 << bits)
        slot_params[used], slot_tokens[used] = params[first], tokens[first]
        number = np.empty(1 << bits, np.intp)
        number[used] = count + np.arange(used.size)
        same = (slot_params[slot] == subset(params)) & (slot_tokens[slot] == subset(tokens))
        firsts.append(first)
        count += used.size
        if same.all():  # no collision (usual in the first round): no subsets to take
            if round_ == 0:
                index = number[slot]
            else:
                index[here] = number[slot]
            here = here[:0]
            break
        index[here[same]] = number[slot[same]]
        here = here[~same]
    if here.size:
        _, where, inverse = np.unique(params[here] + 1j * tokens[here], return_index=True,
                                      return_inverse=True)
        index[here] = count + inverse.ravel()
        firsts.append(here[where])
    firsts = np.concatenate(firsts)
    order = np.argsort(firsts, kind="stable")
    if np.any(order != np.arange(order.size)):
        # Numbered by first appearance (each round numbers its own models).
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        firsts, index = firsts[order], rank[index]
    return params[firsts] + 1j * tokens[firsts], index


# Bucket floors of the padded layout (prepare(padded=True)): every set of up to
# 256 rows, 16 drafts, 16 targets and 32 loss points shares one compiled fit,
# and larger sets share one per power of two of each table's size.
ROW_BUCKET, POINT_BUCKET = fit_acceptance.ROW_BUCKET, pretraining_fit.POINT_BUCKET
MODEL_BUCKET = 16
# A padded pair grid this small (16 x 16) is used whatever its fill: the
# grid's matrix-vector products cost nothing at this size, and small sets
# then share the grid's program.
GRID_BUCKET = MODEL_BUCKET * MODEL_BUCKET


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` (k, ...) repeated from its first entry up to ``size`` entries."""
    extra = size - values.shape[0]
    return values if extra == 0 else np.concatenate([values, np.repeat(values[:1], extra, axis=0)])


def pad_rows(data: JointData, values):
    """A per-row vector (n,) padded with zeros to ``data``'s row table (a weight or a count)."""
    values = jnp.asarray(values)
    extra = data.row_mask.shape[0] - values.shape[0]
    if extra < 0:
        raise ValueError(f"{values.shape[0]} row values for a layout of {data.row_mask.shape[0]} rows")
    return values if extra == 0 else jnp.concatenate([values, jnp.zeros((extra,), values.dtype)])


def prepare(rows: AcceptanceRows, points: PerplexityPoints, *, padded: bool = False) -> JointData:
    """The model tables, row and pair indices and centred logs (host side, once per data set).

    ``padded=True`` pads the tables to bucket sizes (:class:`JointData`):
    what :func:`fit_joint` and :func:`bootstrap_joint` fit, so that a new
    data set of a similar size reuses their compiled programs. Per-row
    weights then go through :func:`pad_rows`, and the point weights are
    ``point_mask``.
    """
    dtype = rows.acceptance.dtype
    drafts, draft_model = _distinct_models(rows.draft_params, rows.draft_tokens)
    targets, target_model = _distinct_models(rows.target_params, rows.target_tokens)
    kd, kt, n = drafts.size, targets.size, draft_model.size
    p = points.num_params.shape[0]
    if padded:
        size_d, size_t = bucket(kd, MODEL_BUCKET), bucket(kt, MODEL_BUCKET)
        size_n, size_p = bucket(n, ROW_BUCKET), bucket(p, POINT_BUCKET)
    else:
        size_d, size_t, size_n, size_p = kd, kt, n, p
    grid_size = size_d * size_t
    index_type = np.int32 if grid_size < 2**31 else np.int64
    # The row tables, padded by repeating the first row (its models and pair).
    padded_rows = lambda values: _pad(values.astype(index_type, copy=False), size_n)
    draft_model, target_model = padded_rows(draft_model), padded_rows(target_model)
    pair_id = draft_model * index_type(size_t)
    pair_id += target_model
    present, pair_row = None, None
    if grid_size <= 4 * n or (padded and grid_size <= GRID_BUCKET):
        # Each grid pair's row (size_n where it has none; with several, one of them).
        pair_row = np.full(grid_size, size_n, np.int32)
        pair_row[pair_id[:n]] = np.arange(n, dtype=np.int32)
        present = np.count_nonzero(pair_row < size_n)
    if padded:
        full = grid_size <= GRID_BUCKET or (present is not None and grid_size <= 2 * bucket(present, 1))
    else:
        full = present is not None and grid_size <= 2 * present
    if full:
        # Nearly every pair is measured (the usual design): use the full grid,
        # so the pair sums are one matrix-vector product.
        row_pair = pair_id
        pair_draft = np.repeat(np.arange(size_d, dtype=np.int32), size_t)
        pair_target = np.tile(np.arange(size_t, dtype=np.int32), size_d)
        clusters = clusters_lib.model_clusters(drafts, targets, points.num_params, points.tokens,
                                               sizes=(size_d, size_t, size_p), grid=True)
    else:
        pairs, row_pair = np.unique(pair_id[:n], return_inverse=True)
        present, row_pair = pairs.size, row_pair.ravel().astype(np.int32)
        real_pair = np.ones(pairs.size, bool)
        if padded:
            size_q = bucket(pairs.size, GRID_BUCKET)
            real_pair = np.arange(size_q) < pairs.size
            pairs = _pad(pairs, size_q)
        pair_row = np.full(pairs.size, size_n, np.int32)
        pair_row[row_pair] = np.arange(n, dtype=np.int32)
        row_pair = _pad(row_pair, size_n)
        pair_draft, pair_target = pairs // size_t, pairs % size_t
        clusters = clusters_lib.model_clusters(drafts, targets, points.num_params, points.tokens,
                                               pair_draft, pair_target, real_pair=real_pair,
                                               sizes=(size_d, size_t, size_p))
    point_log_params = np.log(np.asarray(points.num_params, np.float64))
    point_log_tokens = np.log(np.asarray(points.tokens, np.float64))
    log_params = np.concatenate([np.log(drafts.real), np.log(targets.real), point_log_params])
    log_tokens = np.concatenate([np.log(drafts.imag), np.log(targets.imag), point_log_tokens])
    # Centres: midway through the sizes seen, so the a- and b-times-log-size
    # products never dwarf the coordinates they are combined with.
    centre_params = 0.5 * (log_params.min() + log_params.max())
    centre_tokens = 0.5 * (log_tokens.min() + log_tokens.max())
    as_float = lambda v: jnp.asarray(v, dtype)
    as_index = lambda v: jnp.asarray(v, jnp.int32)

    def mask(real, size):
        values = np.zeros(size, dtype)
        values[:real] = 1
        return jnp.asarray(values)

    return JointData(
        draft_log_params=as_float(_pad(np.log(drafts.real) - centre_params, size_d)),
        draft_log_tokens=as_float(_pad(np.log(drafts.imag) - centre_tokens, size_d)),
        target_log_params=as_float(_pad(np.log(targets.real) - centre_params, size_t)),
        target_log_tokens=as_float(_pad(np.log(targets.imag) - centre_tokens, size_t)),
        draft_model=as_index(draft_model), target_model=as_index(target_model),
        row_pair=as_index(row_pair), pair_draft=as_index(pair_draft), pair_target=as_index(pair_target),
        # A gather where every pair has one row at most (the usual design), a scatter otherwise.
        pair_row=as_index(pair_row if present == n else np.zeros(0, np.int32)),
        acceptance=as_float(_pad(np.asarray(rows.acceptance), size_n)) if size_n > n else rows.acceptance,
        point_log_params=as_float(_pad(point_log_params - centre_params, size_p)),
        point_log_tokens=as_float(_pad(point_log_tokens - centre_tokens, size_p)),
        point_log_loss=as_float(_pad(np.log(np.log(np.asarray(points.perplexity, np.float64))), size_p)),
        scales=_plane_scales(rows, dtype),
        log_params_centre=as_float(centre_params), log_tokens_centre=as_float(centre_tokens),
        clusters=clusters_lib.ModelClusters(**clusters),
        row_mask=mask(n, size_n), point_mask=mask(p, size_p))


def _plane_scales(rows: AcceptanceRows, dtype) -> PlaneScales:
    """:func:`plane_scales` on the host (numpy): no device round trip while the layout is built."""
    def stats(values):
        values = np.asarray(values)
        mean = values.mean()
        centred = values - mean
        std = np.sqrt(np.dot(centred, centred) / values.size)
        return jnp.asarray(mean, dtype), jnp.asarray(std if std > 0 else 1.0, dtype)

    (dm, ds), (tm, ts) = stats(rows.draft_perplexity), stats(rows.target_perplexity)
    return PlaneScales(draft_mean=dm, draft_std=ds, target_mean=tm, target_std=ts)


def acceptance_moments(data: JointData, row_weight, row_count=None) -> AcceptanceMoments:
    """The moments of :class:`AcceptanceMoments` for row weights ``row_weight`` (n,).

    ``row_count`` (n,): how many times each row counts as an observation (a
    resample's draw counts; the weights are then the rows' own weights times
    these). The profiled likelihood's (n / 2) log(SSR / n) needs n = sum of
    the counts, not the weighted total. By default each measured row counts
    once (``data.row_mask``: padding counts none).

    The rows' sums per pair are gathers (or, where a pair has several rows,
    scatters); on the full grid the per-model sums are the grid's row and
    column sums (a scatter on a CPU costs several times an axis sum).
    """
    total = jnp.sum(row_weight)
    observations = jnp.sum(data.row_mask if row_count is None else row_count).astype(row_weight.dtype)
    share = row_weight / total
    mean = jnp.sum(share * data.acceptance)
    centred = share * (data.acceptance - mean)
    kd, kt, q = data.draft_log_params.shape[0], data.target_log_params.shape[0], data.pair_draft.shape[0]
    by = lambda values, index, size: jax.ops.segment_sum(values, index, num_segments=size)
    if data.pair_row.shape[0] == q:
        # One row per pair at most: each pair's terms are its row's, from the
        # row's weight and acceptance gathered (n marks no row: 0). Gathered
        # as given, not as computed terms, which XLA would recompute per pair.
        pair_of = lambda values: jnp.take(values, data.pair_row, mode="fill", fill_value=0)
        pair_share = pair_of(row_weight) / total
        pair_moment = pair_share * (pair_of(data.acceptance) - mean)
    else:
        pair_share, pair_moment = by(share, data.row_pair, q), by(centred, data.row_pair, q)
    if _is_grid(data):
        grid = lambda values: values.reshape(kd, kt)
        draft_share, target_share = grid(pair_share).sum(axis=1), grid(pair_share).sum(axis=0)
        draft_moment, target_moment = grid(pair_moment).sum(axis=1), grid(pair_moment).sum(axis=0)
    else:
        draft_share, target_share = by(share, data.draft_model, kd), by(share, data.target_model, kt)
        draft_moment, target_moment = by(centred, data.draft_model, kd), by(centred, data.target_model, kt)
    return AcceptanceMoments(
        total=total, observations=observations, mean=mean, variance=jnp.sum(centred * (data.acceptance - mean)),
        draft_share=draft_share, target_share=target_share, pair_share=pair_share,
        draft_moment=draft_moment, target_moment=target_moment, pair_moment=pair_moment)


def _is_grid(data: JointData) -> bool:
    """Whether the pair table is the full (kd, kt) grid in row-major order (see :func:`prepare`)."""
    q = data.pair_draft.shape[0]
    return q == data.draft_log_params.shape[0] * data.target_log_params.shape[0] and q > 0


def _centred_to_theta(theta, data: JointData):
    """Pre-training coordinates (log E, log A, log B, a, b) from the centred ones."""
    return theta.at[1].add(theta[3] * data.log_params_centre).at[2].add(
        theta[4] * data.log_tokens_centre)


def natural_coefficients(theta, data: JointData) -> jnp.ndarray:
    """theta (fit coordinates) -> the eight coefficients in laws.COEFFICIENTS order."""
    scales = data.scales
    pre = pretraining_fit.from_theta(_centred_to_theta(theta[:5], data))
    a = theta[5] / scales.draft_std
    b = theta[6] / scales.target_std
    c = theta[7] - a * scales.draft_mean - b * scales.target_mean
    acc = acceptance_lib.AcceptanceLaw(draft_coeff=a, target_coeff=b, intercept=c)
    return laws_lib.coefficient_vector(pre, acc)


def theta_from_laws(pretraining_law, acceptance_law, data: JointData) -> jnp.ndarray:
    """The fit's coordinates of a pair of laws (inverse of :func:`natural_coefficients`)."""
    scales = data.scales
    pre = pretraining_fit.to_theta(pretraining_law).astype(data.acceptance.dtype)
    pre = pre.at[1].add(-pre[3] * data.log_params_centre).at[2].add(-pre[4] * data.log_tokens_centre)
    a, b, c = (jnp.asarray(getattr(acceptance_law, f), pre.dtype) for f in laws_lib.ACCEPTANCE_FIELDS)
    plane = jnp.stack([a * scales.draft_std, b * scales.target_std,
                       c + a * scales.draft_mean + b * scales.target_mean])
    return jnp.concatenate([pre, plane])


def _predictions(pre_theta, data: JointData):
    """Standardised predicted perplexities of the draft and target models, and log L residuals of the points.

    One pre-training-law evaluation over all three tables at once: the same
    numbers as three, and a third of the graph for XLA to compile.
    """
    kd, kt = data.draft_log_params.shape[0], data.target_log_params.shape[0]
    log_loss = pretraining_fit.predicted_log_loss(
        pre_theta,
        jnp.concatenate([data.draft_log_params, data.target_log_params, data.point_log_params]),
        jnp.concatenate([data.draft_log_tokens, data.target_log_tokens, data.point_log_tokens]))
    perplexity = jnp.exp(jnp.exp(log_loss[:kd + kt]))
    scales = data.scales
    xs = (perplexity[:kd] - scales.draft_mean) / scales.draft_std
    ys = (perplexity[kd:] - scales.target_mean) / scales.target_std
    return xs, ys, data.point_log_loss - log_loss[kd + kt:]


def _loss_term(loss_residual, point_weight):
    return concentrated_nll(jnp.sum(point_weight * loss_residual**2), jnp.sum(point_weight))


def joint_objective(theta, data: JointData, row_weight, point_weight):
    """l(theta) in all eight coordinates (module doc), summed row by row.

    The reference form: the fit minimises the same function with the plane
    profiled out (:func:`profiled_objective`); this one gives the Hessian
    for the covariance and the residuals.
    """
    return _acceptance_term(theta, data, row_weight) + _loss_term(_predictions(theta[:5], data)[2],
                                                                  point_weight)


def _acceptance_term(theta, data: JointData, row_weight):
    xs, ys, _ = _predictions(theta[:5], data)
    predicted = theta[5] * xs[data.draft_model] + theta[6] * ys[data.target_model] + theta[7]
    residual = data.acceptance - predicted
    return concentrated_nll(jnp.sum(row_weight * residual**2), jnp.sum(data.row_mask))


def _covariances(pre_theta, data: JointData, moments: AcceptanceMoments):
    """Weighted means and centred (co)variances of the standardised predicted perplexities.

    Returns (x_mean, y_mean, cxx, cyy, cxy, cxa, cya, loss residuals): x and y
    the predicted draft and target perplexities per row, a the acceptance;
    every one a sum over rows computed from per-model vectors and the moments.
    """
    xs, ys, loss_residual = _predictions(pre_theta, data)
    x_mean, y_mean = moments.draft_share @ xs, moments.target_share @ ys
    dx, dy = xs - x_mean, ys - y_mean
    cxx, cyy = moments.draft_share @ dx**2, moments.target_share @ dy**2
    kd, kt = dx.shape[0], dy.shape[0]
    if _is_grid(data):
        cxy = dx @ (moments.pair_share.reshape(kd, kt) @ dy)
    else:
        cxy = jnp.sum(moments.pair_share * dx[data.pair_draft] * dy[data.pair_target])
    cxa, cya = dx @ moments.draft_moment, dy @ moments.target_moment
    return x_mean, y_mean, cxx, cyy, cxy, cxa, cya, loss_residual


def profiled_objective(pre_theta, data: JointData, moments: AcceptanceMoments, point_weight,
                       fit_target_coeff: bool = True):
    """min over the plane of l, from the acceptance moments: (value, plane coordinates (3,)).

    With xs, ys the standardised predicted perplexities and centred
    covariances C (2x2, of xs and ys) and c (of each with alpha), the best
    plane has slopes C^-1 c and leaves SSR / W = var(alpha) - c' C^-1 c.
    """
    x_mean, y_mean, cxx, cyy, cxy, cxa, cya, loss_residual = _covariances(pre_theta, data, moments)
    if fit_target_coeff:
        det = cxx * cyy - cxy**2
        slope_x = (cyy * cxa - cxy * cya) / det
        slope_y = (cxx * cya - cxy * cxa) / det
    else:
        slope_x, slope_y = cxa / cxx, jnp.zeros_like(cxa)
    explained = slope_x * cxa + slope_y * cya
    value = concentrated_nll(moments.total * (moments.variance - explained), moments.observations)
    plane = jnp.stack([slope_x, slope_y, moments.mean - slope_x * x_mean - slope_y * y_mean])
    return value + _loss_term(loss_residual, point_weight), plane


def moment_objective(theta, data: JointData, moments: AcceptanceMoments, point_weight):
    """l(theta) in all eight coordinates, from the acceptance moments: (acceptance term, loss term).

    The same function as :func:`joint_objective` (the weighted SSR expanded
    about the weighted means), at O(models + pairs) a call instead of
    O(rows): the covariance's Hessian on a million rows costs what it does
    on a hundred.
    """
    covariances = _covariances(theta[:5], data, moments)
    return (concentrated_nll(moments.total * _plane_ssr(theta, covariances, moments), moments.observations),
            _loss_term(covariances[-1], point_weight))


def _plane_ssr(theta, covariances, moments: AcceptanceMoments):
    """The plane's weighted SSR / W at theta, from :func:`_covariances` and the moments."""
    x_mean, y_mean, cxx, cyy, cxy, cxa, cya, _ = covariances
    bx, by = theta[5], theta[6]
    offset = moments.mean - bx * x_mean - by * y_mean - theta[7]
    return (moments.variance + bx**2 * cxx + by**2 * cyy + 2 * bx * by * cxy - 2 * bx * cxa
            - 2 * by * cya + offset**2)


NEWTON_POLISH = 4  # Newton steps after L-BFGS (quadratic convergence: 2 usually suffice)


def refit(pre_theta0, data: JointData, row_weight, point_weight, *, fit_target_coeff: bool = True,
          warm_steps: int = 0, max_steps: int = 200, newton_steps: int = NEWTON_POLISH,
          row_count=None):
    """Minimise l from the pre-training coordinates ``pre_theta0`` (5,), the plane profiled.

    ``row_count`` (n,): a resample's draw count of each row (``row_weight``
    is then the rows' weights times it): the acceptance block's observation
    count is its sum (see :func:`acceptance_moments`); by default each row
    counts once.

    ``warm_steps`` Newton steps (for a start near the optimum; 0 skips them),
    then L-BFGS for up to ``max_steps`` (0 skips it; so does convergence of
    the Newton steps), then ``newton_steps`` Newton steps. Returns (theta (8,), Solution of the 5-coordinate search,
    whose grad_norm is the Newton decrement).
    """
    theta, solution, _ = _solve(pre_theta0, data, row_weight, point_weight, row_count,
                                fit_target_coeff=fit_target_coeff, warm_steps=warm_steps,
                                max_steps=max_steps, newton_steps=newton_steps)
    return theta, solution


@functools.partial(jax.jit, static_argnames=("fit_target_coeff", "warm_steps", "max_steps",
                                             "newton_steps"))
def _solve(pre_theta0, data: JointData, row_weight, point_weight, row_count, *, fit_target_coeff,
           warm_steps, max_steps, newton_steps):
    """:func:`refit`, also returning the acceptance moments it computed (theta, Solution, moments).

    One compiled program for the point fit (which reuses the moments for its
    covariance) and the bootstrap's fallback (which drops them); under the
    bootstrap's jit the unused moments cost nothing.
    """
    moments = acceptance_moments(data, row_weight, row_count)
    objective = lambda t: profiled_objective(t, data, moments, point_weight, fit_target_coeff)[0]
    pre_theta, needs_search = pre_theta0, True
    if warm_steps > 0:
        warm = newton(objective, pre_theta, steps=warm_steps)
        # Where the Newton steps already converged, L-BFGS takes no step (and
        # a vmapped batch in which all did skips it altogether).
        pre_theta = warm.params
        needs_search = ~(warm.grad_norm <= converged_decrement(pre_theta.dtype))
    if max_steps > 0:
        pre_theta = minimize(objective, pre_theta, max_steps=max_steps, run=needs_search).params
    if warm_steps > 0 and max_steps == 0 and newton_steps == 0:
        # The warm steps' own decrement (where their last step began; the
        # result is nearer still) rather than another Hessian at the end: one
        # copy of the Hessian in the compiled graph instead of two.
        solution = warm
    else:
        solution = newton(objective, pre_theta, steps=newton_steps)
    _, plane = profiled_objective(solution.params, data, moments, point_weight, fit_target_coeff)
    return jnp.concatenate([solution.params, plane]), solution, moments


def check_inputs(rows: AcceptanceRows, points: PerplexityPoints, fit_target_coeff: bool) -> None:
    """Raise a ValueError that says why, if :func:`fit_joint` cannot fit these data."""
    if not isinstance(rows, AcceptanceRows):
        raise TypeError(f"rows must be AcceptanceRows, got {type(rows).__name__}")
    if not isinstance(points, PerplexityPoints):
        raise TypeError(f"points must be PerplexityPoints, got {type(points).__name__}")
    n, p = rows.acceptance.shape[0], points.num_params.shape[0]
    if n < 4:
        raise ValueError(f"the end-to-end fit needs at least 4 acceptance measurements, got {n}")
    if p < 5:
        raise ValueError(f"the pre-training law has 5 coefficients; {p} loss points (distinct "
                         "models) cannot fix them: measure pairs among at least 5 models")
    if np.ptp(np.asarray(rows.draft_perplexity)) == 0:
        raise ValueError("every measurement has the same draft perplexity, so the acceptance "
                         "law's draft coefficient is not determined; measure more than one draft")
    if fit_target_coeff and np.ptp(np.asarray(rows.target_perplexity)) == 0:
        raise ValueError("fit_target_coeff=True, but every measurement has the same target "
                         "perplexity: the target coefficient cannot be told from the intercept")


def fit_joint(rows: AcceptanceRows, points: PerplexityPoints, *, start=None,
              fit_target_coeff: bool | None = None, max_steps: int = 200,
              covariance: str = "cluster") -> JointFit:
    """Fit both laws end to end (module doc).

    Args:
      rows, points: from :func:`sdsl_jax.fitting.data.acceptance_rows` and
        :func:`~sdsl_jax.fitting.data.perplexity_points`; at least 4 rows and
        5 points.
      start: optional (PretrainingLaw, AcceptanceLaw) to start from; by
        default the separate Huber fit (only its pre-training law is used:
        the plane is solved exactly at every step).
      fit_target_coeff: fit B, the plane's target coefficient. By default
        only when the rows span more than one target perplexity; with one
        target B cannot be told apart from the intercept and is held at 0.
      max_steps: L-BFGS step limit.
      covariance: which covariance ``laws`` carries: "cluster" (default),
        the two-way cluster-robust sandwich over models, with t degrees of
        freedom (``laws.covariance_df``); "iid", the inverse Hessian (rows
        and points independent; normal quantiles). Both are computed, and
        kept in ``iid_covariance`` and ``cluster_covariance``.

    A host-level driver (it lays the data out once with :func:`prepare`);
    the solve itself is one jitted call.
    """
    if fit_target_coeff is None:
        fit_target_coeff = bool(np.ptp(np.asarray(rows.target_perplexity)) > 0)
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    check_inputs(rows, points, fit_target_coeff)
    # The Huber start first: it runs while the host lays out the rows.
    pre = _huber_start(points) if start is None else start[0]
    data = prepare(rows, points, padded=True)
    pre_theta0 = _start_theta(pre, data)
    row_weight = pad_rows(data, rows.weight)
    # The row mask as the row counts: the argument the bootstrap's fallback
    # passes too, so both run one compiled refit.
    # Where the caller saves programs (the sdsl command line does), a new
    # process loads these three compiled stages instead of tracing them again.
    theta, solution, moments = saved_programs.call(
        "fitting.joint.solve", _solve, (), pre_theta0, data, row_weight, data.point_mask,
        data.row_mask, static_kwargs=dict(fit_target_coeff=fit_target_coeff, warm_steps=0,
                                          max_steps=max_steps, newton_steps=NEWTON_POLISH))
    model = saved_programs.call("fitting.joint.model_stage", _model_stage, (), theta, moments, data,
                                data.point_mask, static_kwargs=dict(fit_target_coeff=fit_target_coeff))
    fit = saved_programs.call("fitting.joint.pair_stage", _pair_stage, (), theta, solution, moments,
                              model, data, data.point_mask,
                              static_kwargs=dict(fit_target_coeff=fit_target_coeff))
    # The per-row and per-point results without the padding.
    # (Sliced on the host: a device slice is one more program per shape.)
    fit = fit.replace(
        acceptance_residuals=jnp.asarray(np.asarray(fit.acceptance_residuals)[:rows.acceptance.shape[0]]),
        loss_residuals=jnp.asarray(np.asarray(fit.loss_residuals)[:points.num_params.shape[0]]))
    if covariance == "iid":
        return fit.replace(laws=fit.laws.replace(covariance=fit.iid_covariance, covariance_df=None))
    return fit


def _huber_start(points: PerplexityPoints):
    """The separate Huber fit's pre-training law, dispatched without waiting for it.

    ``fit_pretraining_law(..., pad=True)``'s fit (its padded points, copies
    of the first at weight 0, and so its compiled program and result), but
    with the padding done here: that call reads its residuals back to trim
    them, which would wait for the fit, and the law alone is needed. JAX
    runs the fit asynchronously, on the device's threads, while
    :func:`prepare` lays out the rows on the host.
    """
    losses = np.asarray(jnp.log(points.perplexity))
    return pretraining_fit.fit_pretraining_law(*pretraining_fit.padded_points(
        points.num_params, points.tokens, losses, np.ones_like(losses))).law


@jax.jit
def _start_theta(pretraining_law, data):
    # One small program rather than a dozen ops compiled one by one.
    return theta_from_laws(pretraining_law, acceptance_lib.SDSL_2026, data)[:5]


@functools.partial(jax.jit, static_argnums=4)
def _model_stage(theta, moments, data, point_weight, fit_target_coeff):
    """The point fit's summary, part one: what is per model (a few thousand numbers at most).

    The Hessian of the two blocks (one, for both covariances: the robust
    one's bread is their sum), the iid covariance, the coordinate change's
    Jacobian and the per-model parts of the scores (:func:`_model_scores`).
    Its outputs are arrays, so the per-pair and per-row stage
    (:func:`_pair_stage`) reads them from memory: in one program XLA fuses
    the per-model transcendentals (the pre-training law's exponentials)
    into the million-element loops that consume them, and recomputes them
    for every pair or row (a tenth of a second on the benchmark's rows).
    """
    index = _free_index(fit_target_coeff)
    blocks = lambda t: jnp.stack(moment_objective(t, data, moments, point_weight))
    hessians = jax.hessian(blocks)(theta)  # (2, 8, 8)
    jacobian = jax.jacobian(lambda t: natural_coefficients(t, data))(theta)
    free = np.ix_(index, index)
    # Two blocks, each with its own profiled variance and its own
    # degrees-of-freedom correction (delta_method_covariance).
    iid, identifiable = corrected_inverse_hessian(
        [hessians[0][free], hessians[1][free]], (jnp.sum(data.row_mask), jnp.sum(point_weight)))
    scores = _model_scores(theta, data, moments, point_weight)
    return dict(hessian=hessians[0] + hessians[1], jacobian=jacobian,
                iid=_to_natural_covariance(iid, jacobian, index), identifiable=identifiable,
                coefficients=natural_coefficients(theta, data), scores=scores)


@functools.partial(jax.jit, static_argnums=6)
def _pair_stage(theta, solution, moments, model, data, point_weight, fit_target_coeff):
    """The point fit's summary, part two: the cluster-robust covariance and the residuals."""
    index = _free_index(fit_target_coeff)
    scores = model["scores"]
    robust = _separable_covariance(scores, moments, data, model["hessian"], model["jacobian"], index,
                                   "CR3")
    df = clusters_lib.cluster_degrees_of_freedom(data.clusters).astype(theta.dtype)
    pre, acc = laws_lib.laws_from_vector(model["coefficients"])
    residuals = data.acceptance - (scores["draft_part"][data.draft_model]
                                   + scores["target_part"][data.target_model])
    loss_res = scores["loss_residuals"]
    # Sums over the measured rows and points alone (padding masked out).
    masked_mean = lambda v, mask: jnp.sum(mask * v) / jnp.sum(mask)
    sst = jnp.sum(data.row_mask * (data.acceptance - masked_mean(data.acceptance, data.row_mask)) ** 2)
    losses = jnp.exp(data.point_log_loss)
    loss_fit = jnp.exp(data.point_log_loss - loss_res)
    loss_sst = jnp.sum(data.point_mask * (losses - masked_mean(losses, data.point_mask)) ** 2)
    return JointFit(
        laws=laws_lib.FittedLaws(pretraining_law=pre, acceptance_law=acc, covariance=robust,
                                 covariance_df=df),
        theta=theta,
        acceptance_r2=1 - jnp.sum(data.row_mask * residuals**2) / sst,
        acceptance_residuals=residuals,
        loss_r2=1 - jnp.sum(data.point_mask * (losses - loss_fit) ** 2) / loss_sst,
        loss_residuals=loss_res,
        objective=solution.value,
        converged=jnp.isfinite(solution.value) & (solution.grad_norm <= converged_decrement(theta.dtype)),
        identifiable=model["identifiable"], iid_covariance=model["iid"], cluster_covariance=robust,
        cluster_df=df)


def _free_index(fit_target_coeff) -> np.ndarray:
    """The coordinates the fit moves: all eight, or all but B's when it is held at 0."""
    return np.array([i for i in range(8) if i != TARGET_COEFF or fit_target_coeff])


def _to_natural_covariance(cov_free, jacobian, index):
    """A covariance over the free coordinates, mapped to the eight natural coefficients."""
    size = jacobian.shape[1]
    cov_theta = jnp.zeros((size, size), cov_free.dtype).at[np.ix_(index, index)].set(cov_free)
    return jacobian @ cov_theta @ jacobian.T


def converged_decrement(dtype) -> float:
    """Largest Newton decrement (distance to the optimum in standard errors) called converged.

    1e-3 standard errors, or what rounding allows in the dtype (about 0.03
    in float32).
    """
    return max(1e-3, 100 * float(np.sqrt(np.finfo(dtype).eps)))


# A bootstrap resample this many of its standard errors from its optimum (its
# Newton decrement) still counts: it moves a 95% interval's ends, about 4
# standard errors apart, by a few percent of the width. The point fit's own
# tolerance (converged_decrement) is stricter than rounding allows where a
# coefficient is poorly determined: there the decrement's floor is rounding
# noise in the gradient divided by a tiny curvature.
RESAMPLE_TOLERANCE = 0.1


def resample_converged(samples, decrement, tolerance: float = RESAMPLE_TOLERANCE) -> np.ndarray:
    """Which bootstrap resamples reached their optimum: a boolean per resample.

    ``samples`` (r, 8) and ``decrement`` (r,) as :func:`bootstrap_joint`
    returns them with ``with_decrement=True``. A resample counts as converged
    when its eight coefficients are finite and its Newton decrement is at
    most ``tolerance`` (standard errors). One that is not has no optimum the
    search could find (a resample that repeats a few models can leave a
    coefficient undetermined, its optimum at infinity, or fit the loss points
    exactly, where the profiled likelihood is unbounded): it must be counted,
    not averaged into the intervals.
    """
    samples, decrement = np.asarray(samples), np.asarray(decrement)
    with np.errstate(invalid="ignore"):
        return (np.all(np.isfinite(samples), axis=-1) & np.isfinite(decrement)
                & (decrement <= tolerance))


RESAMPLING = ("models", "rows")


def bootstrap_joint(fit: JointFit, rows: AcceptanceRows, points: PerplexityPoints, key, *,
                    num_resamples: int = 1000, fit_target_coeff: bool | None = None,
                    warm_steps: int = 8, max_steps: int = 200, batch_size: int = 100,
                    data: JointData | None = None, with_decrement: bool = False,
                    resample: str = "models"):
    """(num_resamples, 8) coefficients refitted on resampled measurements.

    ``resample="models"`` (the default) draws draft models and target models
    with replacement, two-way (:func:`sdsl_jax.fitting.clusters.model_resample_counts`):
    a row counts its draft's draw count times its target's, a loss point its
    model's. That is the unit the data vary by: a model's deviation from the
    pre-training law is shared by all its rows and its loss point, so
    resampling rows and points independently (``resample="rows"``, the old
    behaviour) understates the spread. Each resample is a vector of draw
    counts: the rows' weights are their own times these, and the acceptance
    block's observation count is their sum (:func:`acceptance_moments`).
    Every resample is refitted from the point estimate with ``warm_steps``
    Newton steps, vmapped (a resample's optimum usually lies a standard
    error or so away, where Newton converges quadratically). The resamples
    those steps leave short of :func:`converged_decrement` (where the data
    determine a coefficient poorly a resample's optimum can lie far away, or
    at infinity) are refitted one by one with :func:`refit`, L-BFGS for up
    to ``max_steps`` and Newton polish, from where the Newton steps left
    them: the function the point fit compiled (``max_steps`` as in
    :func:`fit_joint`), so the fallback costs no compilation, and usually
    no time, since on well-determined data few or no resamples need it. A
    vmapped L-BFGS fallback compiled in about twice the time of the whole
    Newton stage and ran every batch as long as its slowest member.
    ``max_steps=0`` skips the fallback. Resamples run ``batch_size`` at a
    time (lax.map over batches bounds the memory). ``data`` may pass the
    :func:`prepare` layout to skip recomputing it. ``with_decrement=True``
    also returns each resample's final Newton decrement (see
    :func:`converged_decrement` and :func:`resample_converged`).
    """
    if fit_target_coeff is None:
        fit_target_coeff = bool(fit.laws.acceptance_law.target_coeff != 0)
    if num_resamples < 1 or batch_size < 1:
        raise ValueError(f"num_resamples and batch_size must be >= 1, got {num_resamples}, {batch_size}")
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}, got {resample!r}")
    data = prepare(rows, points, padded=True) if data is None else data
    dtype = fit.theta.dtype
    size_n, size_p = data.row_mask.shape[0], data.point_mask.shape[0]
    pad_counts = lambda counts, size: (counts if counts.shape[1] == size else jnp.concatenate(
        [counts, jnp.zeros((counts.shape[0], size - counts.shape[1]), counts.dtype)], axis=1))
    if resample == "models":
        # Drawn over the real models; the padded ones (drawn 0 times) hold no row.
        draft_counts, target_counts, point_counts = clusters_lib.model_resample_counts(
            key, data.clusters, num_resamples, dtype)
        draft_counts = pad_counts(draft_counts, data.draft_log_params.shape[0])
        target_counts = pad_counts(target_counts, data.target_log_params.shape[0])
        factors = (draft_counts, target_counts)
        row_mask = np.asarray(data.row_mask)
        row_counts_of = lambda k: (np.asarray(draft_counts[k])[np.asarray(data.draft_model)]
                                   * np.asarray(target_counts[k])[np.asarray(data.target_model)]
                                   * row_mask)
    else:
        row_key, point_key = jax.random.split(key)
        row_counts = resample_weights(row_key, rows.acceptance.shape[0], num_resamples, dtype)
        point_counts = resample_weights(point_key, points.num_params.shape[0], num_resamples, dtype)
        row_counts = pad_counts(row_counts, size_n)
        factors = (row_counts,)
        row_counts_of = lambda k: np.asarray(row_counts[k])
    point_counts = pad_counts(point_counts, size_p)
    row_weight = pad_rows(data, rows.weight)
    thetas, decrement = saved_programs.call(
        "fitting.joint.bootstrap", _bootstrap, (), fit.theta, data, row_weight, factors, point_counts,
        static_kwargs=dict(fit_target_coeff=fit_target_coeff, warm_steps=warm_steps,
                           batch_size=min(batch_size, num_resamples)))
    thetas, decrement = np.array(thetas), np.array(decrement)
    with np.errstate(invalid="ignore"):
        short = ~(decrement <= converged_decrement(dtype))
    if max_steps > 0 and short.any():
        weight = np.asarray(row_weight)
        point_counts = np.asarray(point_counts)
        for k in np.flatnonzero(short):
            start = thetas[k, :5] if np.all(np.isfinite(thetas[k, :5])) else fit.theta[:5]
            count = row_counts_of(k)
            theta, solution = refit(jnp.asarray(start, dtype), data, jnp.asarray(weight * count, dtype),
                                    jnp.asarray(point_counts[k]), fit_target_coeff=fit_target_coeff,
                                    max_steps=max_steps, row_count=jnp.asarray(count, dtype))
            refined = float(solution.grad_norm)
            # Keep whichever of the two ends is nearer its optimum.
            if np.isfinite(refined) and not refined >= decrement[k]:
                thetas[k], decrement[k] = np.asarray(theta), refined
    samples = _natural_batch(jnp.asarray(thetas), data)
    return (samples, jnp.asarray(decrement)) if with_decrement else samples


@jax.jit
def _natural_batch(thetas, data):
    return jax.vmap(natural_coefficients, in_axes=(0, None))(thetas, data)


@functools.partial(jax.jit, static_argnames=("fit_target_coeff", "warm_steps", "batch_size"))
def _bootstrap(theta, data, row_weight, factors, point_counts, *, fit_target_coeff, warm_steps,
               batch_size):
    """(thetas (r, 8), Newton decrements (r,)) after ``warm_steps`` Newton steps per resample.

    ``factors``: (row counts (r, n),) or, for the model bootstrap, (draft
    counts (r, kd), target counts (r, kt)), whose product per row is formed
    inside the loop (O(rows) memory, not O(resamples x rows)).
    """
    def one(counts):
        factor, point_count = counts
        if len(factor) == 1:
            row_count = factor[0]
        else:
            # The mask: a padded row names a real model, but counts none.
            row_count = factor[0][data.draft_model] * factor[1][data.target_model] * data.row_mask
        solved, solution = refit(theta[:5], data, row_weight * row_count, point_count,
                                 fit_target_coeff=fit_target_coeff, warm_steps=warm_steps,
                                 max_steps=0, newton_steps=0, row_count=row_count)
        return solved, solution.grad_norm

    return jax.lax.map(one, (tuple(factors), point_counts), batch_size=batch_size)


def observation_scores(theta, data: JointData, row_weight, point_weight, moments=None) -> dict:
    """The estimating equations of the fit, observation by observation, at theta.

    The gradient of l is the sum of every row's w_i r_i d(r_i)/d(theta) / s_a^2
    and every point's r_j d(r_j)/d(theta) / s_p^2 (s^2 = each block's
    profiled variance SSR / n). A row's prediction depends on its pair
    alone, so its rows' scores sum to (sum of w r over the pair's rows)
    times the pair's gradient g, and that sum is W (pair_moment -
    pair_share (prediction - abar)) from the acceptance moments
    (``moments``, computed from ``row_weight`` if not given): no pass over
    the rows. The gradient is a draft part plus a target part,
    g = -(A dx/dtheta + B dy/dtheta, x_d, y_t, 1), held per model.

    Returns a dict: draft_gradient (kd, 8) and target_gradient (kt, 8)
    (the pair (d, t)'s g is their sum), pair_score (q,) (the pair's rows'
    sum of w r / s_a^2), pair_curvature (q,) (the pair's Gauss-Newton
    Hessian is pair_curvature g g'), and point_scores, point_gradient
    (p, 8), point_curvature (p,) likewise; and the per-model parts of the
    predictions (draft_part + target_part is a pair's predicted acceptance),
    row_variance and loss_residuals.
    """
    moments = acceptance_moments(data, row_weight) if moments is None else moments
    scores = _model_scores(theta, data, moments, point_weight)
    return dict(scores, **_pair_scores(scores, moments, data))


def _model_scores(theta, data: JointData, moments: AcceptanceMoments, point_weight) -> dict:
    """The per-model and per-point part of :func:`observation_scores`."""
    pre = theta[:5]
    covariances = _covariances(pre, data, moments)
    xs, ys, loss_res = _predictions(pre, data)
    jx, jy, jp = jax.jacfwd(lambda t: _predictions(t, data))(pre)  # (kd, 5), (kt, 5), (p, 5)
    row_variance = moments.total * _plane_ssr(theta, covariances, moments) / jnp.sum(data.row_mask)
    point_variance = jnp.sum(point_weight * loss_res**2) / jnp.sum(point_weight)
    kd, kt, p = xs.shape[0], ys.shape[0], loss_res.shape[0]
    zeros = lambda k: jnp.zeros((k, 1), theta.dtype)
    # d(residual)/d(theta) = -d(prediction)/d(theta); the intercept's 1 in the draft part.
    draft_gradient = -jnp.concatenate([theta[5] * jx, xs[:, None], zeros(kd), jnp.ones((kd, 1), theta.dtype)],
                                      axis=1)
    target_gradient = -jnp.concatenate([theta[6] * jy, zeros(kt), ys[:, None], zeros(kt)], axis=1)
    point_gradient = jnp.concatenate([jp, jnp.zeros((p, 3), theta.dtype)], axis=1)
    return dict(draft_part=theta[5] * xs + theta[7], target_part=theta[6] * ys, row_variance=row_variance,
                draft_gradient=draft_gradient, target_gradient=target_gradient,
                point_scores=(point_weight * loss_res / point_variance)[:, None] * point_gradient,
                point_gradient=point_gradient, point_curvature=point_weight / point_variance,
                loss_residuals=loss_res)


def _pair_scores(scores: dict, moments: AcceptanceMoments, data: JointData) -> dict:
    """The per-pair part of :func:`observation_scores`: pair_score and pair_curvature (q,)."""
    draft_part, target_part = scores["draft_part"], scores["target_part"]
    if _is_grid(data):
        prediction = (draft_part[:, None] + target_part[None, :]).reshape(-1)
    else:
        prediction = draft_part[data.pair_draft] + target_part[data.pair_target]
    residual_sum = moments.total * (moments.pair_moment - moments.pair_share * (prediction - moments.mean))
    return dict(pair_score=residual_sum / scores["row_variance"],
                pair_curvature=moments.total * moments.pair_share / scores["row_variance"])


def cluster_covariance(theta, data: JointData, row_weight, point_weight, free,
                       adjustment: str = "CR3"):
    """The two-way cluster-robust covariance of the eight natural coefficients (module doc).

    :func:`sdsl_jax.fitting.clusters.cluster_covariance_separable` of
    :func:`observation_scores`, H the Hessian of l; mapped to natural
    coefficients through the Jacobian of the coordinate change, as the
    iid covariance is. Coordinates not in ``free`` get zero variance.
    """
    index = np.flatnonzero(np.asarray(free))
    moments = acceptance_moments(data, row_weight)
    total = lambda t: jnp.sum(jnp.stack(moment_objective(t, data, moments, point_weight)))
    jacobian = jax.jacobian(lambda t: natural_coefficients(t, data))(theta)
    return _separable_covariance(_model_scores(theta, data, moments, point_weight), moments, data,
                                 jax.hessian(total)(theta), jacobian, index, adjustment)


def _separable_covariance(scores: dict, moments, data: JointData, hessian, jacobian, index, adjustment):
    """:func:`cluster_covariance` from :func:`_model_scores`, the Hessian (8, 8) and the Jacobian."""
    pair = _pair_scores(scores, moments, data)
    cov = clusters_lib.cluster_covariance_separable(
        hessian[np.ix_(index, index)], data.clusters, data.pair_draft, data.pair_target,
        scores["draft_gradient"][:, index], scores["target_gradient"][:, index], pair["pair_score"],
        pair["pair_curvature"], scores["point_scores"][:, index], scores["point_gradient"][:, index],
        scores["point_curvature"], adjustment, grid=_is_grid(data))
    return _to_natural_covariance(cov, jacobian, index)
