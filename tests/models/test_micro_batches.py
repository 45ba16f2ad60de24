"""A training step that takes its batch a few windows at a time trains the same weights."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax import models
from sdsl_jax.models import training


@pytest.mark.parametrize("batch_size, seq_len, backend, expected", [
    (32, 256, "cpu", 1), (32, 128, "cpu", 2), (12, 64, "cpu", 4), (4, 32, "cpu", 4),
    (1, 1024, "cpu", 1), (32, 256, "gpu", 32)])
def test_micro_batch_size_fits_the_cpu_and_divides_the_batch(batch_size, seq_len, backend,
                                                              expected):
    settings = training.TrainSettings(steps=1, batch_size=batch_size, seq_len=seq_len)
    assert training.micro_batch_size(settings, backend) == expected
    given = dataclasses.replace(settings, micro_batch_size=1)
    assert training.micro_batch_size(given, backend) == 1


@pytest.mark.parametrize("micro", [0, 3, 2.0])
def test_a_micro_batch_must_divide_the_batch(micro):
    with pytest.raises(training.TrainingError, match="micro_batch_size"):
        training.TrainSettings(steps=1, batch_size=4, micro_batch_size=micro)


def test_one_window_at_a_time_matches_the_whole_batch(pair_training):
    # The trained pair's settings (its 10k step is compiled once per session) against
    # the same step one window at a time, from the same weights, past the warmup.
    settings = pair_training[0].resolved("10k")
    assert training.micro_batch_size(settings) == settings.batch_size
    config = models.SIZES["10k"]
    packing = training.ParamPacking.of(models.abstract_params(config))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, 4096), jnp.uint16)
    key, step_index = jax.random.PRNGKey(3), jnp.int32(settings.warmup_steps + 1)
    results = []
    for micro in (None, 1):
        run = dataclasses.replace(settings, micro_batch_size=micro)
        packed = packing.pack(models.init_params(config, 0))
        opt_state = training.make_optimizer(run).init(packed)
        # Two steps, so the second sees Adam moments the first accumulated.
        for index in (step_index, step_index + 1):
            packed, opt_state, loss = training.make_train_step(config, run)(
                packed, opt_state, tokens, key, index)
        results.append((packed, loss))
    (whole, whole_loss), (windows, windows_loss) = results
    np.testing.assert_allclose(float(windows_loss), float(whole_loss), rtol=1e-6)
    for group in ("decay", "other"):
        np.testing.assert_allclose(np.asarray(windows[group]), np.asarray(whole[group]),
                                   rtol=0, atol=1e-6)
