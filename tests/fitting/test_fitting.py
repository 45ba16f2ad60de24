"""Fitting the laws: parity with scipy and numpy on the same objectives, the
delta-method covariance against finite differences, recovery of known
coefficients, bootstrap against delta intervals, N* intervals, laws files and
input errors.

Every fit here runs on one measurement design (12 targets x 12 drafts, float64)
so that each jitted solver compiles once for the whole module; seeds and noise
levels change the numbers, not the shapes.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.planning import flop as planner
from sdsl_jax.laws import pretraining
from sdsl_jax.fitting import (
    COEFFICIENTS,
    FittedLaws,
    LawsFileError,
    acceptance_rows,
    bootstrap_joint,
    draft_size_interval,
    fit_acceptance_law,
    fit_joint,
    fit_per_target,
    fit_pretraining_law,
    laws_from_vector,
    load_laws,
    normal_intervals,
    percentile_intervals,
    perplexity_points,
    save_laws,
    synthetic_measurements,
)
from sdsl_jax.fitting import clusters as clusters_lib
from sdsl_jax.fitting import report as fit_report
from sdsl_jax.fitting import joint as joint_fit
from sdsl_jax.fitting import pretraining as pretraining_fit
from sdsl_jax.fitting.acceptance import plane_objective
from sdsl_jax.fitting.uncertainty import delta_method_covariance, resample_weights

# A design whose eight coefficients the data determine well: 24 models over
# wide size and token ranges with 0.3% perplexity scatter.
DESIGN = dict(num_targets=12, num_drafts=12, perplexity_noise=0.003,
              tokens_range=(2e9, 2e13), draft_range=(5e7, 3e9))
TRUTH = np.array([getattr(pretraining.BESIROGLU_2024, f) for f in COEFFICIENTS[:5]]
                 + [getattr(acceptance_lib.SDSL_2026, f) for f in COEFFICIENTS[5:]])
LOG_SCALE = np.array([name in ("irreducible_loss", "param_coeff", "data_coeff") for name in COEFFICIENTS])
Z95 = scipy.stats.norm.ppf(0.975)


@pytest.fixture(scope="module")
def x64_module():
    with jax.enable_x64(True):
        yield


class Design:
    def __init__(self, seed=0, **overrides):
        self.measurements = synthetic_measurements(seed=seed, **{**DESIGN, **overrides})
        self.rows, self.targets = acceptance_rows(self.measurements)
        self.points = perplexity_points(self.measurements)


@pytest.fixture(scope="module")
def design(x64_module):
    d = Design(seed=0)
    d.joint = fit_joint(d.rows, d.points)
    return d


def _np(v):
    return np.asarray(v, np.float64)


class Reference:
    """The end-to-end objective written again in numpy, with its gradient by hand.

    Coordinates u = (log E, log A - a cN, a, log B - b cD, b, A sx, B sy,
    C + A mx + B my), with its own centring constants (cN, cD the mean log
    sizes of the rows; mx, sx and my, sy the mean and spread of the measured
    draft and target perplexities), so nothing is shared with the code under
    test, and every coordinate is of order one for scipy.
    """

    def __init__(self, rows, points, row_weight=None, point_weight=None, row_count=None):
        self.lNd, self.lDd = np.log(_np(rows.draft_params)), np.log(_np(rows.draft_tokens))
        self.lNt, self.lDt = np.log(_np(rows.target_params)), np.log(_np(rows.target_tokens))
        self.alpha = _np(rows.acceptance)
        self.w = _np(rows.weight) if row_weight is None else _np(row_weight)
        # The acceptance block's observation count: the rows, or a resample's draws.
        self.n = self.alpha.size if row_count is None else float(np.sum(row_count))
        self.lNp, self.lDp = np.log(_np(points.num_params)), np.log(_np(points.tokens))
        self.log_loss = np.log(np.log(_np(points.perplexity)))
        self.pw = np.ones_like(self.lNp) if point_weight is None else _np(point_weight)
        self.cN = np.mean(np.r_[self.lNd, self.lNt])
        self.cD = np.mean(np.r_[self.lDd, self.lDt])
        self.mx, self.sx = np.mean(_np(rows.draft_perplexity)), np.std(_np(rows.draft_perplexity))
        self.my, self.sy = np.mean(_np(rows.target_perplexity)), np.std(_np(rows.target_perplexity))

    def _lse(self, u, lN, lD):
        """log L_hat and its derivative (5, n) in the first five coordinates."""
        terms = np.stack([np.full_like(lN, u[0]), u[1] - u[2] * (lN - self.cN),
                          u[3] - u[4] * (lD - self.cD)])
        top = terms.max(axis=0)
        e = np.exp(terms - top)
        soft = e / e.sum(axis=0)
        return top + np.log(e.sum(axis=0)), np.stack(
            [soft[0], soft[1], -soft[1] * (lN - self.cN), soft[2], -soft[2] * (lD - self.cD)])

    def blocks(self, u):
        """[(value, gradient)] of the acceptance block and of the loss block."""
        a, b, c = u[5:]
        lx, dlx = self._lse(u, self.lNd, self.lDd)
        ly, dly = self._lse(u, self.lNt, self.lDt)
        x, y = (np.exp(np.exp(lx)) - self.mx) / self.sx, (np.exp(np.exp(ly)) - self.my) / self.sy
        dx = (x * self.sx + self.mx) * np.exp(lx) * dlx / self.sx
        dy = (y * self.sy + self.my) * np.exp(ly) * dly / self.sy
        r = self.alpha - (a * x + b * y + c)
        W, ssr = self.n, np.sum(self.w * r**2)
        g_ssr = np.concatenate([-2 * (a * dx + b * dy) @ (self.w * r),
                                -2 * np.array([np.sum(self.w * r * x), np.sum(self.w * r * y),
                                               np.sum(self.w * r)])])
        lp, dlp = self._lse(u, self.lNp, self.lDp)
        rp = self.log_loss - lp
        P, ssrp = self.pw.sum(), np.sum(self.pw * rp**2)
        g_ssrp = np.concatenate([-2 * dlp @ (self.pw * rp), np.zeros(3)])
        return [(0.5 * W * np.log(ssr / W), 0.5 * W / ssr * g_ssr),
                (0.5 * P * np.log(ssrp / P), 0.5 * P / ssrp * g_ssrp)]

    def objective(self, u):
        (fa, ga), (fp, gp) = self.blocks(u)
        return fa + fp, ga + gp

    def natural(self, u):
        a, b = u[5] / self.sx, u[6] / self.sy
        return np.array([np.exp(u[0]), np.exp(u[1] + u[2] * self.cN), u[2],
                         np.exp(u[3] + u[4] * self.cD), u[4], a, b, u[7] - a * self.mx - b * self.my])

    def coordinates(self, c):
        return np.array([np.log(c[0]), np.log(c[1]) - c[2] * self.cN, c[2],
                         np.log(c[3]) - c[4] * self.cD, c[4], c[5] * self.sx, c[6] * self.sy,
                         c[7] + c[5] * self.mx + c[6] * self.my])

    def minimize(self, u0):
        return scipy.optimize.minimize(self.objective, u0, jac=True, method="L-BFGS-B",
                                       options=dict(ftol=1e-16, gtol=1e-12, maxiter=20000, maxcor=30))


def _relative(a, b):
    return np.max(np.abs(_np(a) - _np(b)) / np.abs(_np(b)))


# --- the acceptance plane ---------------------------------------------------------------

def _plane_design(rows):
    return np.stack([_np(rows.draft_perplexity), _np(rows.target_perplexity),
                     np.ones(rows.acceptance.shape[0])], axis=1)


def test_plane_matches_weighted_lstsq_and_least_squares(design):
    rows = design.rows
    fit = fit_acceptance_law(rows)
    X, w, alpha = _plane_design(rows), _np(rows.weight), _np(rows.acceptance)
    assert np.ptp(w) > 0  # the rows really are weighted (Wilson intervals)
    expected = np.linalg.lstsq(X * np.sqrt(w)[:, None], alpha * np.sqrt(w), rcond=None)[0]
    got = np.array([float(fit.law.draft_coeff), float(fit.law.target_coeff), float(fit.law.intercept)])
    assert _relative(got, expected) < 1e-10
    scipy_fit = scipy.optimize.least_squares(lambda c: np.sqrt(w) * (X @ c - alpha), np.zeros(3),
                                             xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert _relative(got, scipy_fit.x) < 1e-6
    residuals = alpha - X @ expected
    np.testing.assert_allclose(_np(fit.residuals), residuals, atol=1e-12)
    assert float(fit.r2) == pytest.approx(1 - np.sum(residuals**2) / np.sum((alpha - alpha.mean()) ** 2),
                                          rel=1e-10)
    assert bool(fit.identifiable)


def test_plane_covariance_is_the_textbook_one(design):
    # s^2 (X'WX)^-1, which scipy's curve_fit reports with absolute_sigma=False;
    # the delta method on the plane's concentrated likelihood gives it too.
    rows = design.rows
    fit = fit_acceptance_law(rows)
    X, w, alpha = _plane_design(rows), _np(rows.weight), _np(rows.acceptance)
    coeffs = jnp.stack([fit.law.draft_coeff, fit.law.target_coeff, fit.law.intercept])
    _, pcov = scipy.optimize.curve_fit(lambda X, a, b, c: X @ np.array([a, b, c]), X, alpha,
                                       p0=_np(coeffs), sigma=1 / np.sqrt(w), absolute_sigma=False,
                                       jac=lambda X, *_: X)
    np.testing.assert_allclose(_np(fit.covariance), pcov, rtol=1e-8)
    delta, ok = jax.jit(lambda c: delta_method_covariance(
        lambda v: plane_objective(v, rows, rows.weight), c, lambda v: v, (True,) * 3,
        rows.acceptance.shape[0]))(coeffs)
    np.testing.assert_allclose(_np(delta), pcov, rtol=1e-6)
    assert bool(ok)
    # Without the target term, B is held at 0 and has no variance.
    plain = fit_acceptance_law(rows, use_target=False)
    _, pcov2 = scipy.optimize.curve_fit(lambda x, a, c: a * x + c, X[:, 0], alpha, sigma=1 / np.sqrt(w),
                                        jac=lambda x, *_: np.stack([x, np.ones_like(x)], axis=1))
    np.testing.assert_allclose(_np(plain.covariance)[np.ix_([0, 2], [0, 2])], pcov2, rtol=1e-8)
    assert np.all(_np(plain.covariance)[1] == 0) and float(plain.law.target_coeff) == 0


def test_per_target_fits_match_polyfit(design):
    rows, targets = design.rows, design.targets
    fit = fit_per_target(rows, len(targets))
    index, x, alpha, w = (_np(rows.target_index), _np(rows.draft_perplexity), _np(rows.acceptance),
                          _np(rows.weight))
    for t in range(len(targets)):
        mine = index == t
        slope, intercept = np.polyfit(x[mine], alpha[mine], 1, w=np.sqrt(w[mine]))
        assert _relative([fit.draft_coeff[t], fit.intercept[t]], [slope, intercept]) < 1e-9
        # scipy.optimize on the same weighted residuals: the parity goal.
        reference = scipy.optimize.least_squares(
            lambda c: np.sqrt(w[mine]) * (c[0] * x[mine] + c[1] - alpha[mine]), np.zeros(2),
            xtol=1e-15, ftol=1e-15, gtol=1e-15)
        assert _relative([fit.draft_coeff[t], fit.intercept[t]], reference.x) < 1e-6
        residual = alpha[mine] - (slope * x[mine] + intercept)
        sst = np.sum((alpha[mine] - alpha[mine].mean()) ** 2)
        assert float(fit.r2[t]) == pytest.approx(1 - np.sum(residual**2) / sst, rel=1e-9)
        assert int(fit.measurements[t]) == np.sum(mine)


@pytest.mark.slow
def test_plane_under_jit_vmap_and_grad(design):
    rows = design.rows
    X, alpha = _plane_design(rows), _np(rows.acceptance)
    n = alpha.size
    # vmap over weights (a bootstrap of the plane) equals fitting each weighting.
    counts = resample_weights(jax.random.PRNGKey(0), n, 3, jnp.float64)
    batched = jax.vmap(lambda w: fit_acceptance_law(rows, w).law.draft_coeff)(counts)
    for k in range(3):
        w = _np(counts[k])
        expected = np.linalg.lstsq(X * np.sqrt(w)[:, None], alpha * np.sqrt(w), rcond=None)[0]
        assert float(batched[k]) == pytest.approx(expected[0], rel=1e-10)

    # The coefficients are linear in the acceptances: their gradient is a row
    # of the weighted hat map (X'WX)^-1 X'W.
    w = _np(rows.weight)
    slope = jax.jit(lambda a: fit_acceptance_law(rows.replace(acceptance=a)).law.draft_coeff)
    grad = jax.grad(slope)(rows.acceptance)
    hat = np.linalg.solve(X.T @ (w[:, None] * X), X.T * w)
    np.testing.assert_allclose(_np(grad), hat[0], rtol=1e-8, atol=1e-12 * np.abs(hat[0]).max())


# --- the pre-training law (Huber) -------------------------------------------------------

def _huber_residuals(theta, lN, lD, lL):
    terms = np.stack([theta[1] - theta[3] * lN, theta[2] - theta[4] * lD, np.full_like(lN, theta[0])])
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0)) - lL


def test_huber_fit_matches_scipy_least_squares(design):
    points = design.points
    N, D, L = _np(points.num_params), _np(points.tokens), np.log(_np(points.perplexity))
    fit = fit_pretraining_law(N, D, L)
    assert bool(fit.converged)
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    huber = jax.jit(pretraining_fit.huber_objective)
    objective = lambda t: float(huber(jnp.asarray(t), jnp.asarray(lN), jnp.asarray(lD), jnp.asarray(lL),
                                      jnp.ones(lN.size)))
    # The objective is the Huber loss with delta = 1e-3 on log L: 0.5 r^2 inside
    # delta, delta (|r| - delta / 2) outside (scipy's loss="huber" with
    # f_scale = delta is the same function; its reported cost is compared below).
    theta = np.array([0.5, 6.0, 8.0, 0.3, 0.3])
    r = _huber_residuals(theta, lN, lD, lL)
    assert np.sum(np.abs(r) > 1e-3) > 0 and np.sum(np.abs(r) <= 1e-3) >= 0
    rho = np.where(np.abs(r) <= 1e-3, 0.5 * r**2, 1e-3 * (np.abs(r) - 0.5e-3))
    assert objective(theta) == pytest.approx(rho.sum(), rel=1e-12)

    # The same starts the fit polishes: the best 8 of the profiled exponent grid.
    grid, values = jax.jit(pretraining_fit.profiled_starts)(
        jnp.asarray(lN), jnp.asarray(lD), jnp.asarray(L), jnp.ones(lN.size),
        jnp.asarray(pretraining_fit.DEFAULT_EXPONENTS))
    starts = _np(grid)[np.argsort(_np(values))[:pretraining_fit.DEFAULT_REFINE]]
    best = None
    for start in starts:
        result = scipy.optimize.least_squares(lambda t: _huber_residuals(t, lN, lD, lL), start,
                                              loss="huber", f_scale=pretraining_fit.HUBER_DELTA,
                                              xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
        if best is None or result.cost < best.cost:
            best = result
    assert objective(best.x) == pytest.approx(best.cost, rel=1e-12)
    assert float(fit.objective) == pytest.approx(best.cost, rel=1e-9)
    natural = lambda t: np.array([np.exp(t[0]), np.exp(t[1]), t[3], np.exp(t[2]), t[4]])
    got = np.array([float(getattr(fit.law, f)) for f in COEFFICIENTS[:5]])
    assert _relative(got, natural(best.x)) < 1e-6


# --- the end-to-end fit -----------------------------------------------------------------

def _start_coordinates(ref, rows, points):
    """The fit's own start: the Huber law, and the plane on measured perplexities."""
    pre = fit_pretraining_law(points.num_params, points.tokens, jnp.log(points.perplexity)).law
    plane = fit_acceptance_law(rows).law
    c = [float(getattr(pre, f)) for f in COEFFICIENTS[:5]] + [
        float(getattr(plane, f)) for f in COEFFICIENTS[5:]]
    return ref.coordinates(np.array(c))


def test_joint_fit_matches_scipy(design):
    fit = design.joint
    assert bool(fit.converged) and bool(fit.identifiable)
    ref = Reference(design.rows, design.points)
    u0 = _start_coordinates(ref, design.rows, design.points)
    # The reference gradient is right (so scipy is solving the right problem).
    steps = 1e-6 * np.maximum(1, np.abs(u0))
    numeric = [(ref.objective(u0 + h * e)[0] - ref.objective(u0 - h * e)[0]) / (2 * h)
               for h, e in zip(steps, np.eye(8))]
    np.testing.assert_allclose(numeric, ref.objective(u0)[1], rtol=1e-5)
    result = ref.minimize(u0)
    # scipy stops when its line search can gain nothing more (often reported
    # as ABNORMAL at these tolerances); it must be at a stationary point.
    assert np.max(np.abs(ref.objective(result.x)[1])) < 1e-4 < np.max(np.abs(ref.objective(u0)[1]))
    assert _relative(fit.laws.coefficients, ref.natural(result.x)) < 1e-6
    assert float(fit.objective) == pytest.approx(result.fun, rel=1e-12)
    # The JAX objective in all eight coordinates agrees with the reference,
    # row by row and from the acceptance moments, away from the optimum too.
    data = joint_fit.prepare(design.rows, design.points)
    point_weight = jnp.ones(design.points.num_params.shape[0])
    moments = joint_fit.acceptance_moments(data, design.rows.weight)
    # Under jit, as the fit runs them (and one compile each, not one per op).
    joint_objective, moment_objective = jax.jit(joint_fit.joint_objective), jax.jit(joint_fit.moment_objective)
    for theta in (fit.theta, fit.theta + 0.01 * jnp.arange(1.0, 9.0)):
        expected = ref.objective(ref.coordinates(_np(joint_fit.natural_coefficients(theta, data))))[0]
        by_rows = joint_objective(theta, data, design.rows.weight, point_weight)
        by_moments = sum(moment_objective(theta, data, moments, point_weight))
        assert float(by_rows) == pytest.approx(expected, rel=1e-12)
        assert float(by_moments) == pytest.approx(expected, rel=1e-12)


def _fd_hessian(gradient, u, rel_step=1e-6):
    steps = rel_step * np.maximum(1.0, np.abs(u))
    columns = [(gradient(u + h * e) - gradient(u - h * e)) / (2 * h) for h, e in zip(steps, np.eye(u.size))]
    hessian = np.stack(columns, axis=1)
    return 0.5 * (hessian + hessian.T)


def test_joint_delta_covariance_matches_finite_differences(design):
    fit = design.joint
    ref = Reference(design.rows, design.points)
    u = ref.coordinates(_np(fit.laws.coefficients))
    h_a = _fd_hessian(lambda v: ref.blocks(v)[0][1], u)
    h_p = _fd_hessian(lambda v: ref.blocks(v)[1][1], u)
    # Each block's variance estimate gets its own degrees-of-freedom
    # correction, (n_b - p_b) / n_b with p_b = tr(H^-1 H_b).
    inverse = np.linalg.inv(h_a + h_p)
    n_a, n_p = ref.n, ref.pw.sum()
    corrected = (h_a * (n_a - np.trace(inverse @ h_a)) / n_a
                 + h_p * (n_p - np.trace(inverse @ h_p)) / n_p)
    jacobian = np.stack([(ref.natural(u + h * e) - ref.natural(u - h * e)) / (2 * h)
                         for h, e in zip(1e-6 * np.maximum(1, np.abs(u)), np.eye(8))], axis=1)
    expected = jacobian @ np.linalg.inv(corrected) @ jacobian.T
    got = _np(fit.iid_covariance)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.max(np.abs(got - expected) / scale) < 1e-5
    iid = fit_joint(design.rows, design.points, covariance="iid").laws
    assert iid.covariance_df is None
    # The standard errors are the square roots of the diagonal.
    np.testing.assert_allclose(_np(iid.standard_errors()), np.sqrt(np.diag(expected)), rtol=1e-5)


def test_joint_fit_is_invariant_to_row_order(design):
    order = np.random.default_rng(1).permutation(design.rows.acceptance.shape[0])
    shuffled = jax.tree_util.tree_map(lambda v: v[order], design.rows)
    refit = fit_joint(shuffled, design.points)
    assert _relative(refit.laws.coefficients, design.joint.laws.coefficients) < 1e-9


# Model-level deviations that dominate the row noise: 2% perplexity scatter per
# model (shared by its rows and its loss point), 0.2% pair scatter.
RECOVERY = dict(perplexity_noise=0.02, acceptance_noise=0.002)


@pytest.fixture(scope="module")
def recovery(x64_module):
    """95% intervals over 60 synthetic sets: {kind: covered[seed, coefficient]}.

    kinds: the default (cluster-robust, t), the iid covariance with z (the
    old default), and the cluster-robust covariance at z = 1 (a 68% interval).
    """
    covered = {"cluster": [], "iid": [], "z=1": []}
    for seed in range(60):
        d = Design(seed=seed, **RECOVERY)
        fit = fit_joint(d.rows, d.points)
        for kind, cov, df, confidence in (
                ("cluster", fit.laws.covariance, fit.laws.covariance_df, 0.95),
                ("iid", fit.iid_covariance, None, 0.95),
                ("z=1", fit.laws.covariance, None, scipy.stats.norm.cdf(1) * 2 - 1)):
            low, high = normal_intervals(fit.laws.coefficients, cov, confidence, log_scale=LOG_SCALE, df=df)
            covered[kind].append((_np(low) <= TRUTH) & (TRUTH <= _np(high)))
    return {kind: np.array(v) for kind, v in covered.items()}


@pytest.mark.slow
def test_known_coefficients_are_recovered_within_their_intervals(recovery):
    # 480 intervals (60 sets x 8 coefficients). Measured: the default covers
    # 0.94 pooled, the iid intervals 0.88, z = 1 0.78. The band rejects both.
    pooled = {kind: float(v.mean()) for kind, v in recovery.items()}
    assert 0.91 <= pooled["cluster"] <= 0.98, pooled
    assert pooled["iid"] < 0.91 and pooled["z=1"] < 0.91, pooled
    # No coefficient is systematically missed.
    assert np.all(recovery["cluster"].mean(axis=0) >= 0.85), recovery["cluster"].mean(axis=0)


# --- the bootstrap ----------------------------------------------------------------------

RESAMPLES, CHUNK = 400, 50


@pytest.fixture(scope="module")
def bootstrap(design):
    """400 resamples in chunks of 50, called as `sdsl fit` calls it (one compiled function)."""
    key = jax.random.PRNGKey(7)
    data = joint_fit.prepare(design.rows, design.points)
    chunks = [bootstrap_joint(design.joint, design.rows, design.points, jax.random.fold_in(key, start),
                              num_resamples=CHUNK, batch_size=CHUNK, data=data, with_decrement=True)
              for start in range(0, RESAMPLES, CHUNK)]
    return key, np.concatenate([_np(c[0]) for c in chunks]), np.concatenate([_np(c[1]) for c in chunks])


@pytest.mark.slow
def test_bootstrap_resamples_converge(bootstrap):
    _, samples, decrement = bootstrap
    assert samples.shape == (RESAMPLES, 8) and np.all(np.isfinite(samples))
    assert np.mean(decrement < joint_fit.converged_decrement(np.float64)) >= 0.98


@pytest.mark.slow
def test_bootstrap_resample_matches_scipy(design, bootstrap):
    # Rebuild a resample's draw counts and refit it with scipy from scratch.
    # Models are resampled (two-way): a row counts its draft's draws times
    # its target's, and the acceptance block's n is the sum of those counts.
    key, samples, decrement = bootstrap
    k = int(np.argmax(decrement < 1e-6))
    data = joint_fit.prepare(design.rows, design.points)
    counts = clusters_lib.model_resample_counts(jax.random.fold_in(key, k - k % CHUNK), data.clusters,
                                                CHUNK, jnp.float64)
    draft_counts, target_counts, point_counts = (_np(c)[k % CHUNK] for c in counts)
    row_counts = draft_counts[_np(data.draft_model).astype(int)] * target_counts[_np(data.target_model).astype(int)]
    ref = Reference(design.rows, design.points, row_weight=_np(design.rows.weight) * row_counts,
                    point_weight=point_counts, row_count=row_counts)
    result = ref.minimize(_start_coordinates(ref, design.rows, design.points))
    assert _relative(samples[k], ref.natural(result.x)) < 1e-6


@pytest.mark.slow
def test_bootstrap_and_delta_intervals_agree(design, bootstrap):
    _, samples, _ = bootstrap
    low, high = percentile_intervals(samples, 0.95)
    bootstrap_width = _np(high) - _np(low)
    df = float(design.joint.laws.covariance_df)
    delta_width = 2 * scipy.stats.t.ppf(0.975, df) * _np(design.joint.laws.standard_errors())
    ratio = bootstrap_width / delta_width
    # The model bootstrap is conservative where row noise dominates (the
    # plane's coefficients here: measured 1.2-1.46), never much narrower than
    # the cluster-robust delta interval (measured 0.8-0.95 for the pre-training law).
    assert np.all((ratio > 0.7) & (ratio < 1.7)), dict(zip(COEFFICIENTS, ratio.round(3)))


# --- N* with uncertainty ----------------------------------------------------------------

TARGET = dict(target_params=70e9, draft_tokens=2e12, target_tokens=15e12)


def _log_n_star(vector):
    # The laws from Python floats: no eager slicing ops per call (this runs
    # once per bootstrap resample).
    vector = [float(v) for v in vector]
    pre = pretraining.PretrainingLaw(**dict(zip(COEFFICIENTS[:5], vector[:5])))
    acc = acceptance_lib.AcceptanceLaw(**dict(zip(COEFFICIENTS[5:], vector[5:])))
    plan = planner.optimal_draft_size(TARGET["target_params"], TARGET["draft_tokens"],
                                      TARGET["target_tokens"], pretraining_law=pre, acceptance_law=acc)
    assert bool(plan.pays)
    return np.log(float(plan.draft_params))


@pytest.mark.slow
def test_delta_n_star_interval_matches_finite_differences(design):
    # The iid covariance with the normal quantile: this checks the gradient.
    laws = design.joint.laws.replace(covariance=design.joint.iid_covariance, covariance_df=None)
    interval = draft_size_interval(laws, TARGET["target_params"], TARGET["draft_tokens"],
                                   TARGET["target_tokens"], interval="delta")
    c = _np(laws.coefficients)
    steps = 1e-6 * np.abs(c)
    grad = np.array([(_log_n_star(c + h * e) - _log_n_star(c - h * e)) / (2 * h)
                     for h, e in zip(steps, np.eye(8))])
    sigma = np.sqrt(grad @ _np(laws.covariance) @ grad)
    n_star = np.exp(_log_n_star(c))
    assert float(interval.plan.draft_params) == pytest.approx(n_star, rel=1e-10)
    assert float(interval.low) == pytest.approx(n_star * np.exp(-Z95 * sigma), rel=1e-6)
    assert float(interval.high) == pytest.approx(n_star * np.exp(Z95 * sigma), rel=1e-6)


@pytest.mark.slow
def test_bootstrap_n_star_interval_is_percentiles_of_refitted_plans(design, bootstrap):
    _, samples, _ = bootstrap
    laws = FittedLaws(pretraining_law=design.joint.laws.pretraining_law,
                      acceptance_law=design.joint.laws.acceptance_law, samples=jnp.asarray(samples))
    interval = draft_size_interval(laws, TARGET["target_params"], TARGET["draft_tokens"],
                                   TARGET["target_tokens"], interval="bootstrap")
    n_stars = np.exp([_log_n_star(s) for s in samples])  # the planner, one resample at a time
    np.testing.assert_allclose([float(interval.low), float(interval.high)],
                               np.percentile(n_stars, [2.5, 97.5]), rtol=1e-9)
    assert float(interval.pays_fraction) == 1.0
    # The two routes to the uncertainty of N* agree on this well-determined set.
    delta = draft_size_interval(design.joint.laws, TARGET["target_params"], TARGET["draft_tokens"],
                                TARGET["target_tokens"], interval="delta")
    width = lambda i: np.log(float(i.high) / float(i.low))
    assert 0.75 < width(interval) / width(delta) < 1.25, (width(interval), width(delta))


# --- the laws file ----------------------------------------------------------------------

def test_laws_file_round_trips_exactly(design, tmp_path):
    laws = FittedLaws(pretraining_law=design.joint.laws.pretraining_law,
                      acceptance_law=design.joint.laws.acceptance_law,
                      covariance=design.joint.laws.covariance,
                      covariance_df=design.joint.laws.covariance_df,
                      samples=jnp.asarray(np.random.default_rng(0).normal(size=(5, 8))))
    path = tmp_path / "laws.json"
    save_laws(path, laws, summary={"note": "test", "value": np.float64(1.5)})
    loaded = load_laws(path)
    for field in ("coefficients", "covariance", "samples", "covariance_df"):
        np.testing.assert_array_equal(_np(getattr(loaded, field)), _np(getattr(laws, field)))
    document = json.loads(path.read_text())
    assert document["summary"] == {"note": "test", "value": 1.5}
    # The file says what its covariance is: cluster-robust over the 24 models, t with 23 df.
    assert document["covariance_kind"] == "cluster" and document["covariance_df"] == 23.0
    assert not (tmp_path / "laws.json.tmp").exists()
    # A file from before the covariance had a kind (version 1) reads as an iid one.
    del document["covariance_kind"], document["covariance_df"]
    document["version"] = 1
    path.write_text(json.dumps(document))
    old = load_laws(path)
    assert old.covariance_df is None and old.covariance is not None


def test_laws_file_never_holds_nan(design, tmp_path):
    # Regression: a failed bootstrap resample (NaN) reached json.dump and the
    # CLI died with a traceback. Non-finite laws are refused by name; a
    # non-finite number in the summary is written as null.
    laws = design.joint.laws
    bad = laws.replace(samples=jnp.asarray([[np.nan] * 8, [1.0] * 8]))
    path = tmp_path / "laws.json"
    with pytest.raises(ValueError, match="non-finite bootstrap samples"):
        save_laws(path, bad)
    assert not path.exists() and not (tmp_path / "laws.json.tmp").exists()
    with pytest.raises(ValueError, match="non-finite covariance"):
        save_laws(path, laws.replace(covariance=laws.covariance.at[0, 0].set(jnp.inf)))
    summary = {"r2": float("nan"), "low": np.float64(-np.inf), "ok": np.float32(0.5),
               "list": [1.0, float("nan")], "array": np.array([np.nan, 2.0]), "flag": np.bool_(True)}
    save_laws(path, laws, summary=summary)
    written = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"wrote {c}"))
    assert written["summary"] == {"r2": None, "low": None, "ok": 0.5, "list": [1.0, None],
                                  "array": [None, 2.0], "flag": True}


def test_resample_converged_needs_finite_coefficients_and_a_small_decrement():
    samples = np.ones((5, 8))
    samples[1, 4] = np.inf
    decrement = np.array([0.0, 0.0, np.nan, 2 * joint_fit.RESAMPLE_TOLERANCE, joint_fit.RESAMPLE_TOLERANCE])
    np.testing.assert_array_equal(joint_fit.resample_converged(samples, decrement),
                                  [True, False, False, False, True])


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"acceptance_law": {}}), "missing the 'pretraining_law' object"),
    (json.dumps({"pretraining_law": {"irreducible_loss": 1.8}, "acceptance_law": {}}),
     "pretraining_law.param_coeff must be a finite number, got None"),
    ("PRE_NEGATIVE", "pretraining_law.param_exponent must be > 0"),
    ("COVARIANCE_SHAPE", "'covariance' must be a finite matrix with 8 columns, got shape (2, 2)"),
    ("SAMPLES_TEXT", "'bootstrap_samples' must be a numeric matrix"),
])
def test_corrupt_laws_file_is_named(tmp_path, content, needle):
    good = {"pretraining_law": {f: 1.0 for f in COEFFICIENTS[:5]},
            "acceptance_law": {f: 0.1 for f in COEFFICIENTS[5:]}}
    if content == "PRE_NEGATIVE":
        content = json.dumps({**good, "pretraining_law": {**good["pretraining_law"], "param_exponent": -0.3}})
    elif content == "COVARIANCE_SHAPE":
        content = json.dumps({**good, "covariance": [[1, 0], [0, 1]]})
    elif content == "SAMPLES_TEXT":
        content = json.dumps({**good, "bootstrap_samples": [["a"] * 8, ["b"] * 8]})
    path = tmp_path / "bad.laws.json"
    path.write_text(content)
    with pytest.raises(LawsFileError) as err:
        load_laws(path)
    assert str(err.value).startswith(str(path)) and needle in str(err.value)


# --- bad input --------------------------------------------------------------------------

def test_too_few_rows_and_unidentifiable_fits_are_named(design):
    rows, points = design.rows, design.points
    head = jax.tree_util.tree_map(lambda v: v[:2], rows)
    with pytest.raises(ValueError, match="at least 3 measurements with positive weight, got 2"):
        fit_acceptance_law(head)
    one_draft = rows.replace(draft_perplexity=jnp.full_like(rows.draft_perplexity, 20.0))
    with pytest.raises(ValueError, match="same draft perplexity"):
        fit_acceptance_law(one_draft)
    with pytest.raises(ValueError, match="same draft perplexity"):
        fit_joint(one_draft, points)
    one_target = rows.replace(target_perplexity=jnp.full_like(rows.target_perplexity, 8.0))
    with pytest.raises(ValueError, match="target coefficient cannot be told from the intercept"):
        fit_joint(one_target, points, fit_target_coeff=True)
    with pytest.raises(ValueError, match="5 coefficients; 4 points cannot fix them"):
        fit_pretraining_law(points.num_params[:4], points.tokens[:4], jnp.log(points.perplexity[:4]))
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        fit_pretraining_law(points.num_params, points.tokens[:5], jnp.log(points.perplexity))
    with pytest.raises(ValueError, match="tokens must be > 0"):
        fit_pretraining_law(points.num_params, -points.tokens, jnp.log(points.perplexity))
    with pytest.raises(ValueError, match="rows.target_index must lie in"):
        fit_per_target(rows, 3)
    with pytest.raises(ValueError, match="weight must have one entry per row"):
        fit_acceptance_law(rows, jnp.ones(5))
    with pytest.raises(ValueError, match="weighting='interval' needs an interval"):
        from sdsl_jax.estimation.measurements import MeasurementSet
        m = design.measurements
        plain = MeasurementSet.from_columns(
            **{c: m.columns[c] for c in ("draft_params", "target_params", "draft_tokens", "target_tokens",
                                         "draft_perplexity", "target_perplexity", "lookahead")},
            acceptance=m.acceptance)
        acceptance_rows(plain, weighting="interval")


def test_collinear_perplexities_are_flagged_not_identifiable(design):
    rows = design.rows
    collinear = rows.replace(target_perplexity=0.5 * rows.draft_perplexity + 3.0)
    assert not bool(fit_acceptance_law(collinear).identifiable)


def test_single_token_count_leaves_the_data_term_undetermined(x64_module):
    # Every model trained on the same D: B / D^b is one constant beside E, so
    # E, B and b cannot be separated and the Hessian is singular.
    d = Design(seed=3, tokens_range=(1e12, 1e12))
    fit = fit_joint(d.rows, d.points)
    assert not bool(fit.identifiable)


@pytest.mark.slow
def test_the_flat_directions_name_the_undetermined_coefficients(x64_module):
    # The same singular fit: its flat directions move E, B and b and nothing
    # else, so the size term and the plane keep their intervals.
    d = Design(seed=3, tokens_range=(1e12, 1e12))
    fit = fit_joint(d.rows, d.points)
    assert fit_report.undetermined_coefficients(fit, d.rows, d.points) == [
        "irreducible_loss", "data_coeff", "data_exponent"]


def test_an_identifiable_fit_has_no_undetermined_coefficients(design):
    assert bool(design.joint.identifiable)
    assert fit_report.undetermined_coefficients(design.joint, design.rows, design.points) == []


def test_an_undetermined_plane_coefficient_is_none_with_its_reason_never_zero(design):
    rows = design.rows
    # One target perplexity: B is held at 0 by the fit, and reported as undetermined.
    one_target = rows.replace(target_perplexity=jnp.full_like(rows.target_perplexity, 8.0))
    plane = fit_report.plane_summary(fit_acceptance_law(one_target, use_target=False), False)
    assert plane["target_coeff"] is None and plane["standard_errors"][1] is None
    assert plane["undetermined"] == {"target_coeff": fit_report.ONE_TARGET}
    assert plane["draft_coeff"] < 0 and plane["standard_errors"][0] > 0
    assert plane["intercept"] > 0 and plane["standard_errors"][2] > 0
    # Collinear perplexities: A, B and C move together along the flat direction.
    collinear = rows.replace(target_perplexity=0.5 * rows.draft_perplexity + 3.0)
    plane = fit_report.plane_summary(fit_acceptance_law(collinear), True)
    fields = ("draft_coeff", "target_coeff", "intercept")
    assert [plane[k] for k in fields] == [None] * 3 and plane["standard_errors"] == [None] * 3
    assert set(plane["undetermined"]) == set(fields)
    # The design determines all three.
    plane = fit_report.plane_summary(fit_acceptance_law(rows), True)
    assert plane["undetermined"] == {} and all(s > 0 for s in plane["standard_errors"])


def test_a_plane_through_every_measurement_has_no_standard_errors(design):
    # All acceptances equal (a model drafting for itself): A = B = 0 and C = 1
    # fit exactly, and the textbook standard errors are 0 (no residual).
    rows = design.rows
    plane = fit_report.plane_summary(fit_acceptance_law(rows.replace(
        acceptance=jnp.ones_like(rows.acceptance))), True)
    assert [plane[k] for k in ("draft_coeff", "target_coeff", "intercept")] == pytest.approx([0, 0, 1])
    assert plane["standard_errors"] == [None] * 3 and plane["undetermined"] == {}


@pytest.mark.parametrize("value", [20.0, 13.37, 7.1])
def test_a_target_with_one_draft_perplexity_has_no_slope(design, value):
    # Regression: rounding left a spread of 1e-15 about the mean of a constant
    # x, and the per-target fit reported slopes of +0.05 or +0.09 for 13.37 and 7.1.
    rows, targets = design.rows, design.targets
    first = np.asarray(rows.target_index) == 0
    x = jnp.asarray(np.where(first, value, _np(rows.draft_perplexity)), rows.draft_perplexity.dtype)
    fit = fit_per_target(rows.replace(draft_perplexity=x), len(targets))
    lone, other = (fit_report.per_target_summary(targets[t], fit, t) for t in (0, 1))
    assert lone["draft_coeff"] is None and lone["intercept"] is None and lone["r2"] is None
    assert lone["undetermined"] == {"draft_coeff": fit_report.ONE_DRAFT,
                                    "intercept": fit_report.ONE_DRAFT}
    assert other["undetermined"] == {} and other["draft_coeff"] < 0


def test_interval_needs_the_right_uncertainty(design):
    bare = FittedLaws(pretraining_law=design.joint.laws.pretraining_law,
                      acceptance_law=design.joint.laws.acceptance_law)
    args = (TARGET["target_params"], TARGET["draft_tokens"], TARGET["target_tokens"])
    with pytest.raises(ValueError, match="needs laws with a covariance"):
        draft_size_interval(bare, *args, interval="delta")
    with pytest.raises(ValueError, match="needs laws with bootstrap samples"):
        draft_size_interval(bare, *args, interval="bootstrap")
    with pytest.raises(ValueError, match="interval must be one of"):
        draft_size_interval(bare, *args, interval="jackknife")
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\)"):
        draft_size_interval(design.joint.laws, *args, confidence=95)


def test_the_lowest_starts_are_a_stable_argsorts_first():
    """The Huber fit polishes its `refine` best starts, found without a sort (whose
    comparator a saved program cannot hold): the same indices, in the same order, as
    numpy's stable argsort, with ties and infinite objectives."""
    rng = np.random.default_rng(3)
    lowest = jax.jit(pretraining_fit._lowest, static_argnums=1)
    for n, k in [(8, 1), (8, 8), (37, 3), (256, 8)]:  # a program per shape: few shapes
        for trial in range(12):
            values = rng.integers(0, 5, n).astype(float) if trial % 2 else rng.normal(size=n)
            values[rng.random(n) < 0.25] = np.inf
            np.testing.assert_array_equal(lowest(jnp.asarray(values), k),
                                          np.argsort(values, kind="stable")[:k])
