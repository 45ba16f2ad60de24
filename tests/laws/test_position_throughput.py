"""The throughput law on measured per-position rates: against the i.i.d. law, brute-force
enumeration (mpmath), simulation, and its own derivatives; bad input is refused."""

import itertools
import json

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from sdsl_jax.laws import position_throughput as pt
from sdsl_jax.laws import throughput

ALPHAS = [0.0, 0.05, 0.3, 0.6, 0.8, 0.95, 0.99, 1 - 1e-9, 1.0]
COST_RATIOS = [1e-3, 0.01, 0.05, 0.2, 0.5, 1.0]


def _brute_force_tokens(rates, gamma):
    """E[K + 1] by enumerating the 2^gamma accept/reject patterns, in 40 digits."""
    with mp.workdps(40):
        total = mp.mpf(0)
        for pattern in itertools.product((0, 1), repeat=gamma):
            p = mp.mpf(1)
            for ok, r in zip(pattern, rates):
                p *= mp.mpf(r) if ok else 1 - mp.mpf(r)
            k = next((i for i, ok in enumerate(pattern) if not ok), gamma)  # leading accepts
            total += p * (k + 1)
        return total


@pytest.mark.slow
def test_equal_rates_reproduce_the_iid_law(x64):
    gamma_max = 64
    alpha = jnp.asarray(ALPHAS, jnp.float64)
    rates = jnp.broadcast_to(alpha[:, None], (len(ALPHAS), gamma_max))
    for gamma in (0, 1, 2, 5, 17, 64):
        got = pt.expected_tokens(rates, gamma)
        want = throughput.expected_tokens(alpha, float(gamma))
        np.testing.assert_allclose(got, want, rtol=1e-13)
    for c in COST_RATIOS:
        s = pt.speedups(rates, c)
        want = throughput.speedup(alpha[:, None], jnp.arange(gamma_max + 1.0), c)
        np.testing.assert_allclose(s, want, rtol=1e-13)
        # The best integer lookahead is the i.i.d. law's wherever that one is < 64.
        iid = np.asarray(jax.jit(throughput.optimal_integer_lookahead)(alpha, c))
        inside = iid < gamma_max
        assert inside.sum() >= 3
        np.testing.assert_array_equal(np.asarray(pt.optimal_lookahead(rates, c))[inside],
                                      iid[inside])
        np.testing.assert_allclose(np.asarray(pt.optimal_speedup(rates, c))[inside],
                                   np.asarray(throughput.speedup(alpha, iid, c))[inside],
                                   rtol=1e-13)


def test_float32_by_default_float64_under_x64():
    rates = [0.9, 0.7, 0.5]
    assert pt.expected_tokens(rates).dtype == jnp.float32
    assert pt.speedups(rates, 0.1).dtype == jnp.float32
    np.testing.assert_allclose(pt.expected_tokens(np.full(8, 0.8, np.float32)),
                               throughput.expected_tokens(np.float32(0.8), 8.0), rtol=2e-6)
    with jax.enable_x64(True):
        assert pt.expected_tokens(rates).dtype == jnp.float64
        assert pt.optimal_speedup(rates, 0.1).dtype == jnp.float64


def test_decaying_rates_against_brute_force_enumeration(x64):
    rng = np.random.default_rng(0)
    for _ in range(5):
        rates = np.sort(rng.uniform(0.1, 0.99, 7))[::-1]  # decaying along the draft
        for gamma in range(8):
            want = float(_brute_force_tokens(rates, gamma))
            assert float(pt.expected_tokens(rates, gamma)) == pytest.approx(want, rel=1e-14)
        for c in (0.02, 0.1, 0.4):
            want = [float(_brute_force_tokens(rates, g)) / (g * c + 1) for g in range(8)]
            np.testing.assert_allclose(pt.speedups(rates, c), want, rtol=1e-14)
            assert int(pt.optimal_lookahead(rates, c)) == int(np.argmax(want))
            assert float(pt.optimal_speedup(rates, c)) == pytest.approx(max(want), rel=1e-14)
            n, m = 7e7, 7e9
            assert float(pt.tokens_per_flop(rates, 3, n, m)) == pytest.approx(
                float(_brute_force_tokens(rates, 3)) / (2 * (3 * n + m)), rel=1e-14)


def test_simulated_tokens_per_iteration_match():
    """Draft position i accepted with probability r_i after i - 1 acceptances: mean K + 1."""
    rates = np.array([0.95, 0.8, 0.6, 0.5, 0.3])
    rng = np.random.default_rng(1)
    ok = rng.random((200_000, rates.size)) < rates
    tokens = np.cumprod(ok, axis=1).sum(1) + 1
    se = tokens.std() / np.sqrt(tokens.size)
    assert abs(float(pt.expected_tokens(rates)) - tokens.mean()) < 4 * se


@pytest.mark.slow
def test_jit_vmap_and_grad(x64):
    rates = jnp.asarray([[0.9, 0.8, 0.0, 0.6], [0.7, 0.7, 0.7, 0.7]])
    gamma = jnp.asarray([4, 2])
    eager = pt.expected_tokens(rates, gamma)
    np.testing.assert_allclose(jax.jit(pt.expected_tokens)(rates, gamma), eager, rtol=1e-15)
    np.testing.assert_allclose(jax.vmap(pt.expected_tokens)(rates, gamma), eager, rtol=1e-15)
    np.testing.assert_array_equal(jax.jit(pt.optimal_lookahead)(rates, 0.1),
                                  pt.optimal_lookahead(rates, 0.1))
    # dE/dr_j = sum_{k = j..gamma} prod_{i <= k, i != j} r_i, finite at a zero rate.
    for r, g in zip(np.asarray(rates), (4, 2)):
        grad = np.asarray(jax.grad(pt.expected_tokens)(jnp.asarray(r), g))
        want = [sum(np.prod(np.delete(r[:k], j)) for k in range(j + 1, g + 1))
                for j in range(r.size)]
        np.testing.assert_allclose(grad, want, rtol=1e-14, atol=1e-15)
    # The speedup's derivative in c against central differences.
    f = lambda c: pt.speedup(rates[1], 3, c)
    h = 1e-6
    assert float(jax.grad(f)(0.1)) == pytest.approx(
        float((f(0.1 + h) - f(0.1 - h)) / (2 * h)), rel=1e-7)


@pytest.mark.parametrize("call, message", [
    (lambda: pt.expected_tokens([0.5, 1.2]), r"rates must lie in \[0, 1\], got .*1\.2.* at index \(1,\)"),
    (lambda: pt.expected_tokens([0.5, np.nan]), "rates must be finite"),
    (lambda: pt.expected_tokens([-0.1]), r"rates must lie in \[0, 1\]"),
    (lambda: pt.expected_tokens(0.5), "at least one draft position"),
    (lambda: pt.expected_tokens([0.5, 0.5], 3), r"lookahead must be an integer in \[0, 2\]"),
    (lambda: pt.expected_tokens([0.5, 0.5], 1.5), r"lookahead must be an integer"),
    (lambda: pt.speedup([0.5], 1, 0.0), "cost_ratio must be > 0"),
    (lambda: pt.optimal_lookahead([0.5], -1.0), "cost_ratio must be > 0"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------
# `sdsl plan --position-rates`.


def _plan(run_cli, *argv):
    return run_cli("plan", *argv)


def test_plan_from_a_measure_summary(tmp_path, run_cli):
    rates = [0.92, 0.8, 0.71, 0.6, 0.55, None]  # position 6 never reached
    summary = {"draft_model": "d", "target_model": "t", "lookahead": 6, "acceptance": 0.78,
               "position_rates": rates, "cost_ratio": 0.04}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    code, out, err = _plan(run_cli, "--position-rates", path, "--json")
    assert code == 0, err
    assert "positions 6..6 were never reached" in err
    plan = json.loads(out)
    r = np.array(rates[:5])
    # By hand: E(g) = 1 + sum_{k<=g} prod_{i<=k} r_i, S = E / (g c + 1), best g in 0..5.
    s = [(1 + sum(np.prod(r[:k]) for k in range(1, g + 1))) / (g * 0.04 + 1) for g in range(6)]
    assert plan["lookahead"] == int(np.argmax(s)) and plan["speedup"] == pytest.approx(max(s))
    np.testing.assert_allclose(plan["speedups"], s, rtol=1e-12)
    assert plan["cost_ratio"] == 0.04 and "measured" in plan["cost_ratio_source"]
    iid = float(throughput.optimal_integer_lookahead(0.78, 0.04))
    assert plan["iid_acceptance"] == 0.78 and plan["iid_lookahead"] == iid
    assert plan["iid_speedup"] == pytest.approx(float(throughput.speedup(0.78, iid, 0.04)))
    # --cost-ratio overrides the file's; the text puts both answers side by side.
    code, out, _ = _plan(run_cli, "--position-rates", path, "--cost-ratio", 0.3)
    assert code == 0 and "cost ratio c = 0.3 (--cost-ratio)" in out
    assert "measured rates" in out and "i.i.d. law, alpha = 0.7800" in out
    assert "optimal lookahead" in out and "speedup" in out


def test_plan_from_a_plain_list(tmp_path, run_cli):
    path = tmp_path / "rates.json"
    path.write_text("[0.9, 0.9, 0.9]")
    code, out, err = _plan(run_cli, "--position-rates", path, "--cost-ratio", 0.01, "--json")
    assert code == 0, err
    plan = json.loads(out)
    # Equal rates: the pooled alpha is that rate, and the best lookahead is the last measured.
    assert plan["iid_acceptance"] == pytest.approx(0.9)
    assert plan["lookahead"] == 3 and plan["at_bound"]
    code, out, _ = _plan(run_cli, "--position-rates", path, "--cost-ratio", 0.01)
    assert "measure at a longer lookahead" in out


@pytest.mark.parametrize("content, argv, message", [
    ("[0.5, 1.5]", ["--cost-ratio", "0.1"], "rate at draft position 2 must be a number in [0, 1]"),
    ("[0.5]", [], "give --cost-ratio C"),
    ("[0.5]", ["--cost-ratio", "0"], "--cost-ratio: must be a finite number > 0"),
    ("[null]", ["--cost-ratio", "0.1"], "no draft position has a rate"),
    ('{"acceptance": 0.5}', ["--cost-ratio", "0.1"], "has no 'position_rates'"),
    ('{"a": 1}\n{"b": 2}\n', ["--cost-ratio", "0.1"], "is not one JSON value"),
    ("[0.5]", ["--cost-ratio", "0.1", "--target-params", "7B"], "drop --target-params"),
])
def test_plan_mistakes_are_one_line(tmp_path, run_cli, content, argv, message):
    path = tmp_path / "rates.json"
    path.write_text(content)
    code, out, err = _plan(run_cli, "--position-rates", path, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and out == "", err


def test_cost_ratio_needs_position_rates(run_cli):
    code, _, err = _plan(run_cli, "--target-params", "7B", "--target-tokens", "2T",
                          "--cost-ratio", "0.1")
    assert code == 2 and "--cost-ratio goes with --position-rates" in err
