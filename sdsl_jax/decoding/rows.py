"""A measured pair's summary row, and the rows file that keeps one row per pair and setting.

:func:`summary_row` aggregates the lines of a runs file
(:mod:`sdsl_jax.decoding.run`) into one row of the measurement-set format
(:mod:`sdsl_jax.estimation.measurements`): the acceptance with its interval
across prompts (prompts as clusters), the acceptance at each draft position with the
test of one rate at every position, the latency columns of ``sdsl plot
latency`` (ttft, tpot, ttot and their _low/_high, seconds) with t intervals
that take the timed batch as the unit (the Student-t interval across prompts
at batch size 1; :func:`sdsl_jax.decoding.metrics.mean_interval`), the
speedup, the step times and the law's
prediction, the precisions that ran, the sampling settings, the devices and
the peak device memory (:mod:`sdsl_jax.decoding.run`). :func:`write_row`
adds a row to a rows file, replacing the row of the same pair and settings,
for ``sdsl fit`` and ``sdsl plot latency``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from sdsl_jax.common.validation import finite_or_none
from sdsl_jax.common.io import JsonlError, parse_jsonl, write_jsonl
from sdsl_jax.common.tables import InputFileError, read_text
from sdsl_jax.decoding.run import LATENCIES, SETTINGS, MeasureRunError, setting


def _at_least_0(value: float) -> float:
    return value if math.isnan(value) else max(0.0, value)


def summary_row(records: list[dict], *, confidence: float = 0.95, num_resamples: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """One measurement-set row from the runs-file records of one pair and setting.

    The acceptance interval takes prompts as clusters (``cluster_interval``); latency and speedup
    intervals are t intervals with the timed batches as units (the prompts'
    Student-t interval at batch size 1), and ``timed_batches`` says how many
    there were; step times are medians over the records.
    """
    import jax
    with jax.enable_x64(False):  # the precision the measurement ran in
        return _summary_row(records, confidence, num_resamples, seed)


def _summary_row(records, confidence, num_resamples, seed) -> dict[str, Any]:
    import jax
    import numpy as np
    from sdsl_jax.decoding import metrics
    from sdsl_jax.estimation.positions import summarize_positions

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
    row["timed_batches"] = s["batches"]
    if first["baseline"]:
        # The baseline decoded the same batches, each timed once for all its rows.
        batches = metrics.record_batches(records)
        for name in LATENCIES:
            mean, low, high = metrics.mean_interval(
                [np.nan if r.get(f"baseline_{name}_s") is None else r[f"baseline_{name}_s"]
                 for r in records], confidence, batches=batches)
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
        "max_new_tokens", "prompt_len", "batch", "context", "device", "prompt_set",
        "seed", "baseline")})
    # The precision that ran, the sampling and the devices: settings, so one
    # value for every line (a line older than a setting ran at its old value).
    row.update({key: setting(first, key) for key in (
        "draft_precision", "target_precision", "top_k", "top_p", "eos_token", "devices")})
    row["precision"] = (row["target_precision"]
                        if row["draft_precision"] == row["target_precision"] else None)
    # Each line holds the peak so far; the run's is the largest (None: none reported).
    peaks = [r["peak_memory_bytes"] for r in records if r.get("peak_memory_bytes") is not None]
    row["peak_memory_bytes"] = max(peaks) if peaks else None
    # XLA's estimate of the compiled programs, where some run asked for it: the
    # shapes are settings, so every estimate of the run is the same figure.
    for key in ("prefill_memory_bytes", "decode_memory_bytes"):
        known = [r[key] for r in records if r.get(key) is not None]
        if known:
            row[key] = max(known)
    return {key: finite_or_none(value) if isinstance(value, float) else value for key, value in row.items()}


def write_row(path: str, row: dict) -> None:
    """Add ``row`` to the rows file ``path`` (atomically), replacing a row of the same pair and
    settings."""
    rows = []
    if os.path.exists(path):
        try:
            # The whole file, last line included with or without its newline: a
            # rows file is replaced whole, never appended to, so nothing is torn.
            rows = parse_jsonl(read_text(path), path)
        except JsonlError as err:
            raise MeasureRunError(f"sdsl measure: argument --rows: cannot read {err}") from None
        except InputFileError as err:
            # A folder, no permission, Latin-1 or binary: the file is left as it is.
            raise MeasureRunError(f"sdsl measure: argument --rows: {err}") from None
    # A row names its batch size "batch", as step-time records do; a
    # teacher-forced row never replaces the loop's row of the same pair.
    key = lambda r: tuple(setting(r, "batch" if k == "batch_size" else k) for k in SETTINGS) + (
        r.get("method", "loop"),)
    write_jsonl(path, [r for r in rows if key(r) != key(row)] + [row])
