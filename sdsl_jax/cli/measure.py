"""What ``sdsl measure`` does: decode prompts with a (draft, target) pair, log, summarise.

Kept out of cli.py so the command line stays a thin parser. Importing this
module is cheap (the parser needs it); JAX and the models load only when a
run starts.

Files
-----
``--out RUNS.jsonl`` gets one JSON line per finished prompt, flushed and
fsynced as it lands, so a run killed at any moment keeps every finished
prompt; rerunning the same command skips them (prompt ``i``'s randomness
follows its id, so the rerun gives what one uninterrupted run would have).
Every line carries the run's settings; a rerun with other settings is refused
rather than mixed in. A larger ``--prompts`` extends a finished run: prompt
``i`` is the same window of text whatever the count.

Each line is also a row of the measurement-set format
(:mod:`sdsl_jax.estimation.measurements`): draft_params, target_params, draft_tokens,
target_tokens, draft_perplexity, target_perplexity, lookahead, and the
counts ``accepted`` (drafted tokens accepted) and ``trials`` (drafted
tokens judged), with the accepted count of every iteration in
``accepted_per_iteration``. It is a step-time record for ``sdsl plan
--step-times`` too (draft_step_seconds, target_step_seconds, batch, context,
precision).

``--rows ROWS.jsonl`` gets one aggregated row per measured pair and setting
(replaced when the same pair is measured again): the acceptance with its
bootstrap interval across prompts, the latency columns of ``sdsl plot
latency`` (ttft, tpot, ttot and their _low/_high, seconds), the speedup, the
step times and the law's prediction. Measure several pairs into one rows
file, then ``sdsl fit ROWS.jsonl``. ``--json`` prints the same row.

Perplexity
----------
For a model trained by ``sdsl train``, draft_perplexity/target_perplexity is
the per-byte perplexity on held-out text from its card: the text the prompts
are drawn from, scored the same way for every size, as the pre-training law
needs. A Hugging Face checkpoint has no card: its perplexity is measured on
the prompts themselves, teacher-forced (each line: that prompt, with its
``*_prompt_nll`` and ``prompt_scored_tokens``; the row: pooled over the
prompts). ``perplexity_source`` says which ("validation" or "prompts").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from typing import Any, Callable

# The settings a runs file is tied to: a rerun must match them all.
SETTINGS = ("draft_model", "draft_params", "draft_tokens", "target_model", "target_params",
            "target_tokens", "lookahead", "temperature", "max_new_tokens", "prompt_len",
            "batch_size", "baseline", "seed", "prompt_set", "device")
# What the summary reads from every line besides the settings.
LINE_KEYS = ("prompt_id", "accepted", "accepted_per_iteration", "trials", "beta_sum",
             "beta_count", "ttft_s", "tpot_s", "ttot_s", "draft_step_seconds",
             "target_step_seconds", "baseline_step_seconds", "cost_ratio", "verify_cost",
             "prompt_hash", "perplexity_source")
ROW_FORMATS = (".jsonl", ".ndjson")
LATENCIES = ("ttft", "tpot", "ttot")


def add_arguments(parser) -> None:
    """The arguments of ``sdsl measure``."""
    parser.add_argument("--draft", required=True, metavar="DIR", help=(
        "the draft: a model directory from `sdsl train` (DIR/SIZE) or a Hugging Face GPT-2/OPT "
        "directory (config.json, safetensors weights, tokenizer files)"))
    parser.add_argument("--target", required=True, metavar="DIR", help="the target, likewise")
    parser.add_argument("--teacher-forced", action="store_true", help=(
        "measure alpha without a generation loop: the exact beta = sum_v min(p, q) at every "
        "position of held-out corpus documents (or the lines of --prompt-file), read by both "
        "models teacher-forced, with a bootstrap interval across documents; writes --rows, "
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
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="R",
                        help="bootstrap resamples of prompts for the acceptance interval "
                             "(default: %(default)s)")


# --------------------------------------------------------------------------
# Models.


@dataclasses.dataclass(frozen=True)
class _Model:
    """A loaded draft or target and what a measurement row needs of it."""

    decoder: Any
    path: str
    kind: str  # "sdsl" (trained by sdsl train) or "hf"
    name: str
    tokens: float | None  # training tokens D
    perplexity: float | None  # held-out per-byte perplexity from the card (sdsl only)
    family: str | None
    corpus_fingerprint: str | None
    encode: Callable[[str], list]  # text -> token ids


def _kind(path: str, flag: str, usage_error) -> str:
    if not os.path.exists(path):
        raise usage_error(f"sdsl measure: argument {flag}: {path} does not exist")
    if not os.path.isdir(path):
        raise usage_error(f"sdsl measure: argument {flag}: {path} is not a directory")
    from sdsl_jax.models import store as ckpt
    if os.path.isfile(os.path.join(path, ckpt.CARD_FILE)):
        return "sdsl"
    config_path = os.path.join(path, ckpt.CONFIG_FILE)
    if os.path.isfile(config_path):
        try:
            with open(config_path) as handle:
                config = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise usage_error(f"sdsl measure: argument {flag}: cannot read {config_path}: "
                              f"{err}") from None
        if isinstance(config, dict) and "model_type" in config:
            return "hf"
        if isinstance(config, dict) and "model" in config and "settings" in config:
            return "sdsl"  # load_card explains that training has not finished
    raise usage_error(f"sdsl measure: argument {flag}: {path} is not a model directory (expected "
                      "model.json from `sdsl train`, or a Hugging Face config.json with model_type)")


def _load_model(path: str, flag: str, tokens_flag: str, tokens_text: str | None,
                usage_error) -> _Model:
    kind = _kind(path, flag, usage_error)
    from sdsl_jax.common.quantities import parse_count
    tokens = None
    if tokens_text is not None:
        try:
            tokens = parse_count(tokens_text)
        except ValueError as err:
            raise usage_error(f"sdsl measure: argument {tokens_flag}: {err}") from None
    if kind == "sdsl":
        from sdsl_jax.models import tokenizer
        from sdsl_jax.models import CheckpointError, load_card, load_decoder
        # orbax warns that a read-only checkpoint manager will not save: true, and noise here.
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            card = load_card(path)
            decoder = load_decoder(path)
        except (CheckpointError, ValueError) as err:
            raise usage_error(f"sdsl measure: argument {flag}: {err}") from None
        finally:
            absl.setLevel(level)
        return _Model(decoder=decoder, path=path, kind=kind, name=str(card.get("name", decoder.name)),
                      tokens=float(card["tokens"]) if tokens is None else tokens,
                      perplexity=float(card["perplexity"]), family=card.get("family"),
                      corpus_fingerprint=card.get("corpus", {}).get("fingerprint"),
                      encode=lambda text: tokenizer.encode(text, bos=True).tolist())
    from sdsl_jax.hf import CheckpointError, load_hf_decoder, load_hf_tokenizer
    if tokens is None:
        raise usage_error(f"sdsl measure: argument {tokens_flag}: {path} is a Hugging Face "
                          "checkpoint, which does not record how many tokens it was trained on; "
                          f"give {tokens_flag} (e.g. 180B for OPT)")
    try:
        decoder = load_hf_decoder(path)
        hf_tokenizer = load_hf_tokenizer(path)
    except (CheckpointError, ValueError, ImportError) as err:
        raise usage_error(f"sdsl measure: argument {flag}: {err}") from None
    return _Model(decoder=decoder, path=path, kind=kind, name=decoder.name, tokens=tokens,
                  perplexity=None, family=None, corpus_fingerprint=None,
                  encode=lambda text: list(hf_tokenizer.encode(text).ids))


def _check_pair(draft: _Model, target: _Model, max_len: int, usage_error,
                what: str = "prompt length + new tokens + lookahead + 1",
                lower: str = "--prompt-len or --max-new-tokens") -> None:
    import jax
    if draft.kind != target.kind or draft.decoder.vocab_size != target.decoder.vocab_size:
        what = {"sdsl": "byte-level (sdsl train)", "hf": "Hugging Face"}
        raise usage_error(
            f"sdsl measure: draft and target vocabularies differ: draft {draft.name} is "
            f"{what[draft.kind]} with {draft.decoder.vocab_size} tokens, target {target.name} is "
            f"{what[target.kind]} with {target.decoder.vocab_size}; speculative decoding needs "
            "one shared tokenizer")
    for role, model in (("draft", draft), ("target", target)):
        try:  # shapes only: the cache's own checks run without allocating it
            jax.eval_shape(lambda: model.decoder.init_cache(1, max_len))
        except ValueError as err:
            raise usage_error(f"sdsl measure: prompts do not fit the {role}'s cache: {what} = "
                              f"{max_len} positions ({err}); lower {lower}") from None


# --------------------------------------------------------------------------
# Prompts.


def _load_corpus(args, usage_error):
    from sdsl_jax.models import corpus as corpus_lib
    fraction = (corpus_lib.DEFAULT_VALIDATION_FRACTION if args.validation_fraction is None
                else args.validation_fraction)
    try:
        return corpus_lib.load_corpus(args.corpus, include_stdlib=not args.no_stdlib,
                                      validation_fraction=fraction)
    except corpus_lib.CorpusError as err:
        raise usage_error(f"sdsl measure: {err}") from None


def _note_other_corpus(model: _Model, corpus, what: str) -> None:
    if model.corpus_fingerprint and model.corpus_fingerprint != corpus.fingerprint:
        print(f"note: the {what} come from a different corpus than {model.name} was trained on "
              "(pass the same --corpus/--no-stdlib as to `sdsl train` to draw held-out text "
              "of that corpus)", file=sys.stderr)


def _corpus_prompts(args, model: _Model, count: int, length: int, usage_error):
    """Windows of held-out text; window i depends on (seed, i) alone."""
    import numpy as np
    from sdsl_jax.models import tokenizer
    corpus = _load_corpus(args, usage_error)
    text = corpus.validation
    # A Hugging Face tokenizer reads text: take enough bytes for `length` tokens.
    width = length if model.kind == "sdsl" else 8 * length
    if text.size < width:
        raise usage_error(f"sdsl measure: argument --prompt-len: the held-out text has "
                          f"{text.size:,} tokens, fewer than one prompt window of {width:,}; "
                          "lower --prompt-len or add text with --corpus")
    prompts = []
    for i in range(count):
        start = int(np.random.default_rng([args.seed, i]).integers(0, text.size - width + 1))
        window = text[start:start + width]
        if model.kind == "sdsl":
            prompts.append(window.astype(np.int64).tolist())
            continue
        ids = model.encode(tokenizer.decode(np.where(window == tokenizer.BOS, 10, window)))
        if len(ids) < length:
            raise usage_error(f"sdsl measure: prompt {i}: {width} bytes of held-out text give only "
                              f"{len(ids)} tokens, fewer than --prompt-len {length}")
        prompts.append(ids[:length])
    _note_other_corpus(model, corpus, "prompts")
    return prompts, f"corpus:{corpus.fingerprint[:16]}"


def _file_prompts(args, model: _Model, usage_error):
    try:
        with open(args.prompt_file, encoding="utf-8") as handle:
            content = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise usage_error(f"sdsl measure: argument --prompt-file: cannot read "
                          f"{args.prompt_file}: {err}") from None
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        raise usage_error(f"sdsl measure: argument --prompt-file: {args.prompt_file} has no prompts")
    flag, asked = (("--documents", args.documents) if args.teacher_forced
                   else ("--prompts", args.prompts))
    count = len(lines) if asked is None else asked
    if count > len(lines):
        raise usage_error(f"sdsl measure: argument {flag}: {args.prompt_file} has only "
                          f"{len(lines)} lines, {count} asked for")
    prompts = [model.encode(line) for line in lines[:count]]
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return prompts, f"file:{digest[:16]}"


def _prompts(args, model: _Model, usage_error):
    """(prompts as token lists, the prompt set's name, the padded prompt length)."""
    if args.prompt_file is None:
        length = 128 if args.prompt_len is None else args.prompt_len
        return (*_corpus_prompts(args, model, args.prompts, length, usage_error), length)
    prompts, prompt_set = _file_prompts(args, model, usage_error)
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    length = len(prompts[longest]) if args.prompt_len is None else args.prompt_len
    if len(prompts[longest]) > length:
        raise usage_error(f"sdsl measure: prompt {longest} has {len(prompts[longest])} tokens, "
                          f"more than --prompt-len {length}")
    if any(not p for p in prompts):
        raise usage_error("sdsl measure: argument --prompt-file: a prompt has no tokens")
    return prompts, prompt_set, length


def _prompt_hash(tokens) -> str:
    return hashlib.sha256(json.dumps([int(t) for t in tokens]).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------
# The runs file.


def _read_runs(path: str, usage_error) -> list[dict]:
    """The records of an earlier run; a line cut off by a kill is dropped from the file."""
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise usage_error(f"sdsl measure: argument --out: cannot read {path}: {err.strerror}") from None
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        # Only the last line can be torn (each line is written whole, then synced).
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
    records = []
    for number, line in enumerate(complete.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise usage_error(f"sdsl measure: {path}: line {number} is not JSON ({err.msg}); "
                              "is this a runs file of `sdsl measure`?") from None
        missing = ([key for key in SETTINGS + LINE_KEYS if key not in record]
                   if isinstance(record, dict) else ["a JSON object"])
        if missing:
            raise usage_error(f"sdsl measure: {path}: line {number} is not a record of this "
                              f"`sdsl measure` (no {missing[0]!r}); choose another --out")
        records.append(record)
    return records


def _check_settings(records: list[dict], settings: dict, path: str, usage_error) -> None:
    for record in records:
        for key, value in settings.items():
            if record.get(key) != value:
                raise usage_error(
                    f"sdsl measure: {path} holds a run with {key} = {record.get(key)!r}, this run "
                    f"has {value!r}; rerun with the same settings to resume it, or choose "
                    "another --out")


def _append(handle, line: dict) -> None:
    handle.write(json.dumps(line) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


# --------------------------------------------------------------------------
# Summary row.


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _at_least_0(value: float) -> float:
    return value if math.isnan(value) else max(0.0, value)


def summary_row(records: list[dict], *, confidence: float = 0.95, num_resamples: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """One measurement-set row from the runs-file records of one pair and setting.

    The acceptance interval is a bootstrap over prompts; latency and speedup
    intervals are Student-t intervals across prompts; step times are medians
    over the records.
    """
    import jax
    import numpy as np
    from sdsl_jax.decoding import metrics

    first = records[0]
    # The in-memory records of measure_pair hold K per iteration in "accepted".
    as_run = [dict(r, accepted=r["accepted_per_iteration"]) for r in records]
    s = metrics.summarize(as_run, confidence=confidence, key=jax.random.PRNGKey(seed),
                          num_resamples=num_resamples)
    row: dict[str, Any] = {key: first[key] for key in (
        "draft_model", "target_model", "family", "draft_params", "target_params", "draft_tokens",
        "target_tokens")}
    scored = sum(r.get("prompt_scored_tokens", 0) for r in records)
    for role in ("draft", "target"):
        if first["perplexity_source"] == "validation":
            row[f"{role}_perplexity"] = first[f"{role}_perplexity"]
        else:  # pooled over the prompts: exp(total nats / total scored tokens)
            row[f"{role}_perplexity"] = (math.exp(sum(r[f"{role}_prompt_nll"] for r in records)
                                                  / scored) if scored else None)
    row.update(method="loop", perplexity_source=first["perplexity_source"],
               lookahead=first["lookahead"], temperature=first["temperature"],
               prompts=s["prompts"], accepted=s["accepted"], trials=s["trials"],
               acceptance=s["acceptance"], acceptance_low=s["acceptance_low"],
               acceptance_high=s["acceptance_high"], confidence=confidence,
               beta_mean=s["beta_mean"], mean_accepted=s["mean_accepted"],
               tokens_per_iteration=s["tokens_per_iteration"])
    # Acceptance by draft position, the test of one rate at every position,
    # and the serving stacks' ratio (sdsl_jax.estimation.positions).
    from sdsl_jax.estimation.positions import summarize_positions
    accepted, lookahead, ids = metrics.acceptance_inputs(as_run)
    row.update(summarize_positions(accepted, first["lookahead"], ids, mask=lookahead > 0,
                                   num_prompts=len(records), confidence=confidence,
                                   num_resamples=num_resamples,
                                   key=jax.random.fold_in(jax.random.PRNGKey(seed), 1)))
    # Times and speedups are positive: a t interval over few, spread-out
    # prompts can reach below 0, and is clipped there.
    for name in ("speedup",) + LATENCIES:
        key = name if name == "speedup" else f"{name}_s"
        if s.get(key) is not None:
            row.update({name: s[key], f"{name}_low": _at_least_0(s[f"{key}_low"]),
                        f"{name}_high": s[f"{key}_high"]})
    if first["baseline"]:
        for name in LATENCIES:
            mean, low, high = metrics.mean_interval(
                [np.nan if r.get(f"baseline_{name}_s") is None else r[f"baseline_{name}_s"]
                 for r in records], confidence)
            row.update({f"baseline_{name}": mean, f"baseline_{name}_low": _at_least_0(low),
                        f"baseline_{name}_high": high})
    # Each run (each resumption) times the steps once; its prompts carry the times.
    steps = {key: float(np.median([r[key] for r in records]))
             for key in ("draft_step_seconds", "target_step_seconds", "baseline_step_seconds",
                         "cost_ratio", "verify_cost")}
    cost_ratio, verify_cost = steps["cost_ratio"], steps["verify_cost"]
    row.update(steps,
               predicted_speedup=metrics.law_speedup(s["acceptance"], s["lookahead"], cost_ratio),
               predicted_speedup_verify=metrics.law_speedup(s["acceptance"], s["lookahead"],
                                                            cost_ratio, verify_cost))
    row.update({key: first[key] for key in (
        "max_new_tokens", "prompt_len", "batch", "context", "precision", "device", "prompt_set",
        "seed", "baseline")})
    return {key: _finite(value) if isinstance(value, float) else value for key, value in row.items()}


def _write_row(path: str, row: dict, usage_error) -> None:
    """Add ``row`` to the rows file, replacing a row of the same pair and settings."""
    rows = []
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        rows.append(json.loads(line))
        except (OSError, json.JSONDecodeError) as err:
            raise usage_error(f"sdsl measure: argument --rows: cannot read {path} (line "
                              f"{number}): {err}") from None
    # A row names its batch size "batch", as step-time records do; a
    # teacher-forced row never replaces the loop's row of the same pair.
    key = lambda r: tuple(r.get("batch" if k == "batch_size" else k) for k in SETTINGS) + (
        r.get("method", "loop"),)
    rows = [r for r in rows if not (isinstance(r, dict) and key(r) == key(row))] + [row]
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        for r in rows:
            handle.write(json.dumps(r) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Human-readable summary.


def _seconds(value) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def _interval(low, high, fmt) -> str:
    return "" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"


def _print_models(row: dict) -> None:
    from sdsl_jax.common.quantities import format_count as fc

    def model(role):
        perplexity = row[f"{role}_perplexity"]
        return (f"{row[f'{role}_model']} ({row[f'{role}_params']:,} params, "
                f"{fc(row[f'{role}_tokens'])} tokens, perplexity "
                f"{'-' if perplexity is None else f'{perplexity:.4g}'})")

    print(f"draft  {model('draft')}")
    print(f"target {model('target')}")


def _print_table(lines, level: str) -> None:
    """Rows of (name, value, interval, note) under a mean / interval header."""
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    print(f"\n  {'':<{widths[0]}}  {'mean':<{widths[1]}}  {level + ' interval':<{widths[2]}}")
    for name, value, interval, note in lines:
        print(f"  {name:<{widths[0]}}  {value:<{widths[1]}}  {interval:<{widths[2]}}  {note}".rstrip())


def _position_lines(row: dict) -> list[tuple[str, str, str, str]]:
    """Summary lines: the rate at each draft position, the i.i.d. fit test, the serving ratio."""
    four = lambda v: "-" if v is None else f"{v:.4f}"
    lines = []
    for i, (rate, low, high, acc, reached) in enumerate(zip(
            row["position_rates"], row["position_rates_low"], row["position_rates_high"],
            row["position_accepted"], row["position_reached"]), 1):
        lines.append((f"  at draft position {i}", four(rate),
                      "" if low is None else _interval(low, high, four),
                      f"{acc:,} accepted of {reached:,} reached"))
    if row["geometric_fit_p_value"] is not None:
        p = row["geometric_fit_p_value"]
        verdict = ("consistent with one rate at every position (the i.i.d. law)" if p >= 0.05
                   else "rates differ by position: the i.i.d. law misstates tokens per "
                        "iteration; plan with `sdsl plan --position-rates`")
        lines.append(("  i.i.d. fit test", f"p = {p:.3g}", "",
                      f"truncated geometric at alpha {row['geometric_acceptance']:.4f}: "
                      f"G = {row['geometric_fit_statistic']:.3g}, {row['geometric_fit_df']} df; "
                      f"{verdict}"))
    lines.append(("serving stacks' ratio", f"{row['serving_ratio']:.4f}", "",
                  f"(accepted length - 1)/(budget - 1) = kept/drafted tokens, not alpha: it "
                  f"falls as the lookahead grows at a fixed alpha (i.i.d. value "
                  f"{row['serving_ratio_iid']:.4f})"))
    return lines


def _print_summary(row: dict, run_info: dict) -> None:
    temperature = "greedy" if row["temperature"] == 0 else f"temperature {row['temperature']:g}"
    _print_models(row)
    print(f"lookahead {row['lookahead']}, {temperature}, {row['prompts']} prompts of "
          f"{row['prompt_len']} tokens, {row['max_new_tokens']} new tokens each, batch "
          f"{row['batch']}, on {row['device']}")
    print(f"{run_info['runs_file']}: {run_info['measured_now']} prompts measured now, "
          f"{run_info['from_earlier']} from an earlier run")
    level = f"{row['confidence']:.0%}"
    lines = [
        ("acceptance alpha", f"{row['acceptance']:.4f}",
         _interval(row["acceptance_low"], row["acceptance_high"], lambda v: f"{v:.4f}"),
         f"bootstrap over prompts; {row['accepted']:,} of {row['trials']:,} judged drafts "
         f"accepted; mean exact beta {row['beta_mean']:.4f}"),
        ("accepted per iteration", f"{row['mean_accepted']:.3f}", "",
         f"{row['tokens_per_iteration']:.3f} tokens per iteration"),
    ]
    lines += _position_lines(row)
    if row.get("speedup") is not None:
        lines.append(("speedup over target alone", f"{row['speedup']:.3f}x",
                      _interval(row["speedup_low"], row["speedup_high"], lambda v: f"{v:.3f}x"),
                      "decode time, target alone over speculative"))
    lines += [
        ("law's speedup", f"{row['predicted_speedup']:.3f}x", "",
         f"E(alpha, gamma) / (gamma c + 1), measured c = {row['cost_ratio']:.3g} "
         f"(draft step {_seconds(row['draft_step_seconds'])}, target step "
         f"{_seconds(row['baseline_step_seconds'])})"),
        ("  with verify cost", f"{row['predicted_speedup_verify']:.3f}x", "",
         f"E / (gamma c + v), measured v = {row['verify_cost']:.3g} target steps for "
         f"{row['lookahead'] + 1} tokens"),
    ]
    for name in LATENCIES:
        lines.append((name.upper(), _seconds(row[name]),
                      _interval(row[f"{name}_low"], row[f"{name}_high"], _seconds),
                      "" if row.get(f"baseline_{name}") is None else
                      f"target alone {_seconds(row[f'baseline_{name}'])}"))
    _print_table(lines, level)


# --------------------------------------------------------------------------
# Teacher-forced acceptance (--teacher-forced).


def _corpus_documents(args, model: _Model, usage_error):
    """(token lists, prompt-set name): whole held-out documents, a --seed draw of
    --documents of them (in name order), or all."""
    import numpy as np
    from sdsl_jax.models import tokenizer
    corpus = _load_corpus(args, usage_error)
    text = corpus.validation
    # Each document is BOS followed by its bytes (sdsl_jax.models.corpus).
    starts = np.flatnonzero(text == tokenizer.BOS).tolist() + [text.size]
    total = len(starts) - 1
    count = total if args.documents is None else args.documents
    if count > total:
        raise usage_error(f"sdsl measure: argument --documents: the held-out text has "
                          f"{total} documents, {count} asked for")
    chosen = range(total) if count == total else sorted(
        np.random.default_rng(args.seed).choice(total, count, replace=False).tolist())
    documents = []
    for i in chosen:
        piece = text[starts[i]:starts[i + 1]]
        if model.kind == "sdsl":
            documents.append(piece.astype(np.int64).tolist())
        else:  # a Hugging Face tokenizer reads the text (without our BOS)
            documents.append(model.encode(tokenizer.decode(piece)))
    _note_other_corpus(model, corpus, "documents")
    return documents, f"corpus:{corpus.fingerprint[:16]}"


def _run_teacher_forced(args, usage_error) -> int:
    import time

    import jax
    import numpy as np
    from sdsl_jax.decoding.teacher_forced import document_windows, teacher_forced_acceptance

    draft = _load_model(args.draft, "--draft", "--draft-tokens", args.draft_tokens, usage_error)
    target = _load_model(args.target, "--target", "--target-tokens", args.target_tokens,
                         usage_error)
    window = 128 if args.prompt_len is None else args.prompt_len
    _check_pair(draft, target, window, usage_error, what="the window --prompt-len",
                lower="--prompt-len")
    if args.prompt_file is None:
        documents, prompt_set = _corpus_documents(args, target, usage_error)
    else:
        documents, prompt_set = _file_prompts(args, target, usage_error)
    vocab = target.decoder.vocab_size
    for i, doc in enumerate(documents):
        if not all(0 <= t < vocab for t in doc):
            raise usage_error(f"sdsl measure: document {i} has a token id outside the models' "
                              f"vocabulary of {vocab} (does the tokenizer belong to them?)")
    if all(len(doc) < 2 for doc in documents):
        raise usage_error("sdsl measure: no document has two tokens: nothing to score")
    temperature = 0.0 if args.greedy else float(args.temperature)
    tokens, lengths, first, ids = document_windows(documents, window)
    begin = time.perf_counter()
    result = teacher_forced_acceptance(
        draft.decoder, target.decoder, tokens, temperature, lengths=lengths,
        first_position=first, document_ids=ids, batch_size=min(args.batch_size, len(tokens)),
        confidence=args.confidence, num_resamples=args.bootstrap,
        key=jax.random.PRNGKey(args.seed))
    seconds = time.perf_counter() - begin
    extra = {"family": draft.family, "confidence": args.confidence, "prompt_len": window,
             "windows": int(len(tokens)), "seed": args.seed,
             "device": jax.devices()[0].device_kind, "seconds": seconds,
             "draft_document_perplexity": result.draft_perplexity,
             "target_document_perplexity": result.target_perplexity}
    row = result.measurement_row(draft_tokens=draft.tokens, target_tokens=target.tokens,
                                 lookahead=1 if args.lookahead is None else args.lookahead,
                                 prompt_set=prompt_set, **extra)
    if draft.kind == "sdsl":
        # The laws' x and y: each model's held-out perplexity from its card,
        # as the loop's rows carry; the per-token ones on these documents stay
        # in *_document_perplexity.
        row.update(draft_perplexity=draft.perplexity, target_perplexity=target.perplexity,
                   perplexity_source="validation")
    else:
        row["perplexity_source"] = "documents"
    row = {key: _finite(value) if isinstance(value, float) else value
           for key, value in row.items()}
    _emit(args, row, usage_error, lambda: _print_teacher_forced(row, np.nanmin(
        result.document_acceptance), np.nanmax(result.document_acceptance)))
    return 0


def _emit(args, row: dict, usage_error, print_text) -> None:
    """--rows, --summary, then --json or the text summary."""
    if args.rows:
        _write_row(args.rows, row, usage_error)
    if args.summary:
        with open(args.summary, "w", encoding="utf-8") as handle:
            json.dump(row, handle, indent=2)
            handle.write("\n")
    if args.json:
        print(json.dumps(row))
    else:
        print_text()


def _print_teacher_forced(row: dict, lowest: float, highest: float) -> None:
    temperature = "greedy" if row["temperature"] == 0 else f"temperature {row['temperature']:g}"
    _print_models(row)
    source = "held-out" if row["prompt_set"].startswith("corpus:") else "prompt-file"
    plural = "" if row["prompts"] == 1 else "s"
    print(f"teacher-forced, {temperature}: {row['prompts']} {source} document{plural}, "
          f"{row['positions']:,} positions read in windows of {row['prompt_len']} tokens, "
          f"on {row['device']}, in {row['seconds']:.3g} s")
    level = f"{row['confidence']:.0%}"
    lines = [
        ("acceptance alpha", f"{row['acceptance']:.4f}",
         _interval(row["acceptance_low"], row["acceptance_high"], lambda v: f"{v:.4f}"),
         f"mean exact beta = sum_v min(p, q) over every position; bootstrap over documents "
         f"(per document {lowest:.3f} to {highest:.3f})"),
        ("draft perplexity", f"{row['draft_document_perplexity']:.4g}", "",
         "per token of these documents"),
        ("target perplexity", f"{row['target_document_perplexity']:.4g}", "", ""),
    ]
    _print_table(lines, level)


# --------------------------------------------------------------------------
# The command.


def _check_arguments(args, usage_error) -> None:
    def at_least(flag, value, minimum):
        if value is not None and value < minimum:
            raise usage_error(f"sdsl measure: argument {flag}: must be at least {minimum}, got {value}")

    at_least("--lookahead", args.lookahead, 1)
    at_least("--prompts", args.prompts, 1)
    at_least("--documents", args.documents, 1)
    at_least("--prompt-len", args.prompt_len,
             2 if args.prompt_file is None or args.teacher_forced else 1)
    at_least("--max-new-tokens", args.max_new_tokens, 2)
    at_least("--batch-size", args.batch_size, 1)
    at_least("--bootstrap", args.bootstrap, 1)
    at_least("--seed", args.seed, 0)
    if args.teacher_forced:
        loop_only = [flag for flag, given in (
            ("--out", args.out), ("--prompts", args.prompts is not None),
            ("--max-new-tokens", args.max_new_tokens is not None),
            ("--no-baseline", args.no_baseline)) if given]
        if loop_only:
            raise usage_error(f"sdsl measure: --teacher-forced runs no generation loop; drop "
                              f"{', '.join(loop_only)} (documents: --documents N; results: "
                              "--rows, --summary, --json)")
        if args.bootstrap < 2:
            raise usage_error("sdsl measure: argument --bootstrap: must be at least 2 with "
                              "--teacher-forced")
        args.batch_size = 64 if args.batch_size is None else args.batch_size
    else:
        if args.documents is not None:
            raise usage_error("sdsl measure: --documents goes with --teacher-forced (the loop "
                              "takes --prompts N)")
        for flag, value in (("--lookahead", args.lookahead), ("--out", args.out)):
            if value is None:
                raise usage_error(f"sdsl measure: argument {flag} is required (or give "
                                  "--teacher-forced)")
        if args.prompt_file is None and args.prompts is None:
            raise usage_error("sdsl measure: argument --prompts is required (or give "
                              "--prompt-file)")
        args.max_new_tokens = 64 if args.max_new_tokens is None else args.max_new_tokens
        args.batch_size = 1 if args.batch_size is None else args.batch_size
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise usage_error(f"sdsl measure: argument --temperature: must be a finite number >= 0, "
                          f"got {args.temperature}")
    if not 0 < args.confidence < 1:
        raise usage_error(f"sdsl measure: argument --confidence: must lie in (0, 1), "
                          f"got {args.confidence}")
    if args.prompt_file is not None and (args.corpus or args.no_stdlib
                                         or args.validation_fraction is not None):
        raise usage_error("sdsl measure: --prompt-file gives the prompts; drop --corpus, "
                          "--no-stdlib and --validation-fraction")
    if args.no_stdlib and not args.corpus and args.prompt_file is None:
        raise usage_error("sdsl measure: --no-stdlib leaves no text: add --corpus PATH ...")
    for path in args.corpus:
        if not os.path.exists(path):
            raise usage_error(f"sdsl measure: argument --corpus: {path} does not exist")
    if args.rows and os.path.splitext(args.rows)[1].lower() not in ROW_FORMATS:
        raise usage_error(f"sdsl measure: argument --rows: {args.rows}: write rows as JSON Lines "
                          "(.jsonl)")
    for flag, path in (("--out", args.out), ("--rows", args.rows), ("--summary", args.summary)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise usage_error(f"sdsl measure: argument {flag}: directory {folder} does not exist")


def _measure_steps(draft, target, lookahead: int, batch: int, context: int) -> dict:
    """Step times of the pair at the decode's batch and mean context (medians of
    interleaved rounds), and the ratios the law uses (medians of each round's ratio)."""
    import numpy as np
    from sdsl_jax.decoding import metrics
    t = metrics.forward_step_seconds(
        {"draft": (draft, 1), "verify": (target, lookahead + 1), "target": (target, 1)},
        batch_size=batch, context=context)
    return {"draft_step_seconds": float(np.median(t["draft"])),
            "target_step_seconds": float(np.median(t["verify"])),
            "baseline_step_seconds": float(np.median(t["target"])),
            "cost_ratio": float(np.median(t["draft"] / t["target"])),
            "verify_cost": float(np.median(t["verify"] / t["target"]))}


def _nll(model: _Model, prompts, length: int, batch: int):
    """Per prompt: (nll nats, scored tokens), in batches of one shape."""
    import numpy as np
    from sdsl_jax.decoding import loop
    from sdsl_jax.decoding.pair import prompt_log_likelihood
    nll, scored = [], []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        chunk = chunk + [chunk[-1]] * (batch - len(chunk))  # one shape, one compilation
        tokens, lengths = loop.pad_prompts(chunk, length)
        a, b = prompt_log_likelihood(model.decoder, tokens, lengths)
        nll += a.tolist()
        scored += b.tolist()
    return np.asarray(nll[:len(prompts)]), np.asarray(scored[:len(prompts)])


def run(args, usage_error) -> int:
    """Run ``sdsl measure``; mistakes raise ``usage_error`` (one line, exit 2)."""
    _check_arguments(args, usage_error)
    import jax
    # Models run in float32 whatever the rest of the CLI runs in.
    with jax.enable_x64(False):
        return (_run_teacher_forced if args.teacher_forced else _run)(args, usage_error)


def _run(args, usage_error) -> int:
    import jax
    from tqdm import tqdm

    from sdsl_jax.decoding.pair import measure_pair

    draft = _load_model(args.draft, "--draft", "--draft-tokens", args.draft_tokens, usage_error)
    target = _load_model(args.target, "--target", "--target-tokens", args.target_tokens,
                         usage_error)
    prompts, prompt_set, prompt_len = _prompts(args, target, usage_error)
    _check_pair(draft, target, prompt_len + args.max_new_tokens + args.lookahead + 1, usage_error)
    vocab = target.decoder.vocab_size
    for i, prompt in enumerate(prompts):
        if not all(0 <= t < vocab for t in prompt):
            raise usage_error(f"sdsl measure: prompt {i} has a token id outside the models' "
                              f"vocabulary of {vocab} (does the tokenizer belong to them?)")
    temperature = 0.0 if args.greedy else float(args.temperature)
    settings = {
        "draft_model": draft.name, "draft_params": int(draft.decoder.num_params),
        "draft_tokens": draft.tokens, "target_model": target.name,
        "target_params": int(target.decoder.num_params), "target_tokens": target.tokens,
        "lookahead": args.lookahead, "temperature": temperature,
        "max_new_tokens": args.max_new_tokens, "prompt_len": prompt_len,
        "batch_size": args.batch_size, "baseline": not args.no_baseline, "seed": args.seed,
        "prompt_set": prompt_set, "device": jax.devices()[0].device_kind,
    }
    if draft.kind == "sdsl":  # a retrained model in the same directory is another model
        settings.update(draft_perplexity=draft.perplexity, target_perplexity=target.perplexity)

    earlier = _read_runs(args.out, usage_error)
    _check_settings(earlier, settings, args.out, usage_error)
    done = {}
    for record in earlier:
        done.setdefault(int(record["prompt_id"]), record)
    hashes = [_prompt_hash(p) for p in prompts]
    for i, record in done.items():
        if i < len(prompts) and record.get("prompt_hash") != hashes[i]:
            raise usage_error(f"sdsl measure: prompt {i} is not the prompt {args.out} measured "
                              "(the corpus or prompt file changed); choose another --out")
    todo = [i for i in range(len(prompts)) if i not in done]

    measured_now = 0
    if todo:
        todo_prompts = [prompts[i] for i in todo]
        nll = None  # a card gives the perplexity of an sdsl model
        if draft.kind == "hf":
            nll = {role: _nll(model, todo_prompts, prompt_len, args.batch_size)
                   for role, model in (("draft", draft), ("target", target))}
        context = prompt_len + args.max_new_tokens // 2
        steps = _measure_steps(draft.decoder, target.decoder, args.lookahead, args.batch_size,
                               context)
        position = {i: j for j, i in enumerate(todo)}
        try:
            handle = open(args.out, "a", encoding="utf-8")
        except OSError as err:
            raise usage_error(f"sdsl measure: argument --out: cannot write {args.out}: "
                              f"{err.strerror}") from None
        records = measure_pair(draft.decoder, target.decoder, todo_prompts, args.lookahead,
                               args.max_new_tokens, temperature, jax.random.PRNGKey(args.seed),
                               prompt_ids=todo, batch_size=args.batch_size, prompt_len=prompt_len,
                               baseline=not args.no_baseline)
        with handle, tqdm(total=len(prompts), initial=len(prompts) - len(todo), unit="prompt",
                          desc="measure", disable=None, file=sys.stderr) as bar:
            for record in records:
                i = int(record["prompt_id"])
                j = position[i]
                line = _line(record, settings, draft, target, hashes[i], steps, context,
                             None if nll is None else {role: (float(nll[role][0][j]),
                                                              int(nll[role][1][j]))
                                                       for role in nll})
                _append(handle, line)
                done[i] = line
                measured_now += 1
                bar.update(1)

    records = [done[i] for i in range(len(prompts))]
    row = summary_row(records, confidence=args.confidence, num_resamples=args.bootstrap,
                      seed=args.seed)
    row["runs_file"] = args.out
    _emit(args, row, usage_error, lambda: _print_summary(
        row, {"runs_file": args.out, "measured_now": measured_now,
              "from_earlier": len(prompts) - measured_now}))
    return 0


def _line(record, settings, draft: _Model, target: _Model, prompt_hash, steps, context,
          nll) -> dict:
    """A runs-file line: settings, then the measurement-set columns, then the rest.

    ``nll`` is None for sdsl models (their cards give the perplexity), else
    {role: (nats, scored tokens)} of this prompt.
    """
    k = record.pop("accepted")
    line = {"prompt_id": record.pop("prompt_id"), **settings, "family": draft.family}
    if nll is None:
        line.update(draft_perplexity=draft.perplexity, target_perplexity=target.perplexity,
                    perplexity_source="validation")
    else:  # no card: the perplexity on this prompt
        scored = nll["draft"][1]
        for role in ("draft", "target"):
            line[f"{role}_perplexity"] = math.exp(nll[role][0] / scored) if scored else None
        line.update(perplexity_source="prompts", prompt_scored_tokens=scored,
                    draft_prompt_nll=nll["draft"][0], target_prompt_nll=nll["target"][0])
    line.update(accepted=int(sum(k)),
                accepted_per_iteration=k, prompt_hash=prompt_hash, **steps,
                batch=settings["batch_size"], context=context, precision="fp32")
    for key, value in record.items():
        line.setdefault(key, value)
    return line
