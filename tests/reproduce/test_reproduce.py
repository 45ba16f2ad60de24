"""`sdsl reproduce`: the tiny preset end to end, its report against the stage outputs and
independent recomputations, resume after an interruption, and input errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from sdsl_jax.planning import flop as planner
from sdsl_jax.laws import pretraining as pretraining_law
from sdsl_jax.fitting.laws import load_laws
from sdsl_jax.reproduce import (PRESETS, STAGE_NAMES, PresetError, ReproduceError, RunDirectory,
                                get_preset, reproduce)
from sdsl_jax.reproduce import chain, report as report_lib
from sdsl_jax.reproduce.latency_stage import measured_optimum
from sdsl_jax.reproduce.presets import Preset, params as size_params

PRESET = PRESETS["tiny"]


def _run(out, corpus_dir, **kwargs):
    lines = []
    result = reproduce(PRESET, str(out), corpus_paths=[str(corpus_dir)], include_stdlib=False,
                       progress=False, log=lines.append, **kwargs)
    return result, lines


@pytest.fixture(scope="module")
def finished(corpus_dir, tmp_path_factory):
    """The tiny preset in two goes, the first ended as a kill in the middle of `measure` leaves
    a run: it stops after `measure`, then the last pair's runs file loses its last prompt to a
    line torn mid-write, that pair's row is dropped and the manifest marks `measure` unfinished
    (everything a kill there leaves, minus the kill). The second go resumes `measure` prompt by
    prompt and runs to the end, so one run serves both resumes and everything else reuses what
    it compiled."""
    out = tmp_path_factory.mktemp("reproduce") / "run"
    first, first_log = _run(out, corpus_dir, stop_after="measure")
    interrupted = _interrupt_measure(str(out))
    second, second_log = _run(out, corpus_dir)
    return {"out": str(out), "first": first, "second": second, "first_log": first_log,
            "second_log": second_log, "interrupted": interrupted}


def _interrupt_measure(out):
    """Leave ``out`` as a kill while `measure` wrote the last pair's last prompt would: that
    line torn, the pair's row absent, `measure` unfinished. Returns what the resume is
    checked against: the pair, the runs file's lines before the tear, the draft's card and
    its modification time."""
    draft, target = PRESET.pairs()[-1]
    runs_path = os.path.join(out, "measure", f"runs-{draft}-{target}.jsonl")
    with open(runs_path) as handle:
        lines = handle.readlines()
    with open(runs_path, "w") as handle:
        handle.writelines(lines[:-1])
        handle.write(lines[-1][:25])  # torn mid-write
    rows_path = os.path.join(out, "measure", "rows.jsonl")
    kept = [r for r in _jsonl(rows_path) if (r["draft_model"], r["target_model"]) != (draft, target)]
    with open(rows_path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in kept)
    manifest_path = os.path.join(out, "manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    # The stages after `measure` were never started: the manifest has no entry for them.
    manifest["stages"]["measure"]["finished"] = False
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    card = os.path.join(out, "models", draft, "model.json")
    return {"pair": (draft, target), "runs_path": runs_path, "lines": lines, "card": card,
            "card_time": os.stat(card).st_mtime_ns}


def _stage(out, name):
    with open(os.path.join(out, "stages", f"{name}.json")) as handle:
        return json.load(handle)


def _jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _report(out):
    with open(os.path.join(out, "report.md"), encoding="utf-8") as handle:
        return handle.read()


# --------------------------------------------------------------------------
# The run and its resume.


@pytest.mark.slow
def test_a_stopped_run_resumes_with_the_unfinished_stages_only(finished):
    assert finished["first"]["ran"] == ["train", "pretraining", "measure"]
    assert finished["first"]["report"] is None
    assert finished["second"]["skipped"] == ["train", "pretraining"]
    assert finished["second"]["ran"] == ["measure", "acceptance", "predict", "latency", "report"]
    assert any("[1/7] train: finished earlier" in line for line in finished["second_log"])
    assert any("[2/7] pretraining: finished earlier" in line for line in finished["second_log"])
    with open(os.path.join(finished["out"], "manifest.json")) as handle:
        manifest = json.load(handle)
    assert manifest["preset"] == "tiny"
    assert [name for name in STAGE_NAMES if manifest["stages"][name]["finished"]] == list(STAGE_NAMES)
    # Only the interrupted stage was attempted twice.
    assert {name: manifest["stages"][name]["attempts"] for name in STAGE_NAMES} == {
        name: 2 if name == "measure" else 1 for name in STAGE_NAMES}


@pytest.mark.slow
def test_report_has_every_section_and_figure(finished):
    text = _report(finished["out"])
    for section in report_lib.SECTIONS:
        assert f"## {section}\n" in text
    assert "could not be drawn" not in text
    figures = _stage(finished["out"], "report")["figures"]
    assert set(figures) == {"pretraining", "plane", "throughput", "acceptance", "latency",
                            "draft-size"}
    for name, path in figures.items():
        assert f"]({path})" in text
        with open(os.path.join(finished["out"], path), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n", name
        assert os.path.getsize(os.path.join(finished["out"], path[:-4] + ".pdf")) > 0


# --------------------------------------------------------------------------
# Numbers: stage outputs against their sources and independent recomputations.


@pytest.mark.slow
def test_loss_points_are_the_checkpoints_and_the_cards(finished):
    out = finished["out"]
    train = _stage(out, "train")
    points = train["loss_points"]
    assert len(points) == len(PRESET.sizes()) * PRESET.loss_points == train["expected_loss_points"]
    for size in PRESET.sizes():
        mine = sorted((p for p in points if p["params"] == size_params(size)), key=lambda p: p["step"])
        assert [p["step"] for p in mine] == list(range(PRESET.checkpoint_every, PRESET.steps + 1,
                                                       PRESET.checkpoint_every))
        assert [p["tokens"] for p in mine] == [p["step"] * PRESET.tokens_per_step for p in mine]
        with open(os.path.join(out, "models", size, "model.json")) as handle:
            card = json.load(handle)
        # The last point is the card's held-out loss, scored by train_model itself.
        assert mine[-1]["validation_loss"] == card["validation_loss"]
        assert card["tokens"] == PRESET.train_tokens
        # More training, lower held-out loss: each size improves between its checkpoints.
        assert mine[0]["validation_loss"] > mine[-1]["validation_loss"]


@pytest.mark.slow
def test_pretraining_fit_table_matches_the_law(finished):
    pre = _stage(finished["out"], "pretraining")
    law = pretraining_law.PretrainingLaw(**{k: v["estimate"] for k, v in pre["coefficients"].items()})
    with jax.enable_x64(True):
        for point in pre["points"]:
            expected = float(pretraining_law.loss(law, point["params"], point["tokens"]))
            assert point["predicted_loss"] == pytest.approx(expected, rel=1e-9)
            assert point["residual"] == pytest.approx(point["validation_loss"] - expected, abs=1e-9)
    for c in pre["coefficients"].values():
        assert c["low"] <= c["estimate"] <= c["high"]


@pytest.mark.slow
def test_measured_rows_and_report_agree(finished):
    out = finished["out"]
    rows = _jsonl(os.path.join(out, "measure", "rows.jsonl"))
    measure = _stage(out, "measure")
    assert [(r["draft_model"], r["target_model"]) for r in measure["loop"]] == list(PRESET.pairs())
    text = _report(out)
    for row in measure["loop"]:
        assert row in rows
        assert row["prompts"] == PRESET.prompts and row["lookahead"] == PRESET.lookahead
        # The acceptance is the pooled counts, and its interval holds it.
        assert row["acceptance"] == pytest.approx(row["accepted"] / row["trials"], rel=1e-6)
        assert row["acceptance_low"] <= row["acceptance"] <= row["acceptance_high"]
        cell = report_lib.interval(row["acceptance"], row["acceptance_low"], row["acceptance_high"])
        assert f"| {row['draft_model']} | {row['target_model']} | " in text and cell in text
        runs = _jsonl(os.path.join(out, "measure", f"runs-{row['draft_model']}-{row['target_model']}.jsonl"))
        assert sorted(r["prompt_id"] for r in runs) == list(range(PRESET.prompts))
        assert sum(r["accepted"] for r in runs) == row["accepted"]
    tf = measure["teacher_forced"]
    assert [(r["draft_model"], r["target_model"]) for r in tf] == list(PRESET.pairs())
    for r in tf:
        assert r["acceptance_low"] <= r["acceptance"] <= r["acceptance_high"]
        assert report_lib.interval(r["acceptance"], r["acceptance_low"], r["acceptance_high"]) in text


@pytest.mark.slow
def test_predicted_n_star_is_the_planners_on_the_saved_laws(finished):
    out = finished["out"]
    predict = _stage(out, "predict")
    text = _report(out)
    with jax.enable_x64(True):
        laws = load_laws(os.path.join(out, "laws.json"))
        for p in predict["targets"]:
            plan = planner.optimal_draft_size(float(size_params(p["target"])), PRESET.train_tokens,
                                              PRESET.train_tokens, pretraining_law=laws.pretraining_law,
                                              acceptance_law=laws.acceptance_law)
            assert bool(plan.pays) == p["pays"]
            if p["pays"]:
                assert p["n_star"] == pytest.approx(float(plan.draft_params), rel=1e-6)
                assert p["n_star_low"] <= p["n_star"] <= p["n_star_high"]
                assert report_lib.interval(p["n_star"], p["n_star_low"], p["n_star_high"],
                                           report_lib.count) in text
            # The pick is the draft whose predicted speedup is highest.
            best = max(p["ladder"], key=lambda r: r["speedup_at_lookahead"])
            assert p["pick"] == best["draft"]
            assert [r["draft"] for r in p["ladder"]] == list(PRESET.drafts_of(p["target"]))


@pytest.mark.slow
def test_chain_matches_the_laws_evaluated_one_by_one(finished, speedup_reference):
    """The compiled chain against the laws written out in numpy, one pair at a time, and S*
    maximised over the lookahead by brentq (no Lambert W): nothing compiled but the chain."""
    with jax.enable_x64(True):
        laws = load_laws(os.path.join(finished["out"], "laws.json"))
        n, m, d = np.array([1e4, 3e4, 1e5]), np.array([1e5, 2e5, 2e5]), 3e3
        got = chain.evaluate(laws, n, m, d, d, 2)
        # Python floats: the references below stay in numpy.
        pre, acc = jax.tree.map(float, laws.pretraining_law), jax.tree.map(float, laws.acceptance_law)
    for i in range(n.size):
        x = np.exp(speedup_reference.loss(pre, n[i], d))
        y = np.exp(speedup_reference.loss(pre, m[i], d))
        alpha = speedup_reference.acceptance(acc, x, y)
        assert got["draft_perplexity"][i] == pytest.approx(x, rel=1e-12)
        assert got["acceptance"][i] == pytest.approx(alpha, rel=1e-12)
        # E(alpha, 2) / (2 c + 1), written out.
        expected = (1 - alpha**3) / (1 - alpha) / (2 * n[i] / m[i] + 1)
        assert got["speedup_at_lookahead"][i] == pytest.approx(expected, rel=1e-9)
        assert got["optimal_speedup"][i] == pytest.approx(
            speedup_reference.speedup(alpha, n[i] / m[i]), rel=1e-9)


@pytest.mark.slow
def test_latency_verdict_follows_the_measurements(finished):
    out = finished["out"]
    latency = _stage(out, "latency")
    rows = _jsonl(os.path.join(out, "measure", "rows.jsonl"))
    text = _report(out)
    for v in latency["verdicts"]:
        mine = [r for r in rows if r["target_model"] == v["target"]]
        fastest = max(mine, key=lambda r: r["speedup"])
        assert v["measured"]["draft"] == fastest["draft_model"]
        assert v["measured"]["speedup"] == fastest["speedup"]
        assert f"**Target {v['target']}**" in text and f"the fastest draft is **{fastest['draft_model']}**" in text
        predicted = next(p for p in _stage(out, "predict")["targets"] if p["target"] == v["target"])
        assert v["flop_draft_held"] == (predicted["pick"] == fastest["draft_model"])
    for e in latency["table"]:
        assert e["tokens_per_second"] == pytest.approx(1 / e["tpot"], rel=1e-12)
        assert e["tokens_per_second_low"] <= e["tokens_per_second"]
        assert e["flop_cost_ratio"] == pytest.approx(e["draft_params"] / e["target_params"])
    assert latency["calibration"]["rows"] == 3 * len(PRESET.pairs())


def test_measured_optimum_rules():
    def row(draft, speedup, low, high):
        return {"draft": draft, "speedup": speedup, "speedup_low": low, "speedup_high": high}
    apart = [row("b", 0.9, 0.8, 1.0), row("a", 1.5, 1.2, 1.8)]
    assert measured_optimum(apart) == {"draft": "a", "clear": True, "status": "draft", "speedup": 1.5,
                                       "speedup_low": 1.2, "speedup_high": 1.8}
    close = [row("a", 0.5, 0.4, 0.6), row("b", 0.45, 0.3, 0.55)]
    assert measured_optimum(close)["status"] == "target alone"
    assert measured_optimum(close)["clear"] is False
    straddle = [row("b", 1.0, 0.9, 1.1)]
    assert measured_optimum(straddle)["status"] == "tie with target alone"


# --------------------------------------------------------------------------
# Interruptions.


@pytest.mark.slow
def test_interrupted_measure_resumes_prompt_by_prompt(finished):
    """A kill in the middle of `measure` (the fixture's first go): one pair's runs file ends in
    a torn line and lacks its last prompt, the stage and those after it are unfinished. The
    rerun measures that prompt only, keeps every other line, and leaves the trained models
    alone."""
    interrupted, log = finished["interrupted"], finished["second_log"]
    draft, target = interrupted["pair"]
    lines = interrupted["lines"]
    assert any("[3/7] measure: measure every (draft, target) pair (resuming, attempt 2)" in line
               for line in log)
    assert any(f"{draft} -> {target}" in line and f"({PRESET.prompts - 1} measured earlier)" in line
               for line in log)
    # The other pairs' rows were kept: measured earlier, not again.
    assert sum("measured earlier" in line and "pair " in line and "prompts" not in line
               for line in log) == len(PRESET.pairs()) - 1
    assert os.stat(interrupted["card"]).st_mtime_ns == interrupted["card_time"]
    with open(interrupted["runs_path"]) as handle:
        now = handle.readlines()
    assert now[:-1] == lines[:-1]  # earlier prompts untouched
    # Prompt i's randomness follows i: the remeasured prompt drafts and accepts as before.
    for key in ("prompt_id", "accepted_per_iteration", "trials", "beta_sum"):
        assert json.loads(now[-1])[key] == json.loads(lines[-1])[key]
    assert sorted(r["prompt_id"] for r in map(json.loads, now)) == list(range(PRESET.prompts))
    assert finished["second"]["report"] == os.path.join(finished["out"], "report.md")
    assert os.path.exists(finished["second"]["report"])


@pytest.mark.slow
def test_torn_loss_point_line_is_dropped_and_rescored(finished, corpus_dir, tmp_path):
    """Killed while a checkpoint's score was being appended: the rerun of `train` drops the
    torn line and scores the checkpoint again from the kept checkpoint."""
    out = str(tmp_path / "copy")
    shutil.copytree(finished["out"], out)
    path = os.path.join(out, "train", "loss_points.jsonl")
    with open(path) as handle:
        lines = handle.readlines()
    # The last size's middle checkpoint (kept: orbax keeps the last two).
    size = PRESET.sizes()[-1]
    step = PRESET.steps - PRESET.checkpoint_every
    victim = next(i for i, line in enumerate(lines)
                  if json.loads(line)["model"] == size and json.loads(line)["step"] == step)
    original = json.loads(lines[victim])
    with open(path, "w") as handle:
        handle.writelines(lines[:victim] + lines[victim + 1:])
        handle.write(lines[victim][:30])
    manifest_path = os.path.join(out, "manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    for name in STAGE_NAMES:
        manifest["stages"][name]["finished"] = False
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    result, log = _run(out, corpus_dir, stop_after="train")
    assert result["ran"] == ["train"]
    assert any(f"{size}: already trained" in line for line in log)
    points = _jsonl(path)
    rescored = [p for p in points if p["model"] == size and p["step"] == step]
    assert len(rescored) == 1
    assert rescored[0]["validation_loss"] == pytest.approx(original["validation_loss"], rel=1e-6)
    assert len(_stage(out, "train")["loss_points"]) == len(PRESET.sizes()) * PRESET.loss_points


# --------------------------------------------------------------------------
# The command line and its errors.


@pytest.mark.slow
def test_cli_on_a_finished_run_prints_the_verdict(finished, corpus_dir, run_cli):
    code, out, err = run_cli("reproduce", "--preset", "tiny", "--out", finished["out"],
                             "--no-stdlib", "--corpus", corpus_dir)
    assert code == 0
    assert out.startswith("## Verdict") and f"report: {finished['out']}" in out
    assert err.count("finished earlier") == len(STAGE_NAMES)


def _one_line_error(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sdsl reproduce: ")
    return lines[0]


@pytest.mark.slow
def test_cli_refuses_another_preset_or_corpus_on_a_finished_run(finished, corpus_dir, run_cli):
    corpus = ["--no-stdlib", "--corpus", corpus_dir]
    line = _one_line_error(*run_cli("reproduce", "--preset", "small", "--out", finished["out"],
                                    *corpus)[::2])
    assert "holds a run of preset 'tiny', not 'small'" in line
    line = _one_line_error(*run_cli("reproduce", "--preset", "tiny", "--out", finished["out"])[::2])
    assert "another corpus" in line


def test_cli_errors(corpus_dir, tmp_path, run_cli):
    corpus = ["--no-stdlib", "--corpus", corpus_dir]
    line = _one_line_error(*run_cli("reproduce", "--preset", "huge", "--out", tmp_path / "a",
                                    *corpus)[::2])
    assert "unknown preset 'huge'" in line and "tiny, small, large" in line
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    line = _one_line_error(*run_cli("reproduce", "--preset", "tiny", "--out", tmp_path / "busy",
                                    *corpus)[::2])
    assert "is not empty" in line
    (tmp_path / "file").write_text("x")
    line = _one_line_error(*run_cli("reproduce", "--preset", "tiny", "--out",
                                    tmp_path / "file" / "run", *corpus)[::2])
    assert "cannot create" in line
    line = _one_line_error(*run_cli("reproduce", "--preset", "tiny", "--out", tmp_path / "file",
                                    *corpus)[::2])
    assert "is a file, not a folder" in line
    line = _one_line_error(*run_cli("reproduce", "--out", tmp_path / "b", "--no-stdlib")[::2])
    assert "--no-stdlib leaves no text" in line
    line = _one_line_error(*run_cli("reproduce", "--out", tmp_path / "b", "--corpus",
                                    tmp_path / "missing")[::2])
    assert "does not exist" in line
    line = _one_line_error(*run_cli("reproduce", "--out", tmp_path / "b", "--stop-after",
                                    "lunch", *corpus)[::2])
    assert "unknown stage 'lunch'" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_directory_in_use_is_refused(tmp_path):
    preset, corpus = PRESET.to_json(), {"paths": [], "include_stdlib": True}
    first = RunDirectory.open(str(tmp_path / "run"), preset, corpus)
    with pytest.raises(ReproduceError, match=f"in use by another `sdsl reproduce` \\(pid {os.getpid()}\\)"):
        RunDirectory.open(str(tmp_path / "run"), preset, corpus)
    first.close()
    RunDirectory.open(str(tmp_path / "run"), preset, corpus).close()


def test_changed_preset_settings_are_refused(tmp_path):
    preset = PRESET.to_json()
    corpus = {"paths": [], "include_stdlib": True}
    RunDirectory.open(str(tmp_path / "run"), preset, corpus).close()
    with pytest.raises(ReproduceError, match="steps = 24.*has 48"):
        RunDirectory.open(str(tmp_path / "run"), dict(preset, steps=48), corpus)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(ReproduceError, match="not readable JSON"):
        RunDirectory.open(str(tmp_path / "bad"), preset, corpus)


def test_presets_are_checked():
    base = PRESET.to_json()
    with pytest.raises(PresetError, match="unknown size 'huge'"):
        Preset(**dict(base, drafts=("huge",)))
    with pytest.raises(PresetError, match="multiple of loss_points"):
        Preset(**dict(base, steps=25))
    with pytest.raises(PresetError, match="at least two targets"):
        Preset(**dict(base, targets=("200k",)))
    with pytest.raises(PresetError, match="needs at least 4"):
        Preset(**dict(base, drafts=("10k",)))
    with pytest.raises(PresetError, match="unknown preset"):
        get_preset("medium")
    for preset in PRESETS.values():
        assert all(size_params(d) < size_params(t) for d, t in preset.pairs())
        assert preset.train_tokens == preset.steps * preset.batch_size * preset.seq_len
