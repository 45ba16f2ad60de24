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
    # Rows count from the first data row, as in every table the CLI reads.
    ("target_params,target_tokens\n70B,15T\n-3,15T\n", "row 2, column 'target_params'"),
    ("target_params,target_tokens\n70B,abc\n", "row 1, column 'target_tokens'"),
    ("target_params,draft_tokens\n70B,15T\n", "missing required column 'target_tokens'"),
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


# --- domain checks on every numeric option (issue 15) --------------------------------------

PLAN = ["plan", "--target-params", "70B", "--target-tokens", "15T"]


@pytest.mark.parametrize("extra,names,needle", [
    # Sizes of at least one parameter and one token.
    (["--target-params", "0.5"], "--target-params", "at least 1"),
    (["--target-tokens", "0.9"], "--target-tokens", "at least 1"),
    (["--draft-tokens", "1e-3"], "--draft-tokens", "at least 1"),
    # A wall-clock option without --hardware was ignored; now it is refused.
    (["--step-times", "steps.jsonl"], "--step-times", "calibrates --hardware; add --hardware NAME"),
    (["--batch", "8"], "--batch", "add --hardware NAME"),
    (["--context", "4096"], "--context", "add --hardware NAME"),
    (["--draft-precision", "fp8"], "--draft-precision", "add --hardware NAME"),
    (["--target-precision", "int4"], "--target-precision", "add --hardware NAME"),
    (["--kv-fraction", "0.125"], "--kv-fraction", "add --hardware NAME"),
    (["--verify", "scored"], "--verify", "add --hardware NAME"),
    # With --hardware: each value within the roofline's domain.
    (["--hardware", "H100", "--kv-fraction", "0"], "--kv-fraction", "(0, 1]"),
    (["--hardware", "H100", "--kv-fraction", "1.5"], "--kv-fraction", "(0, 1]"),
    (["--hardware", "H100", "--kv-fraction", "nan"], "--kv-fraction", "(0, 1]"),
    (["--hardware", "H100", "--batch", "0.5"], "--batch", "[1, 65,536]"),
    (["--hardware", "H100", "--batch", "1e9"], "--batch", "[1, 65,536]"),
    (["--hardware", "H100", "--batch", "inf"], "--batch", "[1, 65,536]"),
    (["--hardware", "H100", "--context", "0.5"], "--context", "[1, 16,777,216]"),
    (["--hardware", "H100", "--context", "1e12"], "--context", "[1, 16,777,216]"),
    (["--hardware", "H100", "--target-precision", "0"], "--target-precision", "> 0"),
])
def test_numeric_options_outside_their_domain_are_one_line(run_cli, extra, names, needle):
    code, out, err = run_cli(*PLAN, *extra)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert names in err and needle in err and "Traceback" not in err


@pytest.mark.parametrize("mode", [["--csv", "configs.csv"], ["--position-rates", "rates.json"]])
def test_wallclock_options_in_modes_without_hardware_are_refused(run_cli, mode):
    code, out, err = run_cli("plan", *mode, "--kv-fraction", "0.5")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--kv-fraction" in err and f"drop it (--hardware does not go with {mode[0]})" in err


def test_step_times_are_read_before_anything_is_planned(tmp_path, run_cli):
    # A directory, and Latin-1 bytes, given as --step-times: one line, no plan printed.
    latin = tmp_path / "steps.jsonl"
    latin.write_bytes(b'{"draft_step_seconds": 0.001, "caf\xe9": 1}\n')
    for path in (tmp_path, latin):
        code, out, err = run_cli(*PLAN, "--hardware", "H100", "--step-times", path)
        assert code == 2 and out == "" and err.count("\n") == 1 and "--step-times" in err


def test_wallclock_defaults_are_filled_in_only_with_hardware():
    import argparse
    from sdsl_jax.cli import plan_hardware
    given = {key: None for key in plan_hardware.DEFAULTS}
    args = argparse.Namespace(hardware=None, **given)
    plan_hardware.check_options(args)
    assert all(getattr(args, key) is None for key in given)
    args = argparse.Namespace(hardware="H100", **dict(given, batch=8.0))
    plan_hardware.check_options(args)
    # The printed and JSON values are those of the old parser defaults.
    assert (args.batch, args.context, args.kv_fraction) == (8.0, 2048.0, 1.0)
    assert (args.draft_precision, args.target_precision, args.verify) == ("bf16", "bf16", "scored")
    assert args.step_times is None


def test_check_sizes_names_the_file_row_and_column():
    from sdsl_jax.cli.options import UsageError
    from sdsl_jax.cli.plan import check_sizes
    check_sizes("sdsl plan", None, 1.0, 1.0, None)  # one parameter and one token are sizes
    with pytest.raises(UsageError, match=r"^sdsl plan: configs.csv, row 3, column target_tokens: "
                                         r"must be at least 1 .*got 0.5$"):
        check_sizes("sdsl plan", "configs.csv, row 3", 70e9, 0.5, None)
    # Arrays: the first bad row, through a function of its index.
    with pytest.raises(UsageError, match=r"configs.csv, row 4, column draft_tokens: must be a finite "
                                         r"number, got nan"):
        check_sizes("sdsl plan", lambda i: f"configs.csv, row {i + 2}", [70e9, 7e9, 1e9],
                    [15e12] * 3, [1e12, 1e12, float("nan")])


# --- sdsl rule: a range where speculation pays ---------------------------------------------

@pytest.mark.parametrize("argv,names", [
    (["--min-target-params", "0.5"], "--min-target-params"),
    (["--max-target-params", "0.5", "--min-target-params", "0.1"], "--min-target-params"),
    (["--tokens", "3e11", "0.5"], "--tokens"),
    (["--min-target-params", "110B", "--max-target-params", "13B"], "--max-target-params"),
    (["--max-target-params", "1e300"], "--max-target-params"),
])
def test_rule_refuses_sizes_below_one_and_an_empty_range(run_cli, argv, names):
    code, out, err = run_cli("rule", *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and names in err


def _refuse_where(monkeypatch, pays):
    """Make the rule's fit find speculation not paying where ``pays`` (targets x D) is False."""
    import numpy as np
    from sdsl_jax.planning import linear_rule

    def fit(target_params, draft_tokens, target_tokens, **kwargs):
        grid = np.broadcast_arrays(np.asarray(target_params, float), np.asarray(draft_tokens, float))
        raise linear_rule.RuleUndefinedError("does not pay", pays=np.asarray(pays),
                                             target_params=grid[0], draft_tokens=grid[1],
                                             target_tokens=grid[1])
    monkeypatch.setattr(linear_rule, "fit_linear_rule", fit)


@pytest.mark.parametrize("pays,needle", [
    # Small targets do not pay at the smaller D: raise the lower end.
    ([[0, 1], [0, 1], [1, 1], [1, 1]], "targets of 1K to 10K parameters at D = 1M; it pays at every "
                                       "D for the targets above 10K: raise --min-target-params to 100K"),
    # Large ones do not at the larger D: lower the upper end.
    ([[1, 1], [1, 1], [1, 1], [1, 0]], "targets of 1M parameters at D = 1B; it pays at every D "
                                       "for the targets below 1M: lower --max-target-params to 100K"),
    # Gaps with no clean end.
    ([[1, 1], [0, 1], [1, 1], [0, 1]], "for some targets of 10K to 1M parameters at D = 1M; no stretch"),
])
def test_rule_says_where_speculation_pays(run_cli, monkeypatch, pays, needle):
    _refuse_where(monkeypatch, [[bool(v) for v in row] for row in pays])
    code, out, err = run_cli("rule", "--min-target-params", "1K", "--max-target-params", "1M",
                             "--points", "4", "--tokens", "1M", "1B")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert needle in err, err


@pytest.mark.slow
def test_rule_over_targets_too_small_to_pay_is_one_line(run_cli):
    # Was a ValueError traceback: "speculation does not pay for some configurations".
    code, out, err = run_cli("rule", "--min-target-params", "1K", "--max-target-params", "1B",
                             "--points", "6", "--tokens", "300B", "15T")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "speculation does not pay under these laws" in err and "--min-target-params" in err


@pytest.mark.slow
def test_rule_with_one_token_count_leaves_the_log_term_undetermined(run_cli):
    code, out, err = run_cli("rule", "--points", "6", "--tokens", "1T", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["with_log_tokens"] is None and record["linear"]["r2"] > 0.9
    assert record["undetermined"] == {"with_log_tokens": "one token count: give --tokens more than one value"}
