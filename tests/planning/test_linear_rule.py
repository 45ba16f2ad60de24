import types

import numpy as np
import pytest

import sdsl_jax as sd


def test_published_rule():
    assert float(sd.published_rule(70e9)) == pytest.approx(2.71e-3 * 70e9 + 87e6)


# The paper's target range at the token counts of `sdsl rule`: 6 targets x 4
# token counts, the shapes of `sdsl rule --points 6` and of test_planner's grid,
# so one compilation of the planner serves all of them in a test session.
TARGETS = np.geomspace(13e9, 110e9, 6)[:, None]
TOKENS = np.array([3e11, 1e12, 3e12, 15e12])[None, :]


@pytest.mark.slow
def test_refit_over_the_papers_target_range_is_close_to_published(x64):
    m, tokens = TARGETS, TOKENS
    rule = sd.fit_linear_rule(m, tokens, tokens)
    # The chain of published laws reproduces the published line to within a
    # few percent in slope and intercept.
    assert rule.slope == pytest.approx(2.71e-3, rel=0.1)
    assert rule.intercept == pytest.approx(87e6, rel=0.3)
    assert rule.r2 > 0.95
    plan = sd.optimal_draft_size(m, tokens, tokens)
    worst = np.max(np.abs(np.asarray(rule(m)) - np.asarray(plan.draft_params)) / np.asarray(plan.draft_params))
    assert worst == pytest.approx(rule.max_relative_error, rel=1e-6)


@pytest.mark.slow
def test_log_tokens_term_improves_the_fit(x64):
    m, tokens = TARGETS, TOKENS
    plain = sd.fit_linear_rule(m, tokens, tokens)
    with_log = sd.fit_linear_rule(m, tokens, tokens, with_log_tokens=True)
    assert with_log.r2 >= plain.r2
    assert with_log.log_tokens_coeff != 0.0


@pytest.mark.slow
def test_where_speculation_does_not_pay_the_rule_is_refused_with_the_grid(x64):
    # The shapes of the tests above (one compilation): targets from 1K, too
    # small for any draft to pay at the larger token counts.
    m = np.geomspace(1e3, 110e9, 6)[:, None]
    from sdsl_jax.planning.linear_rule import RuleUndefinedError
    with pytest.raises(RuleUndefinedError, match="does not pay at") as err:
        sd.fit_linear_rule(m, TOKENS, TOKENS)
    plan = sd.optimal_draft_size(m, TOKENS, TOKENS)
    np.testing.assert_array_equal(err.value.pays, np.asarray(plan.pays))
    assert not err.value.pays.all() and err.value.pays[-1].all()
    np.testing.assert_array_equal(err.value.target_params[:, 0], m[:, 0])
    np.testing.assert_array_equal(err.value.draft_tokens[0], TOKENS[0])


def test_the_log_tokens_term_needs_more_than_one_token_count():
    with pytest.raises(ValueError, match="more than one draft_tokens value"):
        sd.fit_linear_rule(TARGETS, 1e12, 1e12, with_log_tokens=True)


def test_r2_of_huge_draft_sizes_does_not_overflow(monkeypatch, x64):
    # N* ~ 1e288 (a target of 1e296): its squares overflowed and R^2 was NaN.
    # The fit is invariant to the unit of M and N*: the same grid in units of
    # 1e280 parameters gives the same R^2 and relative errors.
    from sdsl_jax.planning import linear_rule
    m = np.geomspace(1e290, 1e296, 5)
    n_star = 1e-8 * m * (1 + 0.01 * np.array([1, -1, 1, -1, 1]))

    def fit(unit):
        plan = types.SimpleNamespace(draft_params=n_star / unit, pays=np.ones(5, bool))
        monkeypatch.setattr(linear_rule.planner, "optimal_draft_size", lambda *a, **k: plan)
        return linear_rule.fit_linear_rule(m / unit, 1e12, 1e12)

    huge, moderate = fit(1.0), fit(1e280)
    assert np.isfinite(huge.r2) and 0.99 < huge.r2 < 1
    assert huge.r2 == pytest.approx(moderate.r2, rel=1e-9)
    assert huge.max_relative_error == pytest.approx(moderate.max_relative_error, rel=1e-6)
    assert huge.slope == pytest.approx(moderate.slope, rel=1e-9)
    assert huge.intercept == pytest.approx(moderate.intercept * 1e280, rel=1e-6)
