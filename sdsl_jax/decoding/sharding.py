"""Tensor parallelism: a `Decoder` spread over a 1-D device mesh by its own annotations.

A model too large for one device, or too slow on one, is split Megatron-style
(Shoeybi et al. 2019, "Megatron-LM"): the query, key, value and MLP input
kernels are column-parallel (each device holds ``1/N`` of the heads or of the
MLP's inner units), the attention output and MLP output kernels are
row-parallel (each device holds the matching ``1/N`` of their input axis and
the partial products are summed across devices), and the key/value cache is
split over its heads axis. Each architecture states this as data:
``Decoder.param_sharding`` and ``Decoder.cache_sharding`` are pairs of (a
regular expression over a leaf's path, a partition spec over the mesh axis
``"model"``); see :class:`sdsl_jax.decoding.decoder.Decoder`.

Nothing in the loop changes. :func:`shard_decoder` places the params with
their `NamedSharding`; ``jit`` compiles the loop for the placement it is
given (GSPMD inserts the collectives: one all-reduce after each row-parallel
matmul). The cache is created inside the compiled prefill, so its placement
cannot come from an argument: the returned decoder's ``init_cache`` and
``forward`` pin it with ``with_sharding_constraint``, and pin the logits
replicated, so every array the loop itself handles (tokens, lengths,
uniforms, probabilities) stays replicated and the while loop's carry keeps
one layout from step to step.

An axis that the rule shards but whose size does not divide by the mesh size
(two key/value heads on eight devices, say) is replicated for that leaf:
correct, and only the memory saving is lost there. :func:`describe_sharding`
says which leaves that happened to and what each device holds.

On several hosts (``jax.distributed.initialize()`` first, one process per
host running the same program), :func:`make_mesh` spans every host's
devices and :func:`shard_decoder` builds each global array from the shards
its own host's devices hold; see docs/devices.md.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

try:  # Newer JAX lets a mesh axis be Explicit; ours is Auto (GSPMD propagates from the params).
    from jax.sharding import AxisType
    _AUTO_AXES = {"axis_types": (AxisType.Auto,)}
except ImportError:  # JAX before axis types: every axis is Auto.
    _AUTO_AXES = {}

from sdsl_jax.decoding.decoder import Decoder

PyTree = Any
Rules = tuple[tuple[str, tuple[str | None, ...]], ...]

MODEL_AXIS = "model"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``"model"`` over the first ``num_devices`` devices.

    Args:
      num_devices: how many of ``jax.devices()`` to use (all of them, every
        host's, when None).

    Raises:
      ValueError: ``num_devices`` is not a positive integer, or exceeds the
        devices JAX sees (the message names how many there are).
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not isinstance(num_devices, (int, np.integer)) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive integer or None, got {num_devices!r}")
    if num_devices > len(devices):
        raise ValueError(
            f"num_devices={num_devices} exceeds the {len(devices)} {devices[0].platform} "
            f"device{'s' if len(devices) != 1 else ''} JAX sees")
    # Auto axes: shardings propagate through jnp code as in GSPMD, so model
    # code written for one device runs unchanged.
    return Mesh(np.asarray(devices[:int(num_devices)]), (MODEL_AXIS,), **_AUTO_AXES)


def leaf_path(path) -> str:
    """A pytree key path as the rules see it: its keys joined by "/" ("blocks/q_proj/kernel")."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _check_rules(rules: Rules, field: str) -> list[tuple[re.Pattern, tuple]]:
    """The rules compiled, or a ValueError naming the malformed one."""
    compiled = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)
                and isinstance(rule[1], tuple)):
            raise ValueError(f"{field}[{i}] must be a pair (regular expression, partition spec "
                             f"tuple), got {rule!r}")
        pattern, spec = rule
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{field}[{i}]: {pattern!r} is not a regular expression ({error})") from None
        for axis in spec:
            if axis is not None and axis != MODEL_AXIS:
                raise ValueError(f"{field}[{i}] ({pattern!r}): partition spec {spec!r} names mesh "
                                 f"axis {axis!r}; only {MODEL_AXIS!r} or None are allowed")
        compiled.append((regex, spec))
    return compiled


def _leaf_spec(path: str, shape: tuple[int, ...], rules, field: str, mesh_size: int) -> PartitionSpec:
    """The spec of the first rule matching ``path``, less the axes that do not divide."""
    for regex, spec in rules:
        if regex.fullmatch(path):
            if len(spec) != len(shape):
                raise ValueError(
                    f"{field}: rule {regex.pattern!r} gives {len(spec)}-axis spec {spec!r} to "
                    f"{path!r}, which has shape {tuple(shape)} ({len(shape)} axes)")
            # An axis that does not split evenly stays whole on every device.
            placed = tuple(None if axis is not None and size % mesh_size else axis
                           for axis, size in zip(spec, shape))
            return PartitionSpec(*placed)
    return PartitionSpec()


def _mesh_size(mesh: Mesh) -> int:
    if not isinstance(mesh, Mesh) or MODEL_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with an axis named {MODEL_AXIS!r} "
                         f"(see make_mesh), got {mesh!r}")
    return int(mesh.shape[MODEL_AXIS])


def tree_shardings(tree: PyTree, rules: Rules, mesh: Mesh, field: str = "rules") -> PyTree:
    """The `NamedSharding` of every leaf of ``tree`` under ``rules`` on ``mesh``.

    Leaves may be arrays or anything with a ``shape`` (``jax.ShapeDtypeStruct``).
    """
    compiled = _check_rules(rules, field)
    size = _mesh_size(mesh)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(
            mesh, _leaf_spec(leaf_path(path), np.shape(leaf), compiled, field, size)), tree)


def _constrain(tree: PyTree, rules: Rules, mesh: Mesh, field: str) -> PyTree:
    shardings = tree_shardings(tree, rules, mesh, field)
    return jax.lax.with_sharding_constraint(tree, shardings)


@dataclasses.dataclass(frozen=True)
class ShardedInitCache:
    """``init_cache`` whose cache is placed by ``rules`` on ``mesh``.

    A frozen dataclass of hashable fields, so equal wrappers are one key of
    the loop's compilation cache (as :class:`sdsl_jax.hf.configured.Configured`).
    """

    init_cache: Callable
    rules: Rules
    mesh: Mesh

    def __call__(self, batch_size: int, max_len: int) -> PyTree:
        return _constrain(self.init_cache(batch_size, max_len), self.rules, self.mesh,
                          "cache_sharding")


@dataclasses.dataclass(frozen=True)
class ShardedForward:
    """``forward`` whose returned cache keeps its placement and whose logits are replicated."""

    forward: Callable
    rules: Rules
    mesh: Mesh

    def __call__(self, params, tokens, start, cache):
        logits, cache = self.forward(params, tokens, start, cache)
        logits = jax.lax.with_sharding_constraint(logits, NamedSharding(self.mesh, PartitionSpec()))
        return logits, _constrain(cache, self.rules, self.mesh, "cache_sharding")


def _place(leaf, sharding: NamedSharding):
    if isinstance(leaf, jax.Array):
        if sharding.is_fully_addressable:
            return jax.device_put(leaf, sharding)
        leaf = np.asarray(leaf)
    # A leaf still on the host: a NumPy array, or a loader's lazy tensor that reads
    # from its file the whole (np.asarray) or a block (indexing).
    if sharding.is_fully_replicated:
        host = np.asarray(leaf)
        if sharding.is_fully_addressable:
            placed = jax.device_put(host, sharding)
        else:
            # Several hosts: each builds the copies its own devices hold.
            placed = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
        # The transfer may be asynchronous: wait, so the host copy is freed before the next leaf.
        return placed.block_until_ready()
    # Split: each of this process's devices is sent its own block, read on its own,
    # so the host holds one device's block at a time (on several hosts, each reads
    # only its devices' blocks).
    shape = tuple(np.shape(leaf))
    shards = [jax.device_put(np.asarray(leaf[index]), device).block_until_ready()
              for device, index in sharding.addressable_devices_indices_map(shape).items()]
    return jax.make_array_from_single_device_arrays(shape, sharding, shards)


def shard_decoder(decoder: Decoder, mesh: Mesh) -> Decoder:
    """``decoder`` with its params placed on ``mesh`` and its cache placed when created.

    Args:
      decoder: any `Decoder`; its ``param_sharding`` and ``cache_sharding``
        say what to split (a decoder without them is replicated on every
        device and computes as on one). Its params may be device arrays or
        still on the host: NumPy arrays, or lazy tensors with a ``shape``
        that ``np.asarray`` reads whole and indexing by a tuple of slices
        reads in part (as the Hugging Face loader's are). Host leaves are
        placed one at a time, and each device is sent only its block of a
        split leaf, read on its own.
      mesh: a mesh with an axis ``"model"`` (:func:`make_mesh`).

    Returns:
      A `Decoder` with the same ``forward`` computation, params as global
      arrays with `NamedSharding` on ``mesh``, and ``init_cache``/``forward``
      wrapped (hashable by value) so the cache is created and kept sharded.
      Passing it to the loop (:func:`sdsl_jax.decoding.loop.speculative_generate`
      and the rest) runs the loop on every device of the mesh.

    Raises:
      ValueError: a rule is malformed or gives a spec of the wrong rank for a
        leaf it matches (naming both), or ``mesh`` has no ``"model"`` axis.
    """
    if not isinstance(decoder, Decoder):
        raise ValueError(f"decoder must be a Decoder, got {type(decoder).__name__}")
    if isinstance(decoder.init_cache, ShardedInitCache):
        raise ValueError(f"decoder {decoder.name!r} is already sharded (on {decoder.init_cache.mesh})")
    shardings = tree_shardings(decoder.params, decoder.param_sharding, mesh, "param_sharding")
    # Checked here, before any work, rather than at the first traced call.
    cache = jax.eval_shape(lambda: decoder.init_cache(1, 1))
    tree_shardings(cache, decoder.cache_sharding, mesh, "cache_sharding")
    params = jax.tree_util.tree_map(_place, decoder.params, shardings)
    return dataclasses.replace(
        decoder, params=params,
        forward=ShardedForward(decoder.forward, decoder.cache_sharding, mesh),
        init_cache=ShardedInitCache(decoder.init_cache, decoder.cache_sharding, mesh))


@dataclasses.dataclass(frozen=True)
class ShardingReport:
    """Where a sharded decoder's params live.

    Attributes:
      name: the decoder's name.
      num_devices: devices holding params.
      param_bytes: bytes of the params, counted once.
      bytes_per_device: bytes of params each device holds, by device id
        (this host's devices only, on several hosts).
      split_leaves: paths of the leaves split over the mesh.
      replicated_leaves: paths of the leaves every device holds whole,
        those no rule splits and those below.
      unsplit_leaves: paths a rule asks to split but whose axis does not
        divide by the mesh size, so they are replicated.
    """

    name: str
    num_devices: int
    param_bytes: int
    bytes_per_device: dict[int, int]
    split_leaves: tuple[str, ...]
    replicated_leaves: tuple[str, ...]
    unsplit_leaves: tuple[str, ...]

    @property
    def max_bytes_per_device(self) -> int:
        return max(self.bytes_per_device.values())

    def summary(self) -> str:
        """One line for a report: what each device holds against the whole."""
        text = (f"{self.name}: {self.param_bytes / 2**20:.1f} MiB of params over {self.num_devices} "
                f"device{'s' if self.num_devices != 1 else ''}, at most "
                f"{self.max_bytes_per_device / 2**20:.1f} MiB on one ({len(self.split_leaves)} "
                f"leaves split, {len(self.replicated_leaves)} replicated)")
        if self.unsplit_leaves:
            text += (f"; replicated because an axis does not divide by {self.num_devices}: "
                     + ", ".join(self.unsplit_leaves))
        return text


def describe_sharding(decoder: Decoder) -> ShardingReport:
    """Bytes of params per device, and which leaves are split, of a (sharded) decoder."""
    if not isinstance(decoder, Decoder):
        raise ValueError(f"decoder must be a Decoder, got {type(decoder).__name__}")
    leaves = [(leaf_path(path), leaf if isinstance(leaf, jax.Array) else jax.numpy.asarray(leaf))
              for path, leaf in jax.tree_util.tree_flatten_with_path(decoder.params)[0]]
    compiled = _check_rules(decoder.param_sharding, "param_sharding")
    devices = set().union(*(leaf.sharding.device_set for _, leaf in leaves)) if leaves else set()
    per_device = {device.id: 0 for device in devices if device.process_index == jax.process_index()}
    split, replicated, unsplit = [], [], []
    for name, leaf in leaves:
        for shard in leaf.addressable_shards:
            per_device[shard.device.id] += shard.data.nbytes
        if not leaf.sharding.is_fully_replicated:
            split.append(name)
            continue
        replicated.append(name)
        asked = next((spec for regex, spec in compiled if regex.fullmatch(name)), None)
        if asked is not None and any(axis is not None for axis in asked) and len(devices) > 1:
            unsplit.append(name)
    total = sum(leaf.nbytes for _, leaf in leaves)
    return ShardingReport(name=decoder.name, num_devices=len(devices), param_bytes=int(total),
                          bytes_per_device=dict(sorted(per_device.items())),
                          split_leaves=tuple(split), replicated_leaves=tuple(replicated),
                          unsplit_leaves=tuple(unsplit))
