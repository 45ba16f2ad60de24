"""The wall-clock planner against independent brute force, on its limits and in between."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import sdsl_jax as sd
from sdsl_jax.planning import hardware as hw
from sdsl_jax.planning import wallclock as lp

PRE, ACC = sd.BESIROGLU_2024, sd.SDSL_2026
TARGETS = np.array([7e9, 70e9, 405e9])
TOKENS = 15e12
H100 = hw.hardware_preset("H100")


def _loss(n, tokens):
    return PRE.irreducible_loss + PRE.param_coeff / n**PRE.param_exponent + PRE.data_coeff / tokens**PRE.data_exponent


def _acceptance(n, m):
    raw = ACC.draft_coeff * np.exp(_loss(n, TOKENS)) + ACC.target_coeff * np.exp(_loss(m, TOKENS)) + ACC.intercept
    return min(max(raw, 0.0), sd.MAX_ACCEPTANCE)


def _best_speedup_general(a, seconds_draft, seconds_target):
    """max over gamma of E t_target(1) / (gamma t_draft + t_target(gamma + 1)), bounded search."""
    t1 = seconds_target(1.0)

    def neg(u):
        g = np.expm1(u)
        return -(1 - a ** (g + 1)) / (1 - a) * t1 / (g * seconds_draft + seconds_target(g + 1))

    result = minimize_scalar(neg, bounds=(0.0, np.log(1e4)), method="bounded", options={"xatol": 1e-11})
    return max(-result.fun, 1.0)


COMPUTE_BOUND = H100.replace(bandwidth=jnp.inf, overhead_seconds=0.0)


def _compute_bound_one_step(m):
    return lp.optimal_draft_size_wallclock(m, TOKENS, TOKENS, hardware=COMPUTE_BOUND,
                                           workload=hw.Workload(context=0.0), verify="one_step")


def _stack(plans):
    return jax.tree_util.tree_map(lambda *leaves: np.stack([np.asarray(v) for v in leaves]), *plans)


@pytest.fixture(scope="module")
def plans():
    """Each plan at the three targets, one scalar float64 call per target.

    Compiling a planner costs seconds and a call microseconds, so every scalar
    call of one planner (here, in the finite differences and in the CLI tests)
    shares one compilation; the hardware and workload are runtime values.
    """
    with jax.enable_x64(True):
        def wall(hardware, workload, **kwargs):
            return _stack([lp.optimal_draft_size_wallclock(m, TOKENS, TOKENS, hardware=hardware,
                                                           workload=workload, **kwargs) for m in TARGETS])

        # Forward mode through the compute-bound limit, with the plan itself as
        # its primal: one compilation for both.
        one_step = [jax.jvp(_compute_bound_one_step, (m,), (m,)) for m in TARGETS]
        memory_bound = H100.replace(peak_flops=jnp.inf, overhead_seconds=0.0)
        return {
            "flop": _stack([sd.optimal_draft_size(m, TOKENS, TOKENS) for m in TARGETS]),
            "general": wall(H100, hw.Workload(batch_size=8.0, context=2048.0)),
            "compute_one_step": _stack([plan for plan, _ in one_step]),
            # d/dlog M of every field, from jax.jvp with tangent M.
            "compute_one_step_per_log_target": _stack([tangent for _, tangent in one_step]),
            "compute_scored": wall(COMPUTE_BOUND, hw.Workload(context=0.0)),
            "memory": wall(memory_bound, hw.Workload(batch_size=4.0, context=4096.0), draft_precision="fp8"),
            "memory_plain": wall(memory_bound, hw.Workload(batch_size=4.0, context=0.0)),
        }


@pytest.mark.slow
def test_compute_bound_one_step_reproduces_the_flop_law(plans):
    flop, wall = plans["flop"], plans["compute_one_step"]
    np.testing.assert_allclose(wall["draft_params"], flop["draft_params"], rtol=1e-10)
    np.testing.assert_allclose(wall["lookahead"], flop["lookahead"], rtol=1e-10)
    np.testing.assert_allclose(wall["speedup"], flop["speedup"], rtol=1e-12)
    np.testing.assert_allclose(wall["cost_ratio"], flop["cost_ratio"], rtol=1e-10)
    np.testing.assert_array_equal(wall["integer_lookahead"], flop["integer_lookahead"])


@pytest.mark.slow
def test_compute_bound_scored_never_pays(plans):
    wall = plans["compute_scored"]
    assert not wall["pays"].any() and np.all(wall["speedup"] == 1.0) and np.all(wall["draft_params"] == 0)
    # Independently: each drafted token costs a draft step plus a target position,
    # so E / (gamma (c + 1) + 1) < 1 for every gamma > 0.
    for m in TARGETS:
        n = 1e-3 * m
        a, c = _acceptance(n, m), n / m
        gammas = np.linspace(0.01, 50, 500)
        assert np.all((1 - a ** (gammas + 1)) / (1 - a) / (gammas * (c + 1) + 1) < 1)


def _memory_law_grid(m, grid, draft_bpp, batch, context, numpy_step_time, speedup_reference):
    """S* at each log N, c the bytes ratio: conftest's brute-force S* (brentq on dS/dgamma)."""
    # numpy_step_time takes the fields under their file names (overhead in seconds: "overhead").
    acc = dict(hw.hardware_record(H100), peak_flops=np.inf, overhead=0.0)
    seconds = lambda n, bpp: numpy_step_time(acc, n, 1.0, bpp, batch, context)
    return np.array([speedup_reference.speedup(_acceptance(np.exp(s), m),
                                               seconds(np.exp(s), draft_bpp) / seconds(m, 2.0))
                     for s in grid])


@pytest.mark.slow
def test_bandwidth_bound_is_the_memory_law(plans, numpy_step_time, speedup_reference):
    wall = plans["memory"]
    for i, m in enumerate(TARGETS):
        grid = np.log(m) + np.linspace(np.log(1e-5), np.log(0.2), 2001)
        brute = _memory_law_grid(m, grid, 1.0, 4.0, 4096.0, numpy_step_time, speedup_reference)
        best = int(np.argmax(brute))
        ours = _memory_law_grid(m, [np.log(wall["draft_params"][i])], 1.0, 4.0, 4096.0,
                                numpy_step_time, speedup_reference)[0]
        assert ours >= brute[best] * (1 - 1e-12)
        assert abs(np.log(wall["draft_params"][i]) - grid[best]) <= grid[1] - grid[0]
        np.testing.assert_allclose(wall["speedup"][i], ours, rtol=1e-9)
    # With equal precisions and no KV cache the bytes ratio is N / M: the FLOP law's N*.
    np.testing.assert_allclose(plans["memory_plain"]["draft_params"], plans["flop"]["draft_params"], rtol=1e-10)


@pytest.mark.slow
def test_general_roofline_matches_brute_force(plans, numpy_step_time):
    wall = plans["general"]
    acc = hw.hardware_record(H100)
    step = lambda n, k: numpy_step_time(acc, n, k, 2.0, 8.0, 2048.0)

    def speedup_at(s, m):
        n = np.exp(s)
        return _best_speedup_general(_acceptance(n, m), step(n, 1.0), lambda k: step(m, k))

    for i, m in enumerate(TARGETS):
        grid = np.log(m) + np.linspace(np.log(1e-4), np.log(0.05), 401)
        brute = np.array([speedup_at(s, m) for s in grid])
        best = int(np.argmax(brute))
        ours = speedup_at(np.log(wall["draft_params"][i]), m)
        assert ours >= brute[best] * (1 - 1e-9)
        assert abs(np.log(wall["draft_params"][i]) - grid[best]) <= grid[1] - grid[0]
        np.testing.assert_allclose(wall["speedup"][i], ours, rtol=1e-8)
        # Reported times and rates are the model's.
        np.testing.assert_allclose(wall["draft_step_seconds"][i], step(wall["draft_params"][i], 1.0), rtol=1e-12)
        np.testing.assert_allclose(wall["target_step_seconds"][i], step(m, 1.0), rtol=1e-12)
        np.testing.assert_allclose(wall["tokens_per_second"][i], 8 * ours / step(m, 1.0), rtol=1e-8)


@pytest.mark.slow
def test_integer_lookahead_is_the_best_integer(plans, numpy_step_time):
    wall = plans["general"]
    acc = hw.hardware_record(H100)
    step = lambda n, k: numpy_step_time(acc, n, k, 2.0, 8.0, 2048.0)
    for i, m in enumerate(TARGETS):
        n, a = wall["draft_params"][i], wall["acceptance"][i]
        rate = [(1 - a ** (g + 1)) / (1 - a) / (g * step(n, 1.0) + step(m, g + 1.0)) for g in range(60)]
        assert wall["integer_lookahead"][i] == int(np.argmax(rate))
        np.testing.assert_allclose(wall["integer_speedup"][i], max(rate) * step(m, 1.0), rtol=1e-10)


def test_lookahead_solver_matches_bounded_search(x64):
    rng = np.random.default_rng(3)
    n = 300
    problem = dict(acceptance=rng.uniform(0.3, 0.995, n), draft_seconds=10 ** rng.uniform(-5, -2, n),
                   target_compute=10 ** rng.uniform(-5, -1, n), target_memory=10 ** rng.uniform(-3, -1, n),
                   overhead_seconds=np.where(rng.uniform(size=n) < 0.3, 0.0, 10 ** rng.uniform(-5, -2, n)),
                   sharpness=rng.choice([2.0, 8.0, 64.0], n))
    it = lp._Iteration(**{k: jnp.asarray(v) for k, v in problem.items()})
    gamma = np.asarray(jax.jit(lp._optimal_lookahead, static_argnums=0)(True, it))
    for i in range(n):
        a, td = problem["acceptance"][i], problem["draft_seconds"][i]
        ca, cb, o, p = (problem[k][i] for k in ("target_compute", "target_memory", "overhead_seconds", "sharpness"))
        target = lambda k: ((ca * k) ** p + cb**p) ** (1 / p) + o
        rate = lambda g: (1 - a ** (g + 1)) / (1 - a) * target(1.0) / (g * td + target(g + 1))
        assert rate(gamma[i]) >= _best_speedup_general(a, td, target) * (1 - 1e-12), i


def _wall_outputs(m, batch_size, bandwidth, overhead_seconds):
    hardware = H100.replace(bandwidth=bandwidth, overhead_seconds=overhead_seconds)
    p = lp.optimal_draft_size_wallclock(m, TOKENS, TOKENS, hardware=hardware,
                                        workload=hw.Workload(batch_size=batch_size))
    return jnp.stack([p.draft_params, p.tokens_per_second, p.lookahead])


@pytest.mark.slow
def test_gradients_match_finite_differences(x64):
    # Reverse mode under jit: one compilation (eagerly, jax compiles the
    # linearisation's two halves separately, which costs a third more).
    args = (70e9, 8.0, 3.35e12, 3e-4)
    jac = jax.jit(jax.jacrev(_wall_outputs, argnums=(0, 1, 2, 3)))(*args)
    for i in range(4):
        # Central differences on scalar calls: these share the plans fixture's compilation.
        h = 1e-4 * args[i]
        up, down = list(args), list(args)
        up[i] += h
        down[i] -= h
        fd = (np.asarray(_wall_outputs(*up)) - np.asarray(_wall_outputs(*down))) / (2 * h)
        np.testing.assert_allclose(np.asarray(jac[i]), fd, rtol=1e-6, err_msg=str(i))


@pytest.mark.slow
def test_compute_bound_gradients_match_the_flop_law(x64, plans, flop_jacobian):
    # Forward mode through the limit (jax.jvp in the plans fixture): a bandwidth
    # of inf must not turn into inf * 0. The FLOP law's dN*/dM is reverse mode
    # (test_planner's Jacobian, whose compilation that file shares).
    wall = plans["compute_one_step_per_log_target"]["draft_params"]
    flop = [m * float(flop_jacobian(m, TOKENS, TOKENS)[0][0]) for m in TARGETS]
    np.testing.assert_allclose(wall, flop, rtol=1e-8)


@pytest.mark.slow
def test_evaluate_agrees_with_the_plan_at_its_own_optimum(x64, plans):
    wall = plans["general"]
    # Scalar calls, one compilation shared with the CLI test below.
    evaluate = lambda draft: _stack([lp.evaluate_draft_wallclock(
        n, m, TOKENS, TOKENS, hardware=H100, workload=hw.Workload(batch_size=8.0, context=2048.0))
        for n, m in zip(draft, TARGETS)])
    again = evaluate(wall["draft_params"])
    for key in ("speedup", "lookahead", "tokens_per_second", "acceptance", "integer_lookahead"):
        np.testing.assert_allclose(again[key], wall[key], rtol=1e-12, err_msg=key)
    # The FLOP-optimal draft is no faster on this hardware than the wall-clock optimum.
    flop_on_hw = evaluate(plans["flop"]["draft_params"])
    assert np.all(flop_on_hw["speedup"] <= wall["speedup"] * (1 + 1e-12))


@pytest.mark.parametrize("kwargs,match", [
    (dict(verify="twice"), "verify"),
    (dict(hardware="B200"), "B200"),
    (dict(draft_precision="fp7"), "draft_precision"),
    (dict(target_precision=-2.0), "target_precision"),
    (dict(workload=hw.Workload(batch_size=-1.0)), "workload.batch_size"),
    (dict(target_params=0.0), "target_params"),
    (dict(method="newton"), "method"),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(target_params=70e9, draft_tokens=TOKENS, target_tokens=TOKENS, hardware="H100")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        lp.optimal_draft_size_wallclock(**args)


@pytest.mark.slow
def test_cli_reports_both_optima(run_cli, x64):
    argv = ("plan", "--target-params", "70B", "--target-tokens", "15T", "--hardware", "H100", "--batch", "8")
    code, out, err = run_cli(*argv, "--json")
    assert code == 0, err
    record = json.loads(out)
    wall = lp.optimal_draft_size_wallclock(70e9, 15e12, 15e12, hardware="H100", workload=hw.Workload(batch_size=8.0))
    flop = sd.optimal_draft_size(70e9, 15e12, 15e12)
    assert record["draft_params"] == pytest.approx(float(flop.draft_params), rel=1e-12)
    assert record["wallclock_optimal"]["draft_params"] == pytest.approx(float(wall.draft_params), rel=1e-12)
    assert record["wallclock_optimal"]["integer_lookahead"] == float(wall.integer_lookahead)
    assert record["flop_optimal_on_hardware"]["integer_speedup"] <= record["wallclock_optimal"]["integer_speedup"]
    assert record["hardware"]["name"] == "H100-SXM" and record["hardware"]["batch"] == 8
    code, out, err = run_cli(*argv)
    assert code == 0, err
    assert "FLOP-optimal" in out and "wall-clock-optimal" in out
    line = next(row for row in out.splitlines() if row.strip().startswith("draft size N*"))
    assert sd.format_count(float(flop.draft_params)) in line and sd.format_count(float(wall.draft_params)) in line


@pytest.mark.slow
def test_cli_calibrates_from_step_times(run_cli, x64, tmp_path, numpy_step_time):
    truth = hw.hardware_record(H100.replace(bandwidth_efficiency=0.6, overhead_seconds=1e-3))
    # Step times from test_hardware's numpy transcription of the roofline (bf16, batch 1, context 2048).
    step = lambda params, tokens: float(numpy_step_time(truth, params, tokens, 2.0, 1.0, 2048.0))
    rows = []
    for n, m in ((1.25e8, 7e9), (3.5e8, 7e9), (1.3e9, 13e9)):
        for k in (3, 5):
            rows.append(dict(draft_params=n, target_params=m, lookahead=k, batch=1, context=2048,
                             draft_step_seconds=step(n, 1.0), target_step_seconds=step(m, k + 1.0)))
    path = tmp_path / "steps.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    code, out, err = run_cli("plan", "--target-params", "70B", "--target-tokens", "15T",
                             "--hardware", "H100", "--step-times", str(path), "--json")
    assert code == 0, err
    info = json.loads(out)["hardware"]
    assert info["bandwidth_efficiency"] == pytest.approx(0.6, rel=1e-4)
    assert info["overhead"] == pytest.approx(1e-3, rel=1e-3)
    assert info["calibration_max_relative_error"] < 1e-4


@pytest.mark.parametrize("extra,match", [
    (("--hardware", "B200"), "--hardware: unknown hardware preset 'B200'"),
    (("--hardware", "H100", "--batch", "0"), "--batch"),
    (("--hardware", "H100", "--draft-precision", "fp7"), "--draft-precision"),
    (("--hardware", "H100", "--step-times", "/nonexistent.jsonl"), "--step-times: cannot read"),
])
def test_cli_bad_hardware_options_are_named(run_cli, extra, match):
    code, _, err = run_cli("plan", "--target-params", "70B", "--target-tokens", "15T", *extra)
    assert code == 2 and match in err
