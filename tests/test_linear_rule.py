import numpy as np
import pytest

import sdsl_jax as sd


def test_published_rule():
    assert float(sd.published_rule(70e9)) == pytest.approx(2.71e-3 * 70e9 + 87e6)


def test_refit_over_the_papers_target_range_is_close_to_published(x64):
    m = np.geomspace(13e9, 110e9, 12)[:, None]
    tokens = np.array([3e11, 1e12, 3e12, 15e12])[None, :]
    rule = sd.fit_linear_rule(m, tokens, tokens)
    # The chain of published laws reproduces the published line to within a
    # few percent in slope and intercept.
    assert rule.slope == pytest.approx(2.71e-3, rel=0.1)
    assert rule.intercept == pytest.approx(87e6, rel=0.3)
    assert rule.r2 > 0.95
    plan = sd.optimal_draft_size(m, tokens, tokens)
    worst = np.max(np.abs(np.asarray(rule(m)) - np.asarray(plan.draft_params)) / np.asarray(plan.draft_params))
    assert worst == pytest.approx(rule.max_relative_error, rel=1e-6)


def test_log_tokens_term_improves_the_fit(x64):
    m = np.geomspace(13e9, 110e9, 8)[:, None]
    tokens = np.array([3e11, 3e12, 30e12])[None, :]
    plain = sd.fit_linear_rule(m, tokens, tokens)
    with_log = sd.fit_linear_rule(m, tokens, tokens, with_log_tokens=True)
    assert with_log.r2 >= plain.r2
    assert with_log.log_tokens_coeff != 0.0
