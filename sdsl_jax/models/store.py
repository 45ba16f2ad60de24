"""A trained model's directory: its config, orbax checkpoints, and summary card.

Layout of ``<out>/<size>/`` as ``sdsl train`` writes it::

  config.json       written first: size, architecture, training settings, corpus
  checkpoints/<s>/  orbax checkpoint at step s: params, optimizer state, metadata
  model.json        written last: params count, tokens seen, validation perplexity

model.json, the card a measurement row takes its draft (or target) columns from:

  name, family, model (the ModelConfig), settings, corpus (fingerprint, sizes)
  params                total parameter count: draft_params / target_params
  non_embedding_params  params less the V x d embedding
  tokens                training tokens seen (steps x batch x seq_len): draft_tokens
  perplexity            exp(validation_loss) on held-out text: per byte, since
                        a token is a byte
  validation_loss       mean next-byte cross-entropy in nats; bits_per_byte
  validation_tokens     how many held-out tokens were scored
  train_loss            mean training loss over the last logged steps
  steps, tokens_per_second, checkpoint_step

orbax writes a checkpoint into a temporary directory and renames it into
place when complete, so a run killed mid-save leaves the previous checkpoint
as the latest one. The JSON files are replaced atomically the same way.
"""

from __future__ import annotations

import json
import logging
import os

from sdsl_jax.common import io
from sdsl_jax.common.errors import CheckpointError

CONFIG_FILE = "config.json"
CARD_FILE = "model.json"
CHECKPOINT_DIR = "checkpoints"


def write_json_atomic(path: str, data: dict) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new, never a torn one.

    This layout's JSON: two-space indent, sorted keys, and NaN or infinity
    written as Python's json writes them (as the layout always has), not refused.
    """
    io.write_json(path, data, indent=2, sort_keys=True, allow_nan=True)


def read_json(path: str) -> dict:
    try:
        return io.read_json(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def checkpoint_manager(model_dir: str, keep: int = 2, writable: bool = True):
    """An orbax CheckpointManager over ``model_dir/checkpoints`` (synchronous saves).

    A writable one removes the temporary directory of a save that was killed
    midway; orbax never reports such a directory as a checkpoint.
    """
    import orbax.checkpoint as ocp
    # A read-only manager makes orbax warn, three times, that it will not save:
    # true by construction, and noise in every command that loads a model.
    absl = logging.getLogger("absl")
    level = absl.level
    if not writable:
        absl.setLevel(logging.ERROR)
    try:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=writable,
                                               cleanup_tmp_directories=writable,
                                               read_only=not writable,
                                               enable_async_checkpointing=False)
        return ocp.CheckpointManager(os.path.abspath(os.path.join(model_dir, CHECKPOINT_DIR)),
                                     options=options)
    finally:
        absl.setLevel(level)


def save_checkpoint(manager, step: int, params, opt_state, metadata: dict) -> None:
    import orbax.checkpoint as ocp
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        metadata=ocp.args.JsonSave(metadata)), force=True)
    manager.wait_until_finished()


def restore_checkpoint(manager, step: int, abstract_params, abstract_opt_state=None):
    """(params, opt_state or None, metadata) of checkpoint ``step``."""
    import orbax.checkpoint as ocp
    items = dict(params=ocp.args.StandardRestore(abstract_params),
                 metadata=ocp.args.JsonRestore())
    if abstract_opt_state is not None:
        items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["params"], restored.get("opt_state"), restored["metadata"]


def load_card(model_dir: str) -> dict:
    """The model.json of a finished ``sdsl train`` run (see the module docstring)."""
    path = os.path.join(model_dir, CARD_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{model_dir} has no {CARD_FILE}: its training has not finished "
                              "(rerun the same `sdsl train` command to complete it)")
    return read_json(path)


def load_decoder(model_dir: str, step: int | None = None, dtype="float32"):
    """The :class:`sdsl_jax.decoding.decoder.Decoder` of a model trained by ``sdsl train``.

    Args:
      model_dir: ``<out>/<size>``, the directory holding config.json and checkpoints/.
      step: which checkpoint; the latest by default.
      dtype: what the model computes in: "float32" (default), "bfloat16" or
        "float16" (or the numpy/JAX dtype). Checkpoints hold float32 weights
        (training keeps float32 master weights at any precision); they are
        cast, and the cache and activations take the same dtype.

    ``num_params`` is the exact parameter count; ``name`` is the size name;
    ``dtype`` is the dtype it computes in.
    """
    import dataclasses
    from sdsl_jax.models.config import ModelConfig
    from sdsl_jax.models.functional import abstract_params, as_decoder, dtype_name

    dtype = dtype_name(dtype)

    config_path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{model_dir} is not a model directory written by `sdsl train` "
                              f"(no {CONFIG_FILE})")
    record = read_json(config_path)
    try:
        config = ModelConfig.from_json(record["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: bad model config: {err}") from None
    if not os.path.isdir(os.path.join(model_dir, CHECKPOINT_DIR)):
        raise CheckpointError(f"{model_dir} has no checkpoint yet")
    manager = checkpoint_manager(model_dir, writable=False)
    steps = manager.all_steps()
    if not steps:
        raise CheckpointError(f"{model_dir} has no checkpoint yet")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise CheckpointError(f"{model_dir} has no checkpoint at step {step} "
                              f"(it has {sorted(steps)})")
    params, _, _ = restore_checkpoint(manager, step, abstract_params(config))
    return as_decoder(params, dataclasses.replace(config, dtype=dtype),
                      name=record.get("name", os.path.basename(model_dir)))
