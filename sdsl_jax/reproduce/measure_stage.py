"""Stage 3: measure every (draft, target) pair with the speculative loop, and teacher-forced.

The loop is ``sdsl measure`` itself (:func:`sdsl_jax.cli.measure.run`), run
once per pair on held-out prompts at batch 1: each finished prompt lands in
the pair's runs file at once, so a killed run resumes prompt by prompt, and
the pair's summary row (acceptance with its bootstrap interval across
prompts; TTFT, TPOT, TTOT and the speedup over the target alone with
Student-t intervals; the measured step times) goes to ``measure/rows.jsonl``,
which ``sdsl fit``, ``sdsl plot latency`` and ``sdsl plan --step-times``
read. Stage 6 takes its latencies from the same runs: one decoding, two uses.

The cross-check is :func:`sdsl_jax.decoding.teacher_forced.teacher_forced_acceptance`
on held-out windows: alpha as the mean of beta = sum min(p, q) over every
position of human text, where the loop's alpha is over the target's own
samples (the two differ by how far the text is from the target's samples).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.manifest import ReproduceError, append_jsonl, read_jsonl

RUNS_DIR = "measure"


def _pair_name(draft: str, target: str) -> str:
    return f"{draft}-{target}"


def _row_of(rows: list[dict], draft: str, target: str, prompts: int) -> dict | None:
    for row in rows:
        if row.get("draft_model") == draft and row.get("target_model") == target \
                and row.get("prompts") == prompts:
            return row
    return None


def _measure_arguments(ctx: Context, draft: str, target: str, rows_path: str) -> argparse.Namespace:
    """``sdsl measure``'s arguments for one pair, through its own parser (so every default holds)."""
    from sdsl_jax.cli import measure as measure_cli
    preset = ctx.preset
    parser = argparse.ArgumentParser(prog="sdsl measure")
    measure_cli.add_arguments(parser)
    argv = ["--draft", ctx.model_dir(draft), "--target", ctx.model_dir(target),
            "--lookahead", str(preset.lookahead), "--prompts", str(preset.prompts),
            "--prompt-len", str(preset.prompt_len), "--max-new-tokens", str(preset.max_new_tokens),
            "--temperature", repr(float(preset.temperature)), "--seed", str(preset.seed),
            "--out", ctx.run.path(RUNS_DIR, f"runs-{_pair_name(draft, target)}.jsonl"),
            "--rows", rows_path]
    if ctx.corpus_paths:
        argv += ["--corpus", *ctx.corpus_paths]
    if not ctx.include_stdlib:
        argv += ["--no-stdlib"]
    return parser.parse_args(argv)


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
    from sdsl_jax.cli import measure as measure_cli

    preset = ctx.preset
    pairs = preset.pairs()
    rows_path = ctx.run.path(RUNS_DIR, "rows.jsonl")
    for index, (draft, target) in enumerate(pairs, 1):
        if _row_of(read_jsonl(rows_path), draft, target, preset.prompts) is not None:
            ctx.log(f"  pair {index}/{len(pairs)} {draft} -> {target}: measured earlier")
            continue
        args = _measure_arguments(ctx, draft, target, rows_path)
        earlier = len(read_jsonl(args.out))
        ctx.log(f"  pair {index}/{len(pairs)} {draft} -> {target}: {preset.prompts} prompts, "
                f"lookahead {preset.lookahead}, {preset.max_new_tokens} new tokens each"
                + (f" ({earlier} measured earlier)" if earlier else " (compiling the loop first)"))
        summary = ctx.run.path(RUNS_DIR, f"summary-{_pair_name(draft, target)}.txt")
        with open(summary, "w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
            measure_cli.run(args, ReproduceError)
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
