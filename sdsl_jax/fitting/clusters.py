"""Models as clusters: the structure the end-to-end fit's uncertainty must respect.

A measured model deviates from the pre-training law by its own amount (its
perplexity is the law's times a factor of its own: training noise, data mix,
architecture). That deviation enters the model's loss point and, through the
acceptance plane, every acceptance row in which the model is the draft or the
target. The observations are therefore not independent: they are crossed
random effects, draft x target, plus iid row noise (pair-to-pair scatter and
the binomial count). With 9 drafts and 8 targets the data hold 17 independent
units, not 72 + 17, and an iid covariance (the inverse Hessian) or an iid
bootstrap of rows is too narrow: it undercovers, the more so the larger the
model-level deviations (see :mod:`sdsl_jax.fitting.joint` for the table).

Two remedies, both at the level of models:

* The two-way cluster-robust (sandwich) covariance (Cameron, Gelbach and
  Miller 2011, "Robust inference with multiway clustering"). The estimating
  equations are the per-observation scores of the profiled likelihood; they
  are summed per model (a row belongs to its draft model and its target
  model, a loss point to its model), and

      B = sum_m S_m S_m' - sum_pairs S_pair S_pair'

  (a row is in two models' sums, so the observations of one (draft, target)
  pair, whose products appear twice, are subtracted once), and the
  covariance is H^-1 B H^-1 (H the Hessian, the bread), its negative
  eigenvalues (possible with few clusters) set to 0. A model is identified
  by its (params, tokens) whatever its role: one that is a draft in some
  rows and a target in others (a ladder of models) is one cluster, and a
  row whose draft and target are the same model is in its sum once. With
  17 clusters and 8 coefficients the plain sandwich is too small (each
  model pulls the fit toward itself, shrinking its own residuals); the
  default adjusts each model's influence by its leverage, CR3 (the one-step
  leave-one-model-out jackknife), and takes t quantiles with G - 1 degrees
  of freedom (:func:`cluster_covariance_theta`,
  :func:`cluster_degrees_of_freedom`; CR1 and CR2 are there to compare).
* The two-way ("pigeonhole") bootstrap (Owen 2007, "The pigeonhole
  bootstrap"): draft models and target models are each drawn with
  replacement, a row's weight is the product of its draft's and its target's
  draw counts, a loss point's weight its model's count. A model in both
  roles is drawn in both pools; its loss point gets the mean of its two
  counts (each has expectation 1, so the point keeps its expected weight
  while following both draws). Loss points of models that appear in no row
  (extra checkpoints) are resampled among themselves. No resampling scheme
  is exact for crossed effects (McCullagh 2000); this one is conservative:
  a row's own noise is drawn with both its models, so its share of the
  variance is counted about three times (Owen 2007). Measured on the
  default design (9 x 8, seeds 500-539, 100 resamples each, float64, the
  simulation of :mod:`sdsl_jax.fitting.joint`), N*'s 95% percentile
  interval at the three configurations covers:

      perplexity noise          0.01        0.03        0.05
      resample="models"         1.00   0.98-1.00   0.97-1.00
      resample="rows" (old)     0.90   0.85-0.88        0.82

  with a median width twice the rows bootstrap's; the plane's coefficients
  1.00, the pre-training law's 0.92-0.98 at 0.01 (where the data term is
  determined). The cluster-robust delta interval is the one that covers
  93-97%; the model bootstrap is the conservative check beside it.

All of it is O(rows) once and O(models + pairs) after: every row-level score
is a per-pair weighted residual sum times a per-pair gradient.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.fitting.uncertainty import resample_weights


@chex.dataclass(frozen=True)
class ModelClusters:
    """Which model (cluster) each entry of the fit's tables belongs to.

    Cluster indices run over the distinct (params, tokens) of the drafts,
    targets and loss points together (``count`` of them; arrays are sized
    for the upper bound kd + kt + p so that shapes stay static). Pairs: the
    unordered cluster pair of each (draft, target) pair of the fit's pair
    table, and whether its two models differ (a row whose draft and target
    are the same model is that model's once, not twice).
    """

    draft_cluster: jnp.ndarray  # (kd,) int32
    target_cluster: jnp.ndarray  # (kt,) int32
    point_cluster: jnp.ndarray  # (p,) int32
    pair_group: jnp.ndarray  # (q,) int32, index of the unordered cluster pair (< q)
    pair_twin: jnp.ndarray  # (q,) int32: the pair of the same two models in swapped roles, or itself
    pair_has_twin: jnp.ndarray  # (q,) bool: whether pair_twin is another pair
    pair_distinct: jnp.ndarray  # (q,) bool
    point_draft: jnp.ndarray  # (p,) int32: the point's draft model, kd if none
    point_target: jnp.ndarray  # (p,) int32: the point's target model, kt if none
    count: jnp.ndarray  # () number of distinct models
    draft_count: jnp.ndarray  # () number of distinct draft models
    target_count: jnp.ndarray  # () number of distinct target models
    point_count: jnp.ndarray  # () number of loss points (the tables may be padded beyond these)


def model_clusters(drafts, targets, point_params, point_tokens, pair_draft=None, pair_target=None, *,
                   real_pair=None, sizes=None, grid: bool = False) -> dict:
    """Host-side cluster tables (numpy) for :class:`ModelClusters`.

    ``drafts`` and ``targets`` are the distinct models as complex numbers
    params + 1j tokens (as :func:`sdsl_jax.fitting.joint.prepare` finds
    them); ``pair_draft``/``pair_target`` the pair table's model indices.

    For a padded layout: ``real_pair`` (q,) marks the pairs that stand for
    measured ones (a padded pair must still name real models; it is marked
    as not distinct, so it is no pair's twin and adds nothing), and
    ``sizes`` = (drafts, targets, points) the padded table lengths: the
    padded entries repeat the first one's cluster, and a padded point is
    nobody's draft or target. ``count``, ``draft_count`` and
    ``target_count`` stay the real numbers.

    ``grid=True``: the pair table is the full grid of the (padded) draft and
    target tables in row-major order, a pair real where both its models are;
    ``pair_draft``, ``pair_target`` and ``real_pair`` are then implied. Its
    tables are built from per-model ones by broadcasting, the same values as
    the lookups below on an explicit grid, at a fraction of the cost on a
    million pairs.
    """
    points = np.asarray(point_params, np.float64) + 1j * np.asarray(point_tokens, np.float64)
    kd, kt, p = drafts.size, targets.size, points.size
    size_d, size_t, size_p = (kd, kt, p) if sizes is None else sizes
    models, index = np.unique(np.concatenate([drafts, targets, points]), return_inverse=True)
    index = index.ravel()
    draft_cluster, target_cluster, point_cluster = index[:kd], index[kd:kd + kt], index[kd + kt:]
    # Each model's index among the drafts and among the targets, -1 where it is none.
    draft_of = np.full(models.size, -1)
    draft_of[draft_cluster] = np.arange(kd)
    target_of = np.full(models.size, -1)
    target_of[target_cluster] = np.arange(kt)
    if grid:
        pairs = _grid_pairs(draft_cluster, target_cluster, draft_of, target_of, size_d, size_t)
    else:
        pairs = _listed_pairs(draft_cluster, target_cluster, draft_of, target_of, kt,
                              np.asarray(pair_draft), np.asarray(pair_target), real_pair)

    def lookup(table, size, padded_size):
        # Each point's index among the drafts (or targets), padded_size where it is none of them.
        where = np.full(models.size, padded_size)
        where[index[:kd] if table == "d" else index[kd:kd + kt]] = np.arange(size)
        return pad(where[point_cluster], size_p, padded_size)

    def pad(values, size, fill=None):
        extra = size - values.size
        return np.concatenate([values, np.full(extra, values[0] if fill is None else fill)]) \
            if extra else values

    as_index = lambda v: jnp.asarray(v, jnp.int32)
    return dict(draft_cluster=as_index(pad(draft_cluster, size_d)),
                target_cluster=as_index(pad(target_cluster, size_t)),
                point_cluster=as_index(pad(point_cluster, size_p)),
                **{name: as_index(v) if v.dtype != bool else jnp.asarray(v) for name, v in pairs.items()},
                point_draft=as_index(lookup("d", kd, size_d)),
                point_target=as_index(lookup("t", kt, size_t)),
                count=jnp.asarray(models.size, jnp.int32), draft_count=jnp.asarray(kd, jnp.int32),
                target_count=jnp.asarray(kt, jnp.int32), point_count=jnp.asarray(p, jnp.int32))


def _listed_pairs(draft_cluster, target_cluster, draft_of, target_of, kt, pair_draft, pair_target,
                  real_pair) -> dict:
    """The pair tables of :class:`ModelClusters` for an explicit list of (draft, target) pairs."""
    a, b = draft_cluster[pair_draft], target_cluster[pair_target]
    distinct = a != b
    if real_pair is not None:
        distinct &= np.asarray(real_pair, bool)
    # A pair's twin is the pair of the same two models in the other roles
    # (draft and target swapped): the only other pair of its unordered
    # cluster pair. Found by lookups, O(pairs), where grouping the unordered
    # pairs by a sort cost most of the layout of a million-pair grid.
    twin_draft, twin_target = draft_of[b], target_of[a]
    has_twin = distinct & (twin_draft >= 0) & (twin_target >= 0)
    pair_twin = np.arange(pair_draft.size)
    if has_twin.any():
        key = pair_draft.astype(np.int64) * kt + pair_target
        real = np.flatnonzero(distinct)
        order = real[np.argsort(key[real], kind="stable")]
        wanted = twin_draft[has_twin].astype(np.int64) * kt + twin_target[has_twin]
        at = np.minimum(np.searchsorted(key[order], wanted), order.size - 1)
        found = key[order][at] == wanted
        rows_with = np.flatnonzero(has_twin)
        has_twin[rows_with[~found]] = False
        pair_twin[rows_with[found]] = order[at[found]]
    # The unordered pair's index: the lower of the two pairs' own.
    return dict(pair_group=np.minimum(np.arange(pair_draft.size), pair_twin), pair_twin=pair_twin,
                pair_has_twin=has_twin, pair_distinct=distinct)


def _grid_pairs(draft_cluster, target_cluster, draft_of, target_of, size_d, size_t) -> dict:
    """The pair tables of :class:`ModelClusters` for the full (size_d, size_t) grid, row-major.

    A pair of a padded model (index kd or more, kt or more) is not real: not
    distinct, nobody's twin. Every real pair's twin is in the grid.
    """
    kd, kt = draft_cluster.size, target_cluster.size
    real_d, real_t = np.arange(size_d) < kd, np.arange(size_t) < kt
    # The draft index of each target's model and the target index of each
    # draft's, -1 where the model has no other role.
    twin_draft, twin_target = np.full(size_t, -1), np.full(size_d, -1)
    twin_draft[:kt], twin_target[:kd] = draft_of[target_cluster], target_of[draft_cluster]
    identity = np.arange(size_d * size_t, dtype=np.int32)
    if not np.any(twin_target >= 0):
        # No model is both a draft and a target (the usual design): every real
        # pair is distinct, none has a twin.
        distinct = (real_d[:, None] & real_t[None, :]).ravel()
        return dict(pair_group=identity, pair_twin=identity,
                    pair_has_twin=np.zeros(identity.size, bool), pair_distinct=distinct)
    a = np.full(size_d, -1)
    a[:kd] = draft_cluster
    b = np.full(size_t, -2)
    b[:kt] = target_cluster
    distinct = (a[:, None] != b[None, :]) & real_d[:, None] & real_t[None, :]
    has_twin = distinct & (twin_target >= 0)[:, None] & (twin_draft >= 0)[None, :]
    twin = twin_draft[None, :] * size_t + twin_target[:, None]
    pair_twin = np.where(has_twin, twin, identity.reshape(size_d, size_t)).ravel()
    return dict(pair_group=np.minimum(identity, pair_twin), pair_twin=pair_twin,
                pair_has_twin=has_twin.ravel(), pair_distinct=distinct.ravel())


ADJUSTMENTS = ("CR1", "CR2", "CR3")


def cluster_covariance_theta(hessian, clusters: ModelClusters, pair_draft, pair_target, pair_scores,
                             pair_gradient, pair_curvature, point_scores, point_gradient,
                             point_curvature, adjustment: str = "CR3"):
    """The two-way cluster-robust covariance in the fit's coordinates (k, k).

    ``hessian`` (k, k): the bread H. Pairs (q of them): ``pair_scores`` (q, k),
    the scores of the pair's rows summed; every row of a pair has the same
    gradient ``pair_gradient`` (q, k), so the pair's share of the Hessian is
    ``pair_curvature`` (q,) times g g' (Gauss-Newton). Points likewise, one
    each. Each group's summed score S_g (models: their pairs in either role
    and their loss point; pairs, for the double-counting correction) becomes
    an adjusted influence a_g, and V = sum_models a a' - sum_pairs a a',
    negative eigenvalues clipped to 0:

    * CR1: a_g = sqrt(G / (G - 1)) H^-1 S_g (Cameron, Gelbach and Miller's
      small-sample factor, per dimension).
    * CR2: a_g = H^-1/2 (I - A_g)^-1/2 H^-1/2 S_g, A_g = H^-1/2 H_g H^-1/2
      the group's leverage (Bell and McCaffrey 2002), unbiased for a linear
      model with iid errors.
    * CR3: a_g = (H - H_g)^-1 S_g: the one-step leave-one-model-out
      jackknife (for a linear model, exactly the jackknife).

    A group whose leverage reaches 1 (it alone determines some direction)
    has its eigenvalue of I - A_g floored at 0.05.

    Any per-pair gradients; the end-to-end fit's are a draft part plus a
    target part, and :func:`cluster_covariance_separable` computes the same
    covariance from those parts without a (q, k) table.
    """
    _check_adjustment(adjustment)
    dtype = hessian.dtype
    kd, kt = clusters.draft_cluster.shape[0], clusters.target_cluster.shape[0]
    pairs = _PairSums(pair_draft, pair_target, kd, kt)
    distinct = clusters.pair_distinct.astype(dtype)
    scores = _to_models(clusters, pairs.rows(pair_scores), pairs.cols(pair_scores * distinct[:, None]),
                        point_scores)
    root_inv, inverse = _bread(hessian)

    def model_hessians():
        outer = lambda weight: weight[:, None, None] * pair_gradient[:, :, None] * pair_gradient[:, None, :]
        return _to_models(clusters, pairs.rows(outer(pair_curvature)), pairs.cols(outer(pair_curvature * distinct)),
                          _outer(point_gradient, point_curvature))

    models = _model_influence(scores, model_hessians, root_inv, inverse, clusters.count, adjustment)
    # A pair's rows share one gradient, so its leverage is rank one: a scalar.
    leverage = pair_curvature * jnp.sum((pair_gradient @ inverse) * pair_gradient, axis=1)
    factor = _pair_factor(leverage, clusters, adjustment)
    influence = (factor * distinct)[:, None] * pair_scores @ inverse
    # sum over unordered pairs g of (sum of g's pairs' influence)(...)': each
    # pair with itself, plus each pair with its twin (the same two models in
    # the other roles), the only other member of its group.
    twin = clusters.pair_has_twin.astype(dtype)[:, None]
    cross = jax.lax.cond(jnp.any(clusters.pair_has_twin),
                         lambda: influence.T @ (twin * influence[clusters.pair_twin]),
                         lambda: jnp.zeros((influence.shape[1],) * 2, dtype))
    return _clipped(models.T @ models - influence.T @ influence - cross)


def cluster_covariance_separable(hessian, clusters: ModelClusters, pair_draft, pair_target,
                                 draft_gradient, target_gradient, pair_score, pair_curvature,
                                 point_scores, point_gradient, point_curvature,
                                 adjustment: str = "CR3", grid: bool = False):
    """:func:`cluster_covariance_theta` where each pair's gradient is a draft part plus a target part.

    The pair (d, t)'s gradient is g = ``draft_gradient[d]`` (kd, k) +
    ``target_gradient[t]`` (kt, k), its rows' summed score ``pair_score``
    (q,) times g, its curvature ``pair_curvature`` (q,): so it is in the
    end-to-end fit, where a row's prediction is the plane's slope times the
    draft's predicted perplexity plus the slope times the target's. Then
    every sum over pairs the covariance needs is a per-model vector (or
    outer product) weighted by a per-pair scalar and summed over a model's
    pairs: on the full grid (``grid=True``: pairs in row-major (kd, kt)
    order) a (kd, kt) matrix times a (kt, k) or (kt, k * k) one, a few
    milliseconds for a million pairs, where the (q, k) tables and their
    grouped outer products took most of a second; on a list of pairs,
    segment sums of per-pair scalars times gathered model vectors. The
    pair-with-twin correction (models in both roles) forms the gradients
    pair by pair, and only where there are twins.

    The same covariance as :func:`cluster_covariance_theta` given
    ``pair_scores = pair_score[:, None] * g`` and ``pair_gradient = g``.
    """
    _check_adjustment(adjustment)
    dtype = hessian.dtype
    kd, kt, k = draft_gradient.shape[0], target_gradient.shape[0], draft_gradient.shape[1]
    pairs = _PairSums(pair_draft, pair_target, kd, kt, grid)
    u, v = draft_gradient, target_gradient
    distinct = clusters.pair_distinct.astype(dtype)
    target_score = pair_score * distinct
    # Each sum over a model's pairs is one product of the (kd, kt) pair
    # weights with the other side's vectors and a column of ones (for the
    # weights' own sums), so that every per-pair table is read by as few
    # passes as possible.
    with_one = lambda vectors, *more: jnp.concatenate(
        list(more) + [vectors, jnp.ones((vectors.shape[0], 1), dtype)], axis=1)
    # sum over a draft's pairs of s (u_d + v_t), and over a target's (distinct) pairs.
    by_draft = pairs.rows_times(pair_score, with_one(v))
    by_target = pairs.cols_times(target_score, with_one(u))
    scores = _to_models(clusters, by_draft[:, :k] + by_draft[:, k:] * u,
                        by_target[:, :k] + by_target[:, k:] * v, point_scores)
    root_inv, inverse = _bread(hessian)

    def model_hessians():
        # sum over a model's pairs of c (u + v)(u + v)' = (sum c) u u' + u (sum c v)'
        # + (sum c v) u' + sum c v v'.
        # v v' is symmetric: its upper triangle (k (k + 1) / 2 products, not k^2)
        # goes through the product with the pair weights, and is unpacked after.
        upper = np.triu_indices(k)
        unpack = np.zeros((k, k), int)
        unpack[upper] = unpack.T[upper] = np.arange(upper[0].size)
        m = upper[0].size

        def grouped(sums, own, other):
            others, cross, total = sums[:, :m][:, unpack], sums[:, m:-1], sums[:, -1]
            return (total[:, None, None] * _outer(own) + own[:, :, None] * cross[:, None, :]
                    + cross[:, :, None] * own[:, None, :] + others)

        flat_outer = lambda vectors: vectors[:, upper[0]] * vectors[:, upper[1]]
        by_d = grouped(pairs.rows_times(pair_curvature, with_one(v, flat_outer(v))), u, v)
        by_t = grouped(pairs.cols_times(pair_curvature * distinct, with_one(u, flat_outer(u))), v, u)
        return _to_models(clusters, by_d, by_t, _outer(point_gradient, point_curvature))

    models = _model_influence(scores, model_hessians, root_inv, inverse, clusters.count, adjustment)
    # A pair's leverage c g' H^-1 g, expanded: u'Mu + v'Mv + 2 u'Mv.
    um, vm = u @ inverse, v @ inverse
    leverage = pair_curvature * (pairs.expand_rows(jnp.sum(um * u, axis=1))
                                 + pairs.expand_cols(jnp.sum(vm * v, axis=1)) + 2 * pairs.bilinear(um, v))
    effect = _pair_factor(leverage, clusters, adjustment) * target_score  # influence = effect g' H^-1
    # sum over pairs of effect^2 g g' = sum_d (sum e^2) u u' + u (sum e^2 v)' + ... + sum_t (sum e^2) v v'.
    e2 = effect**2
    by_d = pairs.rows_times(e2, with_one(v))
    cross_uv = u.T @ by_d[:, :k]
    pair_outer = (u * by_d[:, k:]).T @ u + cross_uv + cross_uv.T + (v * pairs.cols(e2)[:, None]).T @ v

    def twins():
        g = pairs.expand_rows(u) + pairs.expand_cols(v)  # (q, k): only where models have two roles
        mine = effect * clusters.pair_has_twin.astype(dtype)
        return (g * mine[:, None]).T @ (g * effect[:, None])[clusters.pair_twin]

    cross = jax.lax.cond(jnp.any(clusters.pair_has_twin), twins, lambda: jnp.zeros((k, k), dtype))
    return _clipped(models.T @ models - inverse @ (pair_outer + cross) @ inverse)


class _PairSums:
    """Sums over the pairs of each draft (rows) or each target (cols), and per-pair expansions.

    On the full grid (row-major (kd, kt)) reshapes, axis sums and matrix
    products; on a list of pairs, segment sums and gathers.
    """

    def __init__(self, pair_draft, pair_target, kd, kt, grid=None):
        self.d, self.t, self.kd, self.kt = pair_draft, pair_target, kd, kt
        self.grid = (kd * kt == pair_draft.shape[0] and kd * kt > 0) if grid is None else grid

    def _matrix(self, values):
        return values.reshape((self.kd, self.kt) + values.shape[1:])

    def rows(self, values):  # (q, ...) -> (kd, ...)
        if self.grid:
            return self._matrix(values).sum(axis=1)
        return jax.ops.segment_sum(values, self.d, num_segments=self.kd)

    def cols(self, values):  # (q, ...) -> (kt, ...)
        if self.grid:
            return self._matrix(values).sum(axis=0)
        return jax.ops.segment_sum(values, self.t, num_segments=self.kt)

    def rows_times(self, weight, per_target):  # sum over t of w_dt f_t: (q,), (kt, m) -> (kd, m)
        if self.grid:
            return self._matrix(weight) @ per_target
        return self.rows(weight[:, None] * per_target[self.t])

    def cols_times(self, weight, per_draft):  # sum over d of w_dt f_d: (q,), (kd, m) -> (kt, m)
        if self.grid:
            return self._matrix(weight).T @ per_draft
        return self.cols(weight[:, None] * per_draft[self.d])

    def bilinear(self, a, b):  # a_d . b_t per pair: (kd, m), (kt, m) -> (q,)
        if self.grid:
            return (a @ b.T).reshape(-1)
        return jnp.sum(a[self.d] * b[self.t], axis=1)

    def expand_rows(self, values):  # (kd, ...) -> (q, ...)
        if self.grid:
            return jnp.broadcast_to(values[:, None], (self.kd, self.kt) + values.shape[1:]).reshape(
                (-1,) + values.shape[1:])
        return values[self.d]

    def expand_cols(self, values):  # (kt, ...) -> (q, ...)
        if self.grid:
            return jnp.broadcast_to(values[None, :], (self.kd, self.kt) + values.shape[1:]).reshape(
                (-1,) + values.shape[1:])
        return values[self.t]


def _check_adjustment(adjustment):
    if adjustment not in ADJUSTMENTS:
        raise ValueError(f"adjustment must be one of {ADJUSTMENTS}, got {adjustment!r}")


def _outer(vectors, weight=None):
    """(n, k, k): each vector's outer product with itself, times its weight."""
    outer = vectors[:, :, None] * vectors[:, None, :]
    return outer if weight is None else weight[:, None, None] * outer


def _to_models(clusters: ModelClusters, draft_values, target_values, point_values):
    """Per-draft, per-target and per-point values summed per model (cluster)."""
    size = draft_values.shape[0] + target_values.shape[0] + point_values.shape[0]
    by = lambda values, index: jax.ops.segment_sum(values, index, num_segments=size)
    return (by(draft_values, clusters.draft_cluster) + by(target_values, clusters.target_cluster)
            + by(point_values, clusters.point_cluster))


def _bread(hessian):
    """(H^-1/2, H^-1) of the bread, by its eigenvalues (those at rounding level dropped)."""
    values, vectors = jnp.linalg.eigh(hessian)
    cutoff = hessian.shape[0] * jnp.finfo(hessian.dtype).eps * jnp.abs(values[-1])
    kept = values > cutoff
    safe = jnp.where(kept, values, 1.0)
    root_inv = (vectors * jnp.where(kept, safe ** -0.5, 0.0)) @ vectors.T
    inverse = (vectors * jnp.where(kept, 1.0 / safe, 0.0)) @ vectors.T
    return root_inv, inverse


def _model_influence(scores, model_hessians, root_inv, inverse, count, adjustment):
    """(G, k): each model's adjusted influence a_g (:func:`cluster_covariance_theta`).

    ``model_hessians``: a function giving the models' Hessians H_g (G, k, k),
    called for CR2 and CR3 only. CR3 is H^-1/2 (I - A_g)^-1 H^-1/2 S_g with
    I - A_g's eigenvalues floored at LEVERAGE_FLOOR; where no model's leverage
    reaches 0.95 (0.95 I - A_g has a Cholesky factor for every g, the usual
    case) the floor does nothing and a batched Cholesky solve gives it, a
    tenth of the time of the batched eigendecomposition it needs otherwise.
    """
    g_models = count.astype(scores.dtype)
    if adjustment == "CR1":
        return jnp.sqrt(g_models / (g_models - 1)) * scores @ inverse
    power = 0.5 if adjustment == "CR2" else 1.0
    leverage = root_inv @ model_hessians() @ root_inv  # (G, k, k)
    leverage = 0.5 * (leverage + jnp.swapaxes(leverage, 1, 2))
    whitened = scores @ root_inv  # (H^-1/2 S_g)' per row (H^-1/2 is symmetric)
    eye = jnp.eye(leverage.shape[-1], dtype=leverage.dtype)

    def floored():
        lev_values, lev_vectors = jnp.linalg.eigh(leverage)
        factor = jnp.clip(1.0 - lev_values, LEVERAGE_FLOOR) ** -power
        return jnp.einsum("gij,gj,gkj,gk->gi", lev_vectors, factor, lev_vectors, whitened)

    if adjustment == "CR2":
        adjusted = floored()
    else:
        below = jnp.all(jnp.isfinite(jnp.linalg.cholesky((1.0 - LEVERAGE_FLOOR) * eye - leverage)))
        solved = lambda: jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(eye - leverage), True),
                                                    whitened[..., None])[..., 0]
        adjusted = jax.lax.cond(below, solved, floored)
    return adjusted @ root_inv


# The least 1 - leverage eigenvalue a group keeps (a group that alone
# determines some direction would otherwise divide by 0).
LEVERAGE_FLOOR = 0.05


def _pair_factor(leverage, clusters: ModelClusters, adjustment):
    """Each pair's influence factor: (1 - leverage)^-power (CR2, CR3), or CR1's constant."""
    if adjustment == "CR1":
        g_pairs = jnp.maximum(jnp.sum(clusters.pair_distinct).astype(leverage.dtype), 2.0)
        return jnp.broadcast_to(jnp.sqrt(g_pairs / (g_pairs - 1)), leverage.shape)
    power = 0.5 if adjustment == "CR2" else 1.0
    return jnp.clip(1.0 - leverage, LEVERAGE_FLOOR) ** -power


def _clipped(covariance):
    """A symmetric matrix with its negative eigenvalues (possible with few clusters) set to 0."""
    values, vectors = jnp.linalg.eigh(0.5 * (covariance + covariance.T))
    return (vectors * jnp.clip(values, 0.0)) @ vectors.T


def cluster_degrees_of_freedom(clusters: ModelClusters):
    """Degrees of freedom of the t quantile for the cluster-robust intervals.

    G - 1, G the number of distinct models (Cameron and Miller 2015, "A
    practitioner's guide to cluster-robust inference": t with G - 1 degrees
    of freedom for few clusters). Chosen by simulation over min(drafts,
    targets) - 1 (wider) and the normal quantile (narrower), with the CR3
    adjustment; see :mod:`sdsl_jax.fitting.joint` for the table.
    """
    return clusters.count - 1


def model_resample_counts(key, clusters: ModelClusters, num_resamples: int, dtype):
    """Two-way resampling of models: (draft counts (r, kd), target counts (r, kt), point counts (r, p)).

    Draft models are drawn with replacement from the drafts, target models
    from the targets (module doc). A row's count is its draft's count times
    its target's; a loss point's count is its model's (the mean of the two
    where it is both), and points of no row's model are drawn among
    themselves. The counts are over the real models and points, also for a
    padded layout (:func:`sdsl_jax.fitting.joint.prepare`).
    """
    # The real tables of a padded layout (its padded entries come last); the
    # counts are drawn over the real models alone, as for the unpadded one.
    kd, kt, p = int(clusters.draft_count), int(clusters.target_count), int(clusters.point_count)
    size_d, size_t = clusters.draft_cluster.shape[0], clusters.target_cluster.shape[0]
    point_draft = np.asarray(clusters.point_draft)[:p]
    point_target = np.asarray(clusters.point_target)[:p]
    point_draft = np.where(point_draft >= size_d, kd, point_draft)
    point_target = np.where(point_target >= size_t, kt, point_target)
    draft_key, target_key, point_key = jax.random.split(key, 3)
    draft_counts = resample_weights(draft_key, kd, num_resamples, dtype)
    target_counts = resample_weights(target_key, kt, num_resamples, dtype)
    in_draft, in_target = point_draft < kd, point_target < kt
    extra = np.flatnonzero(~in_draft & ~in_target)
    padded_d = jnp.concatenate([draft_counts, jnp.zeros((num_resamples, 1), dtype)], axis=1)
    padded_t = jnp.concatenate([target_counts, jnp.zeros((num_resamples, 1), dtype)], axis=1)
    from_d, from_t = padded_d[:, point_draft], padded_t[:, point_target]
    point_counts = jnp.where(in_draft & in_target, 0.5 * (from_d + from_t),
                             jnp.where(in_draft, from_d, from_t))
    if extra.size:
        drawn = resample_weights(point_key, extra.size, num_resamples, dtype)
        point_counts = point_counts.at[:, extra].set(drawn)
    return draft_counts, target_counts, point_counts
