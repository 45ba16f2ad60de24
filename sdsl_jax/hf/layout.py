"""A Hugging Face checkpoint directory: ``config.json`` plus named tensors.

Architectures read their hyperparameters through `ConfigReader` (type-checked,
with transformers' defaults for keys a config omits) and their weights through
`WeightReader`, which resolves the name prefix a checkpoint was saved with
(``transformer.`` or none for GPT-2, ``model.`` or none for OPT), checks each
tensor's shape against the config, and returns a `HostTensor` that, when
read, converts it to the compute dtype and stacks per-layer tensors along a
leading layer axis for `jax.lax.scan`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable

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


class HostTensor:
    """A parameter still in the checkpoint file: its shape and dtype now, its values on demand.

    Loaders return trees of these, so that `sdsl_jax.hf.load_hf_decoder` can
    send one leaf at a time where it belongs (one device, or its shards of a
    mesh) and drop the host copy before reading the next: a model larger than
    host memory or one device's memory loads with about one stacked tensor on
    the host at a time. ``np.asarray(tensor)`` reads it.
    """

    def __init__(self, shape: tuple[int, ...], dtype, read: Callable[[], np.ndarray]):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._read = read

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __array__(self, dtype=None, copy=None):
        values = self._read()
        if values.shape != self.shape or values.dtype != self.dtype:  # a loader bug, not a user error
            raise AssertionError(f"read {values.dtype}{values.shape}, promised {self.dtype}{self.shape}")
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        return f"HostTensor({self.dtype.name}{list(self.shape)})"


class WeightReader:
    """Reads a model's tensors by their name below the checkpoint's prefix.

    Shapes and dtypes are checked against the file's header when a tensor is
    asked for (so a checkpoint that does not fit its config fails before any
    weight is read); the values are read when the returned `HostTensor` is.
    """

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

    def _check(self, name: str, shape: tuple[int, ...]) -> str:
        """The tensor's full name, once its header says it has ``shape`` and a float dtype."""
        full = self.prefix + name
        if full not in self.checkpoint:
            raise CheckpointError(f"{self.checkpoint.directory}: missing tensor {full!r}")
        stored_shape, stored_dtype = self.checkpoint.header(full)
        if tuple(stored_shape) != tuple(shape):
            raise CheckpointError(
                f"{self.checkpoint.file_of(full)}: tensor {full!r} has shape {tuple(stored_shape)}, "
                f"config.json implies {tuple(shape)}"
            )
        if not np.issubdtype(stored_dtype, np.floating) and stored_dtype.kind != "V":
            raise CheckpointError(f"{self.checkpoint.file_of(full)}: tensor {full!r} has non-float dtype "
                                  f"{stored_dtype}")
        return full

    @staticmethod
    def _layout(shape, transpose: bool, view: tuple[int, ...] | None) -> tuple[int, ...]:
        shape = tuple(reversed(shape)) if transpose else tuple(shape)
        if view is not None and math.prod(view) != math.prod(shape):
            raise ValueError(f"cannot view {shape} as {view}")  # a loader bug: the config fixed both
        return shape if view is None else tuple(view)

    def _values(self, full: str, transpose: bool, view: tuple[int, ...] | None) -> np.ndarray:
        raw = self.checkpoint.read(full)
        out = raw.T if transpose else raw
        out = np.asarray(out, dtype=self.dtype)
        return out if view is None else out.reshape(view)

    def read(self, name: str, shape: tuple[int, ...], transpose: bool = False,
             view: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor ``name`` as a numpy array of the compute dtype, checked to have ``shape``
        as stored, then transposed (a torch ``[out, in]`` Linear weight) if asked and
        reshaped to ``view`` if given (a projection's heads axis split from its width)."""
        full = self._check(name, shape)
        self._layout(shape, transpose, view)
        return self._values(full, transpose, view)

    def param(self, name: str, shape: tuple[int, ...], transpose: bool = False,
              view: tuple[int, ...] | None = None) -> HostTensor:
        full = self._check(name, shape)
        return HostTensor(self._layout(shape, transpose, view), self.dtype,
                          lambda: self._values(full, transpose, view))

    def stacked(self, template: str, num_layers: int, shape: tuple[int, ...], transpose: bool = False,
                view: tuple[int, ...] | None = None) -> HostTensor:
        """``template.format(i)`` for each layer i, stacked to [L, ...] when read."""
        names = [self._check(template.format(i), shape) for i in range(num_layers)]
        layout = self._layout(shape, transpose, view)
        return HostTensor((num_layers, *layout), self.dtype,
                          lambda: np.stack([self._values(full, transpose, view) for full in names]))

    def stacked_parts(self, template: str, num_layers: int, shape: tuple[int, ...], view: tuple[int, ...],
                      part_axis: int, transpose: bool = False) -> tuple[HostTensor, ...]:
        """A fused tensor cut into parts: each layer's array (after the optional transpose)
        is viewed as ``view`` and cut along ``part_axis``, and part i, stacked to [L, ...],
        is the i-th tensor returned. Cutting at load time gives every family the same
        separate q, k, v kernels. Each part reads the fused tensors again, so the host
        holds one part at a time."""
        names = [self._check(template.format(i), shape) for i in range(num_layers)]
        layout = self._layout(shape, transpose, view)
        part_shape = layout[:part_axis] + layout[part_axis + 1:]

        def part(i):
            return np.stack([np.take(self._values(full, transpose, view), i, axis=part_axis) for full in names])

        return tuple(HostTensor((num_layers, *part_shape), self.dtype, lambda i=i: part(i))
                     for i in range(layout[part_axis]))
