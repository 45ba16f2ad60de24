"""`sdsl measure`: per-prompt lines, resume, the summary row against its lines, and the
rows read by `sdsl fit`, `sdsl plot latency` and `sdsl plan --step-times`."""

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sdsl_jax import cli
from sdsl_jax.models import corpus as corpus_lib
from sdsl_jax import models
from sdsl_jax.fitting.synthetic import synthetic_measurements
from sdsl_jax.planning.calibration import read_step_times
from sdsl_jax.estimation.measurements import read_measurements, write_measurements
from sdsl_jax.plots.latency import read_latency
from sdsl_jax.decoding import pair as measure_lib

LOOKAHEAD, PROMPT_LEN, MAX_NEW, PROMPTS = 2, 24, 12, 5
SIZES = ("10k", "30k")


@pytest.fixture(scope="module")
def model_dirs(trained_pair):
    """The session's trained pair (conftest): a 10k draft and a 30k target, by size."""
    return {"10k": trained_pair.draft, "30k": trained_pair.target}


def _argv(model_dirs, corpus_dir, out, *extra, prompts=PROMPTS):
    return ["measure", "--draft", model_dirs["10k"], "--target", model_dirs["30k"],
            "--lookahead", LOOKAHEAD, "--prompts", prompts, "--prompt-len", PROMPT_LEN,
            "--max-new-tokens", MAX_NEW, "--no-stdlib", "--corpus", corpus_dir,
            "--bootstrap", 200, "--out", out, *extra]


def _lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def reference(model_dirs, corpus_dir, tmp_path_factory):
    """One uninterrupted run: (folder, runs path, rows path, its --json row)."""
    folder = tmp_path_factory.mktemp("measure")
    runs, rows = folder / "runs.jsonl", folder / "rows.jsonl"
    code = cli.main([str(a) for a in _argv(model_dirs, corpus_dir, runs, "--rows", rows,
                                           "--json")])
    assert code == 0
    return folder, runs, rows, _lines(rows)[0]


def _prompt(corpus_dir, seed, i):
    """Prompt i as documented: the held-out window at an offset drawn from (seed, i)."""
    text = corpus_lib.load_corpus([str(corpus_dir)], include_stdlib=False).validation
    start = int(np.random.default_rng([seed, i]).integers(0, text.size - PROMPT_LEN + 1))
    return text[start:start + PROMPT_LEN].astype(np.int64)


def _nll_of_logits(logits, tokens):
    """Teacher-forced NLL of tokens[1:] from full-sequence logits [T, V], in float64 numpy."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return -float(np.sum(logp[np.arange(len(tokens) - 1), tokens[1:]]))


@pytest.mark.slow
def test_lines_are_measurements_of_each_prompt(reference, model_dirs, corpus_dir):
    _, runs, _, row = reference
    lines = _lines(runs)
    assert [line["prompt_id"] for line in lines] == list(range(PROMPTS))
    for line in lines:
        k = line["accepted_per_iteration"]
        assert line["accepted"] == sum(k) and line["iterations"] == len(k)
        assert line["trials"] == sum(min(x + 1, LOOKAHEAD) for x in k)
        assert line["generated"] == 1 + sum(x + 1 for x in k) >= MAX_NEW
        assert (line["lookahead"], line["max_new_tokens"], line["prompt_len"]) == (
            LOOKAHEAD, MAX_NEW, PROMPT_LEN)
        assert line["speedup"] == pytest.approx(
            (line["baseline_ttot_s"] - line["baseline_ttft_s"]) / (line["ttot_s"] - line["ttft_s"]))
    for size, role in zip(SIZES, ("draft", "target")):
        card = models.load_card(str(model_dirs[size]))
        assert lines[0][f"{role}_params"] == card["params"]
        assert lines[0][f"{role}_tokens"] == card["tokens"]
        assert lines[0][f"{role}_perplexity"] == card["perplexity"]
    # The prompts are the held-out windows fixed by (seed, id).
    for i, line in enumerate(lines):
        assert line["prompt_hash"] == json_hash(_prompt(corpus_dir, 0, i))
        assert line["perplexity_source"] == "validation"
        # The precision that ran (the default), plain sampling, one device; a CPU
        # keeps no memory statistics.
        assert (line["precision"], line["draft_precision"], line["target_precision"]) == (
            "fp32", "fp32", "fp32")
        assert (line["top_k"], line["top_p"], line["eos_token"], line["devices"]) == (
            None, None, None, 1)
        expected_peak = jax.devices()[0].memory_stats()
        assert (line["peak_memory_bytes"] is None) == (not expected_peak)
    assert (row["precision"], row["devices"], row["top_k"]) == ("fp32", 1, None)


def json_hash(tokens):
    import hashlib
    return hashlib.sha256(json.dumps([int(t) for t in tokens]).encode()).hexdigest()[:16]


@pytest.mark.slow
def test_summary_row_against_its_lines(reference):
    _, runs, _, row = reference
    lines = _lines(runs)
    accepted = sum(line["accepted"] for line in lines)
    trials = sum(line["trials"] for line in lines)
    assert (row["prompts"], row["accepted"], row["trials"]) == (PROMPTS, accepted, trials)
    assert row["acceptance"] == pytest.approx(accepted / trials, rel=1e-6)
    assert row["acceptance_low"] <= row["acceptance"] <= row["acceptance_high"]
    assert row["acceptance_low"] < row["acceptance_high"]
    assert row["beta_mean"] == pytest.approx(sum(line["beta_sum"] for line in lines) / trials)
    iterations = sum(line["iterations"] for line in lines)
    assert row["mean_accepted"] == pytest.approx(accepted / iterations)
    # Per draft position: counts of K >= i over K >= i - 1, by brute force; the
    # fit test of one rate at every position against scipy; the serving ratio.
    k = np.concatenate([line["accepted_per_iteration"] for line in lines])
    reached = [int(np.sum(k >= i - 1)) for i in range(1, LOOKAHEAD + 1)]
    kept = [int(np.sum(k >= i)) for i in range(1, LOOKAHEAD + 1)]
    assert (row["position_reached"], row["position_accepted"]) == (reached, kept)
    for rate, low, high, a, n in zip(row["position_rates"], row["position_rates_low"],
                                     row["position_rates_high"], kept, reached):
        assert rate == pytest.approx(a / n, rel=1e-6) and low <= rate <= high
    observed = np.bincount(k, minlength=LOOKAHEAD + 1)
    alpha = accepted / trials
    pmf = [alpha ** j * (1 - alpha) for j in range(LOOKAHEAD)] + [alpha ** LOOKAHEAD]
    ref = stats.power_divergence(observed, observed.sum() * np.array(pmf), ddof=1,
                                 lambda_="log-likelihood")
    assert row["geometric_acceptance"] == pytest.approx(alpha, rel=1e-6)
    # The row is computed in float32, the precision the measurement ran in: the statistic
    # 2 sum O log(O / E) carries about (iterations x float32 eps) of rounding, which is all
    # there is when the counts fit the model closely (G near 0).
    g_resolution = 4 * k.size * float(np.finfo(np.float32).eps)
    assert row["geometric_fit_statistic"] == pytest.approx(ref.statistic, rel=1e-3,
                                                           abs=g_resolution)
    assert row["geometric_fit_p_value"] == pytest.approx(ref.pvalue, rel=1e-3, abs=1e-6)
    assert row["geometric_fit_df"] == LOOKAHEAD - 1
    assert row["serving_ratio"] == pytest.approx(k.sum() / (k.size * LOOKAHEAD), rel=1e-6)
    assert row["serving_ratio_iid"] == pytest.approx(
        sum(alpha ** i for i in range(1, LOOKAHEAD + 1)) / LOOKAHEAD, rel=1e-6)
    # Latency and speedup: Student-t intervals across prompts, as scipy gives them.
    for name, key in (("ttft", "ttft_s"), ("tpot", "tpot_s"), ("ttot", "ttot_s"),
                      ("baseline_tpot", "baseline_tpot_s"), ("speedup", "speedup")):
        x = np.array([line[key] for line in lines])
        low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert row[name] == pytest.approx(x.mean(), rel=1e-9)
        assert row[f"{name}_low"] == pytest.approx(max(low, 0.0), rel=1e-6, abs=1e-15)
        assert row[f"{name}_high"] == pytest.approx(high, rel=1e-6)
    # The law's prediction from the measured acceptance and step times, by hand
    # with the closed form E = (1 - a^(g+1)) / (1 - a).
    med = {k: float(np.median([line[k] for line in lines]))
           for k in ("draft_step_seconds", "target_step_seconds", "baseline_step_seconds",
                     "cost_ratio", "verify_cost")}
    assert all(row[k] == pytest.approx(med[k]) and med[k] > 0 for k in med)
    c, v = med["cost_ratio"], med["verify_cost"]
    a, g = row["acceptance"], LOOKAHEAD
    expected = (1 - a ** (g + 1)) / (1 - a)
    assert row["predicted_speedup"] == pytest.approx(expected / (g * c + 1), rel=1e-9)
    assert row["predicted_speedup_verify"] == pytest.approx(expected / (g * c + v), rel=1e-9)
    # x and y are the cards' held-out perplexities; the 30k target, trained alongside
    # the 10k draft, predicts held-out text better.
    for role in ("draft", "target"):
        assert row[f"{role}_perplexity"] == lines[0][f"{role}_perplexity"]
    assert row["draft_perplexity"] > row["target_perplexity"]


@pytest.mark.slow
def test_rows_are_read_by_fit_plot_and_plan(reference):
    _, runs, rows, row = reference
    measured = read_measurements(rows)
    assert len(measured) == 1
    assert measured.acceptance[0] == pytest.approx(row["acceptance"])
    table = read_latency(rows)
    for name in ("ttft", "tpot", "ttot"):
        assert table.columns[name][0] == pytest.approx(row[name])
        assert table.columns[f"{name}_low"][0] <= row[name] <= table.columns[f"{name}_high"][0]
    steps = read_step_times(rows)
    read = list(zip(np.asarray(steps.tokens_per_step).tolist(), np.asarray(steps.seconds).tolist(),
                    np.asarray(steps.num_params).tolist()))
    # A draft step (1 token) and a verification (lookahead + 1 tokens) at least.
    assert (1.0, pytest.approx(row["draft_step_seconds"]), row["draft_params"]) in read
    assert (LOOKAHEAD + 1.0, pytest.approx(row["target_step_seconds"]), row["target_params"]) in read
    # Every line of the runs file is a measurement row too (counts per prompt).
    per_prompt = read_measurements(runs)
    lines = _lines(runs)
    assert np.asarray(per_prompt.columns["trials"]).tolist() == [line["trials"] for line in lines]
    assert per_prompt.has_counts.all()


# --------------------------------------------------------------------------
# Teacher-forced acceptance.

# Windows of prompt + new tokens and one batch of them: the teacher-forced
# passes below and the loop's text in the agreement test share one compilation.
TF_WINDOW, TF_DOCUMENTS = PROMPT_LEN + MAX_NEW, 48


def _held_out_lines(corpus_dir):
    """The held-out document's non-empty lines (the prompt file of the teacher-forced run)."""
    corpus = corpus_lib.load_corpus([str(corpus_dir)], include_stdlib=False)
    (name,) = corpus.validation_documents
    text = (corpus_dir / name.split("/", 1)[1]).read_text()
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def teacher_forced(reference, model_dirs, corpus_dir):
    """`sdsl measure --teacher-forced` on the held-out lines, its row added to the reference
    rows file: (its --json row, the prompt file)."""
    folder, _, rows, _ = reference
    prompt_file = folder / "held-out.txt"
    prompt_file.write_text("\n".join(_held_out_lines(corpus_dir)) + "\n")
    code = cli.main([str(a) for a in (
        "measure", "--teacher-forced", "--draft", model_dirs["10k"], "--target",
        model_dirs["30k"], "--prompt-file", prompt_file, "--documents", TF_DOCUMENTS,
        "--prompt-len", TF_WINDOW, "--batch-size", TF_DOCUMENTS, "--lookahead", LOOKAHEAD,
        "--bootstrap", 200, "--rows", rows, "--json")])
    assert code == 0
    return [r for r in _lines(rows) if r.get("method") == "teacher-forced"][0], prompt_file


@pytest.mark.slow
def test_teacher_forced_row(teacher_forced, model_dirs, corpus_dir, tmp_path):
    from sdsl_jax.models import tokenizer
    from sdsl_jax.decoding.teacher_forced import document_windows, teacher_forced_acceptance
    row, _ = teacher_forced
    lines = _held_out_lines(corpus_dir)[:TF_DOCUMENTS]
    documents = [tokenizer.encode(line, bos=True) for line in lines]
    # Every position of every document counted once, however the lines were windowed.
    assert row["positions"] == sum(len(d) - 1 for d in documents)
    assert row["prompts"] == TF_DOCUMENTS and row["windows"] > TF_DOCUMENTS
    assert row["acceptance_low"] <= row["acceptance"] <= row["acceptance_high"]
    assert 0 < row["acceptance_high"] - row["acceptance_low"] < 0.2
    # The command's number is the library's on those windows, with the same key.
    draft, target = (models.load_decoder(str(model_dirs[s])) for s in SIZES)
    tokens, lengths, first, ids = document_windows(documents, TF_WINDOW)
    direct = teacher_forced_acceptance(draft, target, tokens, 1.0, lengths=lengths,
                                       first_position=first, document_ids=ids,
                                       batch_size=TF_DOCUMENTS, num_resamples=200,
                                       key=jax.random.PRNGKey(0))
    assert row["acceptance"] == pytest.approx(direct.acceptance, rel=1e-6)
    assert (row["acceptance_low"], row["acceptance_high"]) == pytest.approx(
        (direct.low, direct.high), rel=1e-6)
    assert row["target_document_perplexity"] == pytest.approx(direct.target_perplexity, rel=1e-6)
    # A measurement row: the cards' perplexities (the laws' x and y), method and lookahead.
    for size, role in zip(SIZES, ("draft", "target")):
        card = models.load_card(str(model_dirs[size]))
        assert (row[f"{role}_perplexity"], row[f"{role}_tokens"]) == (card["perplexity"],
                                                                      card["tokens"])
    assert (row["method"], row["lookahead"], row["temperature"]) == ("teacher-forced",
                                                                     LOOKAHEAD, 1.0)
    assert (row["precision"], row["draft_precision"], row["devices"]) == ("fp32", "fp32", 1)
    measured = read_measurements(_write_jsonl(tmp_path / "tf.jsonl", [row]))
    assert measured.acceptance[0] == pytest.approx(row["acceptance"])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_teacher_forced_on_the_corpus_greedy_text_summary(model_dirs, corpus_dir, run_cli):
    code, out, err = run_cli([
        "measure", "--teacher-forced", "--draft", model_dirs["10k"], "--target",
        model_dirs["30k"], "--no-stdlib", "--corpus", corpus_dir, "--greedy",
        "--prompt-len", TF_WINDOW, "--batch-size", TF_DOCUMENTS, "--bootstrap", 200])
    assert code == 0, err
    held_out = corpus_lib.load_corpus([str(corpus_dir)], include_stdlib=False).validation
    # One held-out document (BOS + its bytes), every position of it.
    for text in ("teacher-forced, greedy: 1 held-out document,",
                 f"{held_out.size - 1:,} positions", "acceptance alpha", "documents as clusters",
                 "target perplexity"):
        assert text in out, (text, out)


@pytest.mark.slow
def test_teacher_forced_agrees_with_the_loop(model_dirs, corpus_dir, teacher_forced):
    """On the trained pair, the loop's count estimate and teacher forcing on the loop's own
    (target-sampled) text estimate one alpha: their intervals overlap."""
    from sdsl_jax.estimation.acceptance import estimate_acceptance
    from sdsl_jax.decoding import loop
    from sdsl_jax.decoding.pair import run_records
    from sdsl_jax.decoding.metrics import Timing, acceptance_inputs
    from sdsl_jax.decoding.teacher_forced import teacher_forced_acceptance
    draft, target = (models.load_decoder(str(model_dirs[s])) for s in SIZES)
    prompts = np.stack([_prompt(corpus_dir, 7, i) for i in range(TF_DOCUMENTS)]).astype(np.int32)
    records, generated = [], []
    for i in range(TF_DOCUMENTS):  # batch 1, as `sdsl measure` ran: one compiled loop
        gen = loop.speculative_generate(draft, target, jnp.asarray(prompts[i:i + 1]),
                                        jnp.array([PROMPT_LEN], jnp.int32),
                                        jax.random.PRNGKey(7), lookahead=LOOKAHEAD,
                                        max_new_tokens=MAX_NEW, temperature=1.0,
                                        row_ids=jnp.array([i]))
        records += run_records(gen, Timing(prefill_seconds=0.0, decode_seconds=1.0), prompt_ids=[i],
                               prompt_lengths=[PROMPT_LEN],
                               max_new_tokens=MAX_NEW, temperature=1.0)
        generated.append(np.asarray(gen.tokens[0]))
    acc, gam, ids = acceptance_inputs(records)
    loop_estimate = estimate_acceptance(acc, gam, ids, interval="cluster",
                                        num_prompts=TF_DOCUMENTS)
    text = np.concatenate([prompts, np.stack(generated)], axis=1)
    # Drafted positions predict the tokens after the first new one: positions >= the
    # prompt's length.
    tf = teacher_forced_acceptance(draft, target, text, 1.0, first_position=PROMPT_LEN,
                                   batch_size=TF_DOCUMENTS, num_resamples=200)
    beta = sum(r["beta_sum"] for r in records) / sum(r["beta_count"] for r in records)
    print(f"\nloop {float(loop_estimate.acceptance):.4f} [{float(loop_estimate.low):.4f}, "
          f"{float(loop_estimate.high):.4f}] (mean exact beta of judged drafts {beta:.4f}); "
          f"teacher-forced {tf.acceptance:.4f} [{tf.low:.4f}, {tf.high:.4f}]; "
          f"teacher-forced on held-out text {teacher_forced[0]['acceptance']:.4f}")
    assert max(float(loop_estimate.low), tf.low) <= min(float(loop_estimate.high), tf.high)
    assert tf.low <= beta <= tf.high
    assert abs(float(loop_estimate.acceptance) - tf.acceptance) < 0.1


@pytest.mark.slow
def test_human_summary_greedy_and_fit_on_measured_rows(reference, teacher_forced, model_dirs,
                                                       corpus_dir, run_cli):
    folder, _, rows, row = reference
    greedy = folder / "greedy.jsonl"
    summary = folder / "greedy-summary.json"
    code, out, err = run_cli(_argv(model_dirs, corpus_dir, greedy, "--greedy", "--rows",
                                        rows, "--summary", summary))
    assert code == 0, err
    for text in ("acceptance alpha", "speedup over target alone", "law's speedup", "TTFT",
                 "TPOT", "TTOT", "95% interval", "greedy", f"{PROMPTS} prompts measured now",
                 "at draft position 1", f"at draft position {LOOKAHEAD}", "i.i.d. fit test",
                 "serving stacks' ratio", "(accepted length - 1)/(budget - 1)", "fp32 on "):
        assert text in out, text
    greedy_row = json.loads(summary.read_text())
    assert greedy_row["temperature"] == 0.0 and f"{greedy_row['acceptance']:.4f}" in out, out
    # bfloat16 end to end, and top-k: tests/cli/test_measure_devices.py (its process
    # compiles the bfloat16 loop once for all of them).
    # A rerun of a finished measurement replaces its row instead of adding one.
    code, out, err = run_cli(_argv(model_dirs, corpus_dir, folder / "runs.jsonl", "--rows",
                                        rows))
    assert code == 0 and "0 prompts measured now, 5 from an earlier run" in out, out + err
    written = _lines(rows)
    assert [r["temperature"] for r in written] == [1.0, 0.0, 1.0]
    # ... and keeps the teacher-forced row of the pair beside the loop's.
    assert [r.get("method") for r in written] == ["teacher-forced", "loop", "loop"]
    assert written[2]["acceptance"] == row["acceptance"]
    # `sdsl fit` reads the rows as they are (the loop's and the teacher-forced one),
    # here beside synthetic pairs (a fit needs more pairs than a test can train).
    synthetic = folder / "synthetic.jsonl"
    write_measurements(synthetic_measurements(num_targets=3, num_drafts=3, seed=1), synthetic)
    combined = folder / "combined.jsonl"
    combined.write_text(rows.read_text() + synthetic.read_text())
    code, out, err = run_cli(["fit", combined, "--bootstrap", "0", "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["measurements"] == 3 + 9 and report["targets"] == 4, report
    assert "30k" in [t["target"] for t in report["per_target"]]
    # `sdsl plan --position-rates` plans the lookahead from the measured summary.
    code, out, err = run_cli(["plan", "--position-rates", summary, "--json"])
    assert code == 0, err
    plan = json.loads(out)
    rates = greedy_row["position_rates"]
    rates = rates[:rates.index(None)] if None in rates else rates
    c = greedy_row["cost_ratio"]
    by_hand = [(1 + sum(np.prod(rates[:k]) for k in range(1, g + 1))) / (g * c + 1)
               for g in range(len(rates) + 1)]
    assert (plan["cost_ratio"], plan["lookahead"]) == (c, int(np.argmax(by_hand)))
    assert plan["iid_acceptance"] == greedy_row["acceptance"]


@pytest.mark.slow
def test_interrupted_run_keeps_finished_prompts_and_resumes(reference, model_dirs, corpus_dir,
                                                            run_cli, monkeypatch):
    folder, ref_runs, _, _ = reference
    runs = folder / "interrupted.jsonl"
    real = measure_lib.measure_pair

    def interrupted(*args, **kwargs):
        for n, record in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt  # as Ctrl-C, or a kill, between prompts
            yield record

    monkeypatch.setattr(measure_lib, "measure_pair", interrupted)
    code, _, err = run_cli(_argv(model_dirs, corpus_dir, runs, "--json"))
    assert code == 130 and "interrupted" in err
    kept = runs.read_bytes()
    assert [line["prompt_id"] for line in _lines(runs)] == [0, 1]
    # A kill in the middle of a write leaves a torn last line: it is dropped and redone.
    with open(runs, "ab") as handle:
        handle.write(b'{"prompt_id": 2, "draft_mod')
    monkeypatch.setattr(measure_lib, "measure_pair", real)
    code, out, _ = run_cli(_argv(model_dirs, corpus_dir, runs, "--json"))
    assert code == 0 and json.loads(out)["prompts"] == PROMPTS
    assert runs.read_bytes().startswith(kept)
    lines, ref = _lines(runs), _lines(ref_runs)
    assert [line["prompt_id"] for line in lines] == list(range(PROMPTS))
    # Randomness follows the prompt id: the resumed run is the uninterrupted one.
    assert [line["accepted_per_iteration"] for line in lines] == \
        [line["accepted_per_iteration"] for line in ref]
    # Each line names its timed batch, numbered on across the resumption (batch size 1).
    assert [line["batch_index"] for line in lines] == list(range(PROMPTS))
    # More prompts extend a finished run; prompt i stays the same text.
    code, out, _ = run_cli(_argv(model_dirs, corpus_dir, runs, "--json",
                                      prompts=PROMPTS + 1))
    assert code == 0 and json.loads(out)["prompts"] == PROMPTS + 1
    lines = _lines(runs)
    assert [line["prompt_id"] for line in lines] == list(range(PROMPTS + 1))
    assert lines[PROMPTS]["batch_index"] == PROMPTS
    assert lines[PROMPTS]["prompt_hash"] == json_hash(_prompt(corpus_dir, 0, PROMPTS))


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--lookahead", "3"], "lookahead = 2"),
    (["--greedy"], "temperature = 1.0"),
    (["--seed", "1"], "seed = 0"),
    (["--no-baseline"], "baseline = True"),
    (["--dtype", "float16"], "draft_precision = 'fp32', this run has 'fp16'"),
    (["--top-p", "0.9"], "top_p = None, this run has 0.9"),
])
def test_refuses_to_mix_settings(reference, model_dirs, corpus_dir, run_cli, flags, message):
    _, runs, _, _ = reference
    before = runs.read_bytes()
    argv = _argv(model_dirs, corpus_dir, runs)
    if flags[0] == "--lookahead":
        argv[argv.index("--lookahead") + 1] = flags[1]
    else:
        argv += flags
    code, _, err = run_cli(argv)
    assert code == 2 and message in err and "another --out" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert runs.read_bytes() == before


# --------------------------------------------------------------------------
# Hugging Face checkpoints and errors.


def _gpt2_dir(path, texts, *, width, layers, vocab, positions, seed, rows=None, eos=None):
    """A GPT-2 directory as transformers saves one: config, safetensors weights and a
    byte-level BPE tokenizer of `vocab` ids trained on `texts`; `rows` embedding rows
    (default: one per id; more, as checkpoints pad them for matmul efficiency); `eos`
    the config's eos_token_id (default: none)."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers

    path.mkdir()
    tokenizer = Tokenizer(tok_models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.save(str(path / "tokenizer.json"))
    rng = np.random.default_rng(seed)
    d = width
    rows = vocab if rows is None else rows
    w = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)
    tensors = {"wte.weight": w(rows, d), "wpe.weight": w(positions, d),
               "ln_f.weight": 1 + w(d), "ln_f.bias": w(d)}
    for i in range(layers):
        for name, shape in (("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("ln_2.weight", (d,)),
                            ("ln_2.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)),
                            ("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)),
                            ("attn.c_proj.bias", (d,)), ("mlp.c_fc.weight", (d, 4 * d)),
                            ("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)),
                            ("mlp.c_proj.bias", (d,))):
            tensors[f"h.{i}.{name}"] = (1 if name.startswith("ln") and "weight" in name else 0) \
                + w(*shape)
    save_file(tensors, str(path / "model.safetensors"))
    config = {"model_type": "gpt2", "n_embd": d, "n_layer": layers, "n_head": 2,
              "vocab_size": rows, "n_positions": positions}
    if eos is not None:
        config["eos_token_id"] = eos
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, corpus_dir):
    folder = tmp_path_factory.mktemp("hf")
    texts = [(corpus_dir / "textwrap.py").read_text()]
    return {
        # One architecture for both (different weights): they share compilations.
        "draft": _gpt2_dir(folder / "gpt2-draft", texts, width=16, layers=1, vocab=300,
                           positions=64, seed=0),
        # The draft's tokenizer with 8 embedding rows more: padded to one size. Its
        # end-of-sequence ids are a list, as some configs give them; the first is used.
        "target": _gpt2_dir(folder / "gpt2-target", texts, width=16, layers=1, vocab=300,
                            positions=64, seed=1, rows=308, eos=[17, 3]),
        "other_vocab": _gpt2_dir(folder / "gpt2-other", texts, width=16, layers=1, vocab=280,
                                 positions=64, seed=2),
    }


@pytest.mark.slow
def test_hugging_face_pair_perplexity_on_the_prompts(hf_dirs, tmp_path, run_cli):
    from sdsl_jax.hf import load_hf_decoder, load_hf_tokenizer
    prompts = ["def wrap(text, width=70, **kwargs):", "import re", "class TextWrapper:",
               "    def _split(self, text):", "# Copyright (C) 1999-2001 Gregory P. Ward."]
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    runs = tmp_path / "runs.jsonl"
    code, out, err = run_cli([
        "measure", "--draft", hf_dirs["draft"], "--target", hf_dirs["target"], "--lookahead", 2,
        "--prompt-file", prompt_file, "--max-new-tokens", 6, "--no-baseline", "--bootstrap", 200,
        "--draft-tokens", "1M", "--target-tokens", "2M", "--out", runs, "--json",
        "--stop-at-eos"])
    assert code == 0, err
    row, lines = json.loads(out), _lines(runs)
    assert row["eos_token"] == 17 and {line["eos_token"] for line in lines} == {17}
    assert row["perplexity_source"] == "prompts" and row["prompts"] == len(prompts)
    assert (row["draft_tokens"], row["target_tokens"]) == (1e6, 2e6)
    assert "speedup" not in row and lines[0].get("speedup") is None
    # Each line's perplexity is its prompt's, from one causal full-sequence forward
    # of all prompts (right padding cannot reach back into a prompt). The run padded the
    # draft's 300 ids to the target's 308 embedding rows; the reference below is the
    # unpadded draft: padding leaves its distribution over the real ids as it was.
    tokenizer = load_hf_tokenizer(hf_dirs["target"])
    draft = load_hf_decoder(hf_dirs["draft"])
    ids = [np.asarray(tokenizer.encode(text).ids) for text in prompts]
    padded = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, prompt_ids in enumerate(ids):
        padded[i, :len(prompt_ids)] = prompt_ids
    logits, _ = jax.jit(draft.forward)(draft.params, jnp.asarray(padded),
                                       jnp.zeros(len(ids), jnp.int32),
                                       draft.init_cache(len(ids), padded.shape[1]))
    for line, row_ids, row_logits in zip(lines, ids, logits):
        nll = _nll_of_logits(row_logits[:len(row_ids)], row_ids)
        assert line["prompt_scored_tokens"] == len(row_ids) - 1
        assert line["draft_perplexity"] == pytest.approx(math.exp(nll / (len(row_ids) - 1)),
                                                         rel=1e-4)
    scored = sum(line["prompt_scored_tokens"] for line in lines)
    assert row["draft_perplexity"] == pytest.approx(
        math.exp(sum(line["draft_prompt_nll"] for line in lines) / scored))
    assert read_measurements(runs).has_counts.all()


def _error_cases(model_dirs, hf_dirs, corpus_dir, tmp):
    ours = ["--no-stdlib", "--corpus", corpus_dir, "--prompts", 2, "--out", tmp / "e.jsonl"]
    pair = ["--draft", model_dirs["10k"], "--target", model_dirs["30k"]]
    unfinished = tmp / "unfinished"
    unfinished.mkdir(exist_ok=True)
    shutil.copy(model_dirs["10k"] / "config.json", unfinished / "config.json")
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "long.txt").write_text("short\n" + "x" * 40 + "\n")
    (tmp / "other.jsonl").write_text('{"something": "else"}\n')
    hf = ["--draft", hf_dirs["draft"], "--target", hf_dirs["target"], "--draft-tokens", "1M",
          "--target-tokens", "1M"]
    return [
        (["--draft", tmp / "missing", "--target", model_dirs["30k"], "--lookahead", 2, *ours],
         "does not exist"),
        (["--draft", tmp / "empty", "--target", model_dirs["30k"], "--lookahead", 2, *ours],
         "is not a model directory"),
        (["--draft", unfinished, "--target", model_dirs["30k"], "--lookahead", 2, *ours],
         "has no model.json"),
        ([*pair, "--lookahead", 0, *ours], "--lookahead: must be at least 1"),
        ([*pair, "--lookahead", 2, "--max-new-tokens", 1, *ours], "--max-new-tokens: must be"),
        (["--draft", model_dirs["10k"], "--target", hf_dirs["target"], "--target-tokens", "1M",
          "--lookahead", 2, *ours], "vocabularies differ"),
        (["--draft", hf_dirs["other_vocab"], "--target", hf_dirs["target"], "--draft-tokens", "1M",
          "--target-tokens", "1M", "--lookahead", 2, *ours], "vocabularies differ"),
        (["--draft", hf_dirs["draft"], "--target", hf_dirs["target"], "--target-tokens", "1M",
          "--lookahead", 2, *ours], "--draft-tokens"),
        ([*hf, "--lookahead", 2, "--prompt-len", 60, *ours], "do not fit the draft's cache"),
        ([*pair, "--lookahead", 2, "--prompt-file", tmp / "long.txt", "--prompt-len", 10,
          "--out", tmp / "e.jsonl"], "prompt 1 has 41 tokens, more than --prompt-len 10"),
        ([*pair, "--lookahead", 2, "--prompt-file", tmp / "long.txt", *ours],
         "--prompt-file gives the prompts"),
        ([*pair, "--lookahead", 2, *ours, "--rows", tmp / "rows.csv"], "JSON Lines"),
        ([*pair, "--lookahead", 2, "--no-stdlib", "--corpus", corpus_dir, "--prompts", 2,
          "--out", tmp / "other.jsonl"], "not a record of this `sdsl measure` (no 'draft_model')"),
        ([*pair, *ours], "argument --lookahead is required (or give --teacher-forced)"),
        ([*pair, "--teacher-forced", *ours], "--teacher-forced runs no generation loop; drop "
                                             "--out, --prompts"),
        ([*pair, "--lookahead", 2, "--documents", 3, *ours], "--documents goes with"),
        ([*pair, "--teacher-forced", "--prompt-file", tmp / "long.txt", "--documents", 3],
         "--documents: " + str(tmp / "long.txt") + " has only 2 lines, 3 asked for"),
        ([*hf, "--teacher-forced", "--prompt-file", tmp / "long.txt", "--prompt-len", 80],
         "the window --prompt-len = 80 positions"),
        ([*pair, "--lookahead", 2, "--stop-at-eos", *ours],
         "--stop-at-eos: the target 30k is a byte-level model of `sdsl train`, which has no "
         "end-of-sequence token"),
        (["--draft", hf_dirs["target"], "--target", hf_dirs["draft"], "--draft-tokens", "1M",
          "--target-tokens", "1M", "--lookahead", 2, "--stop-at-eos", "--prompt-len", 8,
          "--max-new-tokens", 4, *ours],
         "--stop-at-eos: the target gpt2-draft's config.json gives no eos_token_id"),
        ([*pair, "--lookahead", 2, "--top-k", 300, *ours],
         "--top-k: 300 is more than the 257 tokens of the vocabulary"),
        ([*pair, "--teacher-forced", "--top-k", 5, "--top-p", 0.9, "--stop-at-eos"],
         "drop --top-k, --top-p, --stop-at-eos"),
        ([*pair, "--lookahead", 2, "--devices", 999, *ours],
         "--devices: 999 devices asked for, JAX sees"),
        ([*pair, "--lookahead", 2, "--greedy", "--top-p", 0.5, *ours],
         "--top-p truncate a sampled distribution; greedy decoding"),
    ]


@pytest.mark.slow
def test_errors_are_one_line(model_dirs, hf_dirs, corpus_dir, tmp_path, run_cli):
    for argv, message in _error_cases(model_dirs, hf_dirs, corpus_dir, tmp_path):
        code, out, err = run_cli(["measure", *argv])
        assert code == 2, (argv, err)
        assert message in err and err.startswith("error: ") and err.count("\n") == 1, (message, err)
        assert "Traceback" not in err and out == ""


def test_law_speedup_is_the_throughput_law():
    from sdsl_jax.decoding.metrics import law_speedup
    from sdsl_jax.laws.throughput import speedup
    for alpha, gamma, c in ((0.0, 1, 0.5), (0.3, 2, 0.01), (0.8, 5, 0.2), (0.999, 7, 0.05),
                            (1.0, 4, 0.1)):
        assert law_speedup(alpha, gamma, c) == pytest.approx(float(speedup(alpha, gamma, c)),
                                                             rel=1e-6)
        # The measured verification cost v replaces the law's one target step.
        assert law_speedup(alpha, gamma, c, 2.5) == pytest.approx(
            law_speedup(alpha, gamma, c) * (gamma * c + 1) / (gamma * c + 2.5))
    assert law_speedup(1.0, 4, 0.1) == pytest.approx(5 / 1.4)


@pytest.mark.slow
def test_parser_loads_no_models():
    # The parser imports every subcommand's module for every command: flax,
    # orbax and the decoding stack must wait until a measurement runs.
    code = ("import sys, sdsl_jax; before = set(sys.modules); import sdsl_jax.cli.measure; "
            "new = set(sys.modules) - before; "
            "heavy = [m for m in new if m.split('.')[0] in ('flax', 'orbax', 'tokenizers') "
            "or m.startswith(('sdsl_jax.models', 'sdsl_jax.decoding', 'sdsl_jax.hf'))]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stdout + result.stderr
