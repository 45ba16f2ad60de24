"""The shared input checks: what they accept, and the exact messages callers rely on."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.common import validation as v


def _message(check, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        check(*args, **kwargs)
    return str(err.value)


def test_first_bad_names_the_index_of_arrays_only():
    assert v.first_bad(np.float64(-1.0), np.bool_(True)) == "np.float64(-1.0)"
    arr = np.array([[1.0, 2.0], [3.0, -4.0]])
    assert v.first_bad(arr, arr < 0) == "np.float64(-4.0) at index (1, 1)"


def test_array_checks():
    assert _message(v.check_finite, "x", [1.0, np.nan]) == "x must be finite, got np.float64(nan) at index (1,)"
    assert _message(v.check_positive, "x", 0.0) == "x must be > 0, got np.float64(0.0)"
    assert _message(v.check_in_range, "p", jnp.array([0.5, 1.5]), 0.0, 1.0) == (
        "p must lie in [0, 1], got np.float64(1.5) at index (1,)")
    v.check_in_range("p", [0.0, 1.0], 0.0, 1.0)


def test_array_checks_step_aside_under_tracing():
    seen = []

    @jax.jit
    def f(x):
        seen.append(v.is_concrete(x))
        v.check_positive("x", x)
        return x
    assert float(f(-1.0)) == -1.0
    assert seen == [False] and v.is_concrete(1.0, np.ones(2), {"a": jnp.ones(2)})


def test_open_unit():
    v.check_open_unit("confidence", 0.95)
    for bad in (0, 1, 1.5, math.nan):
        assert _message(v.check_open_unit, "confidence", bad) == f"confidence must lie in (0, 1), got {bad!r}"


def test_nonnegative_scalar():
    assert v.check_nonnegative_scalar("temperature", jnp.float32(0.5)) == 0.5
    for bad in (-1.0, math.inf, [1.0, 2.0]):
        assert _message(v.check_nonnegative_scalar, "temperature", bad) == (
            f"temperature must be a finite scalar >= 0, got {bad!r}")


def test_integers():
    assert v.is_int(3) and v.is_int(np.int32(3))
    assert not any(v.is_int(x) for x in (True, np.bool_(True), 3.0, np.float64(3), "3"))
    assert v.check_int("batch_size", np.int64(2), 1) == 2
    assert _message(v.check_int, "batch_size", 0, 1) == "batch_size must be an int >= 1, got 0"
    assert _message(v.check_int, "batch_size", True, 1) == "batch_size must be an int >= 1, got True"
    assert v.check_static_int("lookahead", np.int64(4), 1) == 4
    assert _message(v.check_static_int, "lookahead", 2.0, 1) == (
        "lookahead must be a Python int (it fixes array shapes), got 2.0")
    assert _message(v.check_static_int, "n", jnp.int32(2), 1, fixes="an array shape").startswith(
        "n must be a Python int (it fixes an array shape), got ")
    assert _message(v.check_static_int, "lookahead", 0, 1) == "lookahead must be >= 1, got 0"


def test_finite_or_none():
    assert v.finite_or_none(np.float32(0.5)) == 0.5 and type(v.finite_or_none(np.float64(1))) is float
    assert [v.finite_or_none(x) for x in (math.nan, -math.inf, None, jnp.inf)] == [None] * 4
