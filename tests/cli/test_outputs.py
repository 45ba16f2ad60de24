"""Outputs are checked before any work, and a refused or interrupted command changes no file.

Each refusal is checked for what the user sees (exit 2, one line naming the
argument) and for what it leaves behind: every file in the folder
byte-identical, nothing created.
"""

import hashlib
import json
import os

import pytest

from sdsl_jax.cli import plan_csv
from sdsl_jax.cli.options import UsageError
from sdsl_jax.cli.outputs import check_output_file, check_output_folder, same_file

NOTES = b"my notes: not a plan\nsecond line without a newline"


def _snapshot(folder):
    """{relative path: sha256 of the bytes, or 'folder'} of everything under ``folder``."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = "folder"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _refused(run_cli, folder, *argv):
    """The one error line of ``sdsl argv``, which must change nothing under ``folder``."""
    before = _snapshot(folder)
    code, out, err = run_cli(*argv)
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(folder) == before
    return err


# --------------------------------------------------------------------------
# The checks themselves.


def test_check_output_file(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("x\n")
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    cases = [
        (tmp_path, {}, "is a folder"),
        (tmp_path / "missing" / "out.json", {}, "does not exist"),
        (data / "out.json", {}, "is a file, not a folder"),
        (existing, {}, "exists; pass --overwrite"),
        (existing, {"resumable": True}, "--resume to continue it"),
        # The same file under another name is still the input, even with --overwrite.
        (tmp_path / "." / "data.csv", {"inputs": [str(data)], "overwrite": True}, "is the input"),
        ("", {}, "empty"),
        (tmp_path / ("x" * 300 + ".json"), {}, "longer than the"),
    ]
    for path, options, needle in cases:
        with pytest.raises(UsageError, match=needle) as info:
            check_output_file("sdsl x", "--out", str(path), **options)
        assert str(info.value).startswith("sdsl x: argument --out: ")
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    assert same_file(str(link), str(data)) and not same_file(str(link), str(tmp_path / "no"))
    with pytest.raises(UsageError, match="is the input"):
        check_output_file("sdsl x", "--out", str(link), inputs=[str(data)], overwrite=True)
    # What may be written passes: a new file, or an existing one with --overwrite or --resume.
    check_output_file("sdsl x", "--out", str(tmp_path / "new.json"), inputs=[str(data), None])
    check_output_file("sdsl x", "--out", str(existing), overwrite=True)
    check_output_file("sdsl x", "--out", str(existing), resume=True)


def test_check_output_folder(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, needle in ((afile, "is a file, not a folder"),
                         (tmp_path / "missing" / "run", "does not exist; create it first"),
                         (afile / "run", "cannot create"),
                         (tmp_path / ("r" * 300), "longer than the")):
        with pytest.raises(UsageError, match=needle):
            check_output_folder("sdsl train", "--out", str(path))
    check_output_folder("sdsl train", "--out", str(tmp_path / "new"))
    check_output_folder("sdsl train", "--out", str(tmp_path))
    assert not (tmp_path / "new").exists()  # checked, not created


# --------------------------------------------------------------------------
# sdsl plan --csv


@pytest.fixture
def configs(tmp_path):
    path = tmp_path / "configs.csv"
    path.write_text("target_params,target_tokens\n70B,15T\n7B,2T\n13B,1T\n")
    return path


@pytest.mark.parametrize("content", [NOTES, NOTES + b"\n", b"target_params\n", b"target_params,x",
                                     b"\xff\xfe binary \x00"])
def test_plan_resume_leaves_a_file_that_is_not_its_output_alone(tmp_path, run_cli, configs,
                                                                content):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(content)
    err = _refused(run_cli, tmp_path, "plan", "--csv", configs, "--out", notes, "--resume")
    assert "--out" in err and "not an output of this" in err


def test_plan_resume_refuses_the_output_of_another_input(tmp_path, run_cli, configs):
    header = ",".join(plan_csv.INPUT_KEYS + plan_csv.PLAN_KEYS)
    other = tmp_path / "other.csv"
    # Another input's first row: 405B, not configs.csv's 70B.
    other.write_text(header + "\n" + ",".join(["405000000000.0", "15000000000000.0",
                                               "15000000000000.0"] + ["1"] * 14) + "\n")
    err = _refused(run_cli, tmp_path, "plan", "--csv", configs, "--out", other, "--resume")
    assert "row 1 planned target_params" in err


@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume"], []])
def test_plan_never_writes_over_its_inputs(tmp_path, run_cli, configs, flags):
    err = _refused(run_cli, tmp_path, "plan", "--csv", configs, "--out", configs, *flags)
    assert "is the input" in err or "exists" in err


def test_plan_out_checked_before_the_input_is_planned(tmp_path, run_cli, configs):
    for out, needle in ((tmp_path, "is a folder"), (tmp_path / "no" / "plans.csv", "does not exist")):
        assert needle in _refused(run_cli, tmp_path, "plan", "--csv", configs, "--out", out)
    assert "choose one" in _refused(run_cli, tmp_path, "plan", "--csv", configs, "--out",
                                    tmp_path / "p.csv", "--resume", "--overwrite")


@pytest.mark.slow
def test_plan_overwrite_keeps_the_old_file_until_the_new_one_is_complete(
        tmp_path, run_cli, configs, monkeypatch):
    from sdsl_jax.planning import flop
    monkeypatch.setattr(plan_csv, "CHUNK_ROWS", 2)
    out = tmp_path / "plans.csv"
    out.write_bytes(b"an earlier result\n")
    calls = []
    real = flop.optimal_draft_size

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second chunk: one chunk already written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(flop, "optimal_draft_size", interrupted)
    code, _, _ = run_cli("plan", "--csv", configs, "--out", out, "--overwrite")
    assert code == 130
    assert out.read_bytes() == b"an earlier result\n"
    assert sorted(os.listdir(tmp_path)) == ["configs.csv", "plans.csv"]  # no temporary file
    monkeypatch.setattr(flop, "optimal_draft_size", real)
    code, _, err = run_cli("plan", "--csv", configs, "--out", out, "--overwrite")
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 4


# --------------------------------------------------------------------------
# sdsl measure: every output is checked before a model is loaded (the model
# folders here do not exist, so getting past the checks would fail differently).


def _measure(tmp_path, *extra):
    return ["measure", "--draft", tmp_path / "no-draft", "--target", tmp_path / "no-target",
            "--lookahead", "3", "--prompts", "2", "--max-new-tokens", "8", *extra]


@pytest.mark.parametrize("content", [NOTES, NOTES + b"\n", b'{"a": 1}\n', b"\x00\x01"])
def test_measure_runs_file_not_its_own_is_left_alone(tmp_path, run_cli, content):
    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(content)
    err = _refused(run_cli, tmp_path, *_measure(tmp_path, "--out", notes))
    assert "notes.jsonl" in err and "--out" in err


def test_measure_rows_and_summary_are_checked_first(tmp_path, run_cli):
    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(NOTES)
    runs = tmp_path / "runs.jsonl"
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"some": "other json"}))
    cases = [
        (["--out", runs, "--rows", tmp_path], "write rows as JSON Lines"),
        (["--out", runs, "--rows", tmp_path / "rows.jsonl" / "x.jsonl"], "does not exist"),
        (["--out", runs, "--rows", notes], "not a rows file"),
        (["--out", runs, "--summary", summary], "not a summary"),
        (["--out", runs, "--summary", runs], "is also --out"),
        (["--out", runs, "--rows", tmp_path / "." / "r.jsonl", "--summary", tmp_path / "r.jsonl"],
         "is also --rows"),
        (["--out", tmp_path / "missing" / "runs.jsonl"], "does not exist"),
    ]
    for extra, needle in cases:
        assert needle in _refused(run_cli, tmp_path, *_measure(tmp_path, *extra))


def test_measure_lookahead_within_what_the_loop_holds(tmp_path, run_cli):
    runs = tmp_path / "runs.jsonl"
    base = ["measure", "--draft", tmp_path, "--target", tmp_path, "--prompts", "2", "--out", runs]
    assert "at most 128" in _refused(run_cli, tmp_path, *base, "--lookahead", "1000")
    assert "below --max-new-tokens (8)" in _refused(
        run_cli, tmp_path, *base, "--lookahead", "8", "--max-new-tokens", "8")


# --------------------------------------------------------------------------
# Run folders and figures.


@pytest.mark.parametrize("flag,value", [("--learning-rate", "nan"), ("--learning-rate", "-1"),
                                        ("--warmup-steps", "-1"), ("--warmup-steps", "5"),
                                        ("--validation-fraction", "2")])
def test_train_refusal_leaves_no_folder(tmp_path, run_cli, flag, value):
    err = _refused(run_cli, tmp_path, "train", "--sizes", "10k", "--steps", "5",
                   "--out", tmp_path / "run", flag, value)
    assert flag in err and not (tmp_path / "run").exists()


def test_reproduce_needs_the_parent_folder(tmp_path, run_cli):
    err = _refused(run_cli, tmp_path, "reproduce", "--preset", "tiny", "--out",
                   tmp_path / "missing" / "run")
    assert "does not exist" in err


def test_plot_out_is_checked_like_every_output(tmp_path, run_cli):
    (tmp_path / "fig.png").write_bytes(b"an old figure")
    assert "--overwrite" in _refused(run_cli, tmp_path, "plot", "throughput", "--out",
                                     tmp_path / "fig")
    (tmp_path / "dir.pdf").mkdir()
    assert "is a folder" in _refused(run_cli, tmp_path, "plot", "throughput", "--out",
                                     tmp_path / "dir", "--overwrite")
    assert "does not exist" in _refused(run_cli, tmp_path, "plot", "throughput", "--out",
                                        tmp_path / "no" / "fig")
    for argv, needle in ((["--points", "99999999999"], "--points"), (["--dpi", "100000"], "--dpi"),
                         (["--target-params", "0.5"], "at least 1"),
                         (["--draft-range", "5", "3"], "LOW < HIGH")):
        assert needle in _refused(run_cli, tmp_path, "plot", "throughput", *argv)


# --------------------------------------------------------------------------
# The last line of defence in main().


def test_an_unexpected_error_is_one_line_not_a_traceback(run_cli, monkeypatch):
    from sdsl_jax.cli import rule

    def broken(args):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(rule, "run", broken)
    code, _, err = run_cli("rule")
    assert code == 1 and err.count("\n") == 1 and "internal error: RuntimeError: a bug" in err
    monkeypatch.setenv("SDSL_DEBUG", "1")
    with pytest.raises(RuntimeError):
        run_cli("rule")


def test_out_of_memory_is_a_usage_error(run_cli, monkeypatch):
    from sdsl_jax.cli import rule

    def exhausted(args):
        raise MemoryError("Unable to allocate 745. GiB")

    monkeypatch.setattr(rule, "run", exhausted)
    code, _, err = run_cli("rule")
    assert code == 2 and "out of memory (Unable to allocate 745. GiB)" in err


# --------------------------------------------------------------------------
# sdsl measure: sizes that cannot run are refused before the first batch, and
# a run that fails in its first batch leaves no runs file.


def _pair_argv(trained_pair, corpus_dir, out, *extra):
    return ["measure", "--draft", trained_pair.draft, "--target", trained_pair.target,
            "--lookahead", "2", "--prompts", "2", "--prompt-len", "16", "--max-new-tokens", "4",
            "--no-stdlib", "--corpus", corpus_dir, "--out", out, *extra]


@pytest.mark.slow
def test_measure_sizes_that_cannot_run(trained_pair, corpus_dir, tmp_path, run_cli, monkeypatch):
    from sdsl_jax.cli import measure_models
    runs = tmp_path / "runs.jsonl"
    cases = [(["--seed", str(2**64)], "--seed: must lie in [0, 2^63 - 1]"),
             (["--batch-size", "3"], "--batch-size: 3 is more than the 2 prompts"),
             (["--draft-tokens", "0.5"], "--draft-tokens: must be at least one token")]
    for extra, needle in cases:
        assert needle in _refused(run_cli, tmp_path, *_pair_argv(trained_pair, corpus_dir,
                                                                 runs, *extra))
    # A machine of 64 KiB: the two models' weights alone are more than that.
    monkeypatch.setattr(measure_models, "_device_memory", lambda: 2**16)
    err = _refused(run_cli, tmp_path, *_pair_argv(trained_pair, corpus_dir, runs))
    assert "the prefill of 1 x 16 tokens needs about" in err
    assert "GiB of the device; lower --prompt-len" in err


@pytest.mark.slow
def test_measure_failing_in_its_first_batch_leaves_no_runs_file(trained_pair, corpus_dir,
                                                                tmp_path, run_cli, monkeypatch):
    from sdsl_jax.decoding import pair

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 745. GiB")
        yield  # a generator, as the real one

    monkeypatch.setattr(pair, "measure_pair", exhausted)
    runs = tmp_path / "runs.jsonl"
    code, _, err = run_cli(*_pair_argv(trained_pair, corpus_dir, runs))
    assert code == 2 and "out of memory" in err and not runs.exists()


def test_measure_prompts_bounded_before_any_window_is_drawn(tmp_path, run_cli):
    err = _refused(run_cli, tmp_path, *_measure(tmp_path, "--out", tmp_path / "r.jsonl")[:-2],
                   "--prompts", "99999999", "--out", tmp_path / "r.jsonl")
    assert "--prompts: must be at most 100,000" in err


def test_measure_hugging_face_config_that_is_not_text(tmp_path, run_cli):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(b"\xff\xfe\x00binary")
    err = _refused(run_cli, tmp_path, "measure", "--draft", model, "--target", model,
                   "--lookahead", "2", "--prompts", "2", "--out", tmp_path / "r.jsonl")
    assert "--draft" in err and "config.json" in err
