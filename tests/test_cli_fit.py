"""`sdsl fit` and `sdsl plan --laws` end to end, on a small synthetic measurement set."""

import json

import numpy as np
import pytest

from sdsl_jax import cli
from sdsl_jax.fitting.laws import COEFFICIENTS, load_laws
from sdsl_jax.fitting.synthetic import synthetic_measurements
from sdsl_jax.measurements import write_measurements


# The design of tests/test_fitting.py: the same shapes, so that in one pytest
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
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_writes_laws_and_reports_intervals(fitted, capsys):
    folder, path = fitted
    code, out, _ = _run(capsys, ["fit", str(path), "--bootstrap", "50", "--json"])
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
    np.testing.assert_allclose(np.asarray(laws.coefficients),
                               [coefficients[c]["estimate"] for c in COEFFICIENTS], rtol=1e-6)


def test_fit_refuses_to_overwrite_and_plan_uses_the_laws(fitted, capsys):
    folder, path = fitted
    laws_path = folder / "measurements.laws.json"
    if not laws_path.exists():
        pytest.fail("the fit test must run first (module order)")
    code, _, err = _run(capsys, ["fit", str(path)])
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1

    code, out, _ = _run(capsys, ["plan", "--laws", str(laws_path), "--target-params", "70B",
                                 "--target-tokens", "15T", "--json"])
    assert code == 0
    plan = json.loads(out)
    assert plan["interval"] == "bootstrap" and plan["laws"] == str(laws_path)
    assert plan["draft_params_low"] < plan["draft_params"] < plan["draft_params_high"]
    code, out, _ = _run(capsys, ["plan", "--laws", str(laws_path), "--target-params", "70B",
                                 "--target-tokens", "15T", "--interval", "delta", "--json"])
    delta = json.loads(out)
    assert delta["draft_params"] == plan["draft_params"]
    # Two routes to the same uncertainty: the widths agree within a factor of two.
    width = lambda p: np.log(p["draft_params_high"] / p["draft_params_low"])
    assert 0.5 < width(delta) / width(plan) < 2


@pytest.mark.parametrize("argv,needle", [
    (["fit", "/nonexistent/m.csv"], "cannot read"),
    (["fit", "M", "--bootstrap", "-1"], "--bootstrap"),
    (["fit", "M", "--confidence", "1.5"], "--confidence"),
    (["plan", "--laws", "/nonexistent/laws.json", "--target-params", "70B", "--target-tokens", "15T"],
     "cannot read"),
    (["plan", "--target-params", "70B", "--target-tokens", "15T", "--interval", "delta"], "--laws"),
])
def test_bad_fit_and_laws_input_is_one_line(capsys, argv, needle):
    code, _, err = _run(capsys, argv)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_bad_measurement_file_names_row_and_column(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text("draft_params,target_params,draft_tokens,target_tokens,draft_perplexity,"
                    "target_perplexity,lookahead,acceptance\n"
                    "125M,7B,1T,2T,20,8,4,0.6\n125M,7B,1T,2T,20,8,4,1.7\n")
    code, _, err = _run(capsys, ["fit", str(path)])
    assert code == 2 and "m.csv" in err and "row 2" in err and "acceptance" in err
    assert err.count("\n") == 1


def test_bad_laws_file_is_named(tmp_path, capsys):
    path = tmp_path / "laws.json"
    path.write_text(json.dumps({"pretraining_law": {"irreducible_loss": 1.8}, "acceptance_law": {}}))
    code, _, err = _run(capsys, ["plan", "--laws", str(path), "--target-params", "70B",
                                 "--target-tokens", "15T"])
    assert code == 2 and "laws.json" in err and "param_coeff" in err
