"""Student's t quantile against scipy.stats.t.ppf, in float32 and float64."""

import jax
import numpy as np
import pytest
from scipy import stats

from sdsl_jax.common.student_t import student_t_quantile, student_t_quantile_float

DFS = [0.5, 1, 1.7, 2, 3, 7.3, 30, 99, 100, 999, 1000, 5e3, 1e6, np.inf]


def test_float32_matches_scipy():
    # Probabilities as float32 holds them; relative 2e-5 (float32 betainc
    # below df 100, the Cornish-Fisher expansion above).
    p = np.array([1e-6, 1e-4, 0.01, 0.025, 0.3, 0.5, 0.7, 0.975, 0.995, 1 - 1e-4], np.float32)
    for df in DFS:
        got = np.asarray(student_t_quantile(p, df), np.float64)
        assert got.dtype == np.float64 and student_t_quantile(p, df).dtype == np.float32
        ref = stats.t.ppf(p.astype(np.float64), df)
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-7, err_msg=f"df={df}")


def test_float64_matches_scipy(x64):
    p = np.array([1e-10, 1e-6, 0.01, 0.025, 0.3, 0.5, 0.7, 0.975, 0.995, 1 - 1e-6])
    for df in DFS:
        got = student_t_quantile(p, df)
        assert got.dtype == np.float64
        np.testing.assert_allclose(np.asarray(got), stats.t.ppf(p, df), rtol=1e-10, atol=1e-14,
                                   err_msg=f"df={df}")


@pytest.mark.slow  # the derivative compiles the bisection three more times
def test_jit_vmap_and_derivatives(x64):
    p, df = np.array([0.9, 0.975]), np.array([2.0, 3.5])
    np.testing.assert_allclose(jax.jit(jax.vmap(student_t_quantile))(p, df), stats.t.ppf(p, df),
                               rtol=1e-10)
    # d t / d p = 1 / density(t); d t / d df against scipy's central difference.
    t = stats.t.ppf(0.975, 3.0)
    np.testing.assert_allclose(jax.grad(student_t_quantile)(0.975, 3.0), 1 / stats.t.pdf(t, 3.0),
                               rtol=1e-8)
    by_df = (stats.t.ppf(0.975, 3.0 + 1e-5) - stats.t.ppf(0.975, 3.0 - 1e-5)) / 2e-5
    np.testing.assert_allclose(jax.grad(student_t_quantile, argnums=1)(0.975, 3.0), by_df, rtol=1e-5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="probability"):
        student_t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df"):
        student_t_quantile(0.9, 0.0)


def test_float_helper_is_float64_in_float32_mode():
    assert student_t_quantile_float(0.975, 7) == pytest.approx(stats.t.ppf(0.975, 7), rel=1e-12)
