"""Read tensors from a checkpoint directory in the safetensors layout, as numpy.

A safetensors file is an 8-byte little-endian header length, a JSON header
mapping each tensor name to its dtype, shape and byte range, then the raw
little-endian bytes. Reading it ourselves (a memory map plus a view per
tensor) keeps torch out of the runtime, reads bfloat16 and float8 through
ml_dtypes (which numpy alone cannot), and touches only the bytes of the
tensors that are asked for, so a checkpoint larger than memory still loads
one layer at a time.

A directory holds either ``model.safetensors`` or shards listed in
``model.safetensors.index.json`` (``{"weight_map": {name: file}}``), which is
how Hugging Face's ``save_pretrained`` writes them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

from sdsl_jax.common.errors import CheckpointError
from sdsl_jax.common.io import read_json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}

# A header is JSON text; a length beyond this is a corrupt or foreign file,
# not a header worth reading into memory.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsFile:
    """One safetensors file: its header parsed and validated, tensors read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise CheckpointError(f"{self.path}: too short to be a safetensors file ({size} bytes)")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > min(size - 8, _MAX_HEADER_BYTES):
                    raise CheckpointError(
                        f"{self.path}: header length {header_len} does not fit in a file of {size} bytes; "
                        "not a safetensors file or truncated"
                    )
                header_bytes = f.read(header_len)
        except OSError as err:
            raise CheckpointError(f"cannot read {self.path}: {err}") from err
        try:
            header = json.loads(header_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.path}: header is not valid JSON ({err})") from err
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header must be a JSON object")
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self._entries[name] = _parse_entry(self.path, name, entry, data_len)
        self._mmap: np.memmap | None = None

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy array backed by the file (no copy)."""
        if name not in self._entries:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        dtype, shape, begin, end = self._entries[name]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mmap[self._data_start + begin : self._data_start + end]
        return raw.view(dtype).reshape(shape)


def _parse_entry(path: str, name: str, entry, data_len: int):
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{where}: header entry needs dtype, shape and data_offsets, got {entry!r}")
    if entry["dtype"] not in _DTYPES:
        raise CheckpointError(f"{where}: unsupported dtype {entry['dtype']!r} (known: {', '.join(_DTYPES)})")
    dtype = _DTYPES[entry["dtype"]]
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} do not lie in the {data_len} data bytes")
    expected = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{where}: {offsets[1] - offsets[0]} bytes for shape {shape} of {entry['dtype']}, expected {expected}"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


class SafetensorsCheckpoint:
    """All tensors of a checkpoint directory, single-file or sharded, by name."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        single = os.path.join(self.directory, SINGLE_FILE)
        index = os.path.join(self.directory, INDEX_FILE)
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        self.names_read: set[str] = set()  # lets a loader find tensors its model does not use
        if os.path.isfile(single):
            self._open(SINGLE_FILE, None)
        elif os.path.isfile(index):
            for filename, names in _read_index(index).items():
                self._open(filename, names)
        else:
            present = sorted(os.listdir(self.directory)) if os.path.isdir(self.directory) else []
            hint = ""
            if any(p.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack")) for p in present):
                hint = (
                    "; the directory has weights in another format: re-save them with "
                    "save_pretrained(..., safe_serialization=True)"
                )
            raise CheckpointError(
                f"{self.directory}: no {SINGLE_FILE} or {INDEX_FILE} (found: {', '.join(present) or 'nothing'}){hint}"
            )

    def _open(self, filename: str, expected_names: Iterable[str] | None) -> None:
        path = os.path.join(self.directory, filename)
        if not os.path.isfile(path):
            raise CheckpointError(f"{os.path.join(self.directory, INDEX_FILE)}: lists shard {filename!r}, which is missing")
        shard = SafetensorsFile(path)
        self._files[filename] = shard
        names = shard.names if expected_names is None else expected_names
        present = set(shard.names)
        for name in names:
            if name not in present:
                raise CheckpointError(f"{path}: the index places tensor {name!r} here but the file does not hold it")
            self._where[name] = filename

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file_of(self, name: str) -> str:
        return os.path.join(self.directory, self._where[name])

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype of tensor ``name`` from its file's header, without reading it.
        A tensor asked about counts as read: its model uses it."""
        if name not in self._where:
            raise CheckpointError(f"{self.directory}: the checkpoint has no tensor named {name!r}")
        self.names_read.add(name)
        shard = self._files[self._where[name]]
        return shard.shape(name), shard.dtype(name)

    def read(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise CheckpointError(f"{self.directory}: the checkpoint has no tensor named {name!r}")
        self.names_read.add(name)
        return self._files[self._where[name]].read(name)


def _read_index(path: str) -> dict[str, list[str]]:
    try:
        index = read_json(path)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: needs a 'weight_map' object mapping tensor names to shard files")
    by_file: dict[str, list[str]] = {}
    for name, filename in weight_map.items():
        if os.path.basename(filename) != filename:
            raise CheckpointError(f"{path}: shard {filename!r} for {name!r} must be a file name in the same directory")
        by_file.setdefault(filename, []).append(name)
    return by_file
