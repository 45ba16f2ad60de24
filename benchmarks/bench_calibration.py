"""How well the roofline latency model predicts measured step times, before and after calibration.

Times one forward step of our transformer (sdsl_jax.models) at several sizes,
batch sizes and tokens per step (1 token: a draft or autoregressive step;
lookahead + 1 tokens: a verification) on whatever device JAX finds, with the
same chained, compiled measurement `sdsl measure` uses
(sdsl_jax.decoding.metrics.forward_step_seconds). Then:

1. the preset's prediction of every step (its published peak, bandwidth and
   guessed efficiencies and overhead);
2. calibration (sdsl_jax.planning.calibration.calibrate) on the steps of every other model
   size, and its prediction of the held-out sizes: the honest error, since a
   fit always looks good on the points it saw;
3. calibration on everything, the fit error.

Error figures: the median and the largest |predicted / measured - 1|, and the
root mean square of log(predicted / measured). Weights are random (timing does
not depend on training). Sizes default to the CPU-friendly ones; on a GPU pass
larger ones, e.g. --sizes 1m 10m 30m 100m 300m --batches 1 8.

    python benchmarks/bench_calibration.py [--preset CPU] [--sizes 30k 200k 1m 3m 6m 10m]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.planning import calibration, hardware
from sdsl_jax.models.config import SIZES, param_counts
from sdsl_jax.models.functional import as_decoder, init_params
from sdsl_jax.decoding.metrics import forward_step_seconds

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--preset", default=None, help="hardware preset (default: CPU on a CPU, "
                    "H100 on a GPU, TPU-v5e on a TPU)")
parser.add_argument("--sizes", nargs="+", default=["30k", "200k", "1m", "3m", "6m", "10m"])
parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
parser.add_argument("--lookahead", type=int, default=4, help="verification width - 1")
parser.add_argument("--context", type=int, default=128, help="cached positions per sequence")
parser.add_argument("--repeats", type=int, default=5, help="rounds per step kind (median)")
args = parser.parse_args()

platform = jax.devices()[0].platform
preset_name = args.preset or {"cpu": "CPU", "gpu": "H100", "tpu": "TPU-v5e"}.get(platform, "CPU")
preset = hardware.hardware_preset(preset_name)
print(f"device: {jax.devices()[0].device_kind} ({platform}); preset {preset_name}; "
      f"context {args.context}; float32 weights; median of {args.repeats} rounds")

rows = []  # (size index, size, params, batch, tokens per step, seconds)
for i, size in enumerate(args.sizes):
    config = SIZES[size]
    decoder = as_decoder(init_params(config, seed=0), config, name=size)
    params = param_counts(config)["total"]
    for batch in args.batches:
        chains = {"step": (decoder, 1), "verify": (decoder, args.lookahead + 1)}
        times = forward_step_seconds(chains, batch_size=batch, context=args.context,
                                     repeats=args.repeats)
        for name, width in (("step", 1), ("verify", args.lookahead + 1)):
            rows.append((i, size, params, batch, width, float(np.median(times[name]))))

records = [{"params": p, "tokens_per_step": w, "batch": b, "context": args.context,
            "precision": "fp32", "seconds": s} for _, _, p, b, w, s in rows]
size_index = np.array([r[0] for r in rows])
measured = np.array([r[5] for r in rows])


def step_times(mask):
    return calibration.step_time_rows([r for r, keep in zip(records, mask) if keep])


def errors(predicted, truth):
    ratio = np.asarray(predicted) / truth
    return (float(np.median(np.abs(ratio - 1))), float(np.max(np.abs(ratio - 1))),
            float(np.sqrt(np.mean(np.log(ratio) ** 2))))


everything = np.ones(len(rows), bool)
fit_half = size_index % 2 == 0
preset_prediction = np.asarray(calibration.predict_step_times(preset, step_times(everything)))
held_out_fit = calibration.calibrate(preset, step_times(fit_half))
held_out_prediction = np.asarray(calibration.predict_step_times(held_out_fit.hardware,
                                                                step_times(~fit_half)))
full_fit = calibration.calibrate(preset, step_times(everything))
full_prediction = np.asarray(full_fit.predicted)

print(f"\n{'size':>6} {'params':>11} {'batch':>5} {'tokens':>6} {'measured':>10} "
      f"{'preset':>10} {'calibrated':>10}")
for (i, size, p, b, w, s), pre, cal in zip(rows, preset_prediction, full_prediction):
    print(f"{size:>6} {p:>11,} {b:>5} {w:>6} {s * 1e3:>8.3f}ms {pre * 1e3:>8.3f}ms "
          f"{cal * 1e3:>8.3f}ms")

print("\n|predicted / measured - 1|        median     max   rms log")
for label, (med, worst, rms) in (
        ("preset, uncalibrated", errors(preset_prediction, measured)),
        ("calibrated on even sizes, odd", errors(held_out_prediction, measured[~fit_half])),
        ("calibrated on all (fit error)", errors(full_prediction, measured))):
    print(f"  {label:<30} {med:>7.1%} {worst:>7.1%} {rms:>9.3f}")

fitted = full_fit.hardware
print(f"\ncalibrated {preset_name}: compute efficiency {float(fitted.compute_efficiency):.3g}, "
      f"bandwidth efficiency {float(fitted.bandwidth_efficiency):.3g}, "
      f"overhead {float(fitted.overhead_seconds) * 1e3:.3f} ms per step "
      f"(preset: {float(preset.compute_efficiency):.3g}, {float(preset.bandwidth_efficiency):.3g}, "
      f"{float(preset.overhead_seconds) * 1e3:.3f} ms); converged: {bool(full_fit.converged)}")
