"""A Hugging Face checkpoint directory: ``config.json`` plus named tensors.

Architectures read their hyperparameters through `ConfigReader` (type-checked,
with transformers' defaults for keys a config omits) and their weights through
`WeightReader`, which resolves the name prefix a checkpoint was saved with
(``transformer.`` or none for GPT-2, ``model.`` or none for OPT), checks each
tensor's shape against the config, converts it to the compute dtype and
stacks per-layer tensors along a leading layer axis for `jax.lax.scan`.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.common.io import read_json
from sdsl_jax.hf.safetensors_io import SafetensorsCheckpoint

CONFIG_FILE = "config.json"


def read_config(directory: str | os.PathLike) -> dict:
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory {directory!r} does not exist")
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; a Hugging Face checkpoint directory needs one")
    try:
        config = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return config


class ConfigReader:
    """Typed access to config.json values, errors naming the file and key."""

    def __init__(self, config: dict, path: str):
        self.config = config
        self.path = path

    def _get(self, key, default, types, type_name):
        value = self.config.get(key, default)
        if value is None and default is None:
            raise CheckpointError(f"{self.path}: missing required key {key!r}")
        # bool is an int in Python; refuse it where a count is meant.
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise CheckpointError(f"{self.path}: {key!r} must be {type_name}, got {value!r}")
        return value

    def positive_int(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default, (int,), "a positive integer")
        if value < 1:
            raise CheckpointError(f"{self.path}: {key!r} must be a positive integer, got {value!r}")
        return int(value)

    def optional_positive_int(self, key: str, default: int | None = None) -> int | None:
        """A positive integer, or None where the config writes null (or omits a key whose default is None)."""
        if self.config.get(key, default) is None:
            return None
        return self.positive_int(key, default)

    def positive_float(self, key: str, default: float) -> float:
        value = self._get(key, default, (int, float), "a positive number")
        if not value > 0:
            raise CheckpointError(f"{self.path}: {key!r} must be a positive number, got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        return bool(self._get(key, default, (bool,), "true or false"))

    def choice(self, key: str, default: str, supported) -> str:
        value = self._get(key, default, (str,), "a string")
        if value not in supported:
            raise CheckpointError(f"{self.path}: unsupported {key} {value!r} (supported: {', '.join(supported)})")
        return value


class WeightReader:
    """Reads a model's tensors by their name below the checkpoint's prefix."""

    def __init__(self, checkpoint: SafetensorsCheckpoint, prefixes: tuple[str, ...], anchor: str, dtype):
        """Pick the first of ``prefixes`` under which tensor ``anchor`` exists."""
        self.checkpoint = checkpoint
        self.dtype = jnp.dtype(dtype)
        for prefix in prefixes:
            if prefix + anchor in checkpoint:
                self.prefix = prefix
                break
        else:
            tried = " or ".join(repr(p + anchor) for p in prefixes)
            raise CheckpointError(
                f"{checkpoint.directory}: missing tensor {tried}; the checkpoint does not look like this "
                "architecture (does config.json match the weights?)"
            )

    def has(self, name: str) -> bool:
        return self.prefix + name in self.checkpoint

    def read(self, name: str, shape: tuple[int, ...], transpose: bool = False) -> np.ndarray:
        """Tensor ``name`` as a numpy array of the compute dtype, checked to have ``shape``
        as stored (before the optional transpose of a torch ``[out, in]`` Linear weight)."""
        full = self.prefix + name
        if full not in self.checkpoint:
            raise CheckpointError(f"{self.checkpoint.directory}: missing tensor {full!r}")
        raw = self.checkpoint.read(full)
        if tuple(raw.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.checkpoint.file_of(full)}: tensor {full!r} has shape {tuple(raw.shape)}, "
                f"config.json implies {tuple(shape)}"
            )
        if not np.issubdtype(raw.dtype, np.floating) and raw.dtype.kind != "V":
            raise CheckpointError(f"{self.checkpoint.file_of(full)}: tensor {full!r} has non-float dtype {raw.dtype}")
        out = raw.T if transpose else raw
        return np.asarray(out, dtype=self.dtype)

    def param(self, name: str, shape: tuple[int, ...], transpose: bool = False) -> jnp.ndarray:
        return jnp.asarray(self.read(name, shape, transpose))

    def stacked(self, template: str, num_layers: int, shape: tuple[int, ...], transpose: bool = False) -> jnp.ndarray:
        """``template.format(i)`` for each layer i, stacked to [L, ...]."""
        return jnp.asarray(np.stack([self.read(template.format(i), shape, transpose) for i in range(num_layers)]))

    def stacked_parts(self, template: str, num_layers: int, shape: tuple[int, ...], split,
                      transpose: bool = False) -> tuple[jnp.ndarray, ...]:
        """A fused tensor cut into parts: ``split`` maps each layer's array (after the
        optional transpose) to a tuple of arrays, and each part is stacked to [L, ...].
        Cutting at load time gives every family the same separate q, k, v kernels."""
        per_layer = [split(self.read(template.format(i), shape, transpose)) for i in range(num_layers)]
        return tuple(jnp.asarray(np.stack(part)) for part in zip(*per_layer))
