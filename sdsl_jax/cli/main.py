"""The ``sdsl`` command line: plan a draft size, fit the laws, refit the linear rule.

Every user mistake ends in one line on stderr that names the argument (or the
file, row and column) and exit status 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Sequence

EXIT_USAGE = 2
PLAN_KEYS = ("draft_params", "cost_ratio", "draft_perplexity", "target_perplexity",
             "acceptance", "lookahead", "integer_lookahead", "speedup", "integer_speedup",
             "tokens_per_flop", "integer_tokens_per_flop", "pays", "extrapolated", "at_bound")
INPUT_KEYS = ("target_params", "target_tokens", "draft_tokens")
CHUNK_ROWS = 65536


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage dump
        raise UsageError(f"{self.prog}: {message}")


def _count(text: str) -> float:
    from sdsl_jax.common.quantities import parse_count
    try:
        return parse_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _build_parser() -> argparse.ArgumentParser:
    from sdsl_jax.laws import acceptance, pretraining

    parser = _Parser(prog="sdsl", description=(
        "Speculative decoding scaling laws: choose a draft model size before training it."))
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_laws(cmd):
        cmd.add_argument("--pretraining-law", default=pretraining.DEFAULT_PRESET,
                         choices=sorted(pretraining.PRESETS),
                         help="preset for L(N, D) (default: %(default)s)")
        cmd.add_argument("--acceptance-law", default=acceptance.DEFAULT_PRESET,
                         choices=sorted(acceptance.PRESETS),
                         help="preset for alpha = A x + B y + C (default: %(default)s)")
        cmd.add_argument("--method", default="bracket", choices=("bracket", "gradient"),
                         help="N* solver (default: %(default)s)")

    plan = commands.add_parser("plan", help="the throughput-optimal draft size for a target",
                               description=(
        "Predict the throughput-optimal draft size N* for a target model, with the "
        "acceptance, lookahead and speedup it implies. Numbers accept suffixes: "
        "70e9, 70B, 15T, 125M."))
    plan.add_argument("--target-params", type=_count, metavar="M", help="target parameters, e.g. 70B")
    plan.add_argument("--target-tokens", type=_count, metavar="D'",
                      help="tokens the target was trained on, e.g. 15T")
    plan.add_argument("--draft-tokens", type=_count, metavar="D",
                      help="tokens the draft is trained on (default: the target's)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument("--csv", metavar="FILE", help=(
        "plan many configurations: a CSV with columns target_params, target_tokens and "
        "optionally draft_tokens"))
    plan.add_argument("--out", metavar="FILE", help="with --csv: write results here (default: stdout)")
    plan.add_argument("--resume", action="store_true",
                      help="with --out: keep the rows already written and continue after them")
    plan.add_argument("--overwrite", action="store_true", help="with --out: replace an existing file")
    plan.add_argument("--laws", metavar="FILE", help=(
        "use laws fitted by `sdsl fit` (replaces the presets) and report an interval on N*"))
    plan.add_argument("--interval", choices=("delta", "bootstrap", "none"), default=None, help=(
        "with --laws: how to carry the coefficients' uncertainty to N* (default: bootstrap "
        "when the file has bootstrap samples, else delta)"))
    plan.add_argument("--confidence", type=float, default=0.95, help="interval level (default: 0.95)")
    wall = plan.add_argument_group("wall-clock planning (with --hardware)")
    wall.add_argument("--hardware", metavar="NAME", help=(
        "also find the draft size that maximises tokens per second on this accelerator "
        "(A100, H100, H200, TPU-v5e, CPU) and print it beside the FLOP-optimal one"))
    wall.add_argument("--batch", type=float, default=1.0, help="sequences decoded together (default: 1)")
    wall.add_argument("--context", type=_count, default=2048.0, metavar="S", help=(
        "cached positions each sequence attends to (default: 2048)"))
    wall.add_argument("--draft-precision", default="bf16", help="draft weights: bf16, fp8, int4, ... (default: bf16)")
    wall.add_argument("--target-precision", default="bf16", help="target weights (default: bf16)")
    wall.add_argument("--kv-fraction", type=float, default=1.0, help=(
        "key-value heads over query heads, e.g. 0.125 for 8 of 64 (default: 1)"))
    wall.add_argument("--verify", choices=("scored", "one_step"), default="scored", help=(
        "cost the verification as gamma+1 scored positions, or as one target step like the "
        "FLOP law (default: scored)"))
    wall.add_argument("--step-times", metavar="FILE", help=(
        "calibrate the preset's efficiencies and overhead to measured step times first "
        "(JSON Lines, e.g. from `sdsl measure`)"))
    measured = plan.add_argument_group("the lookahead from measured per-position rates")
    from sdsl_jax.planning import positions as position_plan
    measured.add_argument("--position-rates", metavar="FILE", help=(
        "plan the lookahead of a measured pair from its acceptance at each draft position "
        "instead of one alpha: " + position_plan.FILE_HELP))
    measured.add_argument("--cost-ratio", type=float, metavar="C", help=(
        "with --position-rates: draft step over target step (default: the file's measured "
        "cost_ratio)"))
    add_laws(plan)

    fit = commands.add_parser("fit", help="fit the laws to your acceptance measurements",
                              description=(
        "Fit the acceptance plane, the pre-training law and both end to end to a measurement "
        "set (CSV, JSON Lines or Parquet), print the coefficients with intervals, and write "
        "the fitted laws for `sdsl plan --laws`."))
    fit.add_argument("measurements", metavar="MEASUREMENTS", help="a .csv, .jsonl or .parquet file")
    fit.add_argument("--out", metavar="FILE", help=(
        "where to write the fitted laws (default: MEASUREMENTS with the suffix .laws.json)"))
    fit.add_argument("--overwrite", action="store_true", help="replace an existing laws file")
    fit.add_argument("--bootstrap", type=int, default=200, metavar="N", help=(
        "bootstrap resamples for percentile intervals (0: delta method only; default: %(default)s)"))
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    fit.add_argument("--weighting", choices=("auto", "interval", "equal"), default="auto", help=(
        "weight measurements by their intervals, equally, or by intervals when all have one "
        "(default: %(default)s)"))
    fit.add_argument("--confidence", type=float, default=0.95, help="interval level (default: 0.95)")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of tables")

    from sdsl_jax.cli import train as train_cli
    train = commands.add_parser("train", help="train a family of byte-level transformers",
                                description=(
        "Train each size of a model family on the default corpus (the Python standard "
        "library) plus any text you name, with checkpoints; rerun to resume after a kill."))
    train_cli.add_arguments(train)

    from sdsl_jax.cli import measure as measure_cli
    measure = commands.add_parser("measure", help="measure acceptance and latency of a pair",
                                  description=(
        "Decode prompts with speculative sampling and with the target alone, append one JSON "
        "line per finished prompt (rerun to resume), and summarise acceptance, speedup and "
        "latency with intervals; the rows feed `sdsl fit`."))
    measure_cli.add_arguments(measure)

    rule = commands.add_parser("rule", help="refit the linear rule N* ~= a M + b to the planner",
                               description=(
        "Fit N* ~= a M + b (+ c log D) over a grid of targets and data sizes and "
        "print it beside the paper's 2.71e-3 M + 87M."))
    rule.add_argument("--min-target-params", type=_count, default=13e9, metavar="M")
    rule.add_argument("--max-target-params", type=_count, default=110e9, metavar="M")
    rule.add_argument("--tokens", type=_count, nargs="+", default=[3e11, 1e12, 3e12, 15e12],
                      metavar="D", help="training-token counts (draft and target alike)")
    rule.add_argument("--points", type=int, default=24, help="targets on the log grid")
    rule.add_argument("--json", action="store_true")
    add_laws(rule)

    from sdsl_jax.cli import plot as plot_cli
    plot_cli.add_parser(commands)

    from sdsl_jax.cli import reproduce as reproduce_cli
    reproduce = commands.add_parser("reproduce", help="the end-to-end replication, with a report",
                                    description=(
        "Train a ladder of drafts and two targets on the offline corpus, fit both laws, measure "
        "every pair, predict N* and check it against measured latency; write DIR/report.md. "
        "Rerun to resume after a kill."))
    reproduce_cli.add_arguments(reproduce)
    return parser


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _plan_records(plan, inputs) -> list[dict]:
    import numpy as np
    columns = {key: np.ravel(np.asarray(getattr(plan, key))) for key in PLAN_KEYS}
    n = len(columns["draft_params"])
    records = []
    for i in range(n):
        record = {key: float(np.ravel(inputs[key])[i]) for key in INPUT_KEYS}
        for key in PLAN_KEYS:
            value = columns[key][i]
            record[key] = bool(value) if value.dtype == bool else _finite_or_none(value)
        records.append(record)
    return records


def _laws(args):
    from sdsl_jax.laws import acceptance, pretraining
    fitted = _fitted_laws(args)
    if fitted is not None:
        return dict(pretraining_law=fitted.pretraining_law, acceptance_law=fitted.acceptance_law,
                    method=args.method)
    return dict(pretraining_law=pretraining.pretraining_preset(args.pretraining_law),
                acceptance_law=acceptance.acceptance_preset(args.acceptance_law),
                method=args.method)


def _fitted_laws(args):
    """The laws file of --laws, loaded once; None without --laws."""
    path = getattr(args, "laws", None)
    if not path:
        return None
    if not hasattr(args, "_fitted"):
        from sdsl_jax.fitting.laws import LawsFileError, load_laws
        try:
            args._fitted = load_laws(path)
        except LawsFileError as err:
            raise UsageError(f"sdsl plan: --laws: {err}") from None
    return args._fitted


def _laws_label(args) -> str:
    if getattr(args, "laws", None):
        return f"fitted, from {args.laws}"
    return f"pre-training {args.pretraining_law}, acceptance {args.acceptance_law}"


def _print_plan(record: dict, args) -> None:
    from sdsl_jax.planning.linear_rule import published_rule
    from sdsl_jax.common.quantities import format_count as fc
    m = record["target_params"]
    print(f"Target: {fc(m)} parameters trained on {fc(record['target_tokens'])} tokens; "
          f"draft trained on {fc(record['draft_tokens'])} tokens")
    print(f"Laws: {_laws_label(args)}")
    print()
    if not record["pays"]:
        print("  Speculative decoding does not pay for this target under these laws:")
        print("  no draft size gives a speedup above 1. Decode with the target alone.")
        return
    rows = [
        ("optimal draft size N*", f"{fc(record['draft_params'])} parameters "
                                  f"(N*/M = {record['cost_ratio']:.3e})"),
    ]
    if record.get("draft_params_low") is not None:
        rows.append((f"  {record['confidence']:.0%} interval ({record['interval']})",
                     f"{fc(record['draft_params_low'])} to {fc(record['draft_params_high'])}"))
    rows += [
        ("draft perplexity", f"{record['draft_perplexity']:.4g}"),
        ("target perplexity", f"{record['target_perplexity']:.4g}"),
        ("acceptance alpha", f"{record['acceptance']:.4f}"),
        ("lookahead, continuous", f"{record['lookahead']:.3f}"),
        ("lookahead, integer", f"{record['integer_lookahead']:.0f}"),
        ("speedup", f"{record['speedup']:.3f}x  (integer lookahead: {record['integer_speedup']:.3f}x)"),
        ("tokens per FLOP", f"{record['tokens_per_flop']:.4g}  (target alone: {1 / (2 * m):.4g})"),
        ("paper's rule 2.71e-3 M + 87M", f"{fc(float(published_rule(m)))} parameters"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if record["extrapolated"]:
        print("\nnote: the acceptance law left [0, 1) at N* and was clipped; "
              "the perplexities are outside the range it was fitted on.")
    if record["at_bound"]:
        print("\nnote: N* sits at the end of the searched range N/M in [1e-8, 1].")


def _read_configs(path: str, default_draft_tokens):
    """(rows, columns): parsed numbers, each error naming file, row and column."""
    from sdsl_jax.common.quantities import parse_count
    try:
        handle = open(path, newline="")
    except OSError as err:
        raise UsageError(f"sdsl plan: --csv: cannot read {path}: {err.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for required in ("target_params", "target_tokens"):
            if required not in header:
                raise UsageError(f"{path}: missing column {required!r} (found {header})")
        columns = {key: [] for key in INPUT_KEYS}
        for line, row in enumerate(reader, start=2):
            for key in INPUT_KEYS:
                text = row.get(key)
                if key == "draft_tokens" and (text is None or text.strip() == ""):
                    value = default_draft_tokens if default_draft_tokens else columns["target_tokens"][-1]
                else:
                    if text is None:
                        raise UsageError(f"{path}: row {line}, column {key}: missing value")
                    try:
                        value = parse_count(text)
                    except ValueError as err:
                        raise UsageError(f"{path}: row {line}, column {key}: {err}") from None
                columns[key].append(value)
    if not columns["target_params"]:
        raise UsageError(f"{path}: no rows")
    return columns


def _rows_already_written(path: str) -> int:
    """Complete rows in an output file from an earlier, interrupted run."""
    with open(path, newline="") as handle:
        text = handle.read()
    # A row cut off mid-write has no newline yet: drop it and rewrite it.
    complete = text[: text.rfind("\n") + 1]
    with open(path, "w", newline="") as handle:
        handle.write(complete)
    return max(0, complete.count("\n") - 1)


def _plan_csv(args) -> int:
    import numpy as np
    from tqdm import tqdm
    from sdsl_jax.planning import flop as planner

    columns = _read_configs(args.csv, args.draft_tokens)
    total = len(columns["target_params"])
    done = 0
    if args.out:
        if os.path.exists(args.out) and not (args.resume or args.overwrite):
            raise UsageError(f"sdsl plan: --out: {args.out} exists; pass --resume to continue it "
                             "or --overwrite to replace it")
        if args.resume and os.path.exists(args.out):
            done = _rows_already_written(args.out)
        handle = open(args.out, "a" if done else "w", newline="")
    else:
        handle = sys.stdout
    writer = csv.DictWriter(handle, fieldnames=list(INPUT_KEYS) + list(PLAN_KEYS))
    if not done:
        writer.writeheader()
    laws = _laws(args)
    arrays = {key: np.asarray(values, np.float64) for key, values in columns.items()}
    with tqdm(total=total, initial=done, unit="config", disable=None, file=sys.stderr) as bar:
        for start in range(done, total, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, total)
            # Pad the last chunk to a full one so every chunk reuses one compilation.
            chunk = {key: np.resize(values[start:stop], CHUNK_ROWS) for key, values in arrays.items()}
            plan = planner.optimal_draft_size(chunk["target_params"], chunk["draft_tokens"],
                                              chunk["target_tokens"], **laws)
            records = _plan_records(plan, chunk)[: stop - start]
            writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)
            handle.flush()  # results land as they are produced; a kill loses one chunk at most
            bar.update(stop - start)
    if handle is not sys.stdout:
        handle.close()
        print(f"wrote {total} configurations to {args.out}", file=sys.stderr)
    return 0


def _draft_interval(args, draft_tokens) -> dict:
    """N*'s interval under fitted laws ({} without --laws or with --interval none)."""
    fitted = _fitted_laws(args)
    if not 0 < args.confidence < 1:
        raise UsageError(f"sdsl plan: argument --confidence: must lie in (0, 1), got {args.confidence}")
    if fitted is None:
        if args.interval not in (None, "none"):
            raise UsageError("sdsl plan: --interval needs --laws FILE (presets carry no uncertainty)")
        return {}
    method = args.interval or ("bootstrap" if fitted.samples is not None else "delta")
    if method == "none":
        return {}
    if method == "bootstrap" and fitted.samples is None:
        raise UsageError(f"sdsl plan: --interval bootstrap: {args.laws} has no bootstrap samples "
                         "(refit with `sdsl fit --bootstrap N`)")
    if method == "delta" and fitted.covariance is None:
        raise UsageError(f"sdsl plan: --interval delta: {args.laws} has no covariance")
    from sdsl_jax.fitting.uncertainty import draft_size_interval
    result = draft_size_interval(fitted, args.target_params, draft_tokens, args.target_tokens,
                                 method=method, confidence=args.confidence, solver=args.method)
    return dict(draft_params_low=float(result.low), draft_params_high=float(result.high),
                interval=method, confidence=args.confidence,
                pays_fraction=float(result.pays_fraction))


def _hardware(args):
    """(accelerator, workload, calibration or None) from the --hardware options."""
    from sdsl_jax.planning import hardware as hw
    from sdsl_jax.planning.calibration import calibrate, read_step_times
    try:
        accelerator = hw.hardware_preset(args.hardware)
    except ValueError as err:
        raise UsageError(f"sdsl plan: --hardware: {err}") from None
    if not (math.isfinite(args.batch) and args.batch > 0):
        raise UsageError(f"sdsl plan: argument --batch: must be a finite number > 0, got {args.batch:g}")
    if not (math.isfinite(args.kv_fraction) and args.kv_fraction >= 0):
        raise UsageError(f"sdsl plan: argument --kv-fraction: must be a finite number >= 0, "
                         f"got {args.kv_fraction:g}")
    for flag, value in (("--draft-precision", args.draft_precision),
                        ("--target-precision", args.target_precision)):
        try:
            hw.bytes_per_param(_precision(value))
        except ValueError as err:
            raise UsageError(f"sdsl plan: argument {flag}: {err}") from None
    workload = hw.Workload(batch=args.batch, context=args.context, kv_fraction=args.kv_fraction)
    calibration = None
    if args.step_times:
        try:
            rows = read_step_times(args.step_times)
        except OSError as err:
            raise UsageError(f"sdsl plan: --step-times: cannot read {args.step_times}: "
                             f"{err.strerror}") from None
        except ValueError as err:
            raise UsageError(f"sdsl plan: --step-times: {err}") from None
        calibration = calibrate(accelerator, rows, workload=workload)
        accelerator = calibration.accelerator
    return accelerator, workload, calibration


def _precision(text: str):
    """'bf16' stays a name; '1.5' becomes bytes per parameter."""
    try:
        return float(text)
    except ValueError:
        return text


def _wallclock_record(plan) -> dict:
    import numpy as np
    record = {}
    for key in plan.keys():
        value = np.ravel(np.asarray(plan[key]))[0]
        record[key] = bool(value) if value.dtype == bool else _finite_or_none(value)
    return record


def _plan_wallclock(args, record: dict, laws: dict) -> dict:
    """The --hardware part of `sdsl plan`: the wall-clock plan and the FLOP plan's
    draft evaluated on the same hardware."""
    from sdsl_jax.planning import hardware as hw, wallclock as lp
    accelerator, workload, calibration = _hardware(args)
    common = dict(hardware=accelerator, workload=workload, verify=args.verify,
                  draft_precision=_precision(args.draft_precision),
                  target_precision=_precision(args.target_precision),
                  pretraining_law=laws["pretraining_law"], acceptance_law=laws["acceptance_law"])
    inputs = (record["target_params"], record["draft_tokens"], record["target_tokens"])
    wall = lp.optimal_draft_size_wallclock(*inputs, method=laws["method"], **common)
    result = {"wallclock_optimal": _wallclock_record(wall)}
    if record["pays"]:
        flop_draft = lp.evaluate_draft_wallclock(record["draft_params"], *inputs, **common)
        result["flop_optimal_on_hardware"] = _wallclock_record(flop_draft)
    info = {key: float(accelerator[key]) for key in accelerator.keys()}
    name = next((key for key, preset in hw.PRESETS.items()
                 if preset is hw.hardware_preset(args.hardware)), args.hardware)
    info.update(name=name, batch=args.batch, context=args.context,
                kv_fraction=args.kv_fraction, draft_precision=args.draft_precision,
                target_precision=args.target_precision, verify=args.verify)
    if calibration is not None:
        info.update(calibrated_from=args.step_times,
                    calibration_rms_log_error=float(calibration.rms_log_error),
                    calibration_max_relative_error=float(calibration.max_relative_error))
    result["hardware"] = info
    return result


def _print_wallclock(record: dict) -> None:
    from sdsl_jax.common.quantities import format_count as fc
    info, wall = record["hardware"], record["wallclock_optimal"]
    flop_hw = record.get("flop_optimal_on_hardware")
    print()
    print(f"Hardware: {info['name']}: {info['peak_flops'] / 1e12:.4g} TFLOP/s, "
          f"{info['bandwidth'] / 1e12:.3g} TB/s at efficiencies {info['compute_efficiency']:.3g} "
          f"(compute) and {info['bandwidth_efficiency']:.3g} (bandwidth), "
          f"{info['overhead'] * 1e3:.3g} ms per step; batch {info['batch']:g}, "
          f"context {info['context']:g}, {info['draft_precision']} draft, "
          f"{info['target_precision']} target, verification {info['verify']}")
    if "calibrated_from" in info:
        print(f"  calibrated from {info['calibrated_from']}: rms error "
              f"{info['calibration_rms_log_error']:.1%}, worst {info['calibration_max_relative_error']:.1%}")
    if not wall["pays"]:
        print("  On this hardware no draft size beats decoding with the target alone.")
        return
    ms = lambda v: f"{v * 1e3:.3g} ms" if v else "-"
    rows = [("", "FLOP-optimal", "wall-clock-optimal")]
    flop = flop_hw or {}
    get = lambda source, key, fmt: fmt(source[key]) if source.get(key) is not None else "-"
    rows += [
        ("draft size N*", fc(record["draft_params"]) if record["pays"] else "-", fc(wall["draft_params"])),
        ("N*/M", f"{record['cost_ratio']:.3e}" if record["pays"] else "-",
         f"{wall['draft_params'] / record['target_params']:.3e}"),
        ("acceptance alpha", f"{record['acceptance']:.4f}", f"{wall['acceptance']:.4f}"),
        ("lookahead by the FLOP law", f"{record['integer_lookahead']:.0f}", "-"),
        ("lookahead on this hardware", get(flop, "integer_lookahead", lambda v: f"{v:.0f}"),
         f"{wall['integer_lookahead']:.0f}"),
        ("  continuous", get(flop, "lookahead", lambda v: f"{v:.2f}"), f"{wall['lookahead']:.2f}"),
        ("wall-clock speedup", get(flop, "integer_speedup", lambda v: f"{v:.3f}x"),
         f"{wall['integer_speedup']:.3f}x"),
        ("tokens per second", get(flop, "integer_tokens_per_second", lambda v: f"{v:.4g}"),
         f"{wall['integer_tokens_per_second']:.4g}"),
        ("draft step", get(flop, "draft_step_seconds", ms), ms(wall["draft_step_seconds"])),
        ("verification step", get(flop, "verify_step_seconds", ms), ms(wall["verify_step_seconds"])),
        ("target-only step", ms(wall["target_step_seconds"]), ms(wall["target_step_seconds"])),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, a, b in rows:
        print(f"  {name:<{widths[0]}}  {a:<{widths[1]}}  {b}")
    print("  (speedups and tokens per second at the integer lookahead; "
          "the target alone decodes "
          f"{info['batch'] / wall['target_step_seconds']:.4g} tokens per second)")


def _plan(args) -> int:
    if args.position_rates:
        from sdsl_jax.planning import positions as position_plan
        return position_plan.run(args, UsageError)
    if args.cost_ratio is not None:
        raise UsageError("sdsl plan: --cost-ratio goes with --position-rates")
    if args.csv:
        if args.target_params or args.target_tokens:
            raise UsageError("sdsl plan: --csv takes the configurations from the file; "
                             "drop --target-params/--target-tokens")
        if args.hardware:
            raise UsageError("sdsl plan: --hardware plans one configuration at a time; drop --csv")
        return _plan_csv(args)
    if args.out or args.resume or args.overwrite:
        raise UsageError("sdsl plan: --out, --resume and --overwrite go with --csv")
    for flag, value in (("--target-params", args.target_params), ("--target-tokens", args.target_tokens)):
        if value is None:
            raise UsageError(f"sdsl plan: argument {flag} is required (or give --csv FILE)")
    from sdsl_jax.planning import flop as planner
    draft_tokens = args.draft_tokens if args.draft_tokens else args.target_tokens
    inputs = dict(target_params=args.target_params, target_tokens=args.target_tokens,
                  draft_tokens=draft_tokens)
    laws = _laws(args)
    plan = planner.optimal_draft_size(args.target_params, draft_tokens, args.target_tokens, **laws)
    record = _plan_records(plan, inputs)[0]
    record.update(_draft_interval(args, draft_tokens))
    if args.hardware:
        record.update(_plan_wallclock(args, record, laws))
    if args.json:
        if args.laws:
            record.update(laws=args.laws)
        else:
            record.update(pretraining_law=args.pretraining_law, acceptance_law=args.acceptance_law)
        print(json.dumps(record))
    else:
        _print_plan(record, args)
        if args.hardware:
            _print_wallclock(record)
    return 0


def _rule(args) -> int:
    import numpy as np
    from sdsl_jax.planning import linear_rule

    if args.points < 2:
        raise UsageError("sdsl rule: argument --points: must be at least 2")
    if args.min_target_params >= args.max_target_params:
        raise UsageError("sdsl rule: argument --max-target-params: must exceed --min-target-params")
    m = np.geomspace(args.min_target_params, args.max_target_params, args.points)[:, None]
    tokens = np.asarray(args.tokens)[None, :]
    laws = _laws(args)
    plain = linear_rule.fit_linear_rule(m, tokens, tokens, **laws)
    with_log = linear_rule.fit_linear_rule(m, tokens, tokens, with_log_tokens=True, **laws)
    if args.json:
        print(json.dumps({"linear": dict(plain), "with_log_tokens": dict(with_log),
                          "published": {"slope": linear_rule.PUBLISHED_SLOPE,
                                        "intercept": linear_rule.PUBLISHED_INTERCEPT}}))
        return 0
    from sdsl_jax.common.quantities import format_count as fc
    print(f"N* over M in [{fc(args.min_target_params)}, {fc(args.max_target_params)}] "
          f"({args.points} targets) x D = D' in {{{', '.join(fc(t) for t in args.tokens)}}}")
    print(f"  published   N* = {linear_rule.PUBLISHED_SLOPE:.3e} M + {fc(linear_rule.PUBLISHED_INTERCEPT)}")
    print(f"  refit       N* = {plain.slope:.3e} M + {fc(plain.intercept)}"
          f"   (R^2 {plain.r2:.4f}, worst error {plain.max_relative_error:.1%})")
    print(f"  refit+logD  N* = {with_log.slope:.3e} M + {fc(with_log.intercept)} "
          f"{with_log.log_tokens_coeff:+.3e} ln D   (R^2 {with_log.r2:.4f}, "
          f"worst error {with_log.max_relative_error:.1%})")
    return 0


def _fit(args) -> int:
    from sdsl_jax.fitting import report as fit_report
    return fit_report.run(args, UsageError)


def _train(args) -> int:
    from sdsl_jax.cli import train as train_cli
    return train_cli.run(args, UsageError)


def _measure(args) -> int:
    from sdsl_jax.cli import measure as measure_cli
    return measure_cli.run(args, UsageError)


def _plot(args) -> int:
    from sdsl_jax.cli import plot as plot_cli
    return plot_cli.run(args, UsageError)


def _reproduce(args) -> int:
    from sdsl_jax.cli import reproduce as reproduce_cli
    return reproduce_cli.run(args, UsageError)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        import jax
        # Planning is cheap, so the CLI always answers in float64 (scoped, so
        # a program that calls main() keeps its own precision setting).
        with jax.enable_x64(True):
            return {"plan": _plan, "rule": _rule, "fit": _fit,
                    "train": _train, "measure": _measure, "plot": _plot,
                    "reproduce": _reproduce}[args.command](args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader (head, less) left early: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
