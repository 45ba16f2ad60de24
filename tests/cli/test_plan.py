"""The sdsl command line, called in-process through main(argv)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from sdsl_jax.cli import plan_csv
from sdsl_jax.cli.plan import PLAN_KEYS


def test_plan_readable(run_cli):
    code, out, err = run_cli("plan", "--target-params", "70B", "--target-tokens", "15T")
    assert code == 0, err
    assert "optimal draft size N*" in out and "281M parameters" in out
    for label in ("draft perplexity", "target perplexity", "acceptance alpha",
                  "lookahead, continuous", "lookahead, integer", "speedup", "tokens per FLOP"):
        assert label in out


def test_plan_json_matches_library(run_cli, x64):
    import sdsl_jax as sd
    code, out, _ = run_cli("plan", "--target-params", "70e9", "--target-tokens", "15e12",
                           "--draft-tokens", "2T", "--json")
    assert code == 0
    record = json.loads(out)
    for key in ("draft_params", "acceptance", "lookahead", "speedup", "integer_lookahead",
                "draft_perplexity", "target_perplexity", "tokens_per_flop"):
        assert key in record
    plan = sd.optimal_draft_size(70e9, 2e12, 15e12)
    assert record["draft_params"] == pytest.approx(float(plan.draft_params), rel=1e-12)
    assert record["draft_tokens"] == 2e12


@pytest.mark.parametrize("argv,names", [
    (["plan", "--target-params", "0", "--target-tokens", "15T"], "--target-params"),
    (["plan", "--target-params", "-70B", "--target-tokens", "15T"], "--target-params"),
    (["plan", "--target-params", "seventy", "--target-tokens", "15T"], "--target-params"),
    (["plan", "--target-params", "70B", "--target-tokens", "nan"], "--target-tokens"),
    (["plan", "--target-params", "70B", "--target-tokens", "15T", "--draft-tokens", "0"], "--draft-tokens"),
    (["plan", "--target-params", "70B", "--target-tokens", "15T", "--pretraining-law", "gpt5"], "--pretraining-law"),
    (["plan", "--target-params", "70B", "--target-tokens", "15T", "--acceptance-law", "x"], "--acceptance-law"),
    (["plan", "--target-tokens", "15T"], "--target-params"),
    (["plan", "--target-params", "70B", "--target-tokens", "15T", "--bogus"], "--bogus"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_is_one_line_and_exit_2(run_cli, argv, names):
    code, out, err = run_cli(*argv)
    assert code == 2
    assert err.count("\n") == 1 and names in err and "Traceback" not in err


@pytest.fixture
def small_chunks(monkeypatch):
    """CSV planning in chunks of 2 rows instead of 65536: three rows then span
    two chunks (the last one padded), and no test plans 65536 padded rows."""
    monkeypatch.setattr(plan_csv, "CHUNK_ROWS", 2)


def _write_configs(path, rows):
    with open(path, "w", newline="") as handle:
        handle.write("target_params,target_tokens,draft_tokens\n")
        for row in rows:
            handle.write(",".join(row) + "\n")


@pytest.mark.slow
def test_csv_in_csv_out(tmp_path, run_cli, small_chunks):
    src, dst = tmp_path / "configs.csv", tmp_path / "plans.csv"
    _write_configs(src, [("70B", "15T", ""), ("13e9", "1T", "300B"), ("405B", "15T", "15T")])
    code, _, err = run_cli("plan", "--csv", str(src), "--out", str(dst))
    assert code == 0, err
    rows = list(csv.DictReader(open(dst)))
    assert len(rows) == 3 and set(PLAN_KEYS) <= set(rows[0])
    assert float(rows[0]["draft_tokens"]) == 15e12  # blank draft_tokens: the target's
    assert float(rows[1]["draft_tokens"]) == 3e11
    sizes = [float(r["draft_params"]) for r in rows]
    assert sizes[2] > sizes[0] > sizes[1] > 0
    # An existing output is never overwritten silently.
    code, _, err = run_cli("plan", "--csv", str(src), "--out", str(dst))
    assert code == 2 and "--resume" in err


@pytest.mark.slow
def test_csv_resume_keeps_written_rows(tmp_path, run_cli, small_chunks):
    src, dst = tmp_path / "configs.csv", tmp_path / "plans.csv"
    _write_configs(src, [("70B", "15T", ""), ("13B", "1T", ""), ("405B", "15T", "")])
    assert run_cli("plan", "--csv", str(src), "--out", str(dst))[0] == 0
    full = open(dst).read().splitlines()
    # Simulate a run killed while writing its third row.
    open(dst, "w").write("\n".join(full[:3]) + "\n" + full[3][:10])
    assert run_cli("plan", "--csv", str(src), "--out", str(dst), "--resume")[0] == 0
    assert open(dst).read().splitlines() == full


@pytest.mark.parametrize("body,match", [
    ("target_params,target_tokens\n70B,15T\n-3,15T\n", "row 3, column target_params"),
    ("target_params,target_tokens\n70B,abc\n", "row 2, column target_tokens"),
    ("target_params,draft_tokens\n70B,15T\n", "missing column 'target_tokens'"),
])
def test_csv_errors_name_file_row_and_column(tmp_path, run_cli, body, match):
    src = tmp_path / "bad.csv"
    src.write_text(body)
    code, _, err = run_cli("plan", "--csv", str(src))
    assert code == 2 and match in err and "bad.csv" in err and err.count("\n") == 1


def test_missing_csv_file(tmp_path, run_cli):
    code, _, err = run_cli("plan", "--csv", str(tmp_path / "nope.csv"))
    assert code == 2 and "nope.csv" in err


@pytest.mark.slow
def test_rule_command(run_cli):
    code, out, _ = run_cli("rule", "--points", "6", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["published"]["slope"] == 2.71e-3
    assert 0 < record["linear"]["slope"] < 1e-2 and record["linear"]["r2"] > 0.9


@pytest.mark.parametrize("points", ["1", "99999999999"])
def test_rule_refuses_a_grid_it_cannot_plan(run_cli, points):
    # 99999999999 targets was a 745 GiB allocation and a traceback.
    code, out, err = run_cli("rule", "--points", points)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--points" in err and points in err


@pytest.mark.slow
def test_module_entry_point_runs_the_command_line():
    # `python -m sdsl_jax.cli` is the `sdsl` program, and runs without a warning
    # (runpy warns when a package imports the module it is asked to run).
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "sdsl_jax.cli", "rule", "--help"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("usage: sdsl rule")
