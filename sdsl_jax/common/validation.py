"""Eager input checks that stay out of the way of tracing.

A public function checks its inputs only when they are concrete (not tracers):
under jit, vmap or grad the values are unknown at trace time and the function's
documented out-of-domain behaviour applies instead. Each check names the
argument so a user sees what they did wrong rather than a NaN three calls later.
"""

from __future__ import annotations

import numpy as np
import jax


def is_concrete(*values) -> bool:
    leaves = jax.tree_util.tree_leaves(values)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def _as_numpy(value):
    return np.asarray(jax.device_get(value), dtype=np.float64)


def check_finite(name: str, value) -> None:
    if not is_concrete(value):
        return
    arr = _as_numpy(value)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {_first_bad(arr, ~np.isfinite(arr))}")


def check_positive(name: str, value) -> None:
    """Finite and > 0."""
    if not is_concrete(value):
        return
    check_finite(name, value)
    arr = _as_numpy(value)
    bad = ~(arr > 0)
    if np.any(bad):
        raise ValueError(f"{name} must be > 0, got {_first_bad(arr, bad)}")


def check_in_range(name: str, value, low: float, high: float) -> None:
    """Finite and low <= value <= high."""
    if not is_concrete(value):
        return
    check_finite(name, value)
    arr = _as_numpy(value)
    bad = ~((arr >= low) & (arr <= high))
    if np.any(bad):
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {_first_bad(arr, bad)}")


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> str:
    arr = np.atleast_1d(arr)
    bad = np.atleast_1d(bad)
    idx = np.argwhere(bad)[0]
    where = "" if arr.size == 1 else f" at index {tuple(int(i) for i in idx)}"
    return f"{arr[tuple(idx)]!r}{where}"
