"""``sdsl measure``: decode prompts with a (draft, target) pair, log every prompt, summarise.

The loop's run is :mod:`sdsl_jax.decoding.run` (the runs file of one line
per finished prompt, resumable; the summary row; the rows file) and its
text is :mod:`sdsl_jax.decoding.summary`: this module reads the options,
loads the two models (:mod:`.measure_models`), chooses the prompts
(:mod:`.measure_prompts`), calls the library and prints. ``--teacher-forced``
measures alpha without a loop (:mod:`.measure_teacher_forced`).

Files: ``--out RUNS.jsonl`` gets one JSON line per finished prompt (rerun the
same command to resume, or with a larger --prompts to extend the run);
``--rows ROWS.jsonl`` gets one aggregated row per measured pair and setting,
replaced when the same pair is measured again, for ``sdsl fit`` and ``sdsl
plot latency``; ``--summary FILE`` and ``--json`` give the same row.

Perplexity: for a model trained by ``sdsl train``, draft_perplexity and
target_perplexity are the per-byte perplexities on held-out text from its
card, the text the prompts are drawn from; a Hugging Face checkpoint has no
card, so its perplexity is measured on the prompts themselves.

Precision, devices and sampling: --dtype loads both models in float32,
bfloat16 or float16 (sampling and acceptance stay float32); --devices N
shards both tensor-parallel over N devices (:mod:`sdsl_jax.decoding.sharding`);
--top-k, --top-p and --stop-at-eos sample as a deployment does. Each is a
setting of the run: its lines record it and a resume with another is refused.
--teacher-forced takes --dtype and --devices but not the sampling options: it
scores whole next-token distributions on a given text, sampling nothing.

Importing this module is cheap (the parser needs it); JAX and the models
load only when a run starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from sdsl_jax.cli.options import (UsageError, add_dtype, check_confidence, check_corpus,
                                  check_seed)

ROW_FORMATS = (".jsonl", ".ndjson")
# A run of this many prompts takes days on any device; more is a typo, and
# the prompt windows are drawn before the first one is measured.
MAX_PROMPTS = 100_000
# Positions are int32 on the device; a cache this long is beyond any model we load.
MAX_LENGTH = 2**20
# Drafted tokens per iteration. Measured lookaheads in the literature stay below
# 16; this leaves room for any realistic pair and bounds the loop's buffers,
# which grow with it.
MAX_LOOKAHEAD = 128
# --top-k beyond any vocabulary a model has (it is also checked against the models').
MAX_TOP_K = 2**31 - 1


def add_parser(commands) -> None:
    """Register ``measure`` on the ``sdsl`` subcommands."""
    measure = commands.add_parser("measure", help="measure acceptance and latency of a pair",
                                  description=(
        "Decode prompts with speculative sampling and with the target alone, append one JSON "
        "line per finished prompt (rerun to resume), and summarise acceptance, speedup and "
        "latency with intervals; the rows feed `sdsl fit`."))
    _add_arguments(measure)


def _add_arguments(parser) -> None:
    """The arguments of ``sdsl measure``."""
    parser.add_argument("--draft", required=True, metavar="DIR", help=(
        "the draft: a model directory from `sdsl train` (DIR/SIZE) or a local Hugging Face "
        "checkpoint of GPT-2, OPT, Llama, Mistral, Qwen2/3 or GPT-NeoX (Pythia): config.json, "
        "safetensors weights, tokenizer files"))
    parser.add_argument("--target", required=True, metavar="DIR", help="the target, likewise")
    parser.add_argument("--teacher-forced", action="store_true", help=(
        "measure alpha without a generation loop: the exact beta = sum_v min(p, q) at every "
        "position of held-out corpus documents (or the lines of --prompt-file), read by both "
        "models teacher-forced, with an interval that takes documents as clusters; writes --rows, "
        "--summary or --json, no runs file"))
    parser.add_argument("--lookahead", type=int, metavar="K", help=(
        "drafted tokens per iteration (gamma), >= 1; required for the loop, and with "
        "--teacher-forced only the lookahead recorded in the row (default there: 1)"))
    parser.add_argument("--prompts", type=int, metavar="N", help=(
        "number of prompts: windows of held-out corpus text, or the first N lines of "
        "--prompt-file (default there: all)"))
    parser.add_argument("--documents", type=int, metavar="N", help=(
        "with --teacher-forced: held-out corpus documents to read, drawn by --seed (default: "
        "all), or the first N lines of --prompt-file (default: all)"))
    parser.add_argument("--prompt-len", type=int, metavar="L", help=(
        "tokens per prompt window (default: 128); with --prompt-file, the padded length "
        "(default: the longest prompt); with --teacher-forced, the window the models read "
        "(default: 128; longer documents are read in windows overlapping by half)"))
    parser.add_argument("--max-new-tokens", type=int, metavar="T",
                        help="tokens generated per prompt, >= 2 (default: 64)")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--temperature", type=float, default=1.0,
                          help="sampling temperature (default: %(default)s)")
    sampling.add_argument("--greedy", action="store_true", help="greedy decoding (temperature 0)")
    parser.add_argument("--top-k", type=int, metavar="K", help=(
        "sample from the K most likely tokens only (draft and target alike; the loop stays "
        "lossless with respect to the truncated target); loop only"))
    parser.add_argument("--top-p", type=float, metavar="P", help=(
        "sample from the smallest set of most likely tokens whose probability reaches P, "
        "0 < P <= 1 (nucleus sampling); loop only"))
    parser.add_argument("--stop-at-eos", action="store_true", help=(
        "end a prompt's generation at the model's end-of-sequence token (a Hugging Face "
        "config's eos_token_id; `sdsl train` byte models have none); loop only"))
    add_dtype(parser, "the precision both models compute in: their weights, cache and "
                      "activations")
    parser.add_argument("--devices", default="1", metavar="N", help=(
        "shard both models tensor-parallel over N devices (heads and MLP), or 'all' for every "
        "device JAX sees (default: 1)"))
    parser.add_argument("--memory-estimate", action="store_true", help=(
        "also record XLA's estimate of the memory the compiled prefill and decode programs "
        "need per device (reported on a CPU too; the run uses the programs compiled for it); "
        "the device's own peak is recorded where it keeps one"))
    parser.add_argument("--batch-size", type=int, metavar="B", help=(
        "prompts decoded together (default: 1, which gives exact per-prompt latencies); with "
        "--teacher-forced, windows per forward pass (default: 64)"))
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the prompt windows and the sampling (default: 0)")
    parser.add_argument("--corpus", nargs="+", default=[], metavar="PATH", help=(
        "text files or directories added to the corpus the prompts are drawn from, as for "
        "`sdsl train` (default corpus: the Python standard library)"))
    parser.add_argument("--no-stdlib", action="store_true",
                        help="leave the standard library out of the corpus (needs --corpus)")
    parser.add_argument("--validation-fraction", type=float, default=None, help=(
        "share of documents held out, as given to `sdsl train` (default: 0.05)"))
    parser.add_argument("--prompt-file", metavar="FILE",
                        help="prompts from this text file, one per line, instead of the corpus")
    parser.add_argument("--out", metavar="RUNS.jsonl", help=(
        "append one JSON line per finished prompt here; rerunning the same command skips the "
        "prompts already in it (required for the loop)"))
    parser.add_argument("--rows", metavar="ROWS.jsonl", help=(
        "add (or replace) this pair's aggregated measurement row here, for `sdsl fit` and "
        "`sdsl plot latency`"))
    parser.add_argument("--summary", metavar="FILE", help="also write the summary row as JSON here")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-baseline", action="store_true", help=(
        "skip the target-only decoding of each prompt (no measured speedup)"))
    parser.add_argument("--draft-tokens", metavar="D", help=(
        "training tokens of the draft (needed for a Hugging Face checkpoint, e.g. 180B; "
        "`sdsl train` models record theirs)"))
    parser.add_argument("--target-tokens", metavar="D'", help="training tokens of the target, likewise")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="level of every interval (default: %(default)s)")
    # The acceptance intervals no longer resample (prompts and documents are
    # clusters of a closed-form interval); the option stays so that command
    # lines written for earlier versions still run.
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="R", help=argparse.SUPPRESS)


def run(args) -> int:
    """Run ``sdsl measure``; mistakes raise :class:`~sdsl_jax.cli.options.UsageError`."""
    _check_arguments(args)
    import jax
    from sdsl_jax.decoding.run import MeasureRunError
    # Models run in their --dtype, never in float64, whatever the rest of the CLI runs in.
    with jax.enable_x64(False):
        try:
            if args.teacher_forced:
                from sdsl_jax.cli import measure_teacher_forced
                return measure_teacher_forced.run(args)
            return _run_loop(args)
        except MeasureRunError as err:
            raise UsageError(str(err)) from None


def _run_loop(args) -> int:
    """The speculative loop over --prompts prompts, resumed from --out."""
    from sdsl_jax.cli.measure_models import (check_memory, check_pair, check_sampling,
                                             load_pair)
    from sdsl_jax.cli.measure_prompts import loop_prompts
    from sdsl_jax.decoding import run as measure_run
    from sdsl_jax.decoding.rows import summary_row
    from sdsl_jax.decoding.summary import loop_summary

    draft, target = load_pair(args)
    prompts, prompt_set, prompt_len = loop_prompts(args, target)
    if args.batch_size > len(prompts):
        raise UsageError(f"sdsl measure: argument --batch-size: {args.batch_size} is more than "
                         f"the {len(prompts)} prompts; lower it")
    max_len = prompt_len + args.max_new_tokens + args.lookahead + 1
    draft, target = check_pair(draft, target, max_len)
    eos_token = check_sampling(args, draft, target)
    check_memory(draft, target, args.batch_size, prompt_len, max_len)
    vocab = target.decoder.vocab_size
    for i, prompt in enumerate(prompts):
        if not all(0 <= t < vocab for t in prompt):
            raise UsageError(f"sdsl measure: prompt {i} has a token id outside the models' "
                             f"vocabulary of {vocab} (does the tokenizer belong to them?)")
    pair = draft.run_model(), target.run_model()
    settings = measure_run.run_settings(
        *pair, lookahead=args.lookahead,
        temperature=0.0 if args.greedy else float(args.temperature),
        max_new_tokens=args.max_new_tokens, prompt_len=prompt_len, batch_size=args.batch_size,
        baseline=not args.no_baseline, seed=args.seed, prompt_set=prompt_set,
        top_k=args.top_k, top_p=args.top_p, eos_token=eos_token, devices=args.devices)
    records, measured_now = measure_run.measure_run(*pair, prompts, settings, args.out,
                                                    memory_estimate=args.memory_estimate)
    row = summary_row(records, confidence=args.confidence, num_resamples=args.bootstrap,
                      seed=args.seed)
    row["runs_file"] = args.out
    emit(args, row, lambda: loop_summary(row, runs_file=args.out, measured_now=measured_now,
                                         from_earlier=len(prompts) - measured_now))
    return 0


def emit(args, row: dict, summary) -> None:
    """--rows, --summary, then --json or the text ``summary()`` returns."""
    from sdsl_jax.common.io import atomic_write_text
    from sdsl_jax.decoding.rows import write_row
    try:
        if args.rows:
            write_row(args.rows, row)
        if args.summary:
            atomic_write_text(args.summary, json.dumps(row, indent=2) + "\n")
    except OSError as err:
        # Checked before the run; a disk that fills up since is still no traceback.
        raise UsageError(f"sdsl measure: cannot write {err.filename} "
                         f"({err.strerror or err})") from None
    if args.json:
        print(json.dumps(row))
    else:
        print(summary(), end="")


def _check_arguments(args) -> None:
    """Every check that needs no model; fills in the defaults that depend on the mode."""
    def at_least(flag, value, minimum):
        if value is not None and value < minimum:
            raise UsageError(f"sdsl measure: argument {flag}: must be at least {minimum}, got {value}")

    at_least("--lookahead", args.lookahead, 1)
    at_least("--prompts", args.prompts, 1)
    at_least("--documents", args.documents, 1)
    at_least("--prompt-len", args.prompt_len,
             2 if args.prompt_file is None or args.teacher_forced else 1)
    at_least("--max-new-tokens", args.max_new_tokens, 2)
    at_least("--batch-size", args.batch_size, 1)
    check_seed("sdsl measure", args.seed)
    _check_devices(args)
    at_least("--top-k", args.top_k, 1)
    if args.top_k is not None and args.top_k > MAX_TOP_K:
        raise UsageError(f"sdsl measure: argument --top-k: must be at most {MAX_TOP_K:,}, "
                         f"got {args.top_k}")
    if args.top_p is not None and not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        raise UsageError(f"sdsl measure: argument --top-p: must lie in (0, 1], got {args.top_p}")
    for flag, value in (("--prompt-len", args.prompt_len), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value > MAX_LENGTH:
            raise UsageError(f"sdsl measure: argument {flag}: must be at most {MAX_LENGTH:,}, "
                             f"got {value}")
    for flag, value, most in (("--prompts", args.prompts, MAX_PROMPTS),
                              ("--documents", args.documents, MAX_PROMPTS)):
        if value is not None and value > most:
            raise UsageError(f"sdsl measure: argument {flag}: must be at most {most:,}, "
                             f"got {value}")
    if args.teacher_forced:
        # Teacher forcing scores each model's whole next-token distribution at
        # every position of a given text: nothing is sampled, so there is no
        # truncation to apply (beta of truncated distributions would describe a
        # loop that samples them, which --top-k/--top-p measure directly) and
        # no generation to stop.
        loop_only = [flag for flag, given in (
            ("--out", args.out), ("--prompts", args.prompts is not None),
            ("--max-new-tokens", args.max_new_tokens is not None),
            ("--no-baseline", args.no_baseline), ("--top-k", args.top_k is not None),
            ("--top-p", args.top_p is not None), ("--stop-at-eos", args.stop_at_eos),
            ("--memory-estimate", args.memory_estimate)) if given]
        if loop_only:
            raise UsageError(f"sdsl measure: --teacher-forced runs no generation loop; drop "
                             f"{', '.join(loop_only)} (documents: --documents N; results: "
                             "--rows, --summary, --json)")
        args.batch_size = 64 if args.batch_size is None else args.batch_size
    else:
        if args.documents is not None:
            raise UsageError("sdsl measure: --documents goes with --teacher-forced (the loop "
                             "takes --prompts N)")
        for flag, value in (("--lookahead", args.lookahead), ("--out", args.out)):
            if value is None:
                raise UsageError(f"sdsl measure: argument {flag} is required (or give "
                                 "--teacher-forced)")
        if args.prompt_file is None and args.prompts is None:
            raise UsageError("sdsl measure: argument --prompts is required (or give "
                             "--prompt-file)")
        args.max_new_tokens = 64 if args.max_new_tokens is None else args.max_new_tokens
        args.batch_size = 1 if args.batch_size is None else args.batch_size
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"sdsl measure: argument --temperature: must be a finite number >= 0, "
                         f"got {args.temperature}")
    truncation = [flag for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p))
                  if value is not None]
    if truncation and (args.greedy or args.temperature == 0):
        # Greedy decoding takes the argmax, which no truncation changes: the
        # record would name settings that did nothing.
        raise UsageError(f"sdsl measure: {' and '.join(truncation)} truncate a sampled "
                         "distribution; greedy decoding takes the most likely token whatever "
                         f"they are: drop {' and '.join(truncation)} or --greedy")
    check_confidence("sdsl measure", args.confidence)
    if args.prompt_file is not None and (args.corpus or args.no_stdlib
                                         or args.validation_fraction is not None):
        raise UsageError("sdsl measure: --prompt-file gives the prompts; drop --corpus, "
                         "--no-stdlib and --validation-fraction")
    check_corpus("sdsl measure", args.corpus, args.no_stdlib and args.prompt_file is None)
    if args.lookahead is not None:
        if args.lookahead > MAX_LOOKAHEAD:
            raise UsageError(f"sdsl measure: argument --lookahead: must be at most "
                             f"{MAX_LOOKAHEAD}, got {args.lookahead}")
        if not args.teacher_forced and args.lookahead >= args.max_new_tokens:
            # An iteration emits up to K + 1 tokens; drafts past the T-th new token
            # are cut off unjudged, which would bias the acceptance.
            raise UsageError(f"sdsl measure: argument --lookahead: must be below "
                             f"--max-new-tokens ({args.max_new_tokens}), got {args.lookahead}")
    _check_outputs(args)


def _check_devices(args) -> None:
    """--devices: a count of at least 1 or "all"; args.devices becomes the count."""
    text = str(args.devices).strip()
    if text == "all":
        import jax
        args.devices = len(jax.devices())
        return
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"sdsl measure: argument --devices: expected a count or 'all', got "
                         f"{args.devices!r}") from None
    if count < 1:
        raise UsageError(f"sdsl measure: argument --devices: must be at least 1, got {count}")
    if count > 1:
        import jax
        visible = jax.devices()
        if count > len(visible):
            raise UsageError(
                f"sdsl measure: argument --devices: {count} devices asked for, JAX sees "
                f"{len(visible)} ({visible[0].platform}); give at most {len(visible)} or 'all'")
    args.devices = count


def _check_outputs(args) -> None:
    """--out, --rows and --summary: writable, distinct, not an input, and, where one exists,
    this command's own file (it is continued or updated, never replaced by other data)."""
    from sdsl_jax.cli.outputs import check_output_file, same_file
    from sdsl_jax.decoding.run import MeasureRunError, read_runs

    prog = "sdsl measure"
    if args.rows and os.path.splitext(args.rows)[1].lower() not in ROW_FORMATS:
        raise UsageError(f"{prog}: argument --rows: {args.rows}: write rows as JSON Lines "
                         "(.jsonl)")
    given = [(flag, path) for flag, path in (("--out", args.out), ("--rows", args.rows),
                                             ("--summary", args.summary)) if path]
    for i, (flag, path) in enumerate(given):
        for other_flag, other in given[:i]:
            if os.path.abspath(path) == os.path.abspath(other) or same_file(path, other):
                raise UsageError(f"{prog}: argument {flag}: {path} is also {other_flag}; "
                                 "give each its own file")
    inputs = [args.prompt_file] + [p for p in args.corpus if os.path.isfile(p)]
    for flag, path in given:
        check_output_file(prog, flag, path, inputs=inputs, resume=True)
    if args.out and os.path.exists(args.out):
        try:  # only checked here: the settings are compared once the models are loaded
            read_runs(args.out, repair=False)
        except MeasureRunError as err:
            raise UsageError(str(err)) from None
    if args.rows and os.path.exists(args.rows):
        _check_own_file(args.rows, "--rows", "a rows file", lines=True)
    if args.summary and os.path.exists(args.summary):
        _check_own_file(args.summary, "--summary", "a summary", lines=False)


# Every row and summary `sdsl measure` writes has these.
_ROW_KEYS = ("draft_model", "target_model", "draft_params", "target_params", "acceptance",
             "lookahead")


def _check_own_file(path: str, flag: str, what: str, lines: bool) -> None:
    """An existing --rows or --summary file is updated only if `sdsl measure` wrote it."""
    from sdsl_jax.common.io import JsonlError, parse_jsonl
    from sdsl_jax.common.tables import InputFileError, read_bytes
    refuse = (f"sdsl measure: argument {flag}: {path} exists and is not {what} of `sdsl "
              "measure`, so it is left alone; choose another file")
    try:
        data = read_bytes(path)
    except InputFileError as err:
        raise UsageError(f"sdsl measure: argument {flag}: {err}") from None
    try:
        records = parse_jsonl(data, path) if lines else [json.loads(data.decode("utf-8-sig"))]
    except (JsonlError, UnicodeDecodeError, ValueError):
        raise UsageError(f"{refuse} (not JSON{' Lines' if lines else ''})") from None
    for record in records:
        if not isinstance(record, dict) or any(key not in record for key in _ROW_KEYS):
            raise UsageError(refuse)
