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
    send one leaf at a time where it belongs and drop the host copy before
    reading the next. ``np.asarray(tensor)`` reads the whole tensor;
    ``tensor[index]`` (a tuple of slices, as
    ``Sharding.addressable_devices_indices_map`` gives) reads only that block,
    touching only its bytes of the file, so one device's shard of a weight is
    read without the rest of it.
    """

    def __init__(self, shape: tuple[int, ...], dtype, read: Callable[[tuple[slice, ...]], np.ndarray]):
        """``read(index)`` returns the block ``index`` (one slice per axis) in ``dtype``."""
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

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.ndim or not all(isinstance(i, slice) and i.step in (None, 1) for i in index):
            raise IndexError(f"a HostTensor reads blocks: one slice (of step 1) per axis, got {index!r}")
        index = index + (slice(None),) * (self.ndim - len(index))
        values = self._read(index)
        expected = tuple(len(range(*i.indices(n))) for i, n in zip(index, self.shape))
        if values.shape != expected or values.dtype != self.dtype:  # a loader bug, not a user error
            raise AssertionError(f"read {values.dtype}{values.shape}, promised {self.dtype}{expected}")
        return values

    def __array__(self, dtype=None, copy=None):
        values = self[()]
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        return f"HostTensor({self.dtype.name}{list(self.shape)})"


def _arrange(raw: np.ndarray, transpose: bool, view: tuple[int, ...] | None) -> np.ndarray:
    """``raw`` (a tensor as stored), transposed if asked, then viewed as ``view``,
    without copying: slicing the result reads only the slice's bytes of the file.

    A torch Linear weight [out, in] becomes a kernel [in, out]; a ``view`` splits
    ``in`` into its leading axes and ``out`` into the rest (a heads axis apart from
    ``head_dim``), which reshaping the stored array first and then permuting does
    without a copy.
    """
    if not transpose:
        return raw if view is None else raw.reshape(view)
    if view is None:
        return raw.T
    n_out, n_in = raw.shape
    split = next(i for i in range(1, len(view) + 1) if math.prod(view[:i]) == n_in)
    inputs, outputs = view[:split], view[split:]
    order = tuple(range(len(outputs), len(view))) + tuple(range(len(outputs)))
    return raw.reshape(*outputs, *inputs).transpose(order)


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

    def _arranged(self, full: str, transpose: bool, view: tuple[int, ...] | None) -> np.ndarray:
        return _arrange(self.checkpoint.read(full), transpose, view)

    def _stack(self, layers: list, layout: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
        """Block ``index`` of the [L, ...] stack of ``layers`` (functions giving each layer's
        arranged array, uncopied), filled one layer at a time into one array in the
        compute dtype: the host holds the block and nothing else."""
        chosen = layers[index[0]]
        block = np.broadcast_to(np.empty((), self.dtype), layout)[index[1:]].shape  # no allocation
        out = np.empty((len(chosen), *block), self.dtype)
        for i, layer in enumerate(chosen):
            out[i] = layer()[index[1:]]
        return out

    def read(self, name: str, shape: tuple[int, ...], transpose: bool = False,
             view: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor ``name`` as a numpy array of the compute dtype, checked to have ``shape``
        as stored, then transposed (a torch ``[out, in]`` Linear weight) if asked and
        reshaped to ``view`` if given (a projection's heads axis split from its width)."""
        return np.asarray(self.param(name, shape, transpose, view))

    def param(self, name: str, shape: tuple[int, ...], transpose: bool = False,
              view: tuple[int, ...] | None = None) -> HostTensor:
        full = self._check(name, shape)
        return HostTensor(self._layout(shape, transpose, view), self.dtype,
                          lambda index: np.array(self._arranged(full, transpose, view)[index], self.dtype))

    def stacked(self, template: str, num_layers: int, shape: tuple[int, ...], transpose: bool = False,
                view: tuple[int, ...] | None = None) -> HostTensor:
        """``template.format(i)`` for each layer i, stacked to [L, ...] when read."""
        names = [self._check(template.format(i), shape) for i in range(num_layers)]
        layout = self._layout(shape, transpose, view)
        layers = [lambda full=full: self._arranged(full, transpose, view) for full in names]
        return HostTensor((num_layers, *layout), self.dtype, lambda index: self._stack(layers, layout, index))

    def stacked_parts(self, template: str, num_layers: int, shape: tuple[int, ...], view: tuple[int, ...],
                      part_axis: int, transpose: bool = False) -> tuple[HostTensor, ...]:
        """A fused tensor cut into parts: each layer's array (after the optional transpose)
        is viewed as ``view`` and cut along ``part_axis``, and part i, stacked to [L, ...],
        is the i-th tensor returned. Cutting at load time gives every family the same
        separate q, k, v kernels; each part reads only its own bytes of the fused tensors."""
        names = [self._check(template.format(i), shape) for i in range(num_layers)]
        layout = self._layout(shape, transpose, view)
        part_shape = layout[:part_axis] + layout[part_axis + 1:]
        pick = (slice(None),) * part_axis

        def part(i):
            layers = [lambda full=full: self._arranged(full, transpose, view)[pick + (i,)] for full in names]
            return HostTensor((num_layers, *part_shape), self.dtype,
                              lambda index: self._stack(layers, part_shape, index))

        return tuple(part(i) for i in range(layout[part_axis]))
