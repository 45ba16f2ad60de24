r"""Planning and fitting spread over every device, one host or several.

Planning is elementwise: each configuration (M, D, D') is solved on its own.
So millions of them split across devices with no communication at all: a
one-axis :class:`jax.sharding.Mesh` over every device, the configurations laid
along it (:class:`jax.sharding.NamedSharding` with ``PartitionSpec("configs")``),
and the unchanged planner jitted over them: XLA's SPMD partitioner hands each
device its block, with no communication for an elementwise computation.

Results equal the single-device ones to rounding, not bit for bit. XLA's
generated code for an elementwise computation depends on the array's length
and on the CPU's vector width, so any entry may differ in its last bits, and
N*, found where a slope crosses zero, by up to ~1e-13 relative (the solver's
convergence). Two single-device calls on arrays of different lengths differ
from each other in the same way. The decisions made from those numbers (pays,
extrapolated, at_bound, the integer lookahead) agree exactly unless a
configuration sits within rounding of a decision's edge
(tests/planning/test_sharded.py checks the floats to a relative tolerance
and the decisions exactly).

    plans = map_configs(lambda m, d, dp: sd.optimal_draft_size(m, d, dp).draft_params,
                        target_params, draft_tokens, target_tokens)

The count need not divide evenly: each chunk is padded to a multiple of the
device count with copies of its last configuration (valid inputs, so no
NaN), and the padding is dropped from the result. Long inputs stream through
in chunks of ``chunk_size`` configurations, every chunk padded to the same
size so one compilation serves them all, the next chunk dispatched before the
last one is copied back.

Fits reduce over measurements, so the rows are sharded instead and XLA adds
the cross-device sums: :func:`shard_rows` pads a row pytree with zero-weight
rows (which every fit in :mod:`sdsl_jax.fitting` leaves out) and places it on
the mesh; the fitting functions then run on it unchanged. Sums in another
order round differently, so a sharded fit equals the single-device one to
rounding, not bit for bit.

Several hosts: call :func:`initialize_distributed` in every process before
any other JAX call (it wraps :func:`jax.distributed.initialize`; on Cloud TPU
and SLURM the arguments are detected). The mesh then spans every process's
devices; each process passes the same full inputs, keeps only its own
devices' shards (:func:`jax.make_array_from_callback`), and gets the full
result back (gathered across processes).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:
    from sdsl_jax.planning.flop import DraftPlan

AXIS = "configs"
DEFAULT_CHUNK = 1 << 20


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, **kwargs) -> None:
    """Join a multi-host run: :func:`jax.distributed.initialize`, called once per process.

    Call it first, before any other JAX call. With no arguments JAX detects
    the cluster (Cloud TPU, SLURM, Open MPI); otherwise give the coordinator's
    ``host:port``, the number of processes and this process's index. Every
    process then runs the same program; :func:`config_mesh` spans all of their
    devices.
    """
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)


def config_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"configs"`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: need at least one device")
    return Mesh(np.asarray(devices), (AXIS,))


def padded_size(count: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that holds ``count`` (at least one multiple)."""
    return max(1, -(-count // multiple)) * multiple


def _pad(column: np.ndarray, size: int) -> np.ndarray:
    # Copies of the last entry: valid inputs, so the padded lanes stay finite.
    return np.pad(column, (0, size - len(column)), mode="edge")


def _place(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full; each
    process supplies only its own devices' shards."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _to_host(tree):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree_util.tree_map(np.asarray, tree)


@functools.lru_cache(maxsize=64)
def _sharded(fn: Callable, mesh: Mesh):
    # Compute follows data: with the columns laid along the mesh, XLA's SPMD
    # partitioner gives each device its block of an elementwise computation
    # (no collectives), and inserts them where fn does reduce over configurations.
    return jax.jit(fn, out_shardings=NamedSharding(mesh, PartitionSpec(AXIS)))


def _columns(columns, dtype):
    arrays = [np.asarray(c, dtype) for c in columns]
    if not arrays:
        raise ValueError("give at least one column of configurations")
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    return [np.ravel(np.broadcast_to(a, shape)) for a in arrays], shape


def stream_configs(fn: Callable, chunks: Iterable[Sequence[np.ndarray]], *, chunk_size: int,
                   shared: Sequence = (), mesh: Mesh | None = None, dtype=None) -> Iterator:
    """Apply ``fn`` to each chunk of columns, sharded over ``mesh``; yield host results.

    ``fn`` takes 1-D arrays (one per column, same length) and returns a pytree
    of arrays with that leading length, elementwise in the configurations (a
    planner and a field selection, say). Each chunk (a sequence of 1-D host
    arrays, at most ``chunk_size`` long) is padded to ``chunk_size`` rounded up
    to a multiple of the device count; results come back with the padding
    removed, in order. The next chunk is dispatched before the previous one is
    copied back, so device work and transfers overlap.

    ``shared``: pytrees passed to every call after the columns, replicated on
    every device (the laws, the hardware). Passed as arguments rather than
    closed over, they stay runtime values: XLA folds closed-over constants into
    the arithmetic and may round differently from the eager call, which
    passes them to its jit as arguments.

    Pass the same ``fn`` object on every call to reuse its compilation.
    """
    mesh = config_mesh() if mesh is None else mesh
    size = padded_size(int(chunk_size), mesh.size)
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    dtype = np.dtype(dtype or jnp.result_type(float))
    replicated = NamedSharding(mesh, PartitionSpec())
    shared = tuple(jax.tree_util.tree_map(
        lambda leaf: _place(np.asarray(leaf, dtype if np.issubdtype(np.asarray(leaf).dtype, np.floating)
                                       else None), replicated), tree) for tree in shared)
    pending = None
    compiled = None
    for chunk in chunks:
        arrays = [np.asarray(c, dtype) for c in chunk]
        count = len(arrays[0])
        if any(len(a) != count for a in arrays) or not 0 < count <= size:
            raise ValueError(f"each chunk needs columns of one length in [1, chunk_size = {size}], "
                             f"got lengths {[len(a) for a in arrays]}")
        if compiled is None:
            compiled = _sharded(fn, mesh)
        out = compiled(*(_place(_pad(a, size), sharding) for a in arrays), *shared)
        if pending is not None:
            yield _trim(*pending)
        pending = (out, count)
    if pending is not None:
        yield _trim(*pending)


def _trim(out, count):
    return jax.tree_util.tree_map(lambda leaf: leaf[:count], _to_host(out))


def map_configs(fn: Callable, *columns, shared: Sequence = (), chunk_size: int = DEFAULT_CHUNK,
                mesh: Mesh | None = None, dtype=None):
    """``fn(*columns)`` computed over every device, for any number of configurations.

    Args:
      fn: elementwise in the configurations (see :func:`stream_configs`), e.g.
        ``lambda m, d, dp: sd.optimal_draft_size(m, d, dp)``.
      *columns: array-likes that broadcast to one shape (the configurations).
      shared: pytrees passed to ``fn`` after the columns, the same on every
        device (see :func:`stream_configs`).
      chunk_size: configurations per device round trip (memory use scales with it).
      mesh: default :func:`config_mesh` over every device.
      dtype: of the inputs (default: float64 under jax_enable_x64, else float32).

    Returns:
      ``fn``'s pytree with host (numpy) leaves of the columns' broadcast shape
      (plus any trailing axes ``fn`` adds).
    """
    dtype = np.dtype(dtype or jnp.result_type(float))
    flat, shape = _columns(columns, dtype)
    total = flat[0].size
    if total == 0:
        raise ValueError("no configurations: the columns are empty")
    chunk_size = max(1, min(int(chunk_size), total))
    chunks = ([c[start:start + chunk_size] for c in flat] for start in range(0, total, chunk_size))
    parts = list(stream_configs(fn, chunks, chunk_size=chunk_size, shared=shared, mesh=mesh,
                                dtype=dtype))
    joined = jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves, axis=0), *parts)
    return jax.tree_util.tree_map(lambda leaf: leaf.reshape(shape + leaf.shape[1:]), joined)


def shard_rows(rows, mesh: Mesh | None = None, *, weight_field: str = "weight"):
    """A row pytree (e.g. :class:`~sdsl_jax.fitting.AcceptanceRows`) padded and sharded.

    Every leaf must have the same leading length n. The rows are padded to a
    multiple of the device count with copies of the last row whose
    ``weight_field`` is 0 (so a weighted fit leaves them out) and laid out
    along the mesh; fitting functions run on the result unchanged, with XLA
    adding the cross-device sums. Returns (sharded rows, n).
    """
    mesh = config_mesh() if mesh is None else mesh
    leaves = jax.tree_util.tree_leaves(rows)
    counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(counts) != 1 or None in counts:
        raise ValueError(f"rows: every leaf needs the same leading length, got {sorted(map(str, counts))}")
    (count,) = counts
    size = padded_size(count, mesh.size)
    if weight_field not in rows:
        raise ValueError(f"rows has no field {weight_field!r} to give the padding zero weight")
    weight = np.asarray(rows[weight_field])
    padded = rows.replace(**{weight_field: np.concatenate([weight, np.zeros(size - count, weight.dtype)])})
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))

    def place(leaf):
        host = np.asarray(leaf)
        if host.shape[0] != size:
            host = np.concatenate([host, np.repeat(host[-1:], size - host.shape[0], axis=0)])
        return _place(host, sharding)

    return jax.tree_util.tree_map(place, padded), count


@functools.lru_cache(maxsize=16)
def _draft_size_fn(fields: tuple[str, ...], method: str):
    from sdsl_jax.planning import flop as planner

    def plan(target_params, draft_tokens, target_tokens, pretraining_law, acceptance_law):
        result = planner.optimal_draft_size(target_params, draft_tokens, target_tokens,
                                            pretraining_law=pretraining_law,
                                            acceptance_law=acceptance_law, method=method)
        # None is an empty pytree: the fields not asked for never leave the device.
        return result.replace(**{name: None for name in result.keys() if name not in fields})

    return plan


def plan_sharded(target_params, draft_tokens, target_tokens, *, fields: Sequence[str] | None = None,
                 pretraining_law=None, acceptance_law=None, method: str = "bracket",
                 chunk_size: int = DEFAULT_CHUNK, mesh: Mesh | None = None,
                 dtype=None) -> DraftPlan:
    """:func:`sdsl_jax.optimal_draft_size` for many configurations, over every device.

    Args:
      target_params, draft_tokens, target_tokens: array-likes that broadcast together.
      fields: which :class:`~sdsl_jax.planning.flop.DraftPlan` fields to bring back
        (default all; fewer fields, less to copy to the host).
      pretraining_law, acceptance_law, method: as for :func:`sdsl_jax.optimal_draft_size`.
      chunk_size, mesh, dtype: as for :func:`map_configs`.

    Returns:
      A :class:`~sdsl_jax.planning.flop.DraftPlan` of numpy arrays of the inputs'
      broadcast shape, ``plans.draft_params`` or ``plans["draft_params"]``; the
      fields not in ``fields`` are None.
    """
    from sdsl_jax.planning import flop as planner, inputs, solver
    names = tuple(planner.DraftPlan.__dataclass_fields__)
    fields = names if fields is None else tuple(fields)
    for name in fields:
        if name not in names:
            raise ValueError(f"fields: {name!r} is not a DraftPlan field; choose from {names}")
    solver.check_method(method)
    # The planners' checks and laws; not their cast: map_configs casts each
    # chunk to its own dtype on the host, so millions of configurations never
    # sit on the device at once.
    laws = inputs.checked_laws(dict(target_params=target_params, draft_tokens=draft_tokens,
                                    target_tokens=target_tokens), pretraining_law, acceptance_law)
    return map_configs(_draft_size_fn(fields, method), target_params, draft_tokens, target_tokens,
                       shared=laws, chunk_size=chunk_size, mesh=mesh, dtype=dtype)
