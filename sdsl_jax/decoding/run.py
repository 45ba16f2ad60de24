"""A resumable measurement of one (draft, target) pair: a runs file of one line per prompt.

What ``sdsl measure`` runs for the speculative loop, and stage 3 of ``sdsl
reproduce`` for every pair: the caller loads the two models and chooses the
prompts; this module does the rest.

The runs file
-------------
:func:`measure_run` appends one JSON line per finished prompt, flushed and
fsynced as it lands (:func:`sdsl_jax.common.io.append_jsonl`), so a run
killed at any moment keeps every finished prompt; calling it again skips
them (prompt ``i``'s randomness follows its id, so the rerun gives what one
uninterrupted run would have). Every line carries the run's settings
(:data:`SETTINGS`, from :func:`run_settings`); a rerun with other settings
is refused rather than mixed in. More prompts extend a finished run: prompt
``i`` is the same text whatever the count (:func:`prompt_windows`), and its
hash on the line catches a prompt that changed.

Each line is also a row of the measurement-set format
(:mod:`sdsl_jax.estimation.measurements`): draft_params, target_params,
draft_tokens, target_tokens, draft_perplexity, target_perplexity, lookahead,
and the counts ``accepted`` (drafted tokens accepted) and ``trials`` (drafted
tokens judged), with the accepted count of every iteration in
``accepted_per_iteration``. It is a step-time record for ``sdsl plan
--step-times`` too (draft_step_seconds, target_step_seconds, batch, context,
precision).

A line names the timed batch it came from (``batch_index``, counted across
resumptions, so each batch of the file has its own): the lines of one batch
share its prefill and decode times, and the summary's latency intervals take
the batch as the unit. Runs files written before that field are grouped by
:func:`sdsl_jax.decoding.metrics.record_batches`.

The run's lines are aggregated into one measurement row, and that row
kept in a rows file, by :mod:`sdsl_jax.decoding.rows`; the row's text is
:mod:`sdsl_jax.decoding.summary`.

Perplexity
----------
A model with a known held-out perplexity (:attr:`RunModel.perplexity`, from
an ``sdsl train`` card) records it on every line: the pre-training law needs
every size scored on the same text. A model without one (a Hugging Face
checkpoint) is scored on the prompts themselves, teacher-forced (each line:
that prompt, with its ``*_prompt_nll`` and ``prompt_scored_tokens``; the row:
pooled over the prompts). ``perplexity_source`` says which ("validation" or
"prompts").

Precision, sampling and devices
-------------------------------
The models run in the dtype their decoders state (``Decoder.dtype``), with
JAX's 64-bit mode off whatever the caller runs in; every line records it as
``draft_precision`` and ``target_precision`` ("fp32", "bf16" or "fp16", the
names ``sdsl plan --step-times`` reads) and, when the two agree, as
``precision``. The sampling settings (``top_k``, ``top_p``, ``eos_token``:
None when not used) and the number of devices the models are sharded over
(``devices``) are settings too. Runs files written before a setting existed
lack it and are read as having run at its old value (:data:`ADDED_SETTINGS`).

Memory
------
Every line records ``peak_memory_bytes``: the largest peak of bytes in use
that a local device reports (``device.memory_stats()``) when the line is
written, None where the device reports none (a CPU). JAX cannot reset the
peak, so it covers everything the process ran before (in ``sdsl reproduce``,
the pairs measured before this one too): an upper bound on this pair's. The
summary row takes the largest over the lines. Asked for (``memory_estimate``),
the lines also record XLA's own estimate of what the compiled prefill and
decode programs hold per device (``prefill_memory_bytes``,
``decode_memory_bytes``: :func:`sdsl_jax.decoding.loop.compiled_memory`),
which a CPU run reports too. It compiles the loop's two programs ahead of
time, and the run then calls those executables: no second compilation.

Errors are :class:`MeasureRunError`, whose message is the line ``sdsl
measure`` prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
from typing import Any, Sequence

from sdsl_jax.common.io import JsonlError, append_jsonl, iter_jsonl, read_jsonl

# The settings a runs file is tied to: a rerun must match them all.
SETTINGS = ("draft_model", "draft_params", "draft_tokens", "target_model", "target_params",
            "target_tokens", "lookahead", "temperature", "max_new_tokens", "prompt_len",
            "batch_size", "baseline", "seed", "prompt_set", "device", "draft_precision",
            "target_precision", "top_k", "top_p", "eos_token", "devices")
# Settings added after runs files were first written, and the value a line
# without one ran at: such a file resumes under these values and no others.
ADDED_SETTINGS = {"draft_precision": "fp32", "target_precision": "fp32", "top_k": None,
                  "top_p": None, "eos_token": None, "devices": 1}
# Decoder.dtype -> the precision a record states (planning.hardware's names).
PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# What the summary reads from every line besides the settings.
LINE_KEYS = ("prompt_id", "accepted", "accepted_per_iteration", "trials", "beta_sum",
             "beta_count", "ttft_s", "tpot_s", "ttot_s", "draft_step_seconds",
             "target_step_seconds", "baseline_step_seconds", "cost_ratio", "verify_cost",
             "prompt_hash", "perplexity_source")
LATENCIES = ("ttft", "tpot", "ttot")


class MeasureRunError(ValueError):
    """A runs file, rows file or prompt set a run cannot use; the message is the one line
    ``sdsl measure`` prints, and says what to change."""


@dataclasses.dataclass(frozen=True)
class RunModel:
    """A draft or target as a runs file records it.

    Attributes:
      decoder: the :class:`~sdsl_jax.decoding.decoder.Decoder`.
      name: the model's name on every line.
      tokens: training tokens D.
      perplexity: held-out per-token perplexity (an ``sdsl train`` card), or
        None to measure it on the prompts.
      family: the model family, or None.
    """

    decoder: Any
    name: str
    tokens: float | None
    perplexity: float | None = None
    family: str | None = None


def precision(decoder) -> str:
    """The precision a record states for ``decoder``: "fp32", "bf16" or "fp16" (its
    ``dtype`` name otherwise)."""
    dtype = str(getattr(decoder, "dtype", "float32"))
    return PRECISIONS.get(dtype, dtype)


def setting(record: dict, key: str):
    """``record[key]``, or for a setting added since the record was written, the value it
    ran at (:data:`ADDED_SETTINGS`)."""
    return record[key] if key in record else ADDED_SETTINGS.get(key)


def run_settings(draft: RunModel, target: RunModel, *, lookahead: int, temperature: float,
                 max_new_tokens: int, prompt_len: int, batch_size: int, baseline: bool, seed: int,
                 prompt_set: str, top_k: int | None = None, top_p: float | None = None,
                 eos_token: int | None = None, devices: int = 1) -> dict:
    """The settings every line of the run carries (:data:`SETTINGS`, in that order).

    ``top_k``, ``top_p`` and ``eos_token`` are the sampling's truncation and
    stop token (None: not used), passed on to
    :func:`sdsl_jax.decoding.pair.measure_pair`; ``devices`` is how many
    devices the caller sharded the decoders over (a record, not an
    instruction: the decoders come placed). The precisions are the decoders'
    dtypes. Models with a card perplexity add it: a model retrained in the
    same directory is another model, and its lines must not be mixed in.
    """
    import jax
    settings = {
        "draft_model": draft.name, "draft_params": int(draft.decoder.num_params),
        "draft_tokens": draft.tokens, "target_model": target.name,
        "target_params": int(target.decoder.num_params), "target_tokens": target.tokens,
        "lookahead": lookahead, "temperature": temperature,
        "max_new_tokens": max_new_tokens, "prompt_len": prompt_len,
        "batch_size": batch_size, "baseline": baseline, "seed": seed,
        "prompt_set": prompt_set, "device": jax.devices()[0].device_kind,
        "draft_precision": precision(draft.decoder), "target_precision": precision(target.decoder),
        "top_k": None if top_k is None else int(top_k),
        "top_p": None if top_p is None else float(top_p),
        "eos_token": None if eos_token is None else int(eos_token), "devices": int(devices),
    }
    if draft.perplexity is not None:
        settings.update(draft_perplexity=draft.perplexity, target_perplexity=target.perplexity)
    return settings


def prompt_windows(text, count: int, width: int, seed: int) -> list:
    """``count`` windows of ``width`` tokens of ``text`` (a 1-D token array).

    Window ``i`` starts at an offset drawn from ``(seed, i)`` alone, so a run
    asked for more prompts keeps the windows it measured.
    """
    import numpy as np
    if text.size < width:
        raise MeasureRunError(f"sdsl measure: argument --prompt-len: the held-out text has "
                              f"{text.size:,} tokens, fewer than one prompt window of {width:,}; "
                              "lower --prompt-len or add text with --corpus")
    windows = []
    for i in range(count):
        start = int(np.random.default_rng([seed, i]).integers(0, text.size - width + 1))
        windows.append(text[start:start + width])
    return windows


def prompt_hash(tokens) -> str:
    """A short hash of a prompt's token ids, stored on its line."""
    return hashlib.sha256(json.dumps([int(t) for t in tokens]).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------
# The runs file.


def read_runs(path: str, *, repair: bool = True) -> list[dict]:
    """The lines of an earlier run in ``path`` ([] if none).

    Every complete line must be a record of this command, or the file is
    refused (:class:`MeasureRunError`) before a byte of it changes: only then,
    with ``repair``, is a last line cut off by a kill dropped from the file
    (:func:`sdsl_jax.common.io.read_jsonl`). ``repair=False`` only checks, as
    ``sdsl measure`` does before it loads a model.
    """
    not_ours = "is not a record of this `sdsl measure`"
    try:
        # Checked without repair first: a file that is not ours keeps every byte.
        records = read_jsonl(path, repair=False)
    except IsADirectoryError:
        raise MeasureRunError(f"sdsl measure: argument --out: {path} is a folder; name a "
                              "runs file") from None
    except OSError as err:
        raise MeasureRunError(f"sdsl measure: argument --out: cannot read {path}: "
                              f"{err.strerror}") from None
    except JsonlError as err:
        if err.kind == "object":
            raise MeasureRunError(f"sdsl measure: {path}: line {err.line} {not_ours} (not a "
                                  "JSON object); choose another --out") from None
        what = f"is not JSON ({err.detail})" if err.kind == "json" else "is not UTF-8 text"
        raise MeasureRunError(f"sdsl measure: {path}: line {err.line} {what}; is this a runs "
                              "file of `sdsl measure`? Choose another --out") from None
    for index, record in enumerate(records):
        missing = [key for key in SETTINGS + LINE_KEYS
                   if key not in record and key not in ADDED_SETTINGS]
        if missing:
            raise MeasureRunError(f"sdsl measure: {path}: line {_line_number(path, index)} "
                                  f"{not_ours} (no {missing[0]!r}); choose another --out")
    data = b""
    if os.path.exists(path):
        with open(path, "rb") as handle:
            data = handle.read()
    lines = data.split(b"\n")
    if lines[-1] and not lines[-1].startswith(b'{"'):
        # What a kill can cut off is the start of one of our lines, never other text.
        raise MeasureRunError(f"sdsl measure: {path}: line {len(lines)} {not_ours}; "
                              "choose another --out")
    if repair and lines[-1]:
        read_jsonl(path, repair=True)
    return records


def _line_number(path: str, index: int) -> int:
    """The file line of record ``index`` (blank lines count, as in an editor)."""
    with open(path, "rb") as handle:
        return [number for number, _ in iter_jsonl(handle.read(), path)][index]


def check_settings(records: list[dict], settings: dict, path: str) -> None:
    """Refuse to resume ``records`` under other ``settings``."""
    for record in records:
        for key, value in settings.items():
            if setting(record, key) != value:
                raise MeasureRunError(
                    f"sdsl measure: {path} holds a run with {key} = {setting(record, key)!r}, "
                    f"this run has {value!r}; rerun with the same settings to resume it, or "
                    "choose another --out")


def measure_run(draft: RunModel, target: RunModel, prompts: Sequence[Sequence[int]],
                settings: dict, path: str, *, progress: bool | None = None,
                memory_estimate: bool = False) -> tuple[list[dict], int]:
    """Measure the prompts ``path`` does not hold yet; (every prompt's line in order, how many
    were measured now).

    Args:
      draft, target: the pair.
      prompts: token lists; prompt ``i`` is the one with id ``i``.
      settings: from :func:`run_settings` (the lookahead, temperature, ...
        of the decoding are read from it).
      path: the runs file, created or extended.
      progress: tqdm bar on stderr (None: on a terminal only).
      memory_estimate: also record XLA's memory estimate of the compiled
        programs on the lines measured now (the loop is compiled for it ahead
        of time, and the run calls the same executables).
    """
    import jax

    earlier = read_runs(path)
    check_settings(earlier, settings, path)
    done = {}
    for record in earlier:
        done.setdefault(int(record["prompt_id"]), record)
    hashes = [prompt_hash(p) for p in prompts]
    for i, record in done.items():
        if i < len(prompts) and record.get("prompt_hash") != hashes[i]:
            raise MeasureRunError(f"sdsl measure: prompt {i} is not the prompt {path} measured "
                                  "(the corpus or prompt file changed); choose another --out")
    todo = [i for i in range(len(prompts)) if i not in done]

    measured_now = 0
    if todo:
        # Models run in float32 whatever the caller runs in.
        with jax.enable_x64(False):
            measured_now = _measure(draft, target, prompts, todo, settings, hashes, path, done,
                                    progress, memory_estimate)
    return [done[i] for i in range(len(prompts))], measured_now


def _measure(draft: RunModel, target: RunModel, prompts, todo, settings, hashes, path, done,
             progress, memory_estimate) -> int:
    """Measure prompts ``todo``, appending each line to ``path`` and to ``done`` as it lands."""
    import jax
    from tqdm import tqdm
    from sdsl_jax.decoding import pair  # looked up now: tests replace pair.measure_pair

    todo_prompts = [prompts[i] for i in todo]
    prompt_len, batch = settings["prompt_len"], settings["batch_size"]
    nll = None  # a card gives the perplexity
    if draft.perplexity is None:
        nll = {role: _prompt_nll(model.decoder, todo_prompts, prompt_len, batch)
               for role, model in (("draft", draft), ("target", target))}
    context = prompt_len + settings["max_new_tokens"] // 2
    steps = _measure_steps(draft.decoder, target.decoder, settings["lookahead"], batch, context)
    memory = {}
    if memory_estimate:
        from sdsl_jax.decoding import loop
        programs = loop.compiled_memory(draft.decoder, target.decoder, batch_size=batch,
                                        prompt_len=prompt_len, lookahead=settings["lookahead"],
                                        max_new_tokens=settings["max_new_tokens"])
        memory = {f"{name}_memory_bytes": None if stats is None else int(stats.peak_bytes)
                  for name, stats in programs.items()}
    position = {i: j for j, i in enumerate(todo)}
    # Batches are numbered across the runs file: a resumption's batches are new ones.
    first_batch = 1 + max((int(r["batch_index"]) for r in done.values()
                           if r.get("batch_index") is not None), default=-1)
    # Passed only when used: the loop without them is the loop as it always ran.
    sampling = {key: settings[key] for key in ("top_k", "top_p", "eos_token")
                if settings.get(key) is not None}
    records = pair.measure_pair(draft.decoder, target.decoder, todo_prompts,
                                settings["lookahead"], settings["max_new_tokens"],
                                settings["temperature"], jax.random.PRNGKey(settings["seed"]),
                                prompt_ids=todo, batch_size=batch, prompt_len=prompt_len,
                                baseline=settings["baseline"], first_batch=first_batch,
                                **sampling)
    measured = 0
    # Opened when the first line is ready: a run that fails before (out of
    # memory in the first batch, say) leaves no empty runs file behind.
    with contextlib.ExitStack() as stack, tqdm(
            total=len(prompts), initial=len(prompts) - len(todo), unit="prompt",
            desc="measure", disable=None if progress is None else not progress,
            file=sys.stderr) as bar:
        handle = None
        for record in records:
            if handle is None:
                try:
                    handle = stack.enter_context(open(path, "a", encoding="utf-8"))
                except OSError as err:
                    raise MeasureRunError(f"sdsl measure: argument --out: cannot write {path}: "
                                          f"{err.strerror}") from None
            i = int(record["prompt_id"])
            j = position[i]
            line = _line(record, settings, draft, target, hashes[i], steps, context,
                         None if nll is None else {role: (float(nll[role][0][j]),
                                                          int(nll[role][1][j]))
                                                   for role in nll})
            line.update(peak_memory_bytes=peak_memory_bytes(), **memory)
            append_jsonl(handle, line)
            done[i] = line
            measured += 1
            bar.update(1)
    return measured


def peak_memory_bytes() -> int | None:
    """The largest ``peak_bytes_in_use`` a local device reports, or None where none does
    (JAX's CPU devices keep no statistics)."""
    import jax
    peaks = []
    for device in jax.local_devices():
        stats = device.memory_stats()
        if stats and stats.get("peak_bytes_in_use") is not None:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


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


def _prompt_nll(decoder, prompts, length: int, batch: int):
    """Per prompt: (nll nats, scored tokens), in batches of one shape."""
    import numpy as np
    from sdsl_jax.decoding import loop
    from sdsl_jax.decoding.pair import prompt_log_likelihood
    nll, scored = [], []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        chunk = chunk + [chunk[-1]] * (batch - len(chunk))  # one shape, one compilation
        tokens, lengths = loop.pad_prompts(chunk, length)
        a, b = prompt_log_likelihood(decoder, tokens, lengths)
        nll += a.tolist()
        scored += b.tolist()
    return np.asarray(nll[:len(prompts)]), np.asarray(scored[:len(prompts)])


def _line(record, settings, draft: RunModel, target: RunModel, prompt_hash, steps, context,
          nll) -> dict:
    """A runs-file line: settings, then the measurement-set columns, then the rest.

    ``nll`` is None for models with a card perplexity, else {role: (nats,
    scored tokens)} of this prompt.
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
    same = settings["draft_precision"] == settings["target_precision"]
    line.update(accepted=int(sum(k)),
                accepted_per_iteration=k, prompt_hash=prompt_hash, **steps,
                batch=settings["batch_size"], context=context,
                precision=settings["target_precision"] if same else None)
    for key, value in record.items():
        line.setdefault(key, value)
    return line
