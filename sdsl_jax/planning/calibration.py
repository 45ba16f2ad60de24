r"""Calibration of the roofline (:mod:`sdsl_jax.planning.hardware`) from measured step times.

The presets' efficiencies and per-step overhead are guesses. Given measured
forward steps (each: parameters P, new positions per sequence k, bytes per
parameter, batch size B, context S, seconds t), :func:`calibrate` fits them by
least squares on log seconds,

    min_theta  1/2 mean_i (log t_model(P_i, k_i, ...; theta) - log t_i)^2
               + 1/2 prior_weight |theta - theta_0|^2,

theta the logarithms of the fitted fields (so they stay positive), theta_0
the starting hardware's. Relative errors count equally, so a 0.2 ms draft
step weighs as much as a 50 ms verification.

Measurements come as records (dicts, or JSON Lines: ``STEP_TIME_FIELDS``):
those ``sdsl measure`` writes, one row per timed step kind, or single steps.
The records' keys ``params`` and ``batch`` are :class:`StepTimes`' ``num_params``
and ``batch_size``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common import validation as _validate
from sdsl_jax.common.io import JsonlError, iter_jsonl
from sdsl_jax.common.tables import decode_text
from sdsl_jax.common.optimize import minimize
from sdsl_jax.planning import hardware as hw


@chex.dataclass(frozen=True)
class StepTimes:
    """Measured forward steps, one entry per step kind; every leaf has shape (n,).

    Rows come from :func:`step_time_rows` (a list of dicts, e.g. the JSON Lines
    that ``sdsl measure`` writes) or are built directly.
    """

    num_params: jnp.ndarray
    tokens_per_step: jnp.ndarray
    bytes_per_param: jnp.ndarray
    batch_size: jnp.ndarray
    context: jnp.ndarray
    seconds: jnp.ndarray


STEP_TIME_FIELDS = """\
Each record (a dict, or one JSON object per line) is one of two kinds.

A measurement of one speculative run, as `sdsl measure` writes it:
  draft_params, target_params   parameter counts (numbers or '125M', '7B')
  draft_step_seconds            seconds of one draft forward step (1 new token per sequence)
  target_step_seconds           seconds of one verification step (lookahead + 1 tokens)
  baseline_step_seconds         seconds of one target decoding step (1 token)
  lookahead                     gamma; required with target_step_seconds
  (at least one of the *_step_seconds; each present one becomes a row)

or a single step:
  params, seconds               parameters and seconds of one forward step
  tokens_per_step               new positions per sequence (default 1)

Optional in both (defaults in brackets):
  batch [1], context [0]        sequences per step, cached positions per sequence
  draft_precision, target_precision, precision   'bf16', 'fp8', ... or bytes per
                                parameter ['bf16']
Other keys are ignored.
"""


def _field_number(record: Mapping[str, Any], key: str, where: str, *, minimum=0.0,
                  strictly=True, default=None):
    from sdsl_jax.common.quantities import parse_count
    value = record.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"{where}: missing field {key!r}")
        return float(default)
    try:
        number = parse_count(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {key!r}: {value!r} is not a number") from None
    if not math.isfinite(number) or number < minimum or (strictly and number == minimum):
        bound = f"> {minimum:g}" if strictly else f">= {minimum:g}"
        raise ValueError(f"{where}: field {key!r}: must be finite and {bound}, got {value!r}")
    return number


def _field_precision(record, keys, where):
    for key in keys:
        if record.get(key) is not None:
            try:
                return hw.bytes_per_param(record[key])
            except ValueError as err:
                raise ValueError(f"{where}: field {key!r}: {err}") from None
    return hw.PRECISION_BYTES["bf16"]


def step_time_rows(records: Iterable[Mapping[str, Any]], *, source: str = "records",
                   dtype=None) -> StepTimes:
    """Measured step times from dicts (fields: ``STEP_TIME_FIELDS``).

    Raises:
      ValueError: naming the record (from 1) and the field that is wrong.
    """
    rows = []
    for index, record in enumerate(records, start=1):
        where = f"{source}: record {index}"
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: expected an object with named fields, got {record!r}")
        batch_size = _field_number(record, "batch", where, default=1.0)
        context = _field_number(record, "context", where, strictly=False, default=0.0)
        if "params" in record or "seconds" in record:
            rows.append((_field_number(record, "params", where),
                         _field_number(record, "tokens_per_step", where, default=1.0),
                         _field_precision(record, ("precision",), where), batch_size, context,
                         _field_number(record, "seconds", where)))
            continue
        found = False
        if record.get("draft_step_seconds") is not None:
            rows.append((_field_number(record, "draft_params", where), 1.0,
                         _field_precision(record, ("draft_precision", "precision"), where),
                         batch_size, context, _field_number(record, "draft_step_seconds", where)))
            found = True
        for key, positions in (("target_step_seconds", None), ("baseline_step_seconds", 1.0)):
            if record.get(key) is not None:
                if positions is None:
                    positions = _field_number(record, "lookahead", where, strictly=False) + 1
                rows.append((_field_number(record, "target_params", where), positions,
                             _field_precision(record, ("target_precision", "precision"), where),
                             batch_size, context, _field_number(record, key, where)))
                found = True
        if not found:
            raise ValueError(f"{where}: no step time: give draft_step_seconds, target_step_seconds "
                             "or baseline_step_seconds (with draft_params/target_params), or "
                             "params and seconds")
    if not rows:
        raise ValueError(f"{source}: no step-time records")
    columns = np.asarray(rows, np.float64).T
    as_float = lambda v: jnp.asarray(v, dtype or jnp.result_type(float))
    return StepTimes(num_params=as_float(columns[0]), tokens_per_step=as_float(columns[1]),
                     bytes_per_param=as_float(columns[2]), batch_size=as_float(columns[3]),
                     context=as_float(columns[4]), seconds=as_float(columns[5]))


def read_step_times(path: str | os.PathLike, dtype=None) -> StepTimes:
    """Step times from a JSON Lines file (one record per line; fields: ``STEP_TIME_FIELDS``).

    Raises:
      OSError: the file cannot be read (missing, a folder, no permission).
      ValueError: the file is not UTF-8 text (Latin-1, UTF-16, binary: an
        :class:`~sdsl_jax.common.tables.InputFileError`), or naming the line
        that is not JSON, or the record and field that is wrong
        (:func:`step_time_rows`).
    """
    # Every line is a record, the last one too with or without its newline:
    # a measurement file is the user's input, not an append-only log.
    with open(path, "rb") as handle:
        data = handle.read()
    source = str(path)
    text = decode_text(data, source)
    records = []
    try:
        for _, record in iter_jsonl(text, source):
            records.append(record)
    except JsonlError as err:
        if err.kind == "json":
            raise ValueError(f"{source}: line {err.line}: not JSON ({err.detail})") from None
        if err.kind != "object":
            raise
        # JSON but not an object: a record without named fields, which
        # step_time_rows names by its record number like any other bad record.
        records.append(json.loads(_line(text, err.line)))
    return step_time_rows(records, source=source, dtype=dtype)


def _line(text: str, number: int) -> str:
    """Line ``number`` (from 1) of ``text``, lines split as common/io splits them."""
    return io.StringIO(text.lstrip("\ufeff"), newline=None).readlines()[number - 1]


def predict_step_times(hardware: hw.Hardware, rows: StepTimes,
                       workload: hw.Workload | None = None):
    """The model's seconds for each measured row (its batch size and context, the
    workload's KV and shape assumptions)."""
    base = hw.Workload() if workload is None else workload
    workload = base.replace(batch_size=rows.batch_size, context=rows.context)
    compute, memory = hw.roofline_times(hardware, rows.num_params, rows.tokens_per_step,
                                        rows.bytes_per_param, workload)
    return hw.smooth_max(compute, memory, hardware.sharpness) + hardware.overhead_seconds


CALIBRATED_FIELDS = ("compute_efficiency", "bandwidth_efficiency", "overhead_seconds")


@chex.dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`.

    Attributes:
      hardware: the starting hardware with the fitted fields replaced.
      predicted: the model's seconds for each row after the fit.
      rms_log_error: root mean square of log(predicted / measured).
      max_relative_error: largest |predicted / measured - 1|.
      converged: whether L-BFGS reached its gradient tolerance.
    """

    hardware: hw.Hardware
    predicted: jnp.ndarray
    rms_log_error: jnp.ndarray
    max_relative_error: jnp.ndarray
    converged: jnp.ndarray


def calibrate(hardware: hw.Hardware, rows: StepTimes, *,
              workload: hw.Workload | None = None, fields: Sequence[str] = CALIBRATED_FIELDS,
              prior_weight: float = 1e-6, max_steps: int = 200) -> Calibration:
    """Fit the hardware's efficiencies and overhead to measured step times.

    Least squares on log(seconds): every step counts by its relative error, so
    a 0.2 ms draft step weighs as much as a 50 ms verification. The fitted
    fields are optimised as logarithms (they stay positive) with optax L-BFGS
    (:func:`sdsl_jax.common.optimize.minimize`), starting from the given hardware.
    ``prior_weight`` adds a tiny pull of each log field towards its starting
    value, so a field the data cannot see (compute efficiency when every step
    is bandwidth bound) stays at the preset instead of drifting.

    Args:
      hardware: the starting point (a preset); peak and bandwidth stay fixed.
      rows: measured steps (:func:`step_time_rows`, :func:`read_step_times`).
      workload: KV-cache and shape assumptions (batch size and context come from the rows).
      fields: which of ``compute_efficiency``, ``bandwidth_efficiency``,
        ``overhead_seconds`` and ``sharpness`` to fit.
    """
    fields = tuple(fields)
    allowed = CALIBRATED_FIELDS + ("sharpness",)
    for name in fields:
        if name not in allowed:
            raise ValueError(f"fields: cannot calibrate {name!r}; choose from {allowed}")
    if not fields:
        raise ValueError("fields: name at least one field to calibrate")
    hw.check_hardware(hardware)
    _validate.check_positive("rows.seconds", rows.seconds)
    dtype = rows.seconds.dtype
    hardware = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), hardware)
    # Each field is fitted as its logarithm (sharpness p >= 1 as log(p - 1));
    # an overhead of exactly 0 has no logarithm, so it starts a little above.
    theta0 = jnp.stack([jnp.log(hardware[name] - 1) if name == "sharpness"
                        else jnp.log(jnp.maximum(hardware[name], 1e-9))
                        if name == "overhead_seconds" else jnp.log(hardware[name])
                        for name in fields])
    workload = hw.Workload() if workload is None else workload
    return _calibrate(fields, max_steps, hardware, rows, workload, theta0,
                      jnp.asarray(prior_weight, dtype))


def _with_free(fields, hardware, theta):
    return hardware.replace(**{
        name: 1 + jnp.exp(theta[i]) if name == "sharpness" else jnp.exp(theta[i])
        for i, name in enumerate(fields)})


@functools.partial(jax.jit, static_argnums=(0, 1))
def _calibrate(fields, max_steps, hardware, rows, workload, theta0, prior_weight):
    def loss(theta):
        predicted = predict_step_times(_with_free(fields, hardware, theta), rows, workload)
        residuals = jnp.log(predicted) - jnp.log(rows.seconds)
        return 0.5 * jnp.mean(residuals**2) + 0.5 * prior_weight * jnp.sum((theta - theta0) ** 2)

    solution = minimize(loss, theta0, max_steps=max_steps)
    fitted = _with_free(fields, hardware, solution.params)
    predicted = predict_step_times(fitted, rows, workload)
    log_error = jnp.log(predicted) - jnp.log(rows.seconds)
    return Calibration(
        hardware=fitted, predicted=predicted,
        rms_log_error=jnp.sqrt(jnp.mean(log_error**2)),
        max_relative_error=jnp.max(jnp.abs(jnp.expm1(log_error))),
        # Stopped by the gradient tolerance rather than by the step limit.
        converged=solution.steps < max_steps)
