"""Saved compiled programs: a second process's call loads what the first saved, answers the
same, and never loads a program saved for other shapes, settings or a damaged file."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.common import saved_programs


@functools.partial(jax.jit, static_argnums=0)
def _scaled(settings, x, pair):
    scale, offset = settings
    return {"y": jnp.sin(x) * scale + pair[0] * pair[1] + offset}


def _programs(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(saved_programs.SUFFIX)) \
        if os.path.isdir(folder) else []


def _args(n=3, dtype=np.float32):
    return jnp.linspace(0.0, 1.0, n, dtype=dtype), (jnp.asarray(2.0, dtype), jnp.asarray(0.5, dtype))


@pytest.fixture(autouse=True)
def _fresh():
    saved_programs.forget_loaded()
    yield
    saved_programs.forget_loaded()


def test_a_saved_program_is_loaded_and_answers_as_the_jitted_function(tmp_path):
    x, pair = _args()
    expected = _scaled((3.0, 1.0), x, pair)["y"]
    with saved_programs.saving_in(str(tmp_path)):
        first = saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), x, pair)["y"]
        saved = _programs(tmp_path)
        assert len(saved) == 1
        saved_programs.forget_loaded()  # as a new process
        loaded = saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), x, pair)["y"]
    assert _programs(tmp_path) == saved
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(loaded, expected)
    assert saved_programs.directory() is None  # the block ended, saving with it


def test_other_settings_shapes_and_dtypes_are_other_programs(tmp_path):
    with saved_programs.saving_in(str(tmp_path)):
        saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), *_args())
        saved_programs.call("test.scaled", _scaled, ((3.0, 2.0),), *_args())
        saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), *_args(n=4))
        with jax.enable_x64(True):
            y = saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), *_args(dtype=np.float64))
    assert y["y"].dtype == np.float64
    assert len(_programs(tmp_path)) == 4


def test_a_damaged_program_is_compiled_again_and_replaced(tmp_path):
    x, pair = _args()
    expected = _scaled((3.0, 1.0), x, pair)["y"]
    with saved_programs.saving_in(str(tmp_path)):
        saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), x, pair)
        (name,) = _programs(tmp_path)
        path = tmp_path / name
        data = path.read_bytes()
        for damaged in (data[: len(data) // 2], data[:-1] + bytes([data[-1] ^ 1]), b"junk"):
            path.write_bytes(damaged)
            saved_programs.forget_loaded()
            y = saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), x, pair)["y"]
            np.testing.assert_array_equal(y, expected)
            assert path.read_bytes() != damaged
        assert _programs(tmp_path) == [name]


def test_tracers_and_no_folder_take_the_jitted_path(tmp_path):
    x, pair = _args()
    call = functools.partial(saved_programs.call, "test.scaled", _scaled, ((3.0, 1.0),))
    saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), x, pair)  # no folder
    with saved_programs.saving_in(str(tmp_path)):
        jax.jit(call)(x, pair)
        grad = jax.grad(lambda v: call(v, pair)["y"].sum())(x)
        batched = jax.vmap(lambda v: call(v, pair)["y"])(x[:, None])
    assert _programs(tmp_path) == []
    np.testing.assert_allclose(grad, 3.0 * np.cos(np.asarray(x)), rtol=1e-6)
    assert batched.shape == (3, 1)


def test_only_the_most_recently_used_programs_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(saved_programs, "MAX_PROGRAMS", 2)
    with saved_programs.saving_in(str(tmp_path)):
        for n in (1, 2, 3):
            saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), *_args(n=n))
            os.utime(tmp_path / _newest(tmp_path), (n, n))  # an order that mtime can tell apart
    assert len(_programs(tmp_path)) == 2


def _newest(folder):
    return max(_programs(folder), key=lambda name: os.stat(os.path.join(folder, name)).st_mtime)


def test_a_loaded_program_that_fails_to_run_is_removed_and_the_call_answers(tmp_path):
    with saved_programs.saving_in(str(tmp_path)):
        saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), *_args(n=3))
        (three,) = _programs(tmp_path)
        saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), *_args(n=4))
        (four,) = set(_programs(tmp_path)) - {three}
        # The program for four points under the name and key of the one for three: it
        # loads, and fails when called with three.
        header, _, _ = (tmp_path / three).read_bytes().split(b"\n", 2)
        _, checksum, body = (tmp_path / four).read_bytes().split(b"\n", 2)
        (tmp_path / three).write_bytes(header + b"\n" + checksum + b"\n" + body)
        saved_programs.forget_loaded()
        x, pair = _args(n=3)
        y = saved_programs.call("test.scaled", _scaled, ((3.0, 1.0),), x, pair)["y"]
    np.testing.assert_array_equal(y, _scaled((3.0, 1.0), x, pair)["y"])
    assert _programs(tmp_path) == [four]


@functools.partial(jax.jit, static_argnames=("power",))
def _powered(x, *, power):
    return x**power


def test_static_arguments_by_name_are_part_of_the_key(tmp_path):
    x = jnp.linspace(1.0, 2.0, 4)
    with saved_programs.saving_in(str(tmp_path)):
        squared = saved_programs.call("test.powered", _powered, (), x, static_kwargs=dict(power=2))
        cubed = saved_programs.call("test.powered", _powered, (), x, static_kwargs=dict(power=3))
        assert len(_programs(tmp_path)) == 2
        saved_programs.forget_loaded()
        again = saved_programs.call("test.powered", _powered, (), x, static_kwargs=dict(power=3))
    np.testing.assert_allclose(squared, np.asarray(x) ** 2, rtol=1e-6)
    np.testing.assert_allclose(cubed, np.asarray(x) ** 3, rtol=1e-6)
    np.testing.assert_array_equal(again, cubed)
    # Without a folder: the jitted function itself, the named arguments passed on.
    np.testing.assert_array_equal(
        saved_programs.call("test.powered", _powered, (), x, static_kwargs=dict(power=3)), cubed)


_LAPACK_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from sdsl_jax.common import saved_programs

@jax.jit
def solve(a, b):
    # A Cholesky factorisation and triangular solves: LAPACK custom calls.
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(a), True), b)

a = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]], np.float32)
b = np.array([1.0, 2.0, 3.0], np.float32)
with saved_programs.saving_in(sys.argv[1]):
    x = saved_programs.call("test.cholesky", solve, (), a, b)
print(repr(np.asarray(x).tolist()))
"""


def test_a_program_calling_lapack_loads_and_runs_in_a_new_process(tmp_path):
    """JAX prepares its LAPACK kernels only when it lowers a linear algebra operation; a new
    process that loads such a program without lowering one must prepare them first (it
    crashed with a segmentation fault otherwise)."""
    import subprocess
    import sys
    run = lambda: subprocess.run([sys.executable, "-c", _LAPACK_SCRIPT, str(tmp_path)],
                                 capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
    first, second = run(), run()
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(_programs(tmp_path)) == 1
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout == first.stdout
    a = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
    np.testing.assert_allclose(eval(second.stdout), np.linalg.solve(a, [1.0, 2.0, 3.0]), rtol=1e-5)
