r"""A roofline model of one forward step's wall-clock time, with hardware presets.

The paper costs a decoding step in FLOPs, yet notes that at small batch sizes
small drafts are memory-bandwidth bound, so a FLOP-optimal draft need not be
the fastest one. This module prices a forward step in seconds instead.

One step of a model with P parameters processes ``tokens_per_step`` (k) new
positions for each of ``batch_size`` (B) sequences, each attending to ``context`` (S)
cached positions:

    flops = B k (2 P + 4 L d S)                       (weights + attention)
    bytes = P * bytes_per_param + B S * 2 L d f * kv_bytes_per_value
    time  = smax_p(flops / (peak_flops * compute_efficiency),
                   bytes / (bandwidth * bandwidth_efficiency)) + overhead_seconds

* 2 P FLOPs per position for the weight matmuls; 4 L d S for attention, the
  query-key scores and the weighted sum of values, 2 L d S each (Kaplan et al.
  2020, "Scaling Laws for Neural Language Models", table 1, counts the same
  terms).
* The bytes are what every step must stream from memory: all weights once
  (shared by the B k positions), and each sequence's key-value cache of S
  positions, 2 vectors (key and value) of width d per layer. f
  (``kv_fraction``) is the number of key-value heads over query heads: 1 for
  multi-head attention, 1/8 for a grouped-query model with 8 KV heads of 64.
* The shape (L layers of width d) comes from the parameter count: a decoder
  layer holds about 12 d^2 weights (4 d^2 attention, 8 d^2 MLP), so
  P = 12 L d^2, and the aspect ratio d / L is fixed (``aspect_ratio``,
  default 128): LLaMA-2 7B is 4096/32 = 128, LLaMA-3 70B 8192/80 = 102,
  LLaMA-3.1 405B 16384/126 = 130, GPT-3 175B 12288/96 = 128. Then
  L = (P / (12 r^2))^(1/3) and d = r L, continuous in P so the planner can
  differentiate through it. Embeddings are ignored.
* smax_p(x, y) = (x^p + y^p)^(1/p), p = ``sharpness``: a smooth maximum, so
  the step time is differentiable in P (the planner takes derivatives in log
  N and solves for where they vanish). It exceeds the hard max by at most a
  factor 2^(1/p) (9% at the default p = 8, where the two times are equal) and
  converges to it elsewhere; real kernels also slow down smoothly near the
  ridge rather than at a corner. Where one time is exactly 0 (a bandwidth or a
  peak of inf: the pure compute- and bandwidth-bound limits) it is exactly
  the other.
* overhead_seconds: seconds a step costs besides the roofline (kernel launches, host
  work, sampling), the same for every model size.

Presets hold published peak dense bf16 FLOP/s and memory bandwidth; the
efficiencies and the overhead are starting guesses, meant to be replaced by
:func:`sdsl_jax.planning.calibration.calibrate` on measured step times.

Everything is a pure function of pytrees (:class:`Hardware`,
:class:`Workload`), so it jits, vmaps and differentiates with respect to the
hardware and the workload alike.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from sdsl_jax.common import validation as _validate


@chex.dataclass(frozen=True)
class Hardware:
    """One accelerator's roofline, as a pytree.

    Attributes:
      peak_flops: dense peak FLOP/s at the serving precision (bf16 for the
        presets); inf gives the bandwidth-bound limit.
      bandwidth: memory bandwidth in bytes/s; inf gives the compute-bound limit.
      compute_efficiency: fraction of peak FLOP/s a decoding step reaches (MFU).
      bandwidth_efficiency: fraction of the bandwidth it reaches (MBU).
      overhead_seconds: seconds per forward step outside the roofline.
      sharpness: p of the smooth maximum (module doc); >= 1, larger is sharper.
    """

    peak_flops: ArrayLike
    bandwidth: ArrayLike
    compute_efficiency: ArrayLike
    bandwidth_efficiency: ArrayLike
    overhead_seconds: ArrayLike
    sharpness: ArrayLike


@chex.dataclass(frozen=True)
class Workload:
    """How the models are served, besides their size and precision.

    Attributes:
      batch_size: sequences decoded together (B).
      context: cached positions each sequence attends to (S), e.g. the mean
        prompt plus generated length.
      kv_bytes_per_value: bytes per cached key or value element (2 for bf16).
      kv_fraction: key-value heads over query heads (1: multi-head attention).
      aspect_ratio: width over depth, d / L (module doc).
    """

    batch_size: ArrayLike = 1.0
    context: ArrayLike = 2048.0
    kv_bytes_per_value: ArrayLike = 2.0
    kv_fraction: ArrayLike = 1.0
    aspect_ratio: ArrayLike = 128.0


# Bytes per stored weight at common serving precisions.
PRECISION_BYTES = {"fp32": 4.0, "float32": 4.0, "bf16": 2.0, "bfloat16": 2.0, "fp16": 2.0,
                   "float16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}

# Efficiencies and overheads of the presets are starting points, not measurements:
# memory-bound decoding kernels typically stream weights at 70-85% of the
# datasheet bandwidth, matmuls reach about half of the dense peak, and a
# compiled (CUDA-graph / XLA) decoding step costs a few hundred microseconds
# of launch and host work. `calibration.calibrate` replaces them with fitted values.
_GPU_DEFAULTS = dict(compute_efficiency=0.5, bandwidth_efficiency=0.8, overhead_seconds=3e-4, sharpness=8.0)

PRESETS: dict[str, Hardware] = {
    # NVIDIA A100 Tensor Core GPU datasheet (2021), A100 80GB SXM: BF16 Tensor
    # Core 312 TFLOPS dense (624 with sparsity), HBM2e 2,039 GB/s.
    "A100-80GB": Hardware(peak_flops=312e12, bandwidth=2.039e12, **_GPU_DEFAULTS),
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16 Tensor Core 1,979
    # TFLOPS with sparsity, i.e. 989.4 dense; HBM3 3.35 TB/s.
    "H100-SXM": Hardware(peak_flops=989.4e12, bandwidth=3.35e12, **_GPU_DEFAULTS),
    # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16 1,979 TFLOPS with
    # sparsity (989.4 dense, the H100's compute); HBM3e 4.8 TB/s, 141 GB.
    "H200": Hardware(peak_flops=989.4e12, bandwidth=4.8e12, **_GPU_DEFAULTS),
    # Google Cloud TPU documentation, "TPU v5e" system architecture table:
    # peak compute per chip 197 TFLOPs (bf16); HBM2 16 GB at 819 GBps.
    "TPU-v5e": Hardware(peak_flops=197e12, bandwidth=819e9, **_GPU_DEFAULTS),
    # Not a product: an order-of-magnitude stand-in for a server CPU socket
    # decoding with vector/matrix extensions, 1 TFLOP/s bf16 and 100 GB/s of
    # DRAM bandwidth (dual-channel DDR5-6400 is 102.4 GB/s), 1 ms per step.
    "CPU": Hardware(peak_flops=1e12, bandwidth=100e9, compute_efficiency=0.5,
                    bandwidth_efficiency=0.7, overhead_seconds=1e-3, sharpness=8.0),
}

_ALIASES = {"a100": "A100-80GB", "a100-80gb": "A100-80GB", "h100": "H100-SXM",
            "h100-sxm": "H100-SXM", "h200": "H200", "tpu-v5e": "TPU-v5e", "v5e": "TPU-v5e",
            "tpuv5e": "TPU-v5e", "cpu": "CPU"}


def hardware_preset(name: str) -> Hardware:
    """A preset by name, case-insensitive: A100 (A100-80GB), H100 (H100-SXM), H200,
    TPU-v5e (v5e), CPU."""
    key = _ALIASES.get(str(name).strip().lower().replace("_", "-").replace(" ", "-"))
    if key is None:
        raise ValueError(f"unknown hardware preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]


def bytes_per_param(precision) -> float:
    """Bytes per weight from a precision name ('bf16', 'fp8', 'int4', ...) or a number."""
    if isinstance(precision, str):
        try:
            return PRECISION_BYTES[precision.strip().lower()]
        except KeyError:
            raise ValueError(f"unknown precision {precision!r}; choose one of "
                             f"{sorted(PRECISION_BYTES)} or give bytes per parameter") from None
    value = float(precision)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"bytes per parameter must be a finite number > 0, got {precision!r}")
    return value


def check_hardware(hardware: Hardware) -> None:
    """Raise ValueError naming the first field outside its domain (concrete values only)."""
    for name in ("peak_flops", "bandwidth"):
        value = hardware[name]
        if _validate.is_concrete(value):
            arr = np.asarray(jax.device_get(value), np.float64)
            if np.any(np.isnan(arr)) or np.any(arr <= 0):
                raise ValueError(f"hardware.{name} must be > 0 (inf allowed), got {value!r}")
    _validate.check_positive("hardware.compute_efficiency", hardware.compute_efficiency)
    _validate.check_positive("hardware.bandwidth_efficiency", hardware.bandwidth_efficiency)
    _validate.check_in_range("hardware.overhead_seconds", hardware.overhead_seconds, 0.0, float("inf"))
    _validate.check_in_range("hardware.sharpness", hardware.sharpness, 1.0, float("inf"))


def check_workload(workload: Workload) -> None:
    """Raise ValueError naming the first field outside its domain (concrete values only)."""
    _validate.check_positive("workload.batch_size", workload.batch_size)
    _validate.check_in_range("workload.context", workload.context, 0.0, float("inf"))
    _validate.check_positive("workload.kv_bytes_per_value", workload.kv_bytes_per_value)
    _validate.check_in_range("workload.kv_fraction", workload.kv_fraction, 0.0, float("inf"))
    _validate.check_positive("workload.aspect_ratio", workload.aspect_ratio)


# The names files and printed JSON give the fields of a Hardware (the
# ``hardware`` object of ``sdsl plan --hardware --json``, the ``accelerator``
# object of the reproduce run's latency stage): the overhead, in seconds, is
# "overhead" there.
RECORD_KEYS = {"peak_flops": "peak_flops", "bandwidth": "bandwidth",
               "compute_efficiency": "compute_efficiency",
               "bandwidth_efficiency": "bandwidth_efficiency",
               "overhead_seconds": "overhead", "sharpness": "sharpness"}


def hardware_record(hardware: Hardware) -> dict[str, float]:
    """The hardware's fields as plain floats under their file names (:data:`RECORD_KEYS`)."""
    return {key: float(hardware[field]) for field, key in RECORD_KEYS.items()}


def model_shape(num_params: ArrayLike, aspect_ratio: ArrayLike = 128.0):
    """(layers L, width d) of a decoder with P = 12 L d^2 and d = aspect_ratio * L.

    Continuous (not rounded to whole layers), so it differentiates in P.
    """
    num_params = jnp.asarray(num_params, jnp.result_type(num_params, float))
    layers = jnp.cbrt(num_params / (12 * jnp.square(aspect_ratio)))
    return layers, aspect_ratio * layers


def step_flops(num_params: ArrayLike, tokens_per_step: ArrayLike, workload: Workload) -> jnp.ndarray:
    """FLOPs of one forward step: B k (2 P + 4 L d S)."""
    layers, width = model_shape(num_params, workload.aspect_ratio)
    per_position = 2 * num_params + 4 * layers * width * workload.context
    return workload.batch_size * tokens_per_step * per_position


def step_bytes(num_params: ArrayLike, bytes_per_param: ArrayLike, workload: Workload) -> jnp.ndarray:
    """Bytes one forward step streams: the weights once, and every sequence's KV cache."""
    layers, width = model_shape(num_params, workload.aspect_ratio)
    kv = (workload.batch_size * workload.context * 2 * layers * width * workload.kv_fraction
          * workload.kv_bytes_per_value)
    return num_params * bytes_per_param + kv


def smooth_max(x, y, sharpness):
    """(x^p + y^p)^(1/p) for x, y >= 0, written as m (1 + (min/m)^p)^(1/p).

    Scaling by the larger term keeps it finite for any p and any magnitude, and
    it returns exactly the larger term where the smaller is 0.
    """
    big = jnp.maximum(x, y)
    small = jnp.minimum(x, y)
    ratio = jnp.where(big > 0, small / jnp.where(big > 0, big, 1.0), 0.0)
    # ratio**p through exp(p log ratio), guarded at 0 so that its gradient in p
    # (ratio**p log ratio) is 0 there rather than 0 * inf.
    powered = jnp.where(ratio > 0, jnp.exp(sharpness * jnp.log(jnp.where(ratio > 0, ratio, 1.0))), 0.0)
    return big * jnp.exp(jnp.log1p(powered) / sharpness)


def roofline_times(hardware: Hardware, num_params: ArrayLike, tokens_per_step: ArrayLike,
                   bytes_per_param: ArrayLike, workload: Workload):
    """(compute seconds, memory seconds) of one step, before the smooth max and overhead."""
    # Divided one factor at a time, never by their product: with a peak or a
    # bandwidth of inf (the limits), the product's derivative would be inf * 0.
    compute = step_flops(num_params, tokens_per_step, workload) / hardware.peak_flops / (
        hardware.compute_efficiency)
    memory = step_bytes(num_params, bytes_per_param, workload) / hardware.bandwidth / (
        hardware.bandwidth_efficiency)
    return compute, memory


def step_time(hardware: Hardware, num_params: ArrayLike, tokens_per_step: ArrayLike = 1.0,
              *, bytes_per_param: ArrayLike = 2.0, workload: Workload | None = None) -> jnp.ndarray:
    """Seconds of one forward step (module doc), broadcast over every argument.

    Args:
      hardware: the roofline (:class:`Hardware`, e.g. ``hardware_preset("H100")``).
      num_params: parameters of the model, > 0.
      tokens_per_step: new positions per sequence: 1 for a decoding (draft)
        step, gamma + 1 for the target's verification of gamma drafted tokens.
      bytes_per_param: weight precision in bytes (see :func:`bytes_per_param`).
      workload: batch size, context and model-shape assumptions (default :class:`Workload`).
    """
    workload = Workload() if workload is None else workload
    _validate.check_positive("num_params", num_params)
    _validate.check_positive("tokens_per_step", tokens_per_step)
    _validate.check_positive("bytes_per_param", bytes_per_param)
    check_hardware(hardware)
    check_workload(workload)
    dtype = jnp.result_type(num_params, tokens_per_step, bytes_per_param, float)
    num_params, tokens_per_step, bytes_per_param = (
        jnp.asarray(v, dtype) for v in (num_params, tokens_per_step, bytes_per_param))
    compute, memory = roofline_times(hardware, num_params, tokens_per_step, bytes_per_param, workload)
    return smooth_max(compute, memory, hardware.sharpness) + hardware.overhead_seconds
