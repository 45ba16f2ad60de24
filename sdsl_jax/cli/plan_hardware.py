"""``sdsl plan --hardware NAME``: the draft size that maximises tokens per second on an accelerator.

The wall-clock plan (:mod:`sdsl_jax.planning.wallclock`) beside the FLOP
plan's draft evaluated on the same hardware, optionally after calibrating
the preset to measured step times (``--step-times``), and printed as one
table of the two.
"""

from __future__ import annotations

import math

from sdsl_jax.cli.options import UsageError
from sdsl_jax.common.validation import finite_or_none


# The wall-clock options and their defaults. They default to None in the
# parser, so that one given without --hardware (which alone reads them) is
# refused rather than ignored; check_options fills these in.
DEFAULTS = {"batch": 1.0, "context": 2048.0, "draft_precision": "bf16", "target_precision": "bf16",
            "kv_fraction": 1.0, "verify": "scored", "step_times": None}
FLAGS = {key: "--" + key.replace("_", "-") for key in DEFAULTS}

# The roofline prices one accelerator's step and ignores memory capacity, but
# every sequence of the batch keeps its key-value cache in that memory: even a
# 10M-parameter model at a context of 2048 caches about 10 MB per sequence in
# bf16, so an 80-141 GB device holds some ten thousand sequences at most
# (serving engines batch hundreds to a few thousand). Beyond 65536 the model
# would price a step no device can take.
MAX_BATCH = 65536.0
# The longest context windows of current models are about 10M tokens; 2^24
# leaves room, and beyond it the attention term prices caches no device holds.
MAX_CONTEXT = float(2**24)


def check_options(args) -> None:
    """Refuse a wall-clock option given without --hardware; with it, fill in the defaults
    and check every value (before anything is planned)."""
    if not args.hardware:
        # --csv and --position-rates do not take --hardware: there, adding it is no cure.
        mode = next((flag for flag, value in (("--csv", getattr(args, "csv", None)),
                                              ("--position-rates", getattr(args, "position_rates", None)))
                     if value), None)
        advice = f"drop it (--hardware does not go with {mode})" if mode else "add --hardware NAME"
        for key, flag in FLAGS.items():
            if getattr(args, key) is not None:
                what = ("calibrates --hardware" if key == "step_times"
                        else "is a wall-clock option of --hardware")
                raise UsageError(f"sdsl plan: argument {flag}: {what}; {advice}")
        return
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    from sdsl_jax.planning import hardware as hw
    try:
        hw.hardware_preset(args.hardware)
    except ValueError as err:
        raise UsageError(f"sdsl plan: argument --hardware: {err}") from None
    for flag, value, low, high, what in (
            ("--batch", args.batch, 1.0, MAX_BATCH, "sequences"),
            ("--context", args.context, 1.0, MAX_CONTEXT, "cached positions")):
        if not (math.isfinite(value) and low <= value <= high):
            raise UsageError(f"sdsl plan: argument {flag}: must be a number of {what} in "
                             f"[{low:,.0f}, {high:,.0f}], got {value:g}")
    if not (math.isfinite(args.kv_fraction) and 0 < args.kv_fraction <= 1):
        raise UsageError(f"sdsl plan: argument --kv-fraction: must lie in (0, 1] (key-value heads "
                         f"over query heads), got {args.kv_fraction:g}")
    for flag, value in (("--draft-precision", args.draft_precision),
                        ("--target-precision", args.target_precision)):
        try:
            hw.bytes_per_param(_precision(value))
        except ValueError as err:
            raise UsageError(f"sdsl plan: argument {flag}: {err}") from None


def prepare(args):
    """(hardware, workload, calibration or None) from the --hardware options, checked by
    :func:`check_options`; reads and fits --step-times, so call it before planning."""
    from sdsl_jax.planning import hardware as hw
    from sdsl_jax.planning.calibration import calibrate, read_step_times
    hardware = hw.hardware_preset(args.hardware)
    workload = hw.Workload(batch_size=args.batch, context=args.context, kv_fraction=args.kv_fraction)
    calibration = None
    if args.step_times:
        try:
            rows = read_step_times(args.step_times)
        except OSError as err:
            raise UsageError(f"sdsl plan: argument --step-times: cannot read {args.step_times}: "
                             f"{err.strerror}") from None
        except ValueError as err:
            raise UsageError(f"sdsl plan: argument --step-times: {err}") from None
        try:
            calibration = calibrate(hardware, rows, workload=workload)
        except ValueError as err:
            raise UsageError(f"sdsl plan: argument --step-times: {args.step_times}: {err}") from None
        hardware = calibration.hardware
    return hardware, workload, calibration


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
        record[key] = bool(value) if value.dtype == bool else finite_or_none(value)
    return record


def wallclock_plan(args, record: dict, laws: dict, setup) -> dict:
    """The --hardware part of `sdsl plan`: the wall-clock plan and the FLOP plan's
    draft evaluated on the same hardware (``setup`` from :func:`prepare`)."""
    from sdsl_jax.planning import hardware as hw, wallclock as lp
    hardware, workload, calibration = setup
    common = dict(hardware=hardware, workload=workload, verify=args.verify,
                  draft_precision=_precision(args.draft_precision),
                  target_precision=_precision(args.target_precision),
                  pretraining_law=laws["pretraining_law"], acceptance_law=laws["acceptance_law"])
    inputs = (record["target_params"], record["draft_tokens"], record["target_tokens"])
    wall = lp.optimal_draft_size_wallclock(*inputs, method=laws["method"], **common)
    result = {"wallclock_optimal": _wallclock_record(wall)}
    if record["pays"]:
        flop_draft = lp.evaluate_draft_wallclock(record["draft_params"], *inputs, **common)
        result["flop_optimal_on_hardware"] = _wallclock_record(flop_draft)
    info = hw.hardware_record(hardware)
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


def print_wallclock(record: dict) -> None:
    """The hardware, then the FLOP-optimal and wall-clock-optimal drafts side by side."""
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
