"""Fitted laws with their uncertainty, as one pytree and one JSON file.

:class:`FittedLaws` carries the pre-training and acceptance laws a fit
produced, the covariance of their eight coefficients (delta method: by
default the cluster-robust one, with the degrees of freedom of its t
quantile) and, when a bootstrap ran, the resampled coefficients. The planner takes its two laws
directly; :mod:`sdsl_jax.fitting.uncertainty` turns the rest into an interval
on N*. The JSON file is what ``sdsl fit`` writes and ``sdsl plan --laws``
reads; it stores every number with full precision (Python's repr).
"""

from __future__ import annotations

import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.io import read_json, write_json
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining

PRETRAINING_FIELDS = ("irreducible_loss", "param_coeff", "param_exponent", "data_coeff",
                      "data_exponent")
ACCEPTANCE_FIELDS = ("draft_coeff", "target_coeff", "intercept")
COEFFICIENTS = PRETRAINING_FIELDS + ACCEPTANCE_FIELDS
# 2: the covariance's kind ("covariance_kind") and t degrees of freedom
# ("covariance_df"); a version-1 file (neither) reads as an iid covariance.
FORMAT_VERSION = 2
COVARIANCE_KINDS = {"cluster": "two-way cluster-robust over models (Student t intervals, "
                               "covariance_df degrees of freedom)",
                    "iid": "inverse Hessian, observations independent (normal intervals)"}


def covariance_kind(laws) -> str | None:
    """"cluster" or "iid": what ``laws.covariance`` is (None if there is none).

    A covariance that comes with t degrees of freedom is the cluster-robust
    one; one without (including every version-1 laws file) the iid one.
    """
    if laws.covariance is None:
        return None
    return "iid" if laws.covariance_df is None else "cluster"


def default_interval(laws) -> str | None:
    """The interval kind to report for these laws when none is asked for.

    The one whose coverage benchmarks/bench_coverage.py checks: "delta" for a
    covariance clustered by model (t intervals); for an older, iid covariance
    the bootstrap when there are samples (a bootstrap over rows beats the iid
    delta method there), else "delta"; None when the laws carry neither.
    The bootstrap over models is conservative, so it is used only on request.
    """
    if covariance_kind(laws) == "cluster":
        return "delta"
    if laws.samples is not None:
        return "bootstrap"
    return "delta" if laws.covariance is not None else None


def coefficient_vector(pretraining_law, acceptance_law) -> jnp.ndarray:
    """The eight coefficients in COEFFICIENTS order (leading batch axes kept)."""
    leaves = [getattr(pretraining_law, f) for f in PRETRAINING_FIELDS]
    leaves += [getattr(acceptance_law, f) for f in ACCEPTANCE_FIELDS]
    return jnp.stack([jnp.asarray(v) for v in leaves], axis=-1)


def laws_from_vector(vector):
    """(PretrainingLaw, AcceptanceLaw) from a (..., 8) coefficient vector."""
    vector = jnp.asarray(vector)
    pre = pretraining.PretrainingLaw(**{f: vector[..., i] for i, f in enumerate(PRETRAINING_FIELDS)})
    k = len(PRETRAINING_FIELDS)
    acc = acceptance_lib.AcceptanceLaw(**{f: vector[..., k + i] for i, f in enumerate(ACCEPTANCE_FIELDS)})
    return pre, acc


@chex.dataclass(frozen=True)
class FittedLaws:
    """Laws for the planner, with what is known about their uncertainty.

    Attributes:
      pretraining_law, acceptance_law: the point estimates.
      covariance: (8, 8) covariance of the coefficients in COEFFICIENTS order
        (delta method), or None. Rows of coefficients the fit held fixed are 0.
      samples: (resamples, 8) bootstrap coefficients, or None.
      covariance_df: degrees of freedom of the Student t quantile that turns
        ``covariance`` into intervals (a cluster-robust covariance, estimated
        from few models), or None for the normal quantile (an iid covariance,
        and laws files written before this field existed).
    """

    pretraining_law: pretraining.PretrainingLaw
    acceptance_law: acceptance_lib.AcceptanceLaw
    covariance: jnp.ndarray | None = None
    samples: jnp.ndarray | None = None
    covariance_df: jnp.ndarray | None = None

    @property
    def coefficients(self) -> jnp.ndarray:
        return coefficient_vector(self.pretraining_law, self.acceptance_law)

    def standard_errors(self) -> jnp.ndarray | None:
        if self.covariance is None:
            return None
        return jnp.sqrt(jnp.clip(jnp.diagonal(self.covariance), 0.0))


def save_laws(path: str | os.PathLike, laws: FittedLaws, *, intervals: dict | None = None,
              summary: dict | None = None) -> None:
    """Write ``laws`` (and optional intervals and fit summary) as JSON.

    Written to a temporary file and renamed, so an interrupted write never
    leaves a truncated laws file where a good one was. JSON has no NaN or
    infinity: the coefficients, covariance and samples must be finite (a
    ValueError names the one that is not; :func:`load_laws` would refuse the
    file), and a non-finite number in ``intervals`` or ``summary`` is written
    as null (not available).
    """
    def as_list(name, value):
        if value is None:
            return None
        value = np.asarray(value, np.float64)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"cannot save laws with non-finite {name} (NaN or infinity); "
                             "drop the failed fits first")
        return value.tolist()

    coeffs = np.asarray(as_list("coefficients", laws.coefficients))
    document = {
        "format": "sdsl-jax fitted laws",
        "version": FORMAT_VERSION,
        "pretraining_law": {f: float(coeffs[i]) for i, f in enumerate(PRETRAINING_FIELDS)},
        "acceptance_law": {f: float(coeffs[len(PRETRAINING_FIELDS) + i])
                           for i, f in enumerate(ACCEPTANCE_FIELDS)},
        "coefficient_order": list(COEFFICIENTS),
        "covariance": as_list("covariance", laws.covariance),
        "covariance_kind": covariance_kind(laws),
        "covariance_df": None if laws.covariance_df is None else float(laws.covariance_df),
        "bootstrap_samples": as_list("bootstrap samples", laws.samples),
        "intervals": json_safe(intervals or {}),
        "summary": json_safe(summary or {}),
    }
    write_json(path, document, indent=1, allow_nan=False, default=_jsonable)


def json_safe(value):
    """``value`` with every NaN or infinite number (Python, numpy or JAX) replaced by None.

    Dicts, lists and tuples are copied recursively; numpy and JAX scalars and
    arrays become Python numbers and lists.
    """
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        value = _jsonable(value)
        return json_safe(value) if isinstance(value, list) else _finite_or_none(value)
    return _finite_or_none(value)


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(value):
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class LawsFileError(ValueError):
    """A laws file that cannot be used; the message names the file and the problem."""


def load_laws(path: str | os.PathLike, dtype=None) -> FittedLaws:
    """Read a file written by :func:`save_laws` (or by hand: only the two laws are required)."""
    name = os.fspath(path)
    try:
        document = read_json(name)
    except OSError as err:
        raise LawsFileError(f"{name}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise LawsFileError(f"{name}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(document, dict):
        raise LawsFileError(f"{name}: expected a JSON object with 'pretraining_law' and 'acceptance_law'")
    dtype = dtype or jnp.result_type(float)
    values = []
    for section, fields in (("pretraining_law", PRETRAINING_FIELDS), ("acceptance_law", ACCEPTANCE_FIELDS)):
        block = document.get(section)
        if not isinstance(block, dict):
            raise LawsFileError(f"{name}: missing the '{section}' object")
        for field in fields:
            value = block.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LawsFileError(f"{name}: {section}.{field} must be a finite number, got {value!r}")
            values.append(float(value))
    for field in ("param_coeff", "param_exponent", "data_coeff", "data_exponent"):
        if values[COEFFICIENTS.index(field)] <= 0:
            raise LawsFileError(f"{name}: pretraining_law.{field} must be > 0, got {values[COEFFICIENTS.index(field)]!r}")

    def matrix(key, shape_check):
        raw = document.get(key)
        if raw is None:
            return None
        try:
            arr = np.asarray(raw, np.float64)
        except (TypeError, ValueError):
            raise LawsFileError(f"{name}: '{key}' must be a numeric matrix") from None
        if not shape_check(arr.shape) or not np.all(np.isfinite(arr)):
            raise LawsFileError(f"{name}: '{key}' must be a finite matrix with 8 columns, got shape {arr.shape}")
        return jnp.asarray(arr, dtype)

    covariance = matrix("covariance", lambda s: s == (8, 8))
    df = document.get("covariance_df")
    if df is not None and (isinstance(df, bool) or not isinstance(df, (int, float))
                           or not df > 0 or math.isnan(df)):
        raise LawsFileError(f"{name}: covariance_df must be a positive number or null, got {df!r}")
    pre, acc = laws_from_vector(jnp.asarray(values, dtype))
    return FittedLaws(pretraining_law=pre, acceptance_law=acc, covariance=covariance,
                      samples=matrix("bootstrap_samples", lambda s: len(s) == 2 and s[1] == 8 and s[0] >= 2),
                      covariance_df=None if df is None or covariance is None else jnp.asarray(df, dtype))
