"""Stage 3: measure every (draft, target) pair with the speculative loop, and teacher-forced.

The loop is the run ``sdsl measure`` makes (:mod:`sdsl_jax.decoding.run`),
with its defaults, once per pair on held-out prompts at batch 1: each
finished prompt lands in the pair's runs file at once, so a killed run
resumes prompt by prompt, and the pair's summary row (acceptance with its
interval across prompts (prompts as clusters); TTFT, TPOT, TTOT and the speedup over
the target alone with Student-t intervals; the measured step times) goes to
``measure/rows.jsonl``, which ``sdsl fit``, ``sdsl plot latency`` and
``sdsl plan --step-times`` read; the text ``sdsl measure`` would print goes
to ``measure/summary-<pair>.txt``. Stage 6 takes its latencies from the
same runs: one decoding, two uses.

The cross-check is :func:`sdsl_jax.decoding.teacher_forced.teacher_forced_acceptance`
on held-out windows: alpha as the mean of beta = sum min(p, q) over every
position of human text, where the loop's alpha is over the target's own
samples (the two differ by how far the text is from the target's samples).
"""

from __future__ import annotations

import logging
import os

from sdsl_jax.common.io import append_jsonl, atomic_write_text, read_jsonl
from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.manifest import ReproduceError

RUNS_DIR = "measure"
# What `sdsl measure` defaults to, and so what every pair is summarised with.
CONFIDENCE, BOOTSTRAP, BATCH_SIZE = 0.95, 1000, 1


def _pair_name(draft: str, target: str) -> str:
    return f"{draft}-{target}"


def _row_of(rows: list[dict], draft: str, target: str, prompts: int) -> dict | None:
    for row in rows:
        if row.get("draft_model") == draft and row.get("target_model") == target \
                and row.get("prompts") == prompts:
            return row
    return None


def _run_model(model_dir: str, role: str):
    """A trained model as its runs file records it (its card's name, tokens, perplexity)."""
    from sdsl_jax.decoding.run import RunModel
    from sdsl_jax.models import load_card, load_decoder
    try:
        card = load_card(model_dir)
        decoder = load_decoder(model_dir)
    except ValueError as err:  # CheckpointError: worded as `sdsl measure` words it
        raise ReproduceError(f"sdsl measure: argument --{role}: {err}") from None
    return RunModel(decoder=decoder, name=str(card.get("name", decoder.name)),
                    tokens=float(card["tokens"]), perplexity=float(card["perplexity"]),
                    family=card.get("family"))


def _measure_pair(ctx: Context, draft: str, target: str, runs_path: str, rows_path: str,
                  summary_path: str) -> None:
    """The loop over the preset's prompts for one pair, resumed from ``runs_path``: its row
    added to ``rows_path`` and its summary written to ``summary_path``."""
    import jax
    import numpy as np

    from sdsl_jax.decoding import run as measure_run
    from sdsl_jax.decoding.rows import summary_row, write_row
    from sdsl_jax.decoding.summary import loop_summary

    preset = ctx.preset
    try:
        with jax.enable_x64(False):  # the models run in float32
            pair = (_run_model(ctx.model_dir(draft), "draft"),
                    _run_model(ctx.model_dir(target), "target"))
            corpus = ctx.corpus()
            # Prompt i is the held-out window fixed by (seed, i), as `sdsl measure` draws it.
            prompts = [window.astype(np.int64).tolist() for window in measure_run.prompt_windows(
                corpus.validation, preset.prompts, preset.prompt_len, preset.seed)]
            settings = measure_run.run_settings(
                *pair, lookahead=preset.lookahead, temperature=float(preset.temperature),
                max_new_tokens=preset.max_new_tokens, prompt_len=preset.prompt_len,
                batch_size=BATCH_SIZE, baseline=True, seed=preset.seed,
                prompt_set=f"corpus:{corpus.fingerprint[:16]}")
            records, measured_now = measure_run.measure_run(*pair, prompts, settings, runs_path)
            row = summary_row(records, confidence=CONFIDENCE, num_resamples=BOOTSTRAP,
                              seed=preset.seed)
        row["runs_file"] = runs_path
        write_row(rows_path, row)
    except measure_run.MeasureRunError as err:
        raise ReproduceError(str(err)) from None
    atomic_write_text(summary_path, loop_summary(row, runs_file=runs_path,
                                                 measured_now=measured_now,
                                                 from_earlier=len(prompts) - measured_now))


def _teacher_forced(ctx: Context, pairs, path: str) -> list[dict]:
    """The teacher-forced row of every pair, resuming from those already in ``path``."""
    import jax

    from sdsl_jax.models import corpus as corpus_lib
    from sdsl_jax.models import load_decoder
    from sdsl_jax.decoding.teacher_forced import teacher_forced_acceptance

    preset = ctx.preset
    done = {(r["draft_model"], r["target_model"]): r for r in read_jsonl(path)}
    todo = [pair for pair in pairs if pair not in done]
    if todo:
        corpus = ctx.corpus()
        documents = corpus_lib.evaluation_windows(corpus.validation, preset.teacher_forced_length,
                                                  preset.teacher_forced_documents)
        decoders = {}
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)  # read-only checkpoint managers warn that they will not save
        try:
            with jax.enable_x64(False):
                for draft, target in todo:
                    for size in (draft, target):
                        if size not in decoders:
                            decoders[size] = load_decoder(ctx.model_dir(size))
                    result = teacher_forced_acceptance(
                        decoders[draft], decoders[target], documents, preset.temperature,
                        batch_size=min(16, len(documents)),
                        key=jax.random.PRNGKey(preset.seed))
                    row = result.measurement_row(
                        draft_tokens=preset.train_tokens, target_tokens=preset.train_tokens,
                        lookahead=preset.lookahead, prompt_set="held-out windows",
                        documents=int(len(documents)), document_length=preset.teacher_forced_length)
                    append_jsonl(path, row)
                    done[(draft, target)] = row
                    ctx.log(f"  teacher-forced {draft} -> {target}: alpha {row['acceptance']:.4f} "
                            f"[{row['acceptance_low']:.4f}, {row['acceptance_high']:.4f}]")
        finally:
            absl.setLevel(level)
    return [done[pair] for pair in pairs]


def run(ctx: Context) -> dict:
    preset = ctx.preset
    pairs = preset.pairs()
    rows_path = ctx.run.path(RUNS_DIR, "rows.jsonl")
    for index, (draft, target) in enumerate(pairs, 1):
        if _row_of(read_jsonl(rows_path), draft, target, preset.prompts) is not None:
            ctx.log(f"  pair {index}/{len(pairs)} {draft} -> {target}: measured earlier")
            continue
        runs_path = ctx.run.path(RUNS_DIR, f"runs-{_pair_name(draft, target)}.jsonl")
        earlier = len(read_jsonl(runs_path))
        ctx.log(f"  pair {index}/{len(pairs)} {draft} -> {target}: {preset.prompts} prompts, "
                f"lookahead {preset.lookahead}, {preset.max_new_tokens} new tokens each"
                + (f" ({earlier} measured earlier)" if earlier else " (compiling the loop first)"))
        _measure_pair(ctx, draft, target, runs_path, rows_path,
                      ctx.run.path(RUNS_DIR, f"summary-{_pair_name(draft, target)}.txt"))
        row = _row_of(read_jsonl(rows_path), draft, target, preset.prompts)
        if row is None:
            raise ReproduceError(f"sdsl measure wrote no row for {draft} -> {target} to {rows_path}")
        ctx.log(f"    alpha {row['acceptance']:.4f} [{row['acceptance_low']:.4f}, "
                f"{row['acceptance_high']:.4f}], TPOT {row['tpot'] * 1e3:.3g} ms (target alone "
                f"{row['baseline_tpot'] * 1e3:.3g} ms)")
    rows = read_jsonl(rows_path)
    loop_rows = [_row_of(rows, d, t, preset.prompts) for d, t in pairs]
    teacher_forced = []
    if preset.teacher_forced_documents > 0:
        ctx.log(f"  teacher-forced cross-check on {preset.teacher_forced_documents} held-out "
                f"windows of {preset.teacher_forced_length} tokens")
        teacher_forced = _teacher_forced(ctx, pairs, ctx.run.path(RUNS_DIR, "teacher_forced.jsonl"))
    return {"pairs": [list(p) for p in pairs], "loop": loop_rows, "teacher_forced": teacher_forced,
            "rows_file": os.path.relpath(rows_path, ctx.run.root)}
