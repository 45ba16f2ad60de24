"""Eager input checks that stay out of the way of tracing.

A public function checks its inputs only when they are concrete (not tracers):
under jit, vmap or grad the values are unknown at trace time and the function's
documented out-of-domain behaviour applies instead. Each check names the
argument so a user sees what they did wrong rather than a NaN three calls later.

Array checks (:func:`check_finite`, :func:`check_positive`,
:func:`check_in_range`) take anything numpy can read and name the first bad
element (:func:`first_bad`). Scalar checks (:func:`check_open_unit`,
:func:`check_int`, :func:`check_static_int`, :func:`check_nonnegative_scalar`)
are for settings: a confidence level, a lookahead, a batch size, a temperature.
"""

from __future__ import annotations

import math

import numpy as np
import jax


def is_concrete(*values) -> bool:
    """True when no leaf of ``values`` is a tracer, so their values can be checked now."""
    leaves = jax.tree_util.tree_leaves(values)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def as_float64(value) -> np.ndarray:
    """A concrete value (Python, numpy or JAX) as a float64 numpy array, for checking."""
    return np.asarray(jax.device_get(value), dtype=np.float64)


def first_bad(arr: np.ndarray, bad: np.ndarray) -> str:
    """The first element of ``arr`` where ``bad`` holds, and its index unless ``arr`` is scalar.

    For messages: "-1.0" for a scalar, "-1.0 at index (2,)" for an array.
    """
    arr = np.atleast_1d(arr)
    bad = np.atleast_1d(bad)
    idx = np.argwhere(bad)[0]
    where = "" if arr.size == 1 else f" at index {tuple(int(i) for i in idx)}"
    return f"{arr[tuple(idx)]!r}{where}"


# --------------------------------------------------------------------------
# Arrays (skipped for tracers).


def check_finite(name: str, value) -> None:
    if not is_concrete(value):
        return
    arr = as_float64(value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {first_bad(arr, ~np.isfinite(arr))}")


def check_positive(name: str, value) -> None:
    """Finite and > 0."""
    if not is_concrete(value):
        return
    arr = as_float64(value)
    # One pass where all is well (a planner's million configurations); the
    # message then names the first bad element, non-finite ones first.
    if arr.size and 0 < arr.min() and arr.max() < np.inf:  # min and max carry NaN
        return
    check_finite(name, arr)
    bad = ~(arr > 0)
    if np.any(bad):
        raise ValueError(f"{name} must be > 0, got {first_bad(arr, bad)}")


def check_in_range(name: str, value, low: float, high: float) -> None:
    """Finite and low <= value <= high."""
    if not is_concrete(value):
        return
    check_finite(name, value)
    arr = as_float64(value)
    bad = ~((arr >= low) & (arr <= high))
    if np.any(bad):
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {first_bad(arr, bad)}")


# --------------------------------------------------------------------------
# Scalar settings.


def check_open_unit(name: str, value) -> None:
    """A scalar strictly between 0 and 1 (a confidence level, a probability); NaN fails."""
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")


def check_nonnegative_scalar(name: str, value) -> np.ndarray:
    """A concrete scalar (Python, numpy or JAX, shape ()) that is finite and >= 0.

    Returns it as a float64 numpy scalar array (:func:`as_float64`).
    """
    arr = as_float64(value)
    if arr.shape != () or not np.isfinite(arr) or arr < 0:
        raise ValueError(f"{name} must be a finite scalar >= 0, got {value!r}")
    return arr


def is_int(value) -> bool:
    """A Python or numpy integer, not a bool (True is an int to Python, never a count here)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_int(name: str, value, minimum: int) -> int:
    """An integer (:func:`is_int`) >= ``minimum``, as a Python int."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_static_int(name: str, value, minimum: int, *, fixes: str = "array shapes") -> int:
    """An integer that fixes ``fixes`` (so an array or tracer is refused), >= ``minimum``.

    Returns it as a Python int, the form jit's static arguments need.
    """
    if not is_int(value):
        raise ValueError(f"{name} must be a Python int (it fixes {fixes}), got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------
# Reporting.


def finite_or_none(value) -> float | None:
    """``float(value)``, or None where it is None, NaN or infinite (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
