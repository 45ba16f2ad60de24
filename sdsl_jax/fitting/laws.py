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

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.io import write_json
from sdsl_jax.common.tables import InputFileError, read_json
from sdsl_jax.laws import acceptance as acceptance_lib
from sdsl_jax.laws import pretraining

PRETRAINING_FIELDS = ("irreducible_loss", "param_coeff", "param_exponent", "data_coeff",
                      "data_exponent")
ACCEPTANCE_FIELDS = ("draft_coeff", "target_coeff", "intercept")
COEFFICIENTS = PRETRAINING_FIELDS + ACCEPTANCE_FIELDS
# 2: the covariance's kind ("covariance_kind") and t degrees of freedom
# ("covariance_df"); a version-1 file (neither) reads as an iid covariance.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FORMAT_NAME = "sdsl-jax fitted laws"
# A covariance is symmetric and positive semi-definite up to rounding: its
# correlations may break either by this much of their largest eigenvalue (a
# matrix saved from float32 is off by about 1e-7; a wrong or hand-edited one,
# by far more).
PSD_TOLERANCE = 1e-6
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
        "format": FORMAT_NAME,
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


class LawsFileError(InputFileError):
    """A laws file that cannot be used; the message names the file, the key and the problem."""


def load_laws(path: str | os.PathLike, dtype=None) -> FittedLaws:
    """Read a file written by :func:`save_laws` (or by hand: only the two laws are required).

    Everything is checked before anything is used, and a problem is named by
    its key path (``pretraining_law.param_coeff``, ``covariance[2][5]``):

    * ``format``, if given, is this one's, and ``version``, if given, is one
      this code reads (1 or 2; a newer one asks for an upgrade);
    * every coefficient is a finite number (the pre-training scales and
      exponents > 0);
    * ``coefficient_order``, if given, is the order this code uses;
    * ``covariance`` is an 8 x 8 matrix of finite numbers, symmetric and
      positive semi-definite (its correlations' eigenvalues >= -1e-6 x the
      largest), its
      kind ("cluster", "iid") agreeing with ``covariance_df``;
    * ``bootstrap_samples`` is a matrix of finite numbers with 8 columns and
      at least 2 rows.

    Raises:
      LawsFileError: the file is missing, a folder, not UTF-8 JSON, or breaks
        one of the rules above.
    """
    name = os.fspath(path)
    try:
        document = read_json(name)
    except InputFileError as err:
        raise LawsFileError(str(err), path=name, line=err.line) from None
    return _laws_of(document, name, dtype)


def _laws_of(document, name: str, dtype) -> FittedLaws:
    def refuse(message):
        return LawsFileError(f"{name}: {message}", path=name)

    if not isinstance(document, dict):
        raise refuse("expected a JSON object with 'pretraining_law' and 'acceptance_law'")
    kind = document.get("format", FORMAT_NAME)
    if kind != FORMAT_NAME:
        raise refuse(f"format is {kind!r}, not {FORMAT_NAME!r}: this is not a laws file of "
                     "`sdsl fit`")
    version = document.get("version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise refuse(f"version must be a whole number >= 1, got {version!r}")
    if version not in READABLE_VERSIONS:
        raise refuse(f"written by a newer sdsl-jax (version {version}); upgrade sdsl-jax to "
                     f"read it (this one reads versions {READABLE_VERSIONS[0]} to "
                     f"{READABLE_VERSIONS[-1]})")
    order = document.get("coefficient_order")
    if order is not None and order != list(COEFFICIENTS):
        raise refuse(f"coefficient_order must be {list(COEFFICIENTS)} (the order of the "
                     f"covariance's rows), got {order!r}")
    dtype = dtype or jnp.result_type(float)
    values = []
    for section, fields in (("pretraining_law", PRETRAINING_FIELDS), ("acceptance_law", ACCEPTANCE_FIELDS)):
        block = document.get(section)
        if not isinstance(block, dict):
            raise refuse(f"missing the '{section}' object")
        for field in fields:
            value = block.get(field)
            if not _is_finite_number(value):
                raise refuse(f"{section}.{field} must be a finite number, got {value!r}")
            values.append(float(value))
    for field in ("param_coeff", "param_exponent", "data_coeff", "data_exponent"):
        if values[COEFFICIENTS.index(field)] <= 0:
            raise refuse(f"pretraining_law.{field} must be > 0, got {values[COEFFICIENTS.index(field)]!r}")

    def matrix(key, shape_check):
        raw = document.get(key)
        if raw is None:
            return None
        if not isinstance(raw, list) or not all(isinstance(row, list) for row in raw):
            raise refuse(f"'{key}' must be a numeric matrix (a list of rows)")
        for i, row in enumerate(raw):
            for j, value in enumerate(row):
                if value is None or isinstance(value, (bool, str, list, dict)):
                    raise refuse(f"'{key}' must be a numeric matrix; {key}[{i}][{j}] is {value!r}")
                if not _is_finite_number(value):
                    raise refuse(f"{key}[{i}][{j}] must be a finite number, got {value!r}")
        try:
            arr = np.asarray(raw, np.float64)
        except ValueError:  # rows of different lengths
            arr = None
        if arr is None or not shape_check(arr.shape):
            shape = arr.shape if arr is not None else f"rows of lengths {sorted({len(r) for r in raw})}"
            raise refuse(f"'{key}' must be a finite matrix with 8 columns, got shape {shape}")
        return arr

    covariance = matrix("covariance", lambda s: s == (8, 8))
    if covariance is not None:
        _check_covariance(covariance, refuse)
    df = document.get("covariance_df")
    if df is not None and (not _is_finite_number(df) or not df > 0):
        raise refuse(f"covariance_df must be a positive number or null, got {df!r}")
    declared = document.get("covariance_kind")
    if declared is not None:
        if declared not in COVARIANCE_KINDS:
            raise refuse(f"covariance_kind must be one of {sorted(COVARIANCE_KINDS)} or null, "
                         f"got {declared!r}")
        if (declared == "cluster") != (df is not None):
            raise refuse(f"covariance_kind is {declared!r} but covariance_df is {df!r}: a "
                         "cluster covariance comes with degrees of freedom, an iid one without")
    samples = matrix("bootstrap_samples", lambda s: len(s) == 2 and s[1] == 8 and s[0] >= 2)
    pre, acc = laws_from_vector(jnp.asarray(values, dtype))
    return FittedLaws(pretraining_law=pre, acceptance_law=acc,
                      covariance=None if covariance is None else jnp.asarray(covariance, dtype),
                      samples=None if samples is None else jnp.asarray(samples, dtype),
                      covariance_df=None if df is None or covariance is None else jnp.asarray(df, dtype))


def _is_finite_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value))


def _check_covariance(covariance: np.ndarray, refuse) -> None:
    """A variance-covariance matrix to rounding, or ``refuse`` says what is wrong where.

    The coefficients' variances differ by ten orders of magnitude (a scale
    near 400, an exponent near 0.3), so symmetry and semi-definiteness are
    checked on the correlations, where rounding is the same size everywhere.
    """
    variances = np.diagonal(covariance)
    for i, variance in enumerate(variances):
        # No tolerance: a fit's covariance is clipped to semi-definite where it
        # is computed, and a coefficient it held fixed has a row of exact zeros.
        if variance < 0:
            raise refuse(f"covariance[{i}][{i}], the variance of {COEFFICIENTS[i]}, is "
                         f"{variance!r}; a variance cannot be negative")
    # A coefficient the fit held fixed has variance 0: scaled by 1, its row must be 0.
    scale = np.where(variances > 0, np.sqrt(np.clip(variances, 0.0, None)), 1.0)
    correlation = covariance / np.outer(scale, scale)
    asymmetry = np.abs(correlation - correlation.T)
    if asymmetry.max() > PSD_TOLERANCE:
        i, j = np.unravel_index(int(np.argmax(asymmetry)), asymmetry.shape)
        raise refuse(f"covariance is not symmetric: covariance[{i}][{j}] = "
                     f"{float(covariance[i, j])!r} but covariance[{j}][{i}] = "
                     f"{float(covariance[j, i])!r}")
    eigenvalues = np.linalg.eigvalsh(0.5 * (correlation + correlation.T))
    largest = float(np.max(np.abs(eigenvalues)))
    if eigenvalues[0] < -PSD_TOLERANCE * largest:
        raise refuse(f"covariance is not positive semi-definite (its correlations have the "
                     f"eigenvalue {eigenvalues[0]:.3g}; a combination of coefficients would have "
                     "a negative variance): the file was edited or written wrongly; fit again")
