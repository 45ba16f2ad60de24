"""Models as clusters: the two-way cluster-robust covariance against brute-force
leave-one-out refits of a linear problem, the model-level resampling's counts,
and the resample's observation count (n = sum of draw counts, not sum of
weights times counts).

The linear problems are tiny (4 drafts x 3 targets, float64); nothing here
runs the end-to-end fit (test_fitting covers that, and its coverage).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.fitting import acceptance_rows, perplexity_points, synthetic_measurements
from sdsl_jax.fitting import clusters as clusters_lib
from sdsl_jax.fitting import joint as joint_fit
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining


class Crossed:
    """A linear model on a crossed draft x target design, with one 'loss point' per model.

    Row (d, t): y = x' theta + e with x = (1, u_d, v_t); model m's point:
    y = z_m' theta + e. Objective: half the sum of squared residuals (both
    blocks' variance 1), so scores are r * d(r)/d(theta), curvature 1, and
    the Hessian is X'X + Z'Z.
    """

    def __init__(self, seed, kd=4, kt=3, shared=None):
        rng = np.random.default_rng(seed)
        self.kd, self.kt = kd, kt
        d, t = (v.ravel() for v in np.meshgrid(np.arange(kd), np.arange(kt), indexing="ij"))
        self.d, self.t = d, t
        u, v = rng.normal(size=kd), rng.normal(size=kt)
        self.x = np.stack([np.ones(d.size), u[d], v[t]], axis=1)
        effect_d, effect_t = rng.normal(size=kd), rng.normal(size=kt)
        self.y = self.x @ [0.5, 1.0, -2.0] + effect_d[d] + effect_t[t] + 0.3 * rng.normal(size=d.size)
        # Each model's point sees the model's own effect too.
        self.z = rng.normal(size=(kd + kt, 3))
        self.yp = self.z @ [0.5, 1.0, -2.0] + np.r_[effect_d, effect_t] + 0.3 * rng.normal(size=kd + kt)
        drafts = np.arange(1, kd + 1) + 1j * np.ones(kd)
        targets = np.arange(1, kt + 1) * 100.0 + 1j * np.ones(kt)
        if shared is not None:  # the last draft is also target `shared` (a ladder of models)
            targets[shared] = drafts[-1]
        points = np.r_[drafts, targets] if shared is None else np.r_[drafts, np.delete(targets, shared)]
        self.point_model = (np.r_[np.arange(kd), kd + np.arange(kt)] if shared is None
                            else np.r_[np.arange(kd), kd + np.delete(np.arange(kt), shared)])
        if shared is not None:
            self.z, self.yp = self.z[self.point_model], self.yp[self.point_model]
        self.clusters = clusters_lib.ModelClusters(**clusters_lib.model_clusters(
            drafts, targets, points.real, points.imag, d, t))
        self.shared = shared

    def solve(self, row_mask, point_mask):
        a = np.r_[self.x[row_mask], self.z[point_mask]]
        b = np.r_[self.y[row_mask], self.yp[point_mask]]
        return np.linalg.lstsq(a, b, rcond=None)[0]

    def robust(self, adjustment):
        theta = self.solve(np.ones(self.d.size, bool), np.ones(self.yp.size, bool))
        r, rp = self.y - self.x @ theta, self.yp - self.z @ theta
        hessian = self.x.T @ self.x + self.z.T @ self.z
        return theta, np.asarray(clusters_lib.cluster_covariance_theta(
            jnp.asarray(hessian), self.clusters, jnp.asarray(self.d), jnp.asarray(self.t),
            jnp.asarray(-r[:, None] * self.x), jnp.asarray(-self.x), jnp.ones(self.d.size),
            jnp.asarray(-rp[:, None] * self.z), jnp.asarray(-self.z), jnp.ones(self.yp.size),
            adjustment))

    def models_of_row(self):
        """Each row's models, as indices into the distinct models (ladder-aware)."""
        draft_model = self.d
        target_model = self.kd + self.t
        if self.shared is not None:
            target_model = np.where(self.t == self.shared, self.kd - 1, target_model)
        return draft_model, target_model


def _clipped(matrix):
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors * np.clip(values, 0, None)) @ vectors.T


@pytest.mark.parametrize("shared", [None, 1])
def test_cr3_is_the_two_way_leave_one_model_out_jackknife(x64, shared):
    # For a linear model the CR3 adjustment is exact: a_m = theta_(-m) - theta,
    # the refit without every row of model m (in either role) and its point.
    # Two-way: sum over models minus sum over (draft, target) pairs, whose rows
    # the model sum counts twice.
    problem = Crossed(seed=3, shared=shared)
    theta, got = problem.robust("CR3")
    draft_model, target_model = problem.models_of_row()
    all_rows, all_points = np.ones(problem.d.size, bool), np.ones(problem.yp.size, bool)
    total = np.zeros((3, 3))
    for m in range(problem.kd + problem.kt):
        rows = (draft_model != m) & (target_model != m)
        points = problem.point_model != m
        if rows.all() and points.all():
            continue  # the shared target's own slot: not a model of its own
        delta = problem.solve(rows, points) - theta
        total += np.outer(delta, delta)
    # A row whose draft and target are one model is in that model's sum once:
    # nothing to subtract.
    for pair in {(a, b) if a <= b else (b, a) for a, b in zip(draft_model, target_model) if a != b}:
        rows = ~((np.minimum(draft_model, target_model) == pair[0])
                 & (np.maximum(draft_model, target_model) == pair[1]))
        delta = problem.solve(rows, all_points) - theta
        total -= np.outer(delta, delta)
    np.testing.assert_allclose(got, _clipped(total), rtol=1e-8, atol=1e-12)


def test_cr1_is_the_cameron_gelbach_miller_formula(x64):
    problem = Crossed(seed=4)
    theta, got = problem.robust("CR1")
    r, rp = problem.y - problem.x @ theta, problem.yp - problem.z @ theta
    inverse = np.linalg.inv(problem.x.T @ problem.x + problem.z.T @ problem.z)
    g, q = problem.kd + problem.kt, problem.d.size
    meat = np.zeros((3, 3))
    for m in range(problem.kd):
        s = (problem.x[problem.d == m] * r[problem.d == m, None]).sum(0) + problem.z[m] * rp[m]
        meat += g / (g - 1) * np.outer(s, s)
    for m in range(problem.kt):
        s = (problem.x[problem.t == m] * r[problem.t == m, None]).sum(0) + problem.z[problem.kd + m] * rp[problem.kd + m]
        meat += g / (g - 1) * np.outer(s, s)
    for i in range(q):  # one row per pair
        meat -= q / (q - 1) * np.outer(problem.x[i] * r[i], problem.x[i] * r[i])
    np.testing.assert_allclose(got, _clipped(inverse @ meat @ inverse), rtol=1e-8, atol=1e-12)
    # Neither equals the iid covariance (sigma^2 H^-1): the effects make the
    # rows of a model move together.
    iid = (r @ r + rp @ rp) / (q + g - 3) * inverse
    assert not np.allclose(np.diag(got), np.diag(iid), rtol=0.2)


def test_cr2_lies_between_cr1_without_its_factor_and_cr3(x64):
    # CR2 scales each model's influence by (I - A)^(-1/2), CR3 by (I - A)^(-1):
    # on the diagonal, CR2 is between the unadjusted sandwich and CR3.
    problem = Crossed(seed=5)
    _, cr2 = problem.robust("CR2")
    _, cr3 = problem.robust("CR3")
    _, cr1 = problem.robust("CR1")
    g = problem.kd + problem.kt
    assert np.all(np.diag(cr2) < np.diag(cr3))
    assert np.all(np.diag(cr2) > np.diag(cr1) * (g - 1) / g * 0.999)


def test_model_resampling_weights_rows_by_their_models(x64):
    # Rows of one model share its draw count; a row's count is its draft's
    # times its target's; a loss point gets its model's count.
    measurements = synthetic_measurements(num_targets=3, num_drafts=4, seed=2)
    rows, _ = acceptance_rows(measurements)
    points = perplexity_points(measurements)
    data = joint_fit.prepare(rows, points)
    draft_counts, target_counts, point_counts = (np.asarray(v) for v in clusters_lib.model_resample_counts(
        jax.random.PRNGKey(0), data.clusters, 64, jnp.float64))
    assert draft_counts.shape == (64, 4) and target_counts.shape == (64, 3)
    assert np.all(draft_counts.sum(1) == 4) and np.all(target_counts.sum(1) == 3)
    # Drawn with replacement: some resamples repeat a model and leave another out.
    assert np.any(draft_counts == 0) and np.any(draft_counts >= 2)
    row_counts = draft_counts[:, np.asarray(data.draft_model)] * target_counts[:, np.asarray(data.target_model)]
    # Every row of draft 0 is 0 wherever draft 0 was not drawn.
    rows_of_draft0 = np.asarray(data.draft_model) == 0
    assert np.all(row_counts[draft_counts[:, 0] == 0][:, rows_of_draft0] == 0)
    # Each point's count is that of the model with its (params, tokens).
    point_draft = np.asarray(data.clusters.point_draft)
    point_target = np.asarray(data.clusters.point_target)
    for j in range(points.num_params.shape[0]):
        expected = draft_counts[:, point_draft[j]] if point_draft[j] < 4 else target_counts[:, point_target[j]]
        np.testing.assert_array_equal(point_counts[:, j], expected)
    params = np.asarray(points.num_params)
    drafts = np.unique(np.asarray(rows.draft_params))
    assert np.all(np.isin(params[point_draft < 4], drafts))


def _replicated(rows, points, row_count, point_count):
    take = np.repeat(np.arange(row_count.size), row_count.astype(int))
    keep = np.repeat(np.arange(point_count.size), point_count.astype(int))
    return (jax.tree_util.tree_map(lambda v: v[take], rows),
            jax.tree_util.tree_map(lambda v: v[keep], points))


def test_resample_counts_observations_not_weights(x64):
    # A resample (draw counts c, rows' own weights w) must be the same
    # likelihood, up to a constant, as the replicated data set: the acceptance
    # block's n is sum c, its SSR sum w c r^2. With n = sum w c (the old
    # bookkeeping) the likelihood, and so the optimum, differ.
    measurements = synthetic_measurements(num_targets=3, num_drafts=4, seed=1, trials=300)
    rows, _ = acceptance_rows(measurements, "interval")
    points = perplexity_points(measurements)
    assert np.ptp(np.asarray(rows.weight)) > 0.05  # weights that are not all 1
    rng = np.random.default_rng(0)
    row_count = rng.integers(1, 4, rows.acceptance.shape[0]).astype(float)
    point_count = rng.integers(1, 3, points.num_params.shape[0]).astype(float)
    data = joint_fit.prepare(rows, points)
    big_rows, big_points = _replicated(rows, points, row_count, point_count)
    big = joint_fit.prepare(big_rows, big_points)
    laws = [(pretraining.BESIROGLU_2024, acceptance_lib.SDSL_2026),
            (pretraining.PretrainingLaw(irreducible_loss=1.9, param_coeff=400.0, param_exponent=0.33,
                                        data_coeff=1900.0, data_exponent=0.35),
             acceptance_lib.AcceptanceLaw(draft_coeff=-0.006, target_coeff=0.012, intercept=0.65))]

    def value(d, row_weight, row_cnt, point_weight, law):
        theta = joint_fit.theta_from_laws(*law, d)
        moments = joint_fit.acceptance_moments(d, row_weight, row_cnt)
        return float(sum(joint_fit.moment_objective(theta, d, moments, point_weight)))

    w = np.asarray(rows.weight)
    resampled = [value(data, jnp.asarray(w * row_count), jnp.asarray(row_count), jnp.asarray(point_count), law)
                 for law in laws]
    replicated = [value(big, big_rows.weight, None, jnp.ones(big_points.num_params.shape[0]), law)
                  for law in laws]
    old = [value(data, jnp.asarray(w * row_count), jnp.asarray(w * row_count), jnp.asarray(point_count), law)
           for law in laws]
    difference = lambda v: v[1] - v[0]
    assert difference(resampled) == pytest.approx(difference(replicated), rel=1e-9, abs=1e-9)
    assert abs(difference(old) - difference(replicated)) > 1e-4 * abs(difference(replicated))


def test_padded_layout_keeps_the_real_tables_and_masks_the_padding(x64):
    # prepare(padded=True) (what fit_joint fits) pads every table to a bucket
    # so that sets of other sizes share one compiled fit; the real entries
    # come first and unchanged, the padding holds no row, no point and no
    # pair, and the bootstrap draws the same counts from it.
    measurements = synthetic_measurements(num_targets=3, num_drafts=4, seed=2)
    rows, _ = acceptance_rows(measurements)
    points = perplexity_points(measurements)
    data = joint_fit.prepare(rows, points)
    padded = joint_fit.prepare(rows, points, padded=True)
    n, p = rows.acceptance.shape[0], points.num_params.shape[0]
    assert padded.row_mask.shape == (joint_fit.ROW_BUCKET,) and float(padded.row_mask.sum()) == n
    assert padded.point_mask.shape == (joint_fit.POINT_BUCKET,) and float(padded.point_mask.sum()) == p
    assert padded.draft_log_params.shape == padded.target_log_params.shape == (joint_fit.MODEL_BUCKET,)
    assert padded.pair_draft.shape == (joint_fit.GRID_BUCKET,)  # the 16 x 16 grid
    for name in ("draft_log_params", "target_log_params", "draft_model", "target_model", "acceptance"):
        real = np.asarray(getattr(data, name))
        np.testing.assert_array_equal(np.asarray(getattr(padded, name))[:real.size], real)
    np.testing.assert_array_equal(np.asarray(padded.point_log_loss)[:p], np.asarray(data.point_log_loss))
    # Each row's pair in the padded grid is its (draft, target).
    np.testing.assert_array_equal(np.asarray(padded.pair_draft)[np.asarray(padded.row_pair)[:n]],
                                  np.asarray(data.draft_model))
    assert not np.any(np.asarray(padded.clusters.pair_distinct)[np.asarray(padded.pair_draft) >= 4])
    assert int(padded.clusters.count) == int(data.clusters.count)
    np.testing.assert_array_equal(np.asarray(joint_fit.pad_rows(padded, rows.weight))[n:], 0.0)
    key = jax.random.PRNGKey(3)
    # (64 resamples of 4 drafts and 3 targets: the draws compiled for the test above.)
    for real, from_padded in zip(clusters_lib.model_resample_counts(key, data.clusters, 64, jnp.float64),
                                 clusters_lib.model_resample_counts(key, padded.clusters, 64, jnp.float64)):
        np.testing.assert_array_equal(np.asarray(from_padded), np.asarray(real))


def test_twin_pairs_are_the_same_models_in_swapped_roles():
    # A ladder: models 2 and 3 are drafts of 4 and 5 and targets of 0 and 1,
    # and (2, 3) and (3, 2) are the same unordered pair of clusters.
    models = np.array([1e8, 2e8, 5e8, 1e9, 3e9, 7e9]) + 1j * np.array([1, 2, 3, 4, 5, 6]) * 1e11
    drafts, targets = models[[0, 1, 2, 3]], models[[2, 3, 4, 5]]
    pair_draft, pair_target = np.arange(16) // 4, np.arange(16) % 4
    tables = clusters_lib.model_clusters(drafts, targets, models.real, models.imag, pair_draft, pair_target)
    twin, has = np.asarray(tables["pair_twin"]), np.asarray(tables["pair_has_twin"])
    key = lambda d, t: tuple(sorted((drafts[d], targets[t]), key=lambda z: (z.real, z.imag)))
    for k in range(16):
        others = [j for j in range(16) if j != k and drafts[pair_draft[j]] != targets[pair_target[j]]
                  and key(pair_draft[j], pair_target[j]) == key(pair_draft[k], pair_target[k])]
        distinct = drafts[pair_draft[k]] != targets[pair_target[k]]
        assert has[k] == (distinct and bool(others)) and (twin[k] == others[0] if has[k] else twin[k] == k)
    assert has.sum() == 2  # (2, 3) and (3, 2)


@pytest.mark.parametrize("adjustment", clusters_lib.ADJUSTMENTS)
@pytest.mark.parametrize("shared", [None, 1])
@pytest.mark.parametrize("grid", [True, False])
def test_separable_covariance_is_the_general_one(x64, adjustment, shared, grid):
    # The end-to-end fit's pair gradients are a draft part plus a target part;
    # the covariance from those parts (matrix products on the grid, segment
    # sums on a list of pairs) is the general one of the (q, k) tables. Here
    # x = (1, u_d, v_t): draft part -(1, u_d, 0), target part -(0, 0, v_t),
    # each row its pair's, score r g with g = -x. A ladder (shared) has twins.
    problem = Crossed(seed=6, shared=shared)
    theta, general = problem.robust(adjustment)
    r, rp = problem.y - problem.x @ theta, problem.yp - problem.z @ theta
    u = -np.stack([np.ones(problem.kd), problem.x[::problem.kt, 1], np.zeros(problem.kd)], axis=1)
    v = -np.stack([np.zeros(problem.kt), np.zeros(problem.kt), problem.x[:problem.kt, 2]], axis=1)
    np.testing.assert_allclose(u[problem.d] + v[problem.t], -problem.x, rtol=0, atol=0)
    hessian = problem.x.T @ problem.x + problem.z.T @ problem.z
    separable = np.asarray(clusters_lib.cluster_covariance_separable(
        jnp.asarray(hessian), problem.clusters, jnp.asarray(problem.d), jnp.asarray(problem.t),
        jnp.asarray(u), jnp.asarray(v), jnp.asarray(r), jnp.ones(problem.d.size),
        jnp.asarray(-rp[:, None] * problem.z), jnp.asarray(-problem.z), jnp.ones(problem.yp.size),
        adjustment, grid=grid))
    np.testing.assert_allclose(separable, general, rtol=1e-10, atol=1e-14)


def test_grid_cluster_tables_are_the_listed_ones():
    # model_clusters(grid=True) builds the pair tables of a full padded grid by
    # broadcasting; they are those of the explicit pair list (padded pairs
    # naming the last real models and marked not real, as prepare did).
    models = np.array([1e8, 2e8, 5e8, 1e9, 3e9, 7e9, 9e9]) + 1j * np.arange(1, 8) * 1e11
    for drafts, targets in ((models[[0, 1, 2, 3]], models[[2, 3, 4]]), (models[:3], models[4:])):
        kd, kt = drafts.size, targets.size
        points = np.r_[drafts, targets, models[6:]]
        size_d, size_t, size_p = 8, 4, 16
        pair_draft, pair_target = np.arange(size_d * size_t) // size_t, np.arange(size_d * size_t) % size_t
        real = (pair_draft < kd) & (pair_target < kt)
        listed = clusters_lib.model_clusters(
            drafts, targets, points.real, points.imag, np.minimum(pair_draft, kd - 1),
            np.minimum(pair_target, kt - 1), real_pair=real, sizes=(size_d, size_t, size_p))
        grid = clusters_lib.model_clusters(drafts, targets, points.real, points.imag,
                                           sizes=(size_d, size_t, size_p), grid=True)
        assert listed.keys() == grid.keys()
        for name in listed:
            np.testing.assert_array_equal(np.asarray(grid[name]), np.asarray(listed[name]), err_msg=name)


def _ladder():
    """Six models on a ladder: drafts 0-3 and targets 2-5, all 16 pairs (models 2 and 3 are
    drafts and targets both)."""
    models = np.array([1e8, 2e8, 5e8, 1e9, 3e9, 7e9]) + 1j * np.array([1, 2, 3, 4, 5, 6]) * 1e11
    drafts, targets = models[[0, 1, 2, 3]], models[[2, 3, 4, 5]]
    pair_draft, pair_target = np.arange(16) // 4, np.arange(16) % 4
    clusters = clusters_lib.ModelClusters(**clusters_lib.model_clusters(
        drafts, targets, models.real, models.imag, pair_draft, pair_target))
    return clusters, pair_draft, pair_target


def _problem(rng, pair_draft, pair_target, k, dominant=1.0):
    """Separable pair gradients g = u[draft] + v[target], arbitrary scores and curvatures (the
    rows of draft 0 weighted by ``dominant``), point terms and the Hessian they make."""
    u, v = rng.normal(size=(4, k)), rng.normal(size=(4, k))
    g = u[pair_draft] + v[pair_target]
    score, curvature = rng.normal(size=16), rng.uniform(0.5, 2.0, 16)
    curvature[pair_draft == 0] *= dominant
    point_gradient = rng.normal(size=(6, k))
    point_scores = rng.normal(size=6)[:, None] * point_gradient
    hessian = (curvature[:, None] * g).T @ g + point_gradient.T @ point_gradient + np.eye(k)
    return u, v, g, score, curvature, point_gradient, point_scores, hessian


@pytest.mark.parametrize("grid", [True, False])
def test_separable_covariance_with_twin_pairs(x64, grid):
    # A ladder (models 2 and 3 are drafts and targets: the pairs (2, 3) and
    # (3, 2) are twins, and a model paired with itself is in its sum once),
    # arbitrary scores and curvatures: the separable covariance is the general one.
    rng = np.random.default_rng(7)
    clusters, pair_draft, pair_target = _ladder()
    assert bool(clusters.pair_has_twin.any()) and not bool(clusters.pair_distinct.all())
    u, v, g, score, curvature, point_gradient, point_scores, hessian = _problem(
        rng, pair_draft, pair_target, k=5)
    for adjustment in clusters_lib.ADJUSTMENTS:
        general = clusters_lib.cluster_covariance_theta(
            jnp.asarray(hessian), clusters, jnp.asarray(pair_draft), jnp.asarray(pair_target),
            jnp.asarray(score[:, None] * g), jnp.asarray(g), jnp.asarray(curvature),
            jnp.asarray(point_scores), jnp.asarray(point_gradient), jnp.ones(6), adjustment)
        separable = clusters_lib.cluster_covariance_separable(
            jnp.asarray(hessian), clusters, jnp.asarray(pair_draft), jnp.asarray(pair_target),
            jnp.asarray(u), jnp.asarray(v), jnp.asarray(score), jnp.asarray(curvature),
            jnp.asarray(point_scores), jnp.asarray(point_gradient), jnp.ones(6), adjustment, grid=grid)
        np.testing.assert_allclose(np.asarray(separable), np.asarray(general), rtol=1e-10, atol=1e-14,
                                   err_msg=adjustment)


def _cr3_reference(hessian, clusters, pair_draft, pair_target, g, score, curvature, point_scores,
                   point_gradient):
    """CR3 in numpy, group by group, from the formula (eigendecompositions, leverage floored at 0.05)."""
    values, vectors = np.linalg.eigh(hessian)
    root_inv = (vectors / np.sqrt(values)) @ vectors.T
    inverse = np.linalg.inv(hessian)
    distinct = np.asarray(clusters.pair_distinct)
    draft_cluster, target_cluster = np.asarray(clusters.draft_cluster), np.asarray(clusters.target_cluster)
    point_cluster = np.asarray(clusters.point_cluster)
    total = np.zeros_like(hessian)
    for m in range(int(clusters.count)):
        in_draft = draft_cluster[pair_draft] == m
        in_target = (target_cluster[pair_target] == m) & distinct
        members = in_draft | in_target
        own_points = point_cluster == m
        s = (score[members, None] * g[members]).sum(0) + point_scores[own_points].sum(0)
        h = (curvature[members, None] * g[members]).T @ g[members] + point_gradient[own_points].T @ point_gradient[own_points]
        lev_values, lev_vectors = np.linalg.eigh(root_inv @ h @ root_inv)
        a = root_inv @ lev_vectors @ np.diag(np.clip(1 - lev_values, 0.05, None) ** -1.0) @ lev_vectors.T @ root_inv @ s
        total += np.outer(a, a)
    leverage = curvature * np.einsum("qi,ij,qj->q", g, inverse, g)
    influence = ((np.clip(1 - leverage, 0.05, None) ** -1.0) * distinct * score)[:, None] * g @ inverse
    twin, has_twin = np.asarray(clusters.pair_twin), np.asarray(clusters.pair_has_twin)
    total -= influence.T @ influence + influence.T @ (has_twin[:, None] * influence[twin])
    values, vectors = np.linalg.eigh(0.5 * (total + total.T))
    return (vectors * np.clip(values, 0, None)) @ vectors.T


@pytest.mark.parametrize("dominant", [1.0, 1e4])
def test_cr3_with_and_without_floored_leverage(x64, dominant):
    # CR3 solves with (I - A_g) directly where no model's leverage reaches
    # 0.95, and floors the eigenvalues where one does (a model whose rows
    # dominate the fit: curvature times ``dominant``); both against the
    # formula evaluated group by group in numpy.
    rng = np.random.default_rng(8)
    clusters, pair_draft, pair_target = _ladder()
    u, v, g, score, curvature, point_gradient, point_scores, hessian = _problem(
        rng, pair_draft, pair_target, k=4, dominant=dominant)
    expected = _cr3_reference(hessian, clusters, pair_draft, pair_target, g, score, curvature,
                              point_scores, point_gradient)
    got = clusters_lib.cluster_covariance_separable(
        jnp.asarray(hessian), clusters, jnp.asarray(pair_draft), jnp.asarray(pair_target),
        jnp.asarray(u), jnp.asarray(v), jnp.asarray(score), jnp.asarray(curvature),
        jnp.asarray(point_scores), jnp.asarray(point_gradient), jnp.ones(6), "CR3", grid=True)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-9, atol=1e-13 * np.abs(expected).max())


@pytest.mark.parametrize("order", ["as measured", "draft-major", "shuffled", "replicated"])
def test_prepare_finds_each_rows_models_whatever_the_order(x64, order):
    # prepare finds the distinct models by the rows' layout (a column in runs,
    # a column repeating with a period) or by hashing; whichever way, each
    # row's indices name its own draft and target, every row sits in its
    # pair, and each pair's row (a gather table, when no pair has two rows)
    # is one of its rows.
    measurements = synthetic_measurements(num_targets=5, num_drafts=6, seed=4)
    rows, _ = acceptance_rows(measurements)
    points = perplexity_points(measurements)
    n = rows.acceptance.shape[0]
    take = {"as measured": np.arange(n), "draft-major": np.arange(n).reshape(5, 6).T.ravel(),
            "shuffled": np.random.default_rng(0).permutation(n),
            "replicated": np.r_[np.arange(n), np.arange(0, n, 3)]}[order]
    rows = jax.tree_util.tree_map(lambda v: v[take], rows)
    for padded in (False, True):
        data = joint_fit.prepare(rows, points, padded=padded)
        m = rows.acceptance.shape[0]
        draft_model, target_model = np.asarray(data.draft_model)[:m], np.asarray(data.target_model)[:m]
        centre_n, centre_d = float(data.log_params_centre), float(data.log_tokens_centre)
        np.testing.assert_allclose(np.asarray(data.draft_log_params)[draft_model] + centre_n,
                                   np.log(np.asarray(rows.draft_params)), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(data.draft_log_tokens)[draft_model] + centre_d,
                                   np.log(np.asarray(rows.draft_tokens)), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(data.target_log_params)[target_model] + centre_n,
                                   np.log(np.asarray(rows.target_params)), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(data.target_log_tokens)[target_model] + centre_d,
                                   np.log(np.asarray(rows.target_tokens)), rtol=1e-14)
        assert int(data.clusters.draft_count) == 6 and int(data.clusters.target_count) == 5
        row_pair = np.asarray(data.row_pair)[:m]
        np.testing.assert_array_equal(np.asarray(data.pair_draft)[row_pair], draft_model)
        np.testing.assert_array_equal(np.asarray(data.pair_target)[row_pair], target_model)
        pair_row = np.asarray(data.pair_row)
        if order == "replicated":
            assert pair_row.size == 0  # pairs with two rows: sums by scatter
        else:
            has = pair_row < data.row_mask.shape[0]
            assert has.sum() == m
            np.testing.assert_array_equal(row_pair[pair_row[has]], np.flatnonzero(has))
