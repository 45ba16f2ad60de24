"""Train a size or a family of sizes on the corpus, resumably and reproducibly.

The recipe: next-byte cross-entropy; AdamW (b2 = 0.95, weight decay on
matrices only) under a linear warmup then cosine decay to a tenth of the
peak; gradients clipped to global norm 1. One jit-compiled step draws its own
batch on the device from ``fold_in(data_key, step)``, so the data a step sees
is a function of the seed and the step alone: the run has no data position
or RNG state beyond the step number, and a run resumed from a checkpoint
(params, optimizer state, step) repeats exactly what the uninterrupted run
would have done.

Every size of a family sees the same batches in the same order, so the
family differs in size only, as a scaling-law family should.

Precision (``TrainSettings.dtype``) is mixed precision as large models are
trained: the weights and the optimizer state stay float32 (the master
copy), each step casts the weights to the compute dtype (bfloat16 or
float16) for the forward and backward passes, and the loss, its softmax and
the gradients reaching the master weights are float32. Checkpoints hold the
float32 weights whatever the precision, and the card records the precision
the model was trained at (``precision``: "fp32", "bf16" or "fp16"); its
validation loss is that of the float32 weights it describes.
No loss scaling is applied: bfloat16 has float32's exponent range; float16
runs of these small models have not needed one either, and a step whose
gradients overflow shows up as a NaN loss on the progress bar.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdsl_jax.models import corpus as corpus_lib
from sdsl_jax.models import store as ckpt
from sdsl_jax.models.config import LEARNING_RATES, ModelConfig, model_config, param_counts
from sdsl_jax.models.functional import (abstract_params, apply, cast_params, count_params,
                                        init_params)

# Settings that decide the trained weights; a resumed run must repeat them.
_IDENTITY_KEYS = ("steps", "batch_size", "seq_len", "seed", "learning_rate", "warmup_steps",
                  "end_lr_fraction", "weight_decay", "clip_norm", "dtype")
# What a run written before a setting existed trained with.
_IDENTITY_DEFAULTS = {"dtype": "float32"}
# The compute dtypes a run may use, and the short names records give them.
PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class TrainingError(ValueError):
    """Settings that cannot train, or an output directory from a different run."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How to train.

    Attributes:
      steps: optimizer steps.
      batch_size, seq_len: a step sees batch_size windows of seq_len + 1 tokens
        (seq_len predicted tokens each).
      seed: fixes the initial weights and every batch.
      learning_rate: peak AdamW rate; None takes the size's default (config.LEARNING_RATES).
      warmup_steps: linear warmup; None takes min(steps // 10, 200).
      end_lr_fraction: the cosine decays to this fraction of the peak.
      weight_decay: decoupled weight decay on weight matrices.
      clip_norm: global gradient norm clip.
      checkpoint_every: save every this many steps (and at the last step).
      eval_tokens: validation tokens scored at the end (rounded to whole windows).
      log_every: steps between loss readouts on the progress bar (each one syncs the host).
      dtype: the compute dtype of the forward and backward passes: "float32",
        "bfloat16" or "float16" (mixed precision; see the module docstring).
      micro_batch_size: windows per forward and backward pass; a step sums the
        gradients of batch_size / micro_batch_size passes before its one update,
        so the weights are those of the whole batch up to float rounding. Must
        divide batch_size. None: :func:`micro_batch_size` picks for the backend.
    """

    steps: int
    batch_size: int = 32
    seq_len: int = 256
    seed: int = 0
    learning_rate: float | None = None
    warmup_steps: int | None = None
    end_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    checkpoint_every: int = 500
    eval_tokens: int = 131072
    log_every: int = 10
    dtype: str = "float32"
    micro_batch_size: int | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "checkpoint_every", "eval_tokens",
                     "log_every"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise TrainingError(f"{name} must be a positive integer, got {value!r}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.steps:
            raise TrainingError(f"warmup_steps must lie in [0, steps), got {self.warmup_steps} "
                                f"with steps {self.steps}")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate)
                                                   and self.learning_rate > 0):
            raise TrainingError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.end_lr_fraction <= 1:
            raise TrainingError(f"end_lr_fraction must lie in [0, 1], got {self.end_lr_fraction}")
        if not self.weight_decay >= 0 or not self.clip_norm > 0:
            raise TrainingError("weight_decay must be >= 0 and clip_norm > 0")
        if self.micro_batch_size is not None and (
                not isinstance(self.micro_batch_size, (int, np.integer))
                or self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size):
            raise TrainingError(f"micro_batch_size must be a positive divisor of batch_size "
                                f"{self.batch_size}, got {self.micro_batch_size!r}")
        if self.dtype not in PRECISIONS:
            raise TrainingError(f"dtype must be one of {', '.join(PRECISIONS)}, got "
                                f"{self.dtype!r}")

    def resolved(self, size: str) -> "TrainSettings":
        """These settings with the size's learning rate and the warmup filled in."""
        lr = self.learning_rate if self.learning_rate is not None else LEARNING_RATES.get(size, 1e-3)
        warmup = self.warmup_steps if self.warmup_steps is not None else min(self.steps // 10, 200)
        return dataclasses.replace(self, learning_rate=lr, warmup_steps=warmup)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


# Tokens per forward and backward pass on a CPU. There a pass over many windows at
# once was slower per token than one over a few, we take it because its
# activations (the attention scores above all, B H T^2 floats a layer) outgrow
# the caches. At sdsl train's 32 x 256 on two busy cores, a step of the 1m
# and 10m models took 1.35-1.5x and 1.6x as long with its 32 windows in one pass
# as one window at a time (benchmarks/bench_training.py --against-whole-batch).
CPU_MICRO_BATCH_TOKENS = 256


def micro_batch_size(settings: TrainSettings, backend: str | None = None) -> int:
    """Windows per forward and backward pass: ``settings.micro_batch_size`` if given.

    Otherwise, on a CPU, the largest divisor of the batch size whose windows hold
    at most :data:`CPU_MICRO_BATCH_TOKENS` tokens (at least one window); on an
    accelerator, which wants large matmuls, the whole batch.
    """
    if settings.micro_batch_size is not None:
        return settings.micro_batch_size
    if (backend or jax.default_backend()) != "cpu":
        return settings.batch_size
    most = max(1, CPU_MICRO_BATCH_TOKENS // settings.seq_len)
    return max(n for n in range(1, min(most, settings.batch_size) + 1)
               if settings.batch_size % n == 0)


def learning_rate_schedule(settings: TrainSettings) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to end_lr_fraction of it."""
    peak = settings.learning_rate
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=settings.warmup_steps,
        decay_steps=max(settings.steps, settings.warmup_steps + 1),
        end_value=peak * settings.end_lr_fraction)


@dataclasses.dataclass(frozen=True)
class ParamPacking:
    """Packs a params tree into two flat vectors: ``decay`` (linear kernels) and ``other``.

    The optimizer works on the two vectors instead of the tree. That changes
    nothing numerically (AdamW is elementwise and the clip uses the global
    norm) but its compiled code no longer grows with the number of weight
    arrays: on a CPU it compiles about 7x faster. Weight decay applies to the
    kernels only, not to the embedding (it is also the output layer) nor to
    the norm scales.
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    decayed: tuple[bool, ...]

    @classmethod
    def of(cls, params) -> "ParamPacking":
        leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
        shapes = tuple(tuple(leaf.shape) for _, leaf in leaves_with_paths)
        decayed = tuple(getattr(path[-1], "key", None) == "kernel" for path, _ in leaves_with_paths)
        return cls(treedef, shapes, decayed)

    def pack(self, params) -> dict:
        leaves = jax.tree.leaves(params)
        return {group: jnp.concatenate([leaf.ravel() for leaf, d in zip(leaves, self.decayed)
                                        if d == (group == "decay")])
                for group in ("decay", "other")}

    def unpack(self, packed: dict):
        offsets = {"decay": 0, "other": 0}
        leaves = []
        for shape, d in zip(self.shapes, self.decayed):
            group = "decay" if d else "other"
            size = math.prod(shape)
            leaves.append(packed[group][offsets[group]:offsets[group] + size].reshape(shape))
            offsets[group] += size
        return self.treedef.unflatten(leaves)


def make_optimizer(settings: TrainSettings) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW under :func:`learning_rate_schedule`.

    Acts on :meth:`ParamPacking.pack` output; weight decay on the ``decay`` group only.
    """
    return optax.chain(
        optax.clip_by_global_norm(settings.clip_norm),
        optax.adamw(learning_rate_schedule(settings), b1=0.9, b2=0.95,
                    weight_decay=settings.weight_decay,
                    mask=lambda packed: {"decay": True, "other": False}))


def next_token_loss(config: ModelConfig, params, windows: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of ``windows[:, 1:]`` given the tokens before them.

    The model computes in ``config.dtype``: float32 ``params`` are cast to it
    here, so their gradients come back float32 (mixed precision); the loss
    is float32.
    """
    if config.dtype in PRECISIONS:
        params = cast_params(params, config.dtype)
    logits, _ = apply(config, params, windows[:, :-1])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             windows[:, 1:])
    return losses.mean()


@functools.lru_cache(maxsize=16)
def make_train_step(config: ModelConfig, settings: TrainSettings):
    """``step(packed, opt_state, tokens, data_key, step) -> (packed, opt_state, loss)``, jitted.

    ``packed`` is the params packed by :class:`ParamPacking`; the batch is
    drawn inside from ``fold_in(data_key, step)``; packed params and optimizer
    state are donated. The batch goes through the model in :func:`micro_batch_size`
    windows at a time: the loss and gradients are the means over these passes.
    Cached, so runs with the same config and settings in one process share one
    compilation.
    """
    optimizer = make_optimizer(settings)
    packing = ParamPacking.of(abstract_params(config))
    # The master weights are config's (float32); the passes run in the settings' dtype.
    compute = dataclasses.replace(config, dtype=settings.dtype)
    micro = micro_batch_size(settings)
    passes = settings.batch_size // micro
    loss_and_grads = jax.value_and_grad(functools.partial(next_token_loss, compute))

    def step(packed, opt_state, tokens, data_key, step_index):
        windows = corpus_lib.sample_windows(tokens, jax.random.fold_in(data_key, step_index),
                                            settings.batch_size, settings.seq_len + 1)
        # Gradients as a tree, packed once per step rather than once per pass.
        params = packing.unpack(packed)
        if passes == 1:
            loss, grads = loss_and_grads(params, windows)
        else:
            def accumulate(total, chunk):
                return jax.tree.map(jnp.add, total, loss_and_grads(params, chunk)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
            total, _ = jax.lax.scan(accumulate, zeros, windows.reshape(passes, micro, -1))
            loss, grads = jax.tree.map(lambda x: x / passes, total)
        grads = packing.pack(grads)
        updates, opt_state = optimizer.update(grads, opt_state, packed)
        return optax.apply_updates(packed, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def _loss_sum(config, params, windows, weights):
    logits, _ = apply(config, params, windows[:, :-1])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             windows[:, 1:])
    return jnp.sum(losses * weights[:, None])


_loss_sum_jit = jax.jit(_loss_sum, static_argnums=0)


def validation_loss(config: ModelConfig, params, windows: np.ndarray, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats per token) over ``windows[n, W]``.

    Scored in chunks of ``batch_size`` windows (the last padded with zero
    weight), so one compilation serves any n.
    """
    windows = np.asarray(windows, np.int32)
    n = windows.shape[0]
    total = 0.0
    for begin in range(0, n, batch_size):
        chunk = windows[begin:begin + batch_size]
        weights = np.ones(batch_size, np.float32)
        if chunk.shape[0] < batch_size:
            weights[chunk.shape[0]:] = 0.0
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - chunk.shape[0], 0)])
        total += float(_loss_sum_jit(config, params, jnp.asarray(chunk), jnp.asarray(weights)))
    return total / (n * (windows.shape[1] - 1))


def _identity(record: dict) -> dict:
    settings = record["settings"]
    return {"model": record["model"], "corpus": record["corpus"]["fingerprint"],
            **{key: settings.get(key, _IDENTITY_DEFAULTS.get(key)) for key in _IDENTITY_KEYS}}


def _check_same_run(model_dir: str, record: dict) -> None:
    """Refuse to resume a directory that a different run (size, settings, corpus) wrote."""
    path = os.path.join(model_dir, ckpt.CONFIG_FILE)
    if not os.path.exists(path):
        return
    old, new = _identity(ckpt.read_json(path)), _identity(record)
    for key in new:
        if old.get(key) != new[key]:
            what = "corpus (its fingerprint)" if key == "corpus" else key
            raise TrainingError(f"{model_dir} holds a run with a different {what}: "
                                f"{old.get(key)!r} there, {new[key]!r} now; rerun with the same "
                                "settings to resume it, or choose another output directory")


def train_model(name: str, corpus: corpus_lib.Corpus, settings: TrainSettings, model_dir: str,
                *, family: str | None = None, config: ModelConfig | None = None,
                progress: bool | None = None, log=None, on_checkpoint=None) -> dict:
    """Train size ``name`` into ``model_dir``, resuming from its latest checkpoint.

    A directory whose model.json says the run finished is left alone. A run
    killed at any moment (kill -9 included) and rerun with the same arguments
    continues from its last checkpoint and ends with the same weights as an
    uninterrupted run.

    Args:
      name: a size name (config.SIZES) or, with ``config``, any label.
      corpus: the text (see sdsl_jax.models.corpus.load_corpus).
      settings: the training settings; learning rate and warmup default per size.
      model_dir: where config.json, checkpoints/ and model.json go.
      family: recorded in the card.
      config: an architecture not in SIZES.
      progress: show a tqdm bar (None: only on a terminal).
      log: a function of one string for status lines (default: stderr).
      on_checkpoint: called as ``on_checkpoint(step, params)`` after each
        checkpoint is saved (e.g. to score intermediate checkpoints, which
        are not all kept); not called for checkpoints of an earlier run.

    Returns:
      the card written to model.json, plus ``resumed_from`` (the step this
      call started from, 0 for a fresh run, None if it was already finished).
    """
    from tqdm import tqdm

    log = log or (lambda line: print(line, file=sys.stderr))
    config = config if config is not None else model_config(name)
    settings = settings.resolved(name)
    counts = param_counts(config)
    if config.dtype != "float32":
        raise TrainingError(f"{name}: the model config's dtype is {config.dtype!r}; the master "
                            "weights are float32: give the compute precision as "
                            "TrainSettings.dtype")
    record = {"name": name, "family": family, "model": config.to_json(),
              "settings": dataclasses.asdict(settings), "corpus": corpus.summary(),
              "params": counts["total"], "non_embedding_params": counts["non_embedding"],
              "precision": PRECISIONS[settings.dtype]}
    os.makedirs(model_dir, exist_ok=True)
    _check_same_run(model_dir, record)
    card_path = os.path.join(model_dir, ckpt.CARD_FILE)
    if os.path.exists(card_path):
        return dict(ckpt.read_json(card_path), resumed_from=None)
    ckpt.write_json_atomic(os.path.join(model_dir, ckpt.CONFIG_FILE), record)

    optimizer = make_optimizer(settings)
    target = abstract_params(config)
    packing = ParamPacking.of(target)
    manager = ckpt.checkpoint_manager(model_dir)
    start = manager.latest_step()
    if start is None:
        start = 0
        packed = packing.pack(init_params(config, settings.seed))
        opt_state = optimizer.init(packed)
    else:
        params, opt_state, _ = ckpt.restore_checkpoint(
            manager, start, target, jax.eval_shape(optimizer.init, jax.eval_shape(packing.pack, target)))
        packed = packing.pack(params)
        log(f"{name}: resuming from the checkpoint at step {start} of {settings.steps}")

    tokens = jnp.asarray(corpus.train)
    data_key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), 1)
    train_step = make_train_step(config, settings)
    last_loss = None
    recent = []  # device scalars since the last readout: reading them is the only sync
    timed_from = None
    disable = {True: False, False: True, None: None}[progress]  # None: on a terminal only
    with tqdm(total=settings.steps, initial=start, desc=name, unit="step", disable=disable,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for step in range(start, settings.steps):
            packed, opt_state, loss = train_step(packed, opt_state, tokens, data_key,
                                                 jnp.int32(step))
            done = step + 1
            recent.append(loss)
            if timed_from is None:  # leave compilation out of the throughput
                jax.block_until_ready(loss)
                timed_from = (time.perf_counter(), done)
            checkpoint_now = done % settings.checkpoint_every == 0 or done == settings.steps
            if done % settings.log_every == 0 or checkpoint_now:
                # The mean over the steps since the last readout: one batch is noisy.
                last_loss = sum(float(x) for x in recent) / len(recent)
                recent.clear()
                bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            if checkpoint_now:
                ckpt.save_checkpoint(manager, done, packing.unpack(packed), opt_state, {
                    "step": done, "tokens": done * settings.tokens_per_step,
                    "train_loss": last_loss, "seed": settings.seed,
                    "corpus": corpus.fingerprint})
                if on_checkpoint is not None:
                    on_checkpoint(done, packing.unpack(packed))
            bar.update(1)
    params = jax.block_until_ready(packing.unpack(packed))
    if count_params(params) != counts["total"]:
        raise AssertionError("parameter count disagrees with config.param_counts")
    tokens_per_second = None
    if timed_from is not None and settings.steps > timed_from[1]:
        elapsed = time.perf_counter() - timed_from[0]
        tokens_per_second = (settings.steps - timed_from[1]) * settings.tokens_per_step / elapsed
    if last_loss is None:  # resumed at the final checkpoint: read its loss back
        last_loss = ckpt.restore_checkpoint(manager, settings.steps, abstract_params(config))[2][
            "train_loss"]

    windows = corpus_lib.evaluation_windows(corpus.validation, settings.seq_len + 1,
                                            max(1, settings.eval_tokens // settings.seq_len))
    loss_nats = validation_loss(config, params, windows, micro_batch_size(settings))
    card = dict(record, steps=settings.steps, tokens=settings.steps * settings.tokens_per_step,
                train_loss=last_loss, validation_loss=loss_nats,
                perplexity=math.exp(loss_nats), bits_per_byte=loss_nats / math.log(2),
                validation_tokens=int(windows.shape[0] * settings.seq_len),
                tokens_per_second=tokens_per_second, checkpoint_step=settings.steps)
    ckpt.write_json_atomic(card_path, card)
    return dict(card, resumed_from=start)


def train_family(sizes, corpus: corpus_lib.Corpus, settings: TrainSettings, out_dir: str, *,
                 family: str | None = None, progress: bool | None = None, log=None) -> list[dict]:
    """Train each size into ``out_dir/<size>``, smallest first; the cards, in order."""
    return [train_model(size, corpus, settings, os.path.join(out_dir, size), family=family,
                        progress=progress, log=log) for size in sizes]
