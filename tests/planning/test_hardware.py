"""The roofline step-time model against a numpy transcription, and its limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.planning import hardware as hw


def _as_dict(hardware):
    """The fields under their file names, as conftest's numpy_step_time takes them."""
    return hw.hardware_record(hardware)


def _grid():
    params, tokens, bpp, batch, context = np.meshgrid(
        [1.25e8, 1.3e9, 7e9, 7e10, 4.05e11], [1.0, 5.0, 17.0], [0.5, 2.0], [1.0, 8.0, 64.0],
        [0.0, 2048.0], indexing="ij")
    return [a.ravel() for a in (params, tokens, bpp, batch, context)]


@pytest.mark.parametrize("name", sorted(hw.PRESETS))
def test_step_time_matches_numpy_formula(x64, name, numpy_step_time):
    acc = hw.hardware_preset(name)
    params, tokens, bpp, batch, context = _grid()
    ours = hw.step_time(acc, params, tokens, bytes_per_param=bpp,
                        workload=hw.Workload(batch_size=batch, context=context))
    np.testing.assert_allclose(ours, numpy_step_time(_as_dict(acc), params, tokens, bpp, batch, context),
                               rtol=1e-12)


def test_limits_are_exactly_the_other_term(x64):
    acc = hw.hardware_preset("H100")
    params, tokens, bpp, batch, context = _grid()
    workload = hw.Workload(batch_size=batch, context=context)
    compute_only = hw.step_time(acc.replace(bandwidth=jnp.inf), params, tokens,
                                bytes_per_param=bpp, workload=workload)
    memory_only = hw.step_time(acc.replace(peak_flops=jnp.inf), params, tokens,
                               bytes_per_param=bpp, workload=workload)
    flops = hw.step_flops(params, tokens, workload)
    moved = hw.step_bytes(params, bpp, workload)
    np.testing.assert_allclose(compute_only, flops / (989.4e12 * 0.5) + 3e-4, rtol=1e-14)
    np.testing.assert_allclose(memory_only, moved / (3.35e12 * 0.8) + 3e-4, rtol=1e-14)
    # Without attention or a cache, a weight step is exactly 2 P FLOPs per position.
    np.testing.assert_allclose(hw.step_flops(7e9, 3.0, hw.Workload(batch_size=4.0, context=0.0)), 2 * 7e9 * 12)


def test_model_shape_matches_published_shapes(x64):
    layers, width = hw.model_shape(12 * 32 * 4096.0**2)  # LLaMA-2 7B without embeddings
    assert float(layers) == pytest.approx(32, rel=1e-12) and float(width) == pytest.approx(4096, rel=1e-12)
    params = jnp.geomspace(1e6, 1e13, 50)
    layers, width = hw.model_shape(params, 100.0)
    np.testing.assert_allclose(12 * layers * width**2, params, rtol=1e-12)
    np.testing.assert_allclose(width / layers, 100.0, rtol=1e-12)


def test_smooth_max_bounds_and_gradients(dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(10 ** rng.uniform(-6, 0, 500), dtype)
    y = jnp.asarray(10 ** rng.uniform(-6, 0, 500), dtype)
    eps = 4 * np.finfo(dtype).eps
    for p in (1.0, 2.0, 8.0, 64.0):
        for f in (hw.smooth_max, jax.jit(hw.smooth_max)):
            value = np.asarray(f(x, y, jnp.asarray(p, dtype)))
            # Bounds checked in numpy (dtype's arithmetic), not by more eager jnp programs.
            hard = np.maximum(np.asarray(x), np.asarray(y))
            assert np.all(value >= hard * dtype(1 - eps))
            assert np.all(value <= hard * dtype(2 ** (1 / p)) * dtype(1 + eps))
            np.testing.assert_allclose(value, f(y, x, jnp.asarray(p, dtype)), rtol=eps)
    # Exactly the other term where one is 0, with finite gradients in every argument.
    zero = jnp.zeros((), dtype)
    assert float(hw.smooth_max(x[0], zero, 8.0)) == float(x[0])
    grads = jax.grad(hw.smooth_max, argnums=(0, 1, 2))(x[0], zero, jnp.asarray(8.0, dtype))
    assert all(np.isfinite(float(g)) for g in grads)
    assert float(grads[0]) == 1.0 and float(grads[2]) == 0.0


def test_gradients_match_finite_differences(x64):
    acc = hw.hardware_preset("A100")
    workload = hw.Workload(batch_size=8.0, context=1024.0)

    def seconds(params, tokens, efficiency, batch_size):
        return hw.step_time(acc.replace(bandwidth_efficiency=efficiency), params, tokens,
                            workload=workload.replace(batch_size=batch_size))

    args = (3e9, 40.0, 0.8, 8.0)  # near the ridge, where both terms matter
    grads = jax.grad(seconds, argnums=(0, 1, 2, 3))(*args)
    for i, g in enumerate(grads):
        h = 1e-5 * args[i]
        up, down = list(args), list(args)
        up[i] += h
        down[i] -= h
        fd = (float(seconds(*up)) - float(seconds(*down))) / (2 * h)
        assert float(g) == pytest.approx(fd, rel=1e-7), i


def test_presets_and_names():
    assert hw.hardware_preset("h100") is hw.PRESETS["H100-SXM"]
    assert hw.hardware_preset("A100") is hw.PRESETS["A100-80GB"]
    assert hw.hardware_preset("tpu v5e") is hw.PRESETS["TPU-v5e"]
    # Ridge points (FLOPs per byte at peak) in the published range: ~100-300 for accelerators.
    for name in ("A100-80GB", "H100-SXM", "H200", "TPU-v5e"):
        acc = hw.PRESETS[name]
        assert 100 < acc.peak_flops / acc.bandwidth < 310, name
    with pytest.raises(ValueError, match="B200"):
        hw.hardware_preset("B200")
    assert hw.bytes_per_param("FP8") == 1.0 and hw.bytes_per_param(0.5) == 0.5
    with pytest.raises(ValueError, match="fp7"):
        hw.bytes_per_param("fp7")


@pytest.mark.parametrize("change,match", [
    (dict(peak_flops=0.0), "peak_flops"),
    (dict(bandwidth=-1.0), "bandwidth"),
    (dict(compute_efficiency=0.0), "compute_efficiency"),
    (dict(overhead_seconds=-1e-3), "hardware.overhead_seconds"),
    (dict(sharpness=0.5), "sharpness"),
])
def test_bad_hardware_is_named(change, match):
    with pytest.raises(ValueError, match=match):
        hw.step_time(hw.hardware_preset("H100").replace(**change), 1e9)


def test_bad_workload_and_inputs_are_named():
    acc = hw.hardware_preset("H100")
    with pytest.raises(ValueError, match="workload.batch_size"):
        hw.step_time(acc, 1e9, workload=hw.Workload(batch_size=0.0))
    with pytest.raises(ValueError, match="num_params"):
        hw.step_time(acc, -1e9)
    with pytest.raises(ValueError, match="tokens_per_step"):
        hw.step_time(acc, 1e9, 0.0)


def test_hardware_record_keeps_the_file_names():
    # What `sdsl plan --hardware --json` prints and the reproduce run writes:
    # the overhead, in seconds, under "overhead", the fields in their order.
    record = hw.hardware_record(hw.hardware_preset("H100"))
    assert list(record) == ["peak_flops", "bandwidth", "compute_efficiency", "bandwidth_efficiency",
                            "overhead", "sharpness"]
    assert record["overhead"] == 3e-4 and all(type(v) is float for v in record.values())
