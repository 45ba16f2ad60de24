"""Stage 7: the report, ``report.md`` with its figures, from the outputs of stages 1-6.

Every number in it is read from a stage's output (``stages/<stage>.json``)
and printed with its 95% interval where it has one; nothing is computed
here but the verdict's wording and a few ratios of reported numbers.
"""

from __future__ import annotations

import datetime
import math
import os
import platform

from sdsl_jax.common.io import atomic_write_text
from sdsl_jax.common.quantities import format_count
from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.presets import params as size_params

REPORT = "report.md"
SECTIONS = ("Verdict", "1. Setup and timing", "2. Models trained", "3. Pre-training law",
            "4. Acceptance of every pair", "5. Acceptance law", "6. Predicted N*",
            "7. Measured latency", "8. Where the prediction held, and where it did not",
            "Files")


# --------------------------------------------------------------------------
# Number formatting.

def num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def interval(value, low, high, fmt=num) -> str:
    if low is None or high is None:
        return f"{fmt(value)} [n/a]"
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def ms(value) -> str:
    return "n/a" if value is None else f"{value * 1e3:.3g} ms"


def count(value) -> str:
    return "n/a" if value is None else format_count(float(value))


def speed(value) -> str:
    return "n/a" if value is None else f"{value:.3g}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# --------------------------------------------------------------------------
# The verdict.

def _where(n_star, drafts: list[str]) -> str:
    """Where N* falls among the ladder, in words."""
    if n_star is None:
        return "no draft size pays"
    sizes = sorted(drafts, key=size_params)
    if n_star < size_params(sizes[0]):
        return f"below the smallest draft ({sizes[0]})"
    if n_star > size_params(sizes[-1]):
        return f"above the largest draft ({sizes[-1]})"
    for small, large in zip(sizes, sizes[1:]):
        if size_params(small) <= n_star <= size_params(large):
            return f"between {small} and {large}"
    return ""


def _span(table: list[dict], key: str, fmt=lambda v: num(v, 3)) -> str:
    values = [e[key] for e in table if e.get(key) is not None]
    if not values:
        return "n/a"
    low, high = min(values), max(values)
    return fmt(low) if low == high else f"{fmt(low)} to {fmt(high)}"


def _why(latency: dict) -> str:
    """Why the cost models miss on this machine, in the measured numbers only."""
    table = latency["table"]
    gamma = table[0]["lookahead"]
    mean = lambda key: sum(e[key] for e in table) / len(table)
    cal = latency["calibration"]
    sizes = [e["draft_params"] for e in table] + [e["target_params"] for e in table]
    return (f"the FLOP law prices a draft step at N/M = {_span(table, 'flop_cost_ratio')} of a "
            f"target step and the verification of {gamma + 1} tokens at one target step. "
            f"Measured here, a draft step costs c = {_span(table, 'cost_ratio')} target steps and "
            f"the verification v = {_span(table, 'verify_cost')}: these small models do not run "
            "proportionally faster than the target, and scoring more positions is not free. With "
            "the measured alpha, c and v, the throughput law E(alpha, gamma) / (gamma c + v) "
            f"predicts {_span(table, 'predicted_speedup_verify', speed)} instead of the fitted "
            f"chain's {_span(table, 'flop_predicted_speedup', speed)}; measured: "
            f"{_span(table, 'speedup', speed)}. The rest is the loop's own work in every iteration "
            "(sampling from both models' distributions, the acceptance test, bookkeeping), which no "
            f"cost model here counts: an iteration took {ms(mean('iteration_seconds'))} on average, "
            f"its forward steps timed alone {ms(mean('iteration_forward_seconds'))}. The roofline "
            f"calibrated on the step times fits them with an rms error of {cal['rms_log_error']:.0%} "
            f"(worst {cal['max_relative_error']:.0%}), so the wall-clock planner inherits a poor "
            "step-time model as well as the missing loop cost. Both planners price forward steps "
            "only: right for large models on an accelerator at batch 1 (memory-bound steps, a "
            "loop whose bookkeeping is negligible next to them), not for models of "
            f"{count(min(sizes))} to {count(max(sizes))} parameters on this machine. Timings "
            "come from a shared machine: a target-alone token "
            f"took {_span(table, 'baseline_tpot', ms)} in the different pairs' runs, so each "
            "speedup is taken per prompt against a target-alone run of the same prompt, at the "
            "same moment.")


def _relative(n, low, high) -> str:
    """Where a draft size lies against N*'s interval."""
    if low is None or high is None:
        return "n/a"
    if n > high:
        return "above"
    if n < low:
        return "below"
    return "inside"


def verdict_lines(outputs: dict, preset) -> tuple[list[str], list[dict]]:
    """(markdown lines, per-target summary) of where the predictions held."""
    latency, predict = outputs["latency"], outputs["predict"]
    by_target = {p["target"]: p for p in predict["targets"]}
    lines, summary = [], []
    for v in latency["verdicts"]:
        t = v["target"]
        p = by_target[t]
        rows = {e["draft"]: e for e in latency["table"] if e["target"] == t}
        best = v["measured"]
        best_row = rows[best["draft"]]
        overlap = "" if best["clear"] else " (its interval overlaps another draft's)"
        measured = (f"the fastest draft is **{best['draft']}**, at "
                    f"{interval(best['speedup'], best['speedup_low'], best['speedup_high'], speed)} "
                    f"the speed of the target alone{overlap}, TPOT "
                    f"{interval(best_row['tpot'], best_row['tpot_low'], best_row['tpot_high'], ms)}")
        if best["status"] == "target alone":
            measured += ", so **the target alone is fastest**"
        elif best["status"] == "draft":
            measured += f", so **speculative decoding with {best['draft']} is fastest**"
        else:
            measured += ", which the measurement cannot tell apart from the target alone"
        pick = next(r for r in p["ladder"] if r["draft"] == p["pick"])
        flop = (f"FLOP law: N* = {interval(p['n_star'], p['n_star_low'], p['n_star_high'], count)}, "
                f"{_where(p['n_star'] if p['pays'] else None, preset.drafts_of(t))}; among the "
                f"drafts it predicts **{p['pick']}** fastest at "
                f"{speed(pick['speedup_at_lookahead'])} (lookahead {preset.lookahead})")
        wall = ("wall-clock model calibrated on the measured step times: "
                + (f"N* = {count(v['wall_n_star'])} at {speed(v['wall_speedup'])}"
                   if v["wall_pays"] else "no draft size pays")
                + f"; among the drafts it predicts **{v['wall_pick']}** fastest, "
                + ("faster than" if v["wall_pick_pays"] else "slower than")
                + " the target alone")

        def held(draft_ok, pays_ok):
            pays = {True: "held", False: "did not hold", None: "cannot be judged"}[pays_ok]
            where = "held" if draft_ok else "did not hold"
            return f"which draft is fastest: {where}; whether drafting pays: {pays}"

        side = _relative(best_row["draft_params"], p["n_star_low"], p["n_star_high"])
        if p["pays"] and side != "inside":
            flop += (f"; the measured fastest draft lies {side} N*'s interval"
                     + (" (the direction the paper's caveat expects where small drafts do not run "
                        "proportionally faster)" if side == "above" else ""))
        lines += [f"- **Target {t}** (M = {count(v['target_params'])}): measured, {measured}.",
                  f"  - {flop}. Prediction: {held(v['flop_draft_held'], v['flop_pays_held'])}.",
                  f"  - {wall[0].upper() + wall[1:]}. Prediction: "
                  f"{held(v['wall_draft_held'], v['wall_pays_held'])}."]
        summary.append({"target": t, "flop_draft_held": v["flop_draft_held"],
                        "flop_pays_held": v["flop_pays_held"], "wall_draft_held": v["wall_draft_held"],
                        "wall_pays_held": v["wall_pays_held"], "measured_status": best["status"],
                        "measured_best": best["draft"], "flop_pick": p["pick"],
                        "wall_pick": v["wall_pick"]})
    flop_all = all(s["flop_draft_held"] and s["flop_pays_held"] is not False for s in summary)
    wall_all = all(s["wall_draft_held"] and s["wall_pays_held"] is not False for s in summary)
    ranking = sum(s["flop_draft_held"] for s in summary)
    conclusion = (f"**In short:** the FLOP-law N* {'held' if flop_all else 'did not hold'} on this "
                  f"machine (it named the measured fastest draft for {ranking} of {len(summary)} "
                  f"targets"
                  + ("" if all(s["flop_pays_held"] is not False for s in summary)
                     else ", and predicted a speedup where the measurement shows none")
                  + "); the wall-clock model calibrated on measured step times "
                  + ("held." if wall_all else "did not hold either."))
    if not flop_all:
        conclusion += " Why: " + _why(latency)
    laws = _laws_held(outputs) + (". Where the prediction fails, it fails on the cost side: "
                                  "turning acceptance into speed." if not flop_all else ".")
    return [conclusion, "", laws, ""] + lines, summary


def _laws_held(outputs: dict) -> str:
    """What the run says about the laws themselves (acceptance and perplexity), in numbers."""
    e2e = outputs["acceptance"]["report"]["end_to_end"]
    pre = outputs["pretraining"]
    text = (f"**The laws themselves:** the pre-training law fits the {len(pre['points'])} scored "
            f"checkpoints with R^2 {pre['r2']:.3f}; the acceptance predicted from sizes and "
            f"training tokens alone (both laws end to end) matches the loop's measured alpha with "
            f"R^2 {e2e['acceptance_r2']:.3f} (rms residual {e2e['rms_residual']:.4f}) over "
            f"{len(outputs['measure']['loop'])} pairs"
            + (" (few pairs for the plane's 3 coefficients: a close fit is weak evidence)"
               if len(outputs["measure"]["loop"]) < 8 else ""))
    tf = {(r["draft_model"], r["target_model"]): r for r in outputs["measure"]["teacher_forced"]}
    if tf:
        gaps, overlap = [], 0
        for r in outputs["measure"]["loop"]:
            t = tf[(r["draft_model"], r["target_model"])]
            gaps.append(abs(r["acceptance"] - t["acceptance"]))
            overlap += r["acceptance_low"] <= t["acceptance_high"] and t["acceptance_low"] <= r["acceptance_high"]
        text += (f"; the teacher-forced alpha on held-out text is within {max(gaps):.3f} of the "
                 f"loop's, their intervals overlapping for {overlap} of {len(gaps)} pairs")
    return text


# --------------------------------------------------------------------------
# Sections.

def _setup(ctx: Context, outputs: dict, manifest: dict) -> list[str]:
    preset = ctx.preset
    stages = manifest["stages"]
    rows = [[name, f"{stages[name].get('seconds', 0):.1f}", str(stages[name].get("attempts", 1)),
             num(stages[name].get("load_average"), 3)]
            for name in stages if stages[name].get("finished")]
    total = sum(stages[name].get("seconds", 0.0) for name in stages if stages[name].get("finished"))
    corpus = outputs["train"]["corpus"]
    lines = [f"Preset `{preset.name}`, run directory `{ctx.run.root}`, created {manifest['created']}.",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, JAX on "
             f"`{outputs['measure']['loop'][0]['device']}`. The machine may be shared: the 1-minute "
             "load average at the end of each stage is in the table.",
             f"Corpus: {corpus['train_tokens']:,} training tokens in {corpus['train_documents']} "
             f"documents, {corpus['validation_tokens']:,} held out in "
             f"{corpus['validation_documents']} (split by a hash of the document name).", ""]
    lines += _table(["stage", "seconds", "attempts", "load average"], rows)
    lines += ["", f"Stages 1-6 took {total:.0f} s ({total / 60:.1f} min) in their finishing attempts "
              "(this report stage is timed in the manifest).", ""]
    settings = [["drafts", ", ".join(preset.drafts)], ["targets", ", ".join(preset.targets)],
                ["pairs", ", ".join(f"{d} -> {t}" for d, t in preset.pairs())],
                ["training", f"{preset.steps} steps of {preset.batch_size} x {preset.seq_len} tokens "
                             f"= {count(preset.train_tokens)} tokens per model (D = D')"],
                ["loss points", f"{preset.loss_points} checkpoints per model, {count(preset.eval_tokens)} "
                                "held-out tokens each"],
                ["speculative loop", f"{preset.prompts} held-out prompts of {preset.prompt_len} tokens, "
                                     f"{preset.max_new_tokens} new tokens, lookahead {preset.lookahead}, "
                                     f"temperature {preset.temperature:g}, batch 1"],
                ["teacher-forced", f"{preset.teacher_forced_documents} held-out windows of "
                                   f"{preset.teacher_forced_length} tokens"
                                   if preset.teacher_forced_documents else "skipped"],
                ["fit intervals", "delta method" + (f" and {preset.bootstrap} bootstrap resamples"
                                                    if preset.bootstrap else "")],
                ["hardware model", f"roofline preset `{preset.hardware}`, calibrated on the measured "
                                   "step times"]]
    return lines + _table(["setting", "value"], settings)


def _models(outputs: dict) -> list[str]:
    rows = []
    for size, m in outputs["train"]["models"].items():
        rate = m.get("tokens_per_second")
        rows.append([size, f"{m['params']:,}", f"{m['layers']} x {m['width']}", count(m["tokens"]),
                     f"{m['validation_loss']:.4f}", f"{m['perplexity']:.3f}",
                     "n/a" if rate is None else f"{rate:,.0f}"])
    return (["Byte-level decoder-only transformers (`sdsl train`'s recipe), every size on the same "
             "batches; held-out loss and perplexity per byte, on "
             f"{next(iter(outputs['train']['models'].values()))['validation_tokens']:,} held-out "
             "tokens. Training throughput excludes compilation.", ""]
            + _table(["size", "params N", "layers x width", "tokens D", "held-out loss (nats)",
                      "perplexity", "training tokens/s"], rows))


def _pretraining(outputs: dict) -> list[str]:
    pre = outputs["pretraining"]
    joint = outputs["acceptance"]["report"]["end_to_end"]["coefficients"]
    names = {"irreducible_loss": "E", "param_coeff": "A", "param_exponent": "a",
             "data_coeff": "B", "data_exponent": "b"}
    rows = []
    for key, symbol in names.items():
        c, j = pre["coefficients"][key], joint[key]
        rows.append([f"{symbol} ({key})", interval(c["estimate"], c["low"], c["high"]),
                     interval(j["estimate"], j["delta_low"], j["delta_high"])])
    points = pre["points"]
    lines = [f"L(N, D) = E + A / N^a + B / D^b fitted by Huber regression on log L to "
             f"{len(points)} (N, D, loss) points: every size at {outputs['train']['expected_loss_points'] // len(outputs['train']['models'])} "
             f"checkpoints (expected {outputs['train']['expected_loss_points']} points). "
             f"R^2 {pre['r2']:.4f}, rms residual {pre['rms_residual']:.4f} nats"
             f"{'' if pre['converged'] else ' (the optimiser stopped at its step limit)'}"
             f"{'' if pre['identifiable'] else '; the data do not determine every coefficient (singular Hessian), so some intervals are not meaningful'}.",
             "", f"Caveat: {outputs['train']['caveat']}", ""]
    lines += _table(["coefficient", "fit to the checkpoints (stage 2, delta method)",
                     "end-to-end refit (stage 4, delta method)"], rows)
    lines += ["", "| size | tokens D | measured loss | fitted loss |", "|---|---|---|---|"]
    lines += [f"| {count(p['params'])} | {count(p['tokens'])} | {p['validation_loss']:.4f} | "
              f"{p['predicted_loss']:.4f} |" for p in points]
    return lines


def _acceptance_pairs(outputs: dict) -> list[str]:
    loop = outputs["measure"]["loop"]
    tf = {(r["draft_model"], r["target_model"]): r for r in outputs["measure"]["teacher_forced"]}
    chain = {(p["draft"], p["target"]): p for p in outputs["acceptance"]["pairs"]}
    rows = []
    for r in loop:
        key = (r["draft_model"], r["target_model"])
        t = tf.get(key)
        rows.append([r["draft_model"], r["target_model"], num(r["draft_params"] / r["target_params"], 3),
                     interval(r["acceptance"], r["acceptance_low"], r["acceptance_high"]),
                     f"{r['accepted']:,} / {r['trials']:,}", num(r["beta_mean"]),
                     "not run" if t is None else interval(t["acceptance"], t["acceptance_low"],
                                                          t["acceptance_high"]),
                     num(chain[key]["end_to_end"])])
    return (["alpha from the speculative loop (interval with prompts as clusters), the mean exact "
             "acceptance probability beta of the judged positions, the teacher-forced alpha on "
             "held-out text (documents as clusters), and alpha as the fitted laws predict it "
             "from the sizes and training tokens alone.", ""]
            + _table(["draft", "target", "N/M", "loop alpha", "accepted / judged", "mean beta",
                      "teacher-forced alpha", "end-to-end law"], rows)
            + ["", "The loop drafts at prefixes sampled from the target, the teacher-forced "
                   "estimate at prefixes of human text; they agree where the target's samples "
                   "resemble the held-out text."])


def _acceptance_law(outputs: dict) -> list[str]:
    acc = outputs["acceptance"]
    report = acc["report"]
    plane, e2e = report["acceptance_plane"], report["end_to_end"]
    pi = acc["plane_intervals"]
    lines = [f"The plane alpha = A x + B y + C on the measured perplexities (x draft, y target), "
             f"{report['measurements']} pairs, weighted by their intervals ({report['weighting']}):", ""]
    lines += _table(["coefficient", "estimate [95% interval]"],
                    [[name, interval(pi[key]["estimate"], pi[key]["low"], pi[key]["high"])]
                     for name, key in (("A (draft)", "draft_coeff"), ("B (target)", "target_coeff"),
                                       ("C", "intercept"))])
    lines += ["", f"R^2 {plane['r2']:.4f}, rms residual {plane['rms_residual']:.4f}. "
                  "The paper's fit on real models: A = -0.0067, B = 0.013, C = 0.642.", "",
              "Per target, alpha = A_t x + C_t:", ""]
    lines += _table(["target", "pairs", "A_t", "C_t", "R^2"],
                    [[t["target"], str(t["measurements"]), num(t["draft_coeff"]),
                      num(t["intercept"]), num(t["r2"])] for t in report["per_target"]])
    boot = e2e["bootstrap_resamples"] > 0
    header = ["coefficient", "end-to-end estimate [delta-method 95%]"] + (
        [f"bootstrap ({e2e['bootstrap_resamples']})"] if boot else [])
    rows = []
    for key, c in e2e["coefficients"].items():
        row = [key, interval(c["estimate"], c["delta_low"], c["delta_high"])]
        if boot:
            row.append(f"[{num(c.get('bootstrap_low'))}, {num(c.get('bootstrap_high'))}]")
        rows.append(row)
    lines += ["", "Both laws end to end (acceptance predicted from N, D, M, D' alone; "
                  "these are the laws N* is planned with):", ""]
    lines += _table(header, rows)
    lines += ["", f"Acceptance R^2 from sizes alone {e2e['acceptance_r2']:.4f}, loss R^2 "
                  f"{e2e['loss_r2']:.4f}, rms acceptance residual {e2e['rms_residual']:.4f}"
                  f"{'' if e2e['converged'] else '; the optimiser stopped before its tolerance'}"
                  f"{'' if e2e['identifiable'] else '; the Hessian is singular: some coefficients are not determined by these data and their intervals are not meaningful'}."]
    return lines


def _predicted(outputs: dict, preset) -> list[str]:
    predict = outputs["predict"]
    rows, ladder = [], []
    for p in predict["targets"]:
        rows.append([p["target"], count(p["target_params"]), count(p["target_tokens"]),
                     num(p["target_perplexity"]),
                     interval(p["n_star"], p["n_star_low"], p["n_star_high"], count) if p["pays"]
                     else "no draft pays",
                     num(p["cost_ratio"], 3), num(p["acceptance"]),
                     f"{num(p['lookahead'], 3)} ({p['integer_lookahead']:.0f})", speed(p["speedup"]),
                     p["pick"]])
        for r in p["ladder"]:
            ladder.append([p["target"], r["draft"], num(r["draft_perplexity"]), num(r["acceptance"]),
                           speed(r["speedup_at_lookahead"]), speed(r["optimal_speedup"]),
                           num(r["optimal_lookahead"], 3), num(r["distance"], 3)])
    notes = []
    for p in predict["targets"]:
        if p["extrapolated"]:
            notes.append(f"For {p['target']} the acceptance plane was clipped at N* (perplexities "
                         "outside the fitted range).")
        if p["at_bound"]:
            notes.append(f"For {p['target']} N* sits at the end of the searched range N/M in [1e-8, 1].")
    return ([f"The FLOP planner on the fitted laws, D = D' = {count(preset.train_tokens)} tokens; "
             f"N* interval by the {predict['interval_method']} method. The pick is the draft of the "
             f"ladder with the highest predicted speedup at the measured lookahead {preset.lookahead}.", ""]
            + _table(["target", "M", "D'", "target perplexity (law)", "N* [95%]", "N*/M",
                      "alpha at N*", "lookahead (integer)", "speedup at N*", "pick among drafts"], rows)
            + ["", "The chain at every draft of the ladder:", ""]
            + _table(["target", "draft", "draft perplexity (law)", "alpha (law)",
                      f"speedup at lookahead {preset.lookahead}", "speedup at optimal lookahead",
                      "optimal lookahead", "|N - N*| / M"], ladder)
            + ([""] + notes if notes else []))


def _latency(outputs: dict, preset) -> list[str]:
    latency = outputs["latency"]
    rows, steps = [], []
    for e in latency["table"]:
        rows.append([e["draft"], e["target"],
                     interval(e["ttft"], e["ttft_low"], e["ttft_high"], ms),
                     interval(e["tpot"], e["tpot_low"], e["tpot_high"], ms),
                     interval(e["ttot"], e["ttot_low"], e["ttot_high"], ms),
                     interval(e["tokens_per_second"], e["tokens_per_second_low"],
                              e["tokens_per_second_high"], lambda v: "n/a" if v is None else f"{v:,.0f}"),
                     interval(e["baseline_tpot"], e["baseline_tpot_low"], e["baseline_tpot_high"], ms),
                     interval(e["speedup"], e["speedup_low"], e["speedup_high"], speed)])
        steps.append([e["draft"], e["target"], ms(e["draft_step_seconds"]),
                      ms(e["target_step_seconds"]), ms(e["baseline_step_seconds"]),
                      num(e["cost_ratio"], 3), num(e["flop_cost_ratio"], 3), num(e["verify_cost"], 3),
                      speed(e["predicted_speedup"]), speed(e["predicted_speedup_verify"]),
                      speed(e["flop_predicted_speedup"]), speed(e["wallclock_predicted_speedup"]),
                      speed(e["speedup"]), ms(e["iteration_seconds"]),
                      ms(e["iteration_forward_seconds"])])
    accel = latency["accelerator"]
    cal = latency["calibration"]
    wall_rows = [[v["target"], count(v["wall_n_star"]) if v["wall_pays"] else "no draft pays",
                  speed(v["wall_speedup"]), num(v["wall_lookahead"], 3), v["wall_pick"]]
                 for v in latency["verdicts"]]
    return ([f"The same runs as section 4, {preset.prompts} prompts per pair, batch 1; means with "
             "Student-t 95% intervals across prompts. Tokens per second is 1 / TPOT; the speedup is "
             "the target alone's decode time over the speculative one's, per prompt.", ""]
            + _table(["draft", "target", "TTFT", "TPOT", "TTOT", "tokens/s", "target alone TPOT",
                      "speedup"], rows)
            + ["", "Step times (medians of interleaved rounds) against the cost model, and the speedup "
                   "each model predicts at the measured lookahead:", ""]
            + _table(["draft", "target", "draft step", f"verify step ({preset.lookahead + 1} tokens)",
                      "target step", "measured c", "N/M", "measured v",
                      "law, measured alpha and c", "law with v", "FLOP law (fitted laws)",
                      "roofline (fitted laws)", "measured speedup", "iteration (measured)",
                      "its forward steps"], steps)
            + ["", f"Roofline `{latency['hardware']}` calibrated on {cal['rows']} measured step "
                   f"times: compute efficiency {num(accel['compute_efficiency'], 3)}, bandwidth "
                   f"efficiency {num(accel['bandwidth_efficiency'], 3)}, overhead {ms(accel['overhead'])} "
                   f"per step; rms error {cal['rms_log_error']:.1%}, worst {cal['max_relative_error']:.1%}"
                   f"{'' if cal['converged'] else ' (not converged)'}. Model shape: width/depth "
                   f"{latency['workload']['aspect_ratio']:.3g}, context {latency['workload']['context']}, "
                   "fp32 weights and cache.", "",
               "The wall-clock planner (fitted laws, calibrated roofline, verification scored):", ""]
            + _table(["target", "wall-clock N*", "speedup at N*", "lookahead", "pick among drafts"],
                     wall_rows))


def _held(outputs: dict, preset) -> list[str]:
    latency = outputs["latency"]
    predict = {p["target"]: p for p in outputs["predict"]["targets"]}
    words = {True: "held", False: "did not hold", None: "cannot tell"}
    rows = []
    for v in latency["verdicts"]:
        t, best = v["target"], v["measured"]
        p = predict[t]
        by_draft = {e["draft"]: e for e in latency["table"] if e["target"] == t}
        flop_pick = next(r for r in p["ladder"] if r["draft"] == p["pick"])
        rows.append([t, best["draft"], interval(best["speedup"], best["speedup_low"],
                                                best["speedup_high"], speed),
                     interval(p["n_star"], p["n_star_low"], p["n_star_high"], count)
                     if p["pays"] else "no draft pays",
                     f"{p['pick']} ({speed(flop_pick['speedup_at_lookahead'])})",
                     words[v["flop_draft_held"]], words[v["flop_pays_held"]],
                     count(v["wall_n_star"]) if v["wall_pays"] else "no draft pays",
                     f"{v['wall_pick']} ({speed(by_draft[v['wall_pick']]['wallclock_predicted_speedup'])})",
                     words[v["wall_draft_held"]], words[v["wall_pays_held"]]])
    return (["Each prediction is judged twice: does it name the draft that decodes fastest "
             "(highest mean speedup over the target alone, per prompt: the target's TPOT drifts "
             "between the pairs' runs on a shared machine), and does it say rightly whether that "
             "draft beats the target "
             "alone (\"cannot tell\" where the measured speedup's interval contains 1). "
             f"Predicted speedups are at the measured lookahead {preset.lookahead}.", ""]
            + _table(["target", "measured fastest draft", "its measured speedup", "FLOP-law N*",
                      "FLOP-law pick", "fastest draft", "pays", "wall-clock N*",
                      "wall-clock pick", "fastest draft", "pays"], rows)
            + ["", "Why the predictions miss where they do: see the verdict at the top."])


def write(ctx: Context, outputs: dict, figures: dict) -> tuple[str, list[dict]]:
    """Write report.md; returns (its path, the per-target verdict summary)."""
    preset = ctx.preset
    manifest = ctx.run.manifest
    verdict, summary = verdict_lines(outputs, preset)

    def figure(name, caption):
        where = figures.get(name, "error: not drawn")
        if where.startswith("error"):
            return [f"*Figure {name} could not be drawn ({where}).*", ""]
        return [f"![{caption}]({where})", "", f"*{caption}*", ""]

    lines = [f"# Reproducing the speculative decoding scaling laws on sdsl-jax's own models "
             f"(preset `{preset.name}`)", "",
             f"Generated by `sdsl reproduce --preset {preset.name}` on "
             f"{datetime.date.today().isoformat()}: {len(preset.sizes())} byte-level models "
             "trained from scratch on the offline corpus, every (draft, target) pair measured, both "
             "laws fitted, N* predicted and checked against measured latency. Every interval is 95%.",
             "", f"## {SECTIONS[0]}", ""] + verdict
    lines += ["", f"## {SECTIONS[1]}", ""] + _setup(ctx, outputs, manifest)
    lines += ["", f"## {SECTIONS[2]}", ""] + _models(outputs)
    lines += ["", f"## {SECTIONS[3]}", ""] + _pretraining(outputs) + [""]
    lines += figure("pretraining", "Held-out loss against training tokens, every size, with the fitted "
                                   "pre-training law")
    lines += [f"## {SECTIONS[4]}", ""] + _acceptance_pairs(outputs) + [""]
    lines += figure("acceptance", "Acceptance against draft perplexity, one line per target")
    lines += [f"## {SECTIONS[5]}", ""] + _acceptance_law(outputs) + [""]
    lines += figure("plane", "The fitted acceptance plane over the measured pairs")
    lines += [f"## {SECTIONS[6]}", ""] + _predicted(outputs, preset) + [""]
    lines += figure("throughput", "Predicted speedup against draft size, N* marked with its interval")
    lines += figure("draft-size", "N* and N*/M against M, D and D' under the fitted laws")
    lines += [f"## {SECTIONS[7]}", ""] + _latency(outputs, preset) + [""]
    lines += figure("latency", "Measured TTFT, TPOT and TTOT against |N - N*| / M; the rings mark "
                               "each target's lowest mean latency, which on a shared machine need "
                               "not be the draft with the highest paired speedup (the verdict's)")
    lines += [f"## {SECTIONS[8]}", ""] + _held(outputs, preset)
    lines += ["", f"## {SECTIONS[9]}", "",
              "- `stages/<stage>.json`: every number above, as the stage wrote it; `manifest.json`: "
              "stage status and times",
              "- `models/<size>/`: the trained models (`sdsl measure --draft models/10k ...`)",
              "- `train/loss_points.jsonl`: the scored checkpoints",
              "- `measure/runs-<draft>-<target>.jsonl`: one line per prompt; `measure/rows.jsonl`: "
              "one row per pair (`sdsl fit`, `sdsl plot latency`, `sdsl plan --step-times`); "
              "`measure/teacher_forced.jsonl`",
              "- `laws.json`: the fitted laws (`sdsl plan --laws laws.json ...`)",
              "- `figures/`: PNG and PDF of every figure", ""]
    path = ctx.run.path(REPORT)
    atomic_write_text(path, "\n".join(lines))
    return path, summary


def run(ctx: Context) -> dict:
    from sdsl_jax.reproduce import figures as figures_lib
    import jax

    names = ("train", "pretraining", "measure", "acceptance", "predict", "latency")
    outputs = {name: ctx.run.output(name) for name in names}
    with jax.enable_x64(True):
        drawn = figures_lib.draw_all(ctx.run.root, ctx.preset, outputs)
    path, summary = write(ctx, outputs, drawn)
    return {"report": os.path.relpath(path, ctx.run.root), "figures": drawn, "verdict": summary}
