"""A measured pair's row as the text ``sdsl measure`` prints: models, a table of means and intervals.

:func:`loop_summary` is the speculative loop's row of
:func:`sdsl_jax.decoding.rows.summary_row`; :func:`teacher_forced_summary` is
the row of ``sdsl measure --teacher-forced``. Both return the whole text,
newline-terminated, so a caller can print it or keep it in a file (``sdsl
reproduce`` keeps each pair's summary beside its runs file).
"""

from __future__ import annotations

from sdsl_jax.decoding.run import LATENCIES


def _seconds(value) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def _interval(low, high, fmt) -> str:
    return "" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"


def _models(row: dict) -> list[str]:
    """The draft and target lines: name, parameters, training tokens, perplexity."""
    from sdsl_jax.common.quantities import format_count as fc

    def model(role):
        perplexity = row[f"{role}_perplexity"]
        return (f"{row[f'{role}_model']} ({row[f'{role}_params']:,} params, "
                f"{fc(row[f'{role}_tokens'])} tokens, perplexity "
                f"{'-' if perplexity is None else f'{perplexity:.4g}'})")

    return [f"draft  {model('draft')}", f"target {model('target')}"]


def _table(lines, level: str) -> list[str]:
    """Rows of (name, value, interval, note) under a mean / interval header, after a blank line."""
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    text = ["", f"  {'':<{widths[0]}}  {'mean':<{widths[1]}}  {level + ' interval':<{widths[2]}}"]
    for name, value, interval, note in lines:
        text.append(f"  {name:<{widths[0]}}  {value:<{widths[1]}}  {interval:<{widths[2]}}  "
                    f"{note}".rstrip())
    return text


def _position_lines(row: dict) -> list[tuple[str, str, str, str]]:
    """Table rows: the rate at each draft position, the i.i.d. fit test, the serving ratio."""
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


def _temperature(row: dict) -> str:
    """The sampling: greedy or the temperature, then any truncation and the stop token."""
    text = "greedy" if row["temperature"] == 0 else f"temperature {row['temperature']:g}"
    if row.get("top_k") is not None:
        text += f", top-k {row['top_k']}"
    if row.get("top_p") is not None:
        text += f", top-p {row['top_p']:g}"
    if row.get("eos_token") is not None:
        text += f", stopping at end of sequence (token {row['eos_token']})"
    return text


def _where(row: dict) -> str:
    """The precision and the devices: "bf16 on cpu", "draft fp32, target bf16 on 8 x TPU v5"."""
    draft = row.get("draft_precision", "fp32")
    target = row.get("target_precision", "fp32")
    precision = target if draft == target else f"draft {draft}, target {target}"
    devices = row.get("devices") or 1
    return f"{precision} on {'' if devices == 1 else f'{devices} x '}{row['device']}"


def _bytes(value) -> str:
    return f"{value / 2**30:.3g} GiB" if value >= 2**30 else f"{value / 2**20:.3g} MiB"


def _memory(row: dict) -> list[str]:
    """The memory line: the device's peak and XLA's estimate of the programs, where known."""
    parts = []
    if row.get("peak_memory_bytes") is not None:
        parts.append(f"device peak {_bytes(row['peak_memory_bytes'])} (the process's peak: "
                     "this pair's or higher)")
    estimates = [f"{name} {_bytes(row[f'{name}_memory_bytes'])}" for name in ("prefill", "decode")
                 if row.get(f"{name}_memory_bytes") is not None]
    if estimates:
        parts.append(f"XLA's estimate per device: {', '.join(estimates)}")
    return [f"memory: {'; '.join(parts)}"] if parts else []


def loop_summary(row: dict, *, runs_file: str, measured_now: int, from_earlier: int) -> str:
    """The summary of a loop run's row: acceptance, by draft position, speedups, latencies."""
    text = _models(row)
    # Rows of a batch share one timing, so a batch's latencies are one
    # observation: say how many the intervals rest on when that is not the prompts.
    batches = row.get("timed_batches")
    units = ("" if row["batch"] == 1 or batches is None else
             f" (latency intervals over {batches} timed batch{'' if batches == 1 else 'es'})")
    text.append(f"lookahead {row['lookahead']}, {_temperature(row)}, {row['prompts']} prompts of "
                f"{row['prompt_len']} tokens, {row['max_new_tokens']} new tokens each, batch "
                f"{row['batch']}{units}, {_where(row)}")
    text.append(f"{runs_file}: {measured_now} prompts measured now, {from_earlier} from an "
                "earlier run")
    text += _memory(row)
    lines = [
        ("acceptance alpha", f"{row['acceptance']:.4f}",
         _interval(row["acceptance_low"], row["acceptance_high"], lambda v: f"{v:.4f}"),
         f"prompts as clusters; {row['accepted']:,} of {row['trials']:,} judged drafts "
         f"accepted; mean exact beta {row['beta_mean']:.4f}"
         # With fewer than four prompts the interval cannot learn how much
         # prompts differ; it stays honest by being wide (estimation.acceptance).
         + ("; under 4 prompts the interval is wide: measure more" if row["prompts"] < 4 else "")),
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
    text += _table(lines, f"{row['confidence']:.0%}")
    return "\n".join(text) + "\n"


def teacher_forced_summary(row: dict, lowest: float, highest: float) -> str:
    """The summary of a teacher-forced row; ``lowest`` and ``highest`` are the extreme
    per-document acceptances."""
    text = _models(row)
    source = "held-out" if row["prompt_set"].startswith("corpus:") else "prompt-file"
    plural = "" if row["prompts"] == 1 else "s"
    text.append(f"teacher-forced, {_temperature(row)}: {row['prompts']} {source} "
                f"document{plural}, {row['positions']:,} positions read in windows of "
                f"{row['prompt_len']} tokens, {_where(row)}, in {row['seconds']:.3g} s")
    text += _memory(row)
    lines = [
        ("acceptance alpha", f"{row['acceptance']:.4f}",
         _interval(row["acceptance_low"], row["acceptance_high"], lambda v: f"{v:.4f}"),
         f"mean exact beta = sum_v min(p, q) over every position; documents as clusters "
         f"(per document {lowest:.3f} to {highest:.3f})"),
        ("draft perplexity", f"{row['draft_document_perplexity']:.4g}", "",
         "per token of these documents"),
        ("target perplexity", f"{row['target_document_perplexity']:.4g}", "", ""),
    ]
    text += _table(lines, f"{row['confidence']:.0%}")
    return "\n".join(text) + "\n"
