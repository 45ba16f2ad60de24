"""`sdsl fit` and `sdsl plan --laws` end to end, on a small synthetic measurement set."""

import json

import numpy as np
import scipy.stats
import pytest

from sdsl_jax import cli
from sdsl_jax.fitting import report as fit_report
from sdsl_jax.fitting.laws import COEFFICIENTS, load_laws
from sdsl_jax.fitting.synthetic import synthetic_measurements
from sdsl_jax.estimation.measurements import write_measurements


# The design of tests/fitting/test_fitting.py: the same shapes, so that in one pytest
# run the fits compile once for both files.
DESIGN = dict(num_targets=12, num_drafts=12, perplexity_noise=0.003, tokens_range=(2e9, 2e13),
              draft_range=(5e7, 3e9))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One `sdsl fit --json` run (fits compile once per shape: share it)."""
    folder = tmp_path_factory.mktemp("fit")
    path = folder / "measurements.jsonl"
    write_measurements(synthetic_measurements(seed=3, **DESIGN), path)
    return folder, path


def _run(capsys, argv):
    # (the failed-resamples tests; the others take conftest's run_cli)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_fit_writes_laws_and_reports_intervals(fitted, run_cli):
    folder, path = fitted
    code, out, _ = run_cli(["fit", str(path), "--bootstrap", "50", "--json"])
    assert code == 0
    report = json.loads(out)
    laws_path = folder / "measurements.laws.json"
    assert report["laws_file"] == str(laws_path) and laws_path.exists()
    assert report["measurements"] == 144 and report["targets"] == 12
    coefficients = report["end_to_end"]["coefficients"]
    assert list(coefficients) == list(COEFFICIENTS)
    for name, entry in coefficients.items():
        # Every interval brackets its estimate (log-scale ones included).
        assert entry["delta_low"] <= entry["estimate"] <= entry["delta_high"], name
        assert entry["bootstrap_low"] < entry["bootstrap_high"], name
    # The data were drawn from the paper's plane (A = -0.0067): the fit finds it.
    draft = coefficients["draft_coeff"]
    assert draft["delta_low"] < -0.0067 < draft["delta_high"]
    assert 0.5 < report["end_to_end"]["acceptance_r2"] <= 1
    laws = load_laws(laws_path)
    assert laws.samples.shape == (50, 8) and laws.covariance.shape == (8, 8)
    # The delta intervals are t intervals from the covariance clustered by
    # model (24 models: 23 degrees of freedom); the bootstrap resampled models.
    e2e = report["end_to_end"]
    assert e2e["covariance"] == "cluster" and e2e["covariance_df"] == 23.0
    assert e2e["bootstrap_resampling"] == "models" and float(laws.covariance_df) == 23.0
    se = np.sqrt(np.asarray(laws.covariance, np.float64)[5, 5])
    np.testing.assert_allclose([draft["delta_low"], draft["delta_high"]],
                               draft["estimate"] + np.array([-1, 1]) * scipy.stats.t.ppf(0.975, 23) * se,
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(laws.coefficients),
                               [coefficients[c]["estimate"] for c in COEFFICIENTS], rtol=1e-6)


@pytest.mark.slow
def test_fit_refuses_to_overwrite_and_plan_uses_the_laws(fitted, run_cli):
    folder, path = fitted
    laws_path = folder / "measurements.laws.json"
    if not laws_path.exists():
        pytest.fail("the fit test must run first (module order)")
    code, _, err = run_cli(["fit", str(path)])
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1

    # The default interval is the one whose coverage is checked: delta, for
    # laws whose covariance is clustered by model.
    code, out, _ = run_cli(["plan", "--laws", str(laws_path), "--target-params", "70B",
                            "--target-tokens", "15T", "--json"])
    assert code == 0
    delta = json.loads(out)
    assert delta["interval"] == "delta" and delta["laws"] == str(laws_path)
    assert delta["draft_params_low"] < delta["draft_params"] < delta["draft_params_high"]
    code, out, _ = run_cli(["plan", "--laws", str(laws_path), "--target-params", "70B",
                            "--target-tokens", "15T", "--interval", "bootstrap", "--json"])
    plan = json.loads(out)
    assert plan["interval"] == "bootstrap"
    assert plan["draft_params_low"] < plan["draft_params"] < plan["draft_params_high"]
    assert delta["draft_params"] == plan["draft_params"]
    # Two routes to the uncertainty of N*. The bootstrap resamples draft and
    # target models two-way, which is conservative (each row's own noise is
    # drawn with both its models): about twice the delta interval's width,
    # never narrower.
    width = lambda p: np.log(p["draft_params_high"] / p["draft_params_low"])
    assert 0.25 < width(delta) / width(plan) < 1


# --- resamples whose refit fails (regression: NaN reached the laws file) -----------------

def _strict_json(path):
    """The file's JSON, refusing NaN and infinities (which json.loads accepts by default)."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def failing_resamples(monkeypatch):
    """Make chosen bootstrap resamples fail, whatever the CPU's rounding.

    ``install(diverged, no_hessian)`` wraps the bootstrap so that the
    resamples at ``diverged`` come back with a non-finite coefficient (a refit
    that diverged) and those at ``no_hessian`` with a non-finite Newton
    decrement (a Hessian that could not be formed); it returns a dict that
    receives the resamples and decrements the fit saw. Any resample that
    fails on its own is counted too: the tests compare with what was seen.
    """
    real = fit_report.joint_fit.bootstrap_joint

    def install(diverged=(), no_hessian=()):
        seen = {}

        def bootstrap(*args, **kwargs):
            samples, decrement = (np.array(a) for a in real(*args, **kwargs))
            samples[list(diverged), 2] = np.nan
            decrement[list(no_hessian)] = np.nan
            seen.update(samples=samples, decrement=decrement)
            return samples, decrement

        monkeypatch.setattr(fit_report.joint_fit, "bootstrap_joint", bootstrap)
        return seen

    return install


@pytest.mark.slow
def test_failed_resamples_are_counted_and_left_out(fitted, failing_resamples, capsys):
    folder, path = fitted
    laws_path = folder / "some-failed.laws.json"
    seen = failing_resamples(diverged=(4, 17), no_hessian=(30,))
    code, out, err = _run(capsys, ["fit", str(path), "--bootstrap", "50", "--json",
                                   "--out", str(laws_path)])
    assert code == 0 and "Traceback" not in err
    e2e = json.loads(out, parse_constant=lambda c: pytest.fail(f"stdout holds {c}"))["end_to_end"]
    converged = fit_report.joint_fit.resample_converged(seen["samples"], seen["decrement"])
    assert not converged[[4, 17, 30]].any()
    failed = e2e["bootstrap_failed"]
    assert failed == 50 - converged.sum() and 3 <= failed <= 10
    assert e2e["bootstrap_requested"] == 50 and e2e["bootstrap_resamples"] == 50 - failed
    assert f"bootstrap: {failed} of 50 resamples did not converge; intervals from the {50 - failed}" in err
    document = _strict_json(laws_path)
    samples = np.asarray(document["bootstrap_samples"])
    # The resamples kept are exactly those that converged, in order.
    np.testing.assert_allclose(samples, seen["samples"][converged], rtol=1e-12)
    # The intervals are the percentiles of the resamples kept, and only of those.
    for i, name in enumerate(COEFFICIENTS):
        entry = e2e["coefficients"][name]
        np.testing.assert_allclose([entry["bootstrap_low"], entry["bootstrap_high"]],
                                   np.percentile(samples[:, i], [2.5, 97.5]), rtol=1e-12)
    code, out, _ = _run(capsys, ["fit", str(path), "--bootstrap", "50", "--overwrite",
                                 "--out", str(laws_path)])
    assert code == 0 and f"bootstrap: {failed} of 50 resamples did not converge" in out
    # The table says which intervals it prints.
    assert "delta (clustered, t23)" in out and "bootstrap over models" in out


@pytest.mark.slow
def test_too_many_failed_resamples_leave_no_bootstrap_intervals(fitted, failing_resamples, capsys):
    # 20 of 50 fail: fewer than the 80% the intervals need converged.
    folder, path = fitted
    laws_path = folder / "many-failed.laws.json"
    failing_resamples(diverged=range(0, 50, 5), no_hessian=range(1, 50, 5))
    code, out, err = _run(capsys, ["fit", str(path), "--bootstrap", "50", "--out", str(laws_path)])
    assert code == 0 and "Traceback" not in err
    assert "resamples did not converge, too many for intervals" in out
    assert "bootstrap intervals unavailable" in out
    document = _strict_json(laws_path)
    e2e = document["summary"]["end_to_end"]
    assert e2e["bootstrap_failed"] >= 20 and e2e["bootstrap_resamples"] == 0
    assert document["bootstrap_samples"] is None
    for name, entry in e2e["coefficients"].items():
        assert entry["bootstrap_low"] is None and entry["bootstrap_high"] is None
        assert entry["delta_low"] <= entry["estimate"] <= entry["delta_high"], name
    # The planner falls back on the delta method.
    code, out, _ = _run(capsys, ["plan", "--laws", str(laws_path),
                                 "--target-params", "70B", "--target-tokens", "15T", "--json"])
    assert code == 0 and json.loads(out)["interval"] == "delta"


def test_select_resamples_drops_failures_and_needs_most_to_converge():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(20, 8))
    decrement = np.full(20, 1e-12)
    samples[3, 2] = np.nan                 # a refit that diverged
    decrement[5] = np.nan                  # a Hessian that could not be formed
    decrement[7] = 10 * fit_report.joint_fit.RESAMPLE_TOLERANCE  # stopped short of its optimum
    kept, converged = fit_report.select_resamples(samples, decrement)
    assert converged == 17
    np.testing.assert_array_equal(kept, np.delete(samples, [3, 5, 7], axis=0))
    # 17 of 20 is above the 80% needed; 15 of 20 is not.
    decrement[[9, 11]] = np.inf
    kept, converged = fit_report.select_resamples(samples, decrement)
    assert kept is None and converged == 15
    summary = fit_report.bootstrap_summary({"bootstrap_requested": 20, "bootstrap_failed": 5,
                                            "bootstrap_resamples": 0})
    assert summary.startswith("bootstrap: 5 of 20 resamples did not converge") and "unavailable" in summary


# Real rows: `sdsl train --family tiny --steps 40` (and --steps 80 for the second
# 10k), `sdsl measure ... --rows`: three drafts, one target, four distinct models.
REAL_ROWS = """draft_model,target_model,draft_params,target_params,draft_tokens,target_tokens,\
draft_perplexity,target_perplexity,lookahead,accepted,trials
10k,100k,10336,95616,20480,20480,50.3576,21.3247,2,105,222
10k,100k,10336,95616,20480,20480,50.3576,21.3247,4,127,245
30k,100k,32960,95616,20480,20480,30.1607,21.3247,2,134,196
30k,100k,32960,95616,20480,20480,30.1607,21.3247,4,168,234
10k,100k,10336,95616,40960,20480,30.5979,21.3247,3,118,161
"""


@pytest.mark.parametrize("lines,needle", [
    (6, "4 loss points (distinct models) cannot fix them: measure pairs among at least 5 models"),
    (4, "3 measurements cannot determine the acceptance plane's 3 coefficients"),
])
def test_a_handful_of_real_rows_is_refused_in_one_line(tmp_path, run_cli, lines, needle):
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(REAL_ROWS.splitlines()[:lines]) + "\n")
    code, _, err = run_cli(["fit", str(path)])
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "rows.laws.json").exists()


@pytest.mark.parametrize("argv,needle", [
    (["fit", "/nonexistent/m.csv"], "cannot read"),
    (["fit", "M", "--bootstrap", "-1"], "--bootstrap"),
    (["fit", "M", "--confidence", "1.5"], "--confidence"),
    (["plan", "--laws", "/nonexistent/laws.json", "--target-params", "70B", "--target-tokens", "15T"],
     "cannot read"),
    (["plan", "--target-params", "70B", "--target-tokens", "15T", "--interval", "delta"], "--laws"),
])
def test_bad_fit_and_laws_input_is_one_line(run_cli, argv, needle):
    code, _, err = run_cli(argv)
    assert code == 2 and needle in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,needle", [
    (["--bootstrap", "100001"], "--bootstrap: must lie in [0, 100000], got 100001"),
    (["--seed", "-1"], "--seed: must lie in [0, 2^63 - 1], got -1"),
    (["--seed", str(2**64)], "--seed"),
])
def test_bootstrap_and_seed_outside_their_range_are_one_line(tmp_path, run_cli, argv, needle):
    # 10^9 resamples would run for days and write gigabytes of samples; a seed
    # past 64 bits was an OverflowError traceback after the fit.
    path = tmp_path / "m.csv"
    path.write_text(REAL_ROWS)
    code, out, err = run_cli(["fit", str(path), *argv])
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_interval_weighting_without_intervals_names_the_option_and_the_file(tmp_path, run_cli):
    path = tmp_path / "m.csv"
    path.write_text("draft_params,target_params,draft_tokens,target_tokens,draft_perplexity,"
                    "target_perplexity,lookahead,acceptance\n"
                    "125M,7B,1T,2T,20,8,4,0.6\n350M,7B,1T,2T,15,8,4,0.65\n"
                    "125M,13B,1T,2T,20,7,4,0.62\n350M,13B,1T,2T,15,7,4,0.66\n")
    code, out, err = run_cli(["fit", str(path), "--weighting", "interval"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "m.csv" in err and "--weighting interval needs an interval" in err
    assert "weighting=" not in err


def test_bad_measurement_file_names_row_and_column(tmp_path, run_cli):
    path = tmp_path / "m.csv"
    path.write_text("draft_params,target_params,draft_tokens,target_tokens,draft_perplexity,"
                    "target_perplexity,lookahead,acceptance\n"
                    "125M,7B,1T,2T,20,8,4,0.6\n125M,7B,1T,2T,20,8,4,1.7\n")
    code, _, err = run_cli(["fit", str(path)])
    assert code == 2 and "m.csv" in err and "row 2" in err and "acceptance" in err
    assert err.count("\n") == 1


def test_bad_laws_file_is_named(tmp_path, run_cli):
    path = tmp_path / "laws.json"
    path.write_text(json.dumps({"pretraining_law": {"irreducible_loss": 1.8}, "acceptance_law": {}}))
    code, _, err = run_cli(["plan", "--laws", str(path), "--target-params", "70B",
                            "--target-tokens", "15T"])
    assert code == 2 and "laws.json" in err and "param_coeff" in err


# --- --out is checked before the measurements are read ------------------------------------

@pytest.mark.parametrize("out,needle", [
    ("m.csv", "is the input"),              # even with --overwrite: it would replace the data
    ("missing/laws.json", "does not exist"),
    (".", "is a folder"),
])
def test_fit_out_is_refused_before_anything_is_read_or_written(tmp_path, run_cli, out, needle):
    path = tmp_path / "m.csv"
    path.write_text(REAL_ROWS)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run_cli(["fit", str(path), "--out", str(tmp_path / out), "--overwrite"])
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "--out" in err and needle in err
    assert path.read_text() == REAL_ROWS and sorted(p.name for p in tmp_path.iterdir()) == before


# --- data that cannot determine a coefficient: never "0 +- 0" ------------------------------

@pytest.fixture(scope="module")
def one_target(tmp_path_factory):
    """One target, eight drafts: B (the target coefficient) cannot be told from C."""
    folder = tmp_path_factory.mktemp("one-target")
    path = folder / "one-target.csv"
    write_measurements(synthetic_measurements(seed=5, num_targets=1, num_drafts=8), path)
    return folder, path


@pytest.mark.slow
def test_one_target_reports_b_as_undetermined_and_writes_no_covariance(one_target, run_cli):
    folder, path = one_target
    laws_path = folder / "one-target.laws.json"
    code, out, err = run_cli(["fit", str(path), "--bootstrap", "0"])
    assert code == 0, err
    reason = "undetermined (one target perplexity: measure more targets)"
    assert f"B (target)  {reason}" in out and f"target_coeff      {reason}" in out
    # The estimate and every interval of the other coefficients are still there.
    assert "draft_coeff" in out and "[0, 0]" not in out and " 0  +- 0 " not in out
    document = _strict_json(laws_path)
    assert document["covariance"] is None and document["bootstrap_samples"] is None
    e2e = document["summary"]["end_to_end"]
    assert e2e["undetermined"] == {"target_coeff": fit_report.ONE_TARGET}
    assert set(e2e["coefficients"]["target_coeff"].values()) == {None}
    assert e2e["coefficients"]["draft_coeff"]["delta_low"] < e2e["coefficients"]["draft_coeff"]["delta_high"]

    # --json: null with the reason; the bootstrap's resamples, which hold B at 0
    # too, give the other coefficients intervals but are not written to the laws.
    code, out, err = run_cli(["fit", str(path), "--bootstrap", "5", "--json", "--overwrite"])
    assert code == 0, err
    report = json.loads(out, parse_constant=lambda c: pytest.fail(f"stdout holds {c}"))
    plane = report["acceptance_plane"]
    assert plane["target_coeff"] is None and plane["standard_errors"][1] is None
    assert plane["undetermined"] == {"target_coeff": fit_report.ONE_TARGET}
    assert plane["standard_errors"][0] > 0
    assert set(report["end_to_end"]["coefficients"]["target_coeff"].values()) == {None}
    assert _strict_json(laws_path)["bootstrap_samples"] is None

    # `sdsl plan --laws`: the point estimate and a note, no interval.
    argv = ["plan", "--laws", str(laws_path), "--target-params", "7B", "--target-tokens", "1T"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert "interval                    none: the fit left target_coeff undetermined" in out
    assert "measure more targets" in out and "+-" not in out
    code, out, _ = run_cli(argv + ["--json"])
    record = json.loads(out)
    assert record["undetermined"] == {"target_coeff": fit_report.ONE_TARGET}
    assert "draft_params_low" not in record and record["draft_params"] > 0
    for interval in ("delta", "bootstrap"):
        code, out, err = run_cli(argv + ["--interval", interval])
        assert code == 2 and out == "" and err.count("\n") == 1
        assert f"--interval {interval}" in err and "target_coeff undetermined" in err


def test_one_acceptance_everywhere_is_refused_in_one_line(tmp_path, run_cli):
    # Every draft accepted at every position (a model drafting for itself):
    # the fit printed A = 2e-18 and an interval of +-4.5e-17 on the draft coefficient.
    measurements = synthetic_measurements(seed=5, num_targets=3, num_drafts=3)
    columns = dict(measurements.columns, accepted=measurements.columns["trials"])
    path = tmp_path / "all-accepted.csv"
    write_measurements(type(measurements).from_columns(columns, source="test"), path)
    code, out, err = run_cli(["fit", str(path)])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "all-accepted.csv" in err and "same acceptance (1)" in err
    assert not (tmp_path / "all-accepted.laws.json").exists()


def test_one_draft_perplexity_is_refused_in_one_line(tmp_path, run_cli):
    # A single draft perplexity leaves A undetermined: refused before any fit.
    path = tmp_path / "one-draft.csv"
    measurements = synthetic_measurements(seed=5, num_targets=8, num_drafts=1)
    write_measurements(measurements, path)
    code, out, err = run_cli(["fit", str(path)])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "same draft perplexity" in err and "measure more than one draft" in err
    assert not (tmp_path / "one-draft.laws.json").exists()


@pytest.mark.slow
def test_five_models_leave_the_pretraining_uncertainty_undetermined(tmp_path, run_cli):
    # Five models, five coefficients: the loss points are fitted exactly, the
    # Hessian is singular, and the old table printed intervals from its
    # pseudo-inverse. The plane, fitted to the acceptances, keeps its intervals.
    path = tmp_path / "five.csv"
    write_measurements(synthetic_measurements(seed=1, num_targets=2, num_drafts=3), path)
    code, out, err = run_cli(["fit", str(path), "--bootstrap", "0", "--json"])
    assert code == 0, err
    e2e = json.loads(out)["end_to_end"]
    assert not e2e["identifiable"]
    assert e2e["undetermined"] == dict.fromkeys(COEFFICIENTS[:5], fit_report.EXACT)
    for name in COEFFICIENTS[:5]:
        assert set(e2e["coefficients"][name].values()) == {None}
    for name in COEFFICIENTS[5:]:
        entry = e2e["coefficients"][name]
        assert entry["delta_low"] < entry["estimate"] < entry["delta_high"]
    assert _strict_json(tmp_path / "five.laws.json")["covariance"] is None
