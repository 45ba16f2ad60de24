import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sdsl_jax as sd


@pytest.fixture
def x64():
    """Run a test with float64 enabled, without leaking it to other tests."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Both precisions: float64 inside jax.enable_x64, float32 by default."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield np.float64
    else:
        yield np.float32


# Shared references and compilations, used by several test modules.

def numpy_step_time(acc, params, tokens, bytes_per_param, batch, context,
                    aspect=128.0, kv_bytes=2.0, kv_fraction=1.0):
    """The module doc's formulas, written out again in numpy."""
    layers = (params / (12 * aspect**2)) ** (1 / 3)
    width = aspect * layers
    flops = batch * tokens * (2 * params + 4 * layers * width * context)
    moved = params * bytes_per_param + batch * context * 2 * layers * width * kv_fraction * kv_bytes
    x = flops / (acc["peak_flops"] * acc["compute_efficiency"])
    y = moved / (acc["bandwidth"] * acc["bandwidth_efficiency"])
    p = acc["sharpness"]
    return (x**p + y**p) ** (1 / p) + acc["overhead"]


def _plan_outputs(m, d, dp, pre, acc):
    plan = sd.optimal_draft_size(m, d, dp, pretraining_law=pre, acceptance_law=acc)
    return jnp.stack([plan.draft_params, plan.tokens_per_flop])


def flop_jacobian(m, d, dp, pre=sd.BESIROGLU_2024, acc=sd.SDSL_2026):
    """d(N*, T*) / d(M, D, D', pretraining law, acceptance law), reverse mode, eagerly.

    Scalar float64 inputs: one compilation serves every gradient test here and
    in test_latency_planner (a jax.grad per argument would compile once each).
    """
    return jax.jacrev(_plan_outputs, argnums=(0, 1, 2, 3, 4))(m, d, dp, pre, acc)


@pytest.fixture(name="numpy_step_time", scope="session")
def numpy_step_time_fixture():
    """The roofline step time written out in numpy (planning.hardware's module doc)."""
    return numpy_step_time


@pytest.fixture(name="flop_jacobian", scope="session")
def flop_jacobian_fixture():
    """d(N*, T*) / d(M, D, D', laws): one compiled reverse-mode Jacobian for every module."""
    return flop_jacobian
