"""Stage 6: measured latency of every draft against each target, and where its optimum falls.

The latencies are the loop's (stage 3; batch 1, so per-prompt times are
exact): TTFT, TPOT and TTOT with Student-t 95% intervals across prompts,
tokens per second 1 / TPOT (its interval the inverted TPOT interval), and
the speedup over the target alone (paired per prompt). The measured optimum
of a target is the draft with the highest mean speedup, or the target alone
when even that draft's speedup interval lies below 1. The speedup, not the
TPOT, ranks the drafts: each pair is decoded at a different moment, and on a
shared machine the same target's TPOT drifts between them by tens of
percent, while a speedup compares a prompt's speculative decoding with the
same prompt decoded by the target alone right after it.

Two predictions are set against it:

* the FLOP law (stage 5): the ladder draft with the highest predicted
  speedup, and N* with its interval;
* the wall-clock model: the roofline of ``preset.hardware`` with its
  efficiencies and per-step overhead calibrated on the measured step times
  of every pair (:func:`sdsl_jax.planning.calibration.calibrate`), then the fitted laws
  through :func:`sdsl_jax.planning.wallclock.optimal_draft_size_wallclock` for N*, and
  the roofline's step times for the speedup of each measured draft at the
  measured lookahead.
"""

from __future__ import annotations

import math
import os

import jax

from sdsl_jax.reproduce import chain
from sdsl_jax.reproduce.context import Context
from sdsl_jax.reproduce.presets import architecture, params as size_params

LATENCIES = ("ttft", "tpot", "ttot")
FP32_BYTES = 4.0


def _float(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def aspect_ratio(sizes) -> float:
    """Geometric mean width / depth of the run's models (the roofline's model shape)."""
    ratios = [architecture(s).d_model / architecture(s).num_layers for s in sizes]
    return float(math.exp(sum(math.log(r) for r in ratios) / len(ratios)))


def _overlap(a: dict, b: dict) -> bool:
    return a["speedup_low"] <= b["speedup_high"] and b["speedup_low"] <= a["speedup_high"]


def measured_optimum(rows: list[dict]) -> dict:
    """The fastest draft of one target's rows (highest mean speedup over the target alone),
    and whether it beats the target alone.

    ``status``: "draft" (its speedup interval lies above 1), "target alone"
    (below 1) or "tie with target alone" (it straddles 1). ``clear`` says
    whether its speedup interval is apart from every other draft's.
    """
    best = max(rows, key=lambda r: r["speedup"])
    clear = not any(_overlap(best, r) for r in rows if r is not best)
    low, high = best["speedup_low"], best["speedup_high"]
    if low > 1:
        status = "draft"
    elif high < 1:
        status = "target alone"
    else:
        status = "tie with target alone"
    return {"draft": best["draft"], "clear": clear, "status": status,
            "speedup": best["speedup"], "speedup_low": low, "speedup_high": high}


def run(ctx: Context) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from sdsl_jax.planning import hardware as hw, wallclock as latency_planner
    from sdsl_jax.planning.calibration import calibrate, step_time_rows
    from sdsl_jax.fitting.laws import load_laws

    preset = ctx.preset
    loop = ctx.run.output("measure")["loop"]
    predicted = {p["target"]: p for p in ctx.run.output("predict")["targets"]}
    tokens = float(preset.train_tokens)
    context = preset.prompt_len + preset.max_new_tokens // 2
    workload = hw.Workload(batch_size=1.0, context=float(context), kv_bytes_per_value=FP32_BYTES,
                           aspect_ratio=aspect_ratio(preset.sizes()))

    table = []
    for row in loop:
        entry = {"draft": row["draft_model"], "target": row["target_model"],
                 "draft_params": row["draft_params"], "target_params": row["target_params"],
                 "prompts": row["prompts"], "lookahead": row["lookahead"],
                 "acceptance": row["acceptance"]}
        for name in LATENCIES:
            entry.update({name: row[name], f"{name}_low": row[f"{name}_low"],
                          f"{name}_high": row[f"{name}_high"],
                          f"baseline_{name}": row.get(f"baseline_{name}"),
                          f"baseline_{name}_low": row.get(f"baseline_{name}_low"),
                          f"baseline_{name}_high": row.get(f"baseline_{name}_high")})
        entry["tokens_per_second"] = 1.0 / row["tpot"]
        entry["tokens_per_second_low"] = 1.0 / row["tpot_high"]
        entry["tokens_per_second_high"] = (1.0 / row["tpot_low"]) if row["tpot_low"] > 0 else None
        entry["baseline_tokens_per_second"] = 1.0 / row["baseline_tpot"]
        for key in ("speedup", "speedup_low", "speedup_high", "draft_step_seconds",
                    "target_step_seconds", "baseline_step_seconds", "cost_ratio", "verify_cost",
                    "predicted_speedup", "predicted_speedup_verify"):
            entry[key] = row.get(key)
        entry["flop_cost_ratio"] = row["draft_params"] / row["target_params"]
        # Where an iteration's time goes: its forward steps as timed alone,
        # and the rest of the loop (sampling, the acceptance test, bookkeeping).
        entry["tokens_per_iteration"] = row["tokens_per_iteration"]
        entry["iteration_seconds"] = row["tpot"] * row["tokens_per_iteration"]
        entry["iteration_forward_seconds"] = (row["lookahead"] * row["draft_step_seconds"]
                                              + row["target_step_seconds"])
        entry["baseline_forward_seconds"] = row["baseline_step_seconds"]
        table.append(entry)

    with jax.enable_x64(True):
        laws = load_laws(os.path.join(ctx.run.root, ctx.run.output("acceptance")["laws_file"]))
        steps = step_time_rows(loop, source="measured step times")
        calibration = calibrate(hw.hardware_preset(preset.hardware), steps, workload=workload)
        hardware = calibration.hardware
        targets = sorted(preset.targets, key=size_params)
        target_params = jnp.asarray([size_params(t) for t in targets], jnp.float64)
        common = dict(hardware=hardware, workload=workload, draft_precision=FP32_BYTES,
                      target_precision=FP32_BYTES, verify="scored",
                      pretraining_law=laws.pretraining_law, acceptance_law=laws.acceptance_law)
        wall = latency_planner.optimal_draft_size_wallclock(target_params, tokens, tokens, **common)
        # Each measured draft at the measured lookahead, as the roofline prices it.
        n = np.array([e["draft_params"] for e in table], np.float64)
        m = np.array([e["target_params"] for e in table], np.float64)
        law = chain.evaluate(laws, n, m, tokens, tokens, preset.lookahead)
        measured_alpha = np.array([e["acceptance"] for e in table], np.float64)
        priced = _roofline(hardware, workload, jnp.asarray(n), jnp.asarray(m),
                           float(preset.lookahead), jnp.asarray(law["acceptance"]),
                           jnp.asarray(measured_alpha))
        priced = {key: np.asarray(value, np.float64) for key, value in priced.items()}
        for i, e in enumerate(table):
            for key, values in priced.items():
                e[key] = float(values[i])
            e["flop_predicted_speedup"] = float(law["speedup_at_lookahead"][i])

    verdicts = []
    for k, target in enumerate(targets):
        rows = [e for e in table if e["target"] == target]
        optimum = measured_optimum(rows)
        flop = predicted[target]
        wall_pick = max(rows, key=lambda e: e["wallclock_predicted_speedup"])
        wall_pays = wall_pick["wallclock_predicted_speedup"] > 1.0
        verdicts.append({
            "target": target, "target_params": int(target_params[k]), "measured": optimum,
            "target_alone_tpot": float(np.mean([e["baseline_tpot"] for e in rows])),
            "flop_n_star": flop["n_star"], "flop_n_star_low": flop["n_star_low"],
            "flop_n_star_high": flop["n_star_high"], "flop_pays": flop["pays"],
            "flop_pick": flop["pick"], "flop_pick_pays": flop["pick_pays"],
            "wall_n_star": _float(wall.draft_params[k]) if bool(wall.pays[k]) else None,
            "wall_pays": bool(wall.pays[k]), "wall_speedup": _float(wall.speedup[k]),
            "wall_lookahead": _float(wall.integer_lookahead[k]),
            "wall_pick": wall_pick["draft"], "wall_pick_pays": bool(wall_pays),
            "flop_draft_held": flop["pick"] == optimum["draft"],
            "flop_pays_held": _pays_held(flop["pick_pays"], optimum["status"]),
            "wall_draft_held": wall_pick["draft"] == optimum["draft"],
            "wall_pays_held": _pays_held(wall_pays, optimum["status"]),
        })
    return {"table": table, "verdicts": verdicts, "workload": {
                "batch": 1, "context": context, "aspect_ratio": float(workload.aspect_ratio),
                "precision_bytes": FP32_BYTES},
            "hardware": preset.hardware, "accelerator": hw.hardware_record(hardware),
            "calibration": {"rms_log_error": float(calibration.rms_log_error),
                            "max_relative_error": float(calibration.max_relative_error),
                            "converged": bool(calibration.converged),
                            "rows": int(steps.seconds.shape[0])}}


@jax.jit
def _roofline(hardware, workload, draft_params, target_params, lookahead, law_alpha,
              measured_alpha):
    """Step times the calibrated roofline gives each pair, and the speedup they imply at the
    measured lookahead: E(alpha, gamma) t_target(1) / (gamma t_draft + t_target(gamma + 1))."""
    from sdsl_jax.planning import hardware as hw
    from sdsl_jax.laws import throughput
    step = lambda p, k: hw.step_time(hardware, p, k, bytes_per_param=FP32_BYTES,
                                     workload=workload)
    t_draft, t_verify = step(draft_params, 1.0), step(target_params, lookahead + 1)
    t_target = step(target_params, 1.0)
    iteration = lookahead * t_draft + t_verify
    return {"roofline_draft_step_seconds": t_draft, "roofline_verify_step_seconds": t_verify,
            "roofline_target_step_seconds": t_target,
            "wallclock_predicted_speedup":
                throughput.expected_tokens(law_alpha, lookahead) * t_target / iteration,
            "wallclock_predicted_speedup_measured_alpha":
                throughput.expected_tokens(measured_alpha, lookahead) * t_target / iteration}


def _pays_held(predicted_pays: bool, status: str) -> bool | None:
    """Whether the prediction that speculation pays (or not) matches the measurement;
    None when the measurement cannot tell (speedup interval straddles 1)."""
    if status == "tie with target alone":
        return None
    return predicted_pays == (status == "draft")
