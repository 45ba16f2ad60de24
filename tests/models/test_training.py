"""Training: the schedule, loss going down, checkpoints, kill -9 and resume, and `sdsl train` errors."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdsl_jax.models import corpus as corpus_lib, training
from sdsl_jax import models
from sdsl_jax.models import store as ckpt

# The uninterrupted run is the session's trained draft (conftest's trained_pair), trained
# with these; the CLI below is given the same flags (pair_training), so the two share
# one compiled step (and must agree to the last bit).
STEPS = 400
CHECKPOINT_EVERY = 50


@pytest.fixture(scope="module")
def cli_flags(pair_training):
    """`sdsl train` flags of the trained pair's run of its 10k draft."""
    settings, flags = pair_training
    assert (settings.steps, settings.checkpoint_every) == (STEPS, CHECKPOINT_EVERY)
    return ["--sizes", "10k", *flags]


def _cli_args(cli_flags, corpus_dir, out):
    return ["train", *cli_flags, "--no-stdlib", "--corpus", str(corpus_dir), "--out", str(out)]


@pytest.fixture(scope="module")
def killed_run(corpus_dir, cli_flags, tmp_path_factory):
    """`sdsl train` in a subprocess, killed with SIGKILL as soon as its first checkpoint lands.

    Started before the in-process reference run so the two compile side by
    side; a watcher thread does the kill. Yields (args, out dir, watcher
    thread, process, watcher result, log path) at once: join the watcher
    before looking at the result.
    """
    out = tmp_path_factory.mktemp("killed") / "run"
    args = _cli_args(cli_flags, corpus_dir, out)
    log_path = out.parent / "killed.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "sdsl_jax.cli", *args], stdout=log, stderr=log,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    first = out / "10k" / "checkpoints" / str(CHECKPOINT_EVERY)
    result = {}

    def watch():
        deadline = time.monotonic() + 300
        # orbax renames a finished checkpoint into place: the directory means it is complete.
        while not first.is_dir():
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        result["running_at_kill"] = proc.poll() is None
        if result["running_at_kill"]:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield args, out, watcher, proc, result, log_path
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def reference(trained_pair):
    """An uninterrupted run of 10k, the session's trained draft: (model directory, card)."""
    return trained_pair.draft, trained_pair.cards["10k"]


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    settings = training.TrainSettings(steps=1000, warmup_steps=100, learning_rate=2e-3,
                                      end_lr_fraction=0.1)
    rates = np.asarray(jax.jit(jax.vmap(training.learning_rate_schedule(settings)))(
        jnp.arange(1001)))
    t = np.arange(1001)
    cosine = 2e-4 + (2e-3 - 2e-4) * 0.5 * (1 + np.cos(np.pi * (t - 100) / 900))
    expected = np.where(t < 100, 2e-3 * t / 100, cosine)
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-9)
    resolved = training.TrainSettings(steps=50).resolved("10k")
    assert resolved.learning_rate == models.LEARNING_RATES["10k"] and resolved.warmup_steps == 5


def test_packing_round_trips_and_decays_only_kernels():
    config = models.SIZES["10k"]
    params = models.init_params(config, seed=1)
    packing = training.ParamPacking.of(params)
    packed = packing.pack(params)
    d, f, layers = config.d_model, config.d_ff, config.num_layers
    assert packed["decay"].size == layers * (4 * d * d + 2 * d * f)
    assert packed["decay"].size + packed["other"].size == models.param_counts(config)["total"]
    unpacked = packing.unpack(packed)
    assert jax.tree.structure(unpacked) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(unpacked), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_params_is_seeded_and_scaled():
    config = models.SIZES["100k"]
    a, b, c = (models.init_params(config, seed) for seed in (0, 0, 1))
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a["embed"]["embedding"]), np.asarray(c["embed"]["embedding"]))
    # N(0, 1/d) embedding; N(0, 1/fan_in) input kernels: sample sd within 5%.
    assert abs(np.std(np.asarray(a["embed"]["embedding"])) * math.sqrt(48) - 1) < 0.05
    assert abs(np.std(np.asarray(a["blocks"][0]["mlp"]["up"]["kernel"])) * math.sqrt(48) - 1) < 0.05


@pytest.mark.slow
def test_training_reduces_validation_loss_and_writes_a_card(reference, corpus):
    model_dir, card = reference
    config = models.SIZES["10k"]
    windows = corpus_lib.evaluation_windows(corpus.validation, 33, 1024 // 32)
    initial = training.validation_loss(config, models.init_params(config, 0), windows, 4)
    assert abs(initial - math.log(257)) < 0.6      # an untrained model is near uniform
    assert card["validation_loss"] < initial - 1.0
    assert card["perplexity"] == pytest.approx(math.exp(card["validation_loss"]), rel=1e-12)
    assert card["params"] == models.param_counts(config)["total"] == 10336
    assert card["tokens"] == STEPS * 4 * 32
    assert card["resumed_from"] == 0
    on_disk = ckpt.load_card(str(model_dir))
    assert on_disk["validation_loss"] == card["validation_loss"]
    assert on_disk["corpus"]["fingerprint"] == corpus.fingerprint
    steps = sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [STEPS - CHECKPOINT_EVERY, STEPS]   # every 50 steps, the last two kept
    decoder = ckpt.load_decoder(str(model_dir))
    assert decoder.num_params == 10336 and decoder.name == "10k"
    # The decoder scores held-out text as the card says it does.
    again = training.validation_loss(config, decoder.params, windows, 4)
    assert again == pytest.approx(card["validation_loss"], rel=1e-6)


@pytest.mark.slow
def test_kill_9_midway_then_rerun_resumes_from_the_checkpoint_and_matches(
        killed_run, reference, run_cli):
    args, out, watcher, proc, result, log_path = killed_run
    watcher.join(timeout=300)
    assert not watcher.is_alive(), "the killed run never wrote its first checkpoint"
    assert result["running_at_kill"], "the run ended before it was killed:\n" + log_path.read_text()
    assert proc.returncode == -signal.SIGKILL
    checkpoints = out / "10k" / "checkpoints"
    done = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert CHECKPOINT_EVERY <= done[-1] < STEPS
    assert not (out / "10k" / "model.json").exists()
    with pytest.raises(ckpt.CheckpointError, match="has not finished"):
        ckpt.load_card(str(out / "10k"))
    # What a kill during a save leaves: orbax's temporary directory, never a checkpoint.
    torn = checkpoints / f"{done[-1] + CHECKPOINT_EVERY}.orbax-checkpoint-tmp-1700000000"
    (torn / "params").mkdir(parents=True)
    (torn / "params" / "junk").write_bytes(b"\0" * 100)

    code, _, err = run_cli(args)      # the same command again
    assert code == 0
    assert f"10k: resuming from the checkpoint at step {done[-1]} of {STEPS}" in err
    assert not torn.exists()
    resumed = ckpt.load_decoder(str(out / "10k"))
    uninterrupted = ckpt.load_decoder(str(reference[0]))
    # Batches are a function of (seed, step) and the state is restored exactly,
    # so the resumed run is the uninterrupted one, bit for bit.
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    card = json.loads((out / "10k" / "model.json").read_text())
    # Same weights; the validation loss is a float32 sum whose order can change
    # with the compilation that scores it, so it is compared to rounding.
    np.testing.assert_allclose(card["validation_loss"], reference[1]["validation_loss"],
                               rtol=1e-6)
    assert card["tokens"] == reference[1]["tokens"]


@pytest.mark.slow
def test_finished_run_is_skipped_and_changed_settings_are_refused(reference, corpus, trained_pair):
    model_dir, card = reference
    again = training.train_model("10k", corpus, trained_pair.settings, str(model_dir),
                                 progress=False)
    assert again["resumed_from"] is None
    assert again["validation_loss"] == card["validation_loss"]
    other_seed = training.TrainSettings(steps=STEPS, batch_size=4, seq_len=32, seed=5,
                                        checkpoint_every=CHECKPOINT_EVERY, eval_tokens=1024)
    with pytest.raises(training.TrainingError, match="different seed"):
        training.train_model("10k", corpus, other_seed, str(model_dir), progress=False)


def test_load_decoder_names_what_is_missing(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not a model directory"):
        ckpt.load_decoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model": models.SIZES["10k"].to_json()}))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint yet"):
        ckpt.load_decoder(str(tmp_path))


def _one_line_error(run_cli, argv, alone=True):
    """The error line of a failed `sdsl train`; ``alone``: nothing else was printed."""
    code, _, err = run_cli(argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert not any("Traceback" in line for line in lines)
    assert lines[-1].startswith("error: sdsl train:")
    assert sum(line.startswith("error") for line in lines) == 1
    if alone:
        assert len(lines) == 1, lines
    return lines[-1]


def test_cli_errors_are_one_line_with_exit_2(run_cli, tmp_path):
    base = ["train", "--steps", "5", "--out", str(tmp_path / "o")]
    assert "unknown family 'huge'" in _one_line_error(run_cli, base + ["--family", "huge"])
    assert "tiny, small" in _one_line_error(run_cli, base + ["--family", "nope"])
    assert "unknown size '7k'" in _one_line_error(run_cli, base + ["--sizes", "7k"])
    assert "'1m' is not in family 'tiny'" in _one_line_error(
        run_cli, base + ["--family", "tiny", "--sizes", "1m"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert "--out: cannot create" in _one_line_error(
        run_cli, ["train", "--family", "tiny", "--steps", "5", "--out", str(blocker / "sub")])
    assert "--steps: must be at least 1" in _one_line_error(
        run_cli, ["train", "--family", "tiny", "--steps", "0", "--out", str(tmp_path / "o")])
    assert "--no-stdlib" in _one_line_error(run_cli, base + ["--family", "tiny", "--no-stdlib"])
    assert "does not exist" in _one_line_error(
        run_cli, base + ["--family", "tiny", "--corpus", str(tmp_path / "missing")])
    assert "--steps" in _one_line_error(run_cli, ["train", "--family", "tiny", "--out", "x"])


@pytest.mark.slow
def test_cli_refuses_other_settings_on_a_finished_run(run_cli, corpus_dir, cli_flags, reference):
    # Rerunning into a finished directory with other settings: refused, not overwritten.
    out = reference[0].parent
    # (after the corpus summary line: the check needs the corpus's fingerprint)
    err = _one_line_error(run_cli, ["train", *cli_flags, "--seed", "9", "--no-stdlib", "--corpus",
                                    str(corpus_dir), "--out", str(out)], alone=False)
    assert "different seed" in err
