"""`sdsl train --dtype`: mixed-precision training from the command line, what its card and
checkpoint hold, and a resume at another precision refused."""

import contextlib
import io
import json

import jax
import numpy as np
import pytest

from sdsl_jax import models
from sdsl_jax.cli import main
from sdsl_jax.models import store

STEPS = 4


def _argv(corpus_dir, out, dtype):
    return ["train", "--sizes", "10k", "--steps", STEPS, "--batch-size", 2, "--seq-len", 16,
            "--eval-tokens", 64, "--checkpoint-every", STEPS, "--progress", "never",
            "--no-stdlib", "--corpus", corpus_dir, "--out", out, "--dtype", dtype]


@pytest.fixture(scope="module")
def bf16_run(corpus_dir, tmp_path_factory):
    """A few bfloat16 steps of the 10k model: (model directory, the printed card)."""
    out = tmp_path_factory.mktemp("train-bf16") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([str(a) for a in _argv(corpus_dir, out, "bfloat16") + ["--json"]])
    assert code == 0
    return out / "10k", json.loads(printed.getvalue())


@pytest.mark.slow
def test_bfloat16_training_keeps_float32_weights_and_says_so(bf16_run):
    model_dir, card = bf16_run
    assert card["precision"] == "bf16" and card["settings"]["dtype"] == "bfloat16"
    assert np.isfinite(card["validation_loss"]) and card["tokens"] == STEPS * 2 * 16
    # The card on disk and the checkpoint as saved (restored without a target, so in
    # the dtype it was written in): float32 master weights.
    import orbax.checkpoint as ocp
    assert store.load_card(str(model_dir))["precision"] == "bf16"
    manager = store.checkpoint_manager(str(model_dir), writable=False)
    saved = manager.restore(STEPS, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(saved["params"])} == {"float32"}
    # The steps moved the weights off their initial values.
    initial = models.init_params(models.SIZES["10k"], seed=0)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(initial)))
    # Loading casts them to the precision asked for.
    decoder = models.load_decoder(str(model_dir), dtype="bfloat16")
    assert decoder.dtype == "bfloat16"
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(decoder.params)} == {"bfloat16"}
    assert models.load_decoder(str(model_dir)).dtype == "float32"


@pytest.mark.slow
def test_a_rerun_at_another_precision_is_refused(bf16_run, corpus_dir, run_cli):
    model_dir, _ = bf16_run
    before = (model_dir / "model.json").read_bytes()
    code, _, err = run_cli(_argv(corpus_dir, model_dir.parent, "float32"))
    assert code == 2 and "different dtype: 'bfloat16' there, 'float32' now" in err, err
    assert err.strip().splitlines()[-1].startswith("error: sdsl train:")
    assert "Traceback" not in err and (model_dir / "model.json").read_bytes() == before


def test_a_bad_dtype_is_one_line(run_cli, tmp_path):
    code, _, err = run_cli(["train", "--sizes", "10k", "--steps", "1", "--out", tmp_path / "o",
                            "--dtype", "fp8"])
    assert code == 2 and "--dtype: invalid choice: 'fp8'" in err and err.count("\n") == 1
