import jax
import numpy as np
import pytest


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
