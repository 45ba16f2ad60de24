"""The delta-method interval on N*: right in float32, t-based where the laws carry
degrees of freedom, and empty where no draft pays.

No fit runs here: the laws are the paper's, with the standard errors of a joint
fit to a synthetic set (12 x 12 models, seed 0, 0.3% perplexity noise, rounded),
so the only compilations are the planner's with its Jacobian, one per dtype
(float64's shared with test_fitting).
That the float64 interval is the delta method's (its gradient against central
differences of the planner) is checked in test_fitting.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import sdsl_jax as sd
from sdsl_jax.fitting import FittedLaws, draft_size_interval

STANDARD_ERRORS = np.array([4.5e-3, 43.0, 4.6e-3, 162.0, 3.6e-3, 2.0e-4, 3.1e-4, 4.5e-3])
CONFIGS = np.array([  # (M, D, D'): tests/planning/test_flop.py's reference configurations
    (70e9, 15e12, 15e12), (13e9, 3e11, 1e12), (110e9, 1e12, 18e12),
    (7e9, 2e12, 2e12), (1e12, 1e13, 3e13), (1e9, 1e11, 1e11)])
# One covariance per coefficient (a variance on it alone: the interval then
# checks that coefficient's gradient), and all eight at once.
COVARIANCES = [np.diag(np.where(np.arange(8) == i, STANDARD_ERRORS**2, 0.0)) for i in range(8)]
COVARIANCES.append(np.diag(STANDARD_ERRORS**2))


def _laws(dtype, covariance, acceptance_law=sd.SDSL_2026, **extra):
    cast = lambda tree: jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), tree)
    return FittedLaws(pretraining_law=cast(sd.BESIROGLU_2024), acceptance_law=cast(acceptance_law),
                      covariance=jnp.asarray(covariance, dtype), **extra)


def _ends(dtype, covariance, **extra):
    # One configuration per call: scalar calls in float64 share their
    # compilation with test_fitting's delta-interval check.
    laws = _laws(dtype, covariance, **extra)
    ends = []
    for config in CONFIGS.astype(dtype):
        interval = draft_size_interval(laws, *config, interval="delta")
        ends.append([float(interval.low), float(interval.high)])
    return np.array(ends).T


@pytest.mark.slow
def test_float32_interval_is_within_1e3_of_float64():
    # Measured: 2e-6 (autodiff through the planner); central differences at a
    # relative step of 1e-5 were up to 2.9% off, and 100% for single gradients.
    float32 = [_ends(np.float32, cov) for cov in COVARIANCES]
    with jax.enable_x64(True):
        float64 = [_ends(np.float64, cov) for cov in COVARIANCES]
    for i, (single, double) in enumerate(zip(float32, float64)):
        # Every coefficient moves N*: the interval is not a point.
        assert np.all(double[1] / double[0] > 1 + 1e-4), i
        np.testing.assert_allclose(single, double, rtol=1e-3, err_msg=f"covariance {i}")


@pytest.mark.slow
def test_interval_uses_students_t_where_the_laws_carry_degrees_of_freedom():
    normal = _ends(np.float32, COVARIANCES[-1])
    student = _ends(np.float32, COVARIANCES[-1], covariance_df=jnp.asarray(5.0, np.float32))
    ratio = scipy.stats.t.ppf(0.975, 5) / scipy.stats.norm.ppf(0.975)
    # The interval is N* exp(+- q sigma): its log width scales with the quantile.
    np.testing.assert_allclose(np.log(student[1] / student[0]),
                               ratio * np.log(normal[1] / normal[0]), rtol=1e-4)


@pytest.mark.slow
def test_interval_is_empty_where_no_draft_pays():
    hopeless = sd.AcceptanceLaw(draft_coeff=-0.0067, target_coeff=0.0, intercept=0.0)
    laws = _laws(np.float32, COVARIANCES[-1], acceptance_law=hopeless)
    for config in CONFIGS.astype(np.float32):
        interval = draft_size_interval(laws, *config, interval="delta")
        assert not bool(interval.plan.pays)
        assert float(interval.low) == float(interval.high) == float(interval.pays_fraction) == 0.0
