"""Compiled programs saved in a folder, so that a new process runs them without tracing or lowering.

JAX's persistent compilation cache saves the compiling, but a new process
still traces the Python function and lowers it to find the cache entry: for
the FLOP planner that is most of a second, against a tenth of a second to load
the executable. :func:`call` skips both. The first call of a program on given
shapes compiles it (through the compilation cache, where one is set) and
saves the executable; later calls, in this process or a new one, load it.

A saved program is found by a key of everything that decides what it
computes: the program's name and static arguments, the tree, shapes and
dtypes of its arguments, the source of every module of this package, the
versions of JAX and jaxlib, the backend and its devices, JAX's settings and
``XLA_FLAGS``. A change to any of them misses and compiles afresh, so a stale
program is never loaded. A file that cannot be read, fails its checksum or
was written by another user is ignored (and replaced). At most
:data:`MAX_PROGRAMS` are kept, the least recently used removed first.

Saving is off until a caller names a folder (:func:`saving_in`): the
``sdsl`` program does, beside its compilation cache, and not when that cache
is off. Arguments that are tracers (under jit, vmap or grad) or arrays placed
on a device by the caller take the ordinary jitted path.

Loading a saved program runs code from the folder, as loading JAX's own cache
does: the folder must be the user's own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
from typing import Any, Callable, Iterator

import jax
import numpy as np

# Raised when the layout of a saved file changes.
FORMAT = 1
MAX_PROGRAMS = 64
SUFFIX = ".program"

_directory: str | None = None
# key -> the loaded program, so that a second call in one process reads no file.
_loaded: dict[str, Any] = {}
_source_digest: str | None = None


@contextlib.contextmanager
def saving_in(directory: str | None) -> Iterator[None]:
    """Within the block, :func:`call` saves and loads programs in ``directory`` (None: off)."""
    global _directory
    previous = _directory
    _directory = directory
    try:
        yield
    finally:
        _directory = previous


def directory() -> str | None:
    """The folder programs are saved in now, or None."""
    return _directory


def forget_loaded() -> None:
    """Forget the programs this process loaded, so the next :func:`call` reads the folder
    again, as a new process would."""
    _loaded.clear()


def call(name: str, jitted: Callable, static_args: tuple, *args, static_kwargs: dict | None = None):
    """``jitted(*static_args, *args, **static_kwargs)``, with its compiled program saved or loaded.

    Args:
      name: the program's name, unique in the package (e.g. "planning.flop").
      jitted: a ``jax.jit`` function whose leading arguments are static.
      static_args: those static arguments: numbers, strings, tuples, named
        tuples and module-level functions (named by module and qualified
        name); anything else takes the ordinary path.
      args: the remaining arguments, pytrees of arrays.
      static_kwargs: static arguments the function takes by name (its
        ``static_argnames``), of the same kinds as ``static_args``.

    Without a folder (:func:`saving_in`), or with tracers among ``args``,
    this is ``jitted(*static_args, *args, **static_kwargs)`` itself.
    """
    named = tuple(sorted((static_kwargs or {}).items()))
    if named:
        jitted = functools.partial(jitted, **dict(named))
    leaves, tree = jax.tree_util.tree_flatten(args)
    # The named static arguments are part of the key, after the positional ones.
    key = (_key(name, (*static_args, named) if named else static_args, leaves, tree)
           if _directory is not None else None)
    if key is None:
        return jitted(*static_args, *args)
    path = os.path.join(_directory, f"{name}-{key[:32]}{SUFFIX}")
    program = _loaded.get(key)
    if program is None:
        program = _load(path, key)
        if program is None:
            program, result = _compile_and_save(name, path, key, jitted, static_args, args)
            _loaded[key] = program
            return result
        _loaded[key] = program
    try:
        return program(*args)
    except Exception:  # noqa: BLE001 - see below
        # A loaded program that fails to run (jaxlib could save one that does
        # not: see _compile_and_save) is removed, and the call takes the
        # ordinary path, which raises again if the failure was the call's own.
        _loaded.pop(key, None)
        _remove(path)
        return jitted(*static_args, *args)


def _compile_and_save(name: str, path: str, key: str, jitted: Callable, static_args: tuple,
                      args: tuple):
    """Compile the program afresh, save it at ``path`` and check that the saved copy loads
    and answers as the compiled one, bit for bit (else nothing stays saved); the program
    and its answer."""
    # An executable that JAX's persistent compilation cache loaded serializes
    # without its compiled functions in jaxlib 0.10 (on the CPU the copy fails
    # with "Function ..._fusion not found"), so the program saved is one that
    # cache can never hold: a wrapper of its own name (a module the plain
    # jitted function never lowers to), compiled while the cache writes
    # nothing. Both compile to the same executable: XLA inlines the call.
    def program_to_save(*arguments):
        return jitted(*static_args, *arguments)

    program_to_save.__name__ = program_to_save.__qualname__ = "saved_" + name.replace(".", "_")
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        program = jax.jit(program_to_save).lower(*args).compile()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
    result = program(*args)
    if _save(path, key, program):
        copy = _load(path, key)
        try:
            same = copy is not None and _identical(copy(*args), result)
        except Exception:  # noqa: BLE001 - a copy that fails to run is not kept
            same = False
        if not same:
            _remove(path)
    return program, result


def _identical(got, expected) -> bool:
    """Whether two pytrees of arrays are equal bit for bit."""
    got, expected = jax.device_get((got, expected))
    pairs = zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected))
    return (jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
            and all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in pairs))


def _key(name: str, static_args: tuple, leaves: list, tree) -> str | None:
    """The hex digest naming the program, or None where it cannot be saved."""
    signature = []
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            # A tracer, or an array the caller placed: the ordinary path.
            if isinstance(leaf, jax.core.Tracer) or leaf.committed:
                return None
        elif not isinstance(leaf, (np.ndarray, np.generic)):
            return None
        aval = jax.typeof(leaf)
        signature.append((aval.shape, str(aval.dtype), aval.weak_type))
    static = _stable(static_args)
    if static is None:
        return None
    device = jax.devices()[0]
    parts = (FORMAT, name, static, str(tree), tuple(signature), _source(),
             jax.__version__, _jaxlib_version(), device.platform, device.device_kind,
             device.client.platform_version, jax.device_count(),
             bool(jax.config.jax_enable_x64), sorted(map(repr, jax.config.values.items())),
             os.environ.get("XLA_FLAGS", ""))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _stable(value) -> str | None:
    """A text for a static argument that is the same in every process, or None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, tuple):
        items = [_stable(item) for item in value]
        if any(item is None for item in items):
            return None
        fields = getattr(value, "_fields", None)
        names = fields if fields is not None else [""] * len(items)
        return f"{type(value).__qualname__}({', '.join(f'{n}={i}' for n, i in zip(names, items))})"
    if callable(value) and getattr(value, "__qualname__", "<").find("<") < 0:
        # A module-level function: the source digest covers its code.
        return f"{value.__module__}.{value.__qualname__}"
    return None


def _source() -> str:
    """A digest of every Python file of this package (computed once per process)."""
    global _source_digest
    if _source_digest is None:
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        digest = hashlib.sha256()
        for root, folders, files in os.walk(package):
            folders.sort()
            for file in sorted(files):
                if file.endswith(".py"):
                    path = os.path.join(root, file)
                    digest.update(os.path.relpath(path, package).encode() + b"\0")
                    with open(path, "rb") as handle:
                        digest.update(handle.read())
        _source_digest = digest.hexdigest()
    return _source_digest


def _jaxlib_version() -> str:
    import jaxlib
    return getattr(jaxlib, "__version__", "")


def _load(path: str, key: str):
    """The program saved at ``path`` under ``key``, loaded; None if absent or unusable."""
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_uid != os.getuid():
                return None  # not ours: never unpickle another user's file
            data = handle.read()
    except OSError:
        return None
    try:
        header, checksum, body = data.split(b"\n", 2)
        if header != f"sdsl-program {FORMAT} {key}".encode():
            raise ValueError("another program")
        if hashlib.sha256(body).hexdigest().encode() != checksum:
            raise ValueError("checksum")
        from jax.experimental import serialize_executable
        _prepare_custom_calls()
        payload, in_tree, out_tree = pickle.loads(body)
        program = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except Exception:  # noqa: BLE001 - a torn, corrupt or foreign file: compile instead
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used: the last to be removed
    except OSError:
        pass
    return program


def _prepare_custom_calls() -> None:
    """Make the CPU's LAPACK kernels callable before a program that may call them is loaded.

    JAX fills jaxlib's table of LAPACK routines only when it lowers a linear
    algebra operation, so a process that loads a program using one (a
    Cholesky, an eigendecomposition) without lowering any would call a null
    pointer and crash. JAX's own deserialisation of exported programs
    prepares them the same way. Where this JAX has no such hook, nothing is
    loaded (the error makes :func:`_load` compile instead).
    """
    from jax._src.lax import linalg
    linalg.initialize_lapack()


def _save(path: str, key: str, program) -> bool:
    """Write ``program`` to ``path`` (atomically), then keep the newest :data:`MAX_PROGRAMS`;
    whether it was written.

    A program that cannot be serialized, or a folder that cannot be written,
    leaves nothing saved: the next process compiles again.
    """
    from sdsl_jax.common.io import atomic_write
    try:
        from jax.experimental import serialize_executable
        body = pickle.dumps(serialize_executable.serialize(program))
    except Exception:  # noqa: BLE001 - a backend without serialization: nothing to save
        return False
    data = (f"sdsl-program {FORMAT} {key}\n".encode()
            + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, lambda handle: handle.write(data), mode="wb")
    except OSError:
        return False
    _evict(os.path.dirname(path))
    return True


def _evict(folder: str) -> None:
    try:
        entries = [entry for entry in os.scandir(folder)
                   if entry.name.endswith(SUFFIX) and entry.is_file()]
    except OSError:
        return
    entries.sort(key=lambda entry: entry.stat().st_mtime, reverse=True)
    for entry in entries[MAX_PROGRAMS:]:
        _remove(entry.path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
