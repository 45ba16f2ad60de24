"""JAX's persistent compilation cache for the ``sdsl`` program, on by default.

Most of a short ``sdsl`` call is XLA compiling the planner or the fit, and
every new process compiled them again. With the cache, a second call on the
same shapes loads the compiled programs from disk instead: ``sdsl plan``
went from 7.6 s to 2.9 s and ``sdsl fit`` on the example from 26.6 s to
8.0 s (whole processes, medians, two cores).

Where it lives:

* ``$SDSL_COMPILATION_CACHE`` when it names a folder;
* off when it is ``off``, ``0``, ``false`` or ``no`` (every call compiles,
  as before);
* otherwise ``$XDG_CACHE_HOME/sdsl-jax/compilation``, which is
  ``~/.cache/sdsl-jax/compilation`` where ``XDG_CACHE_HOME`` is unset.

A cache folder the caller already chose (``JAX_COMPILATION_CACHE_DIR``, or
``jax.config`` in a program that calls ``sdsl_jax.cli.main``) is kept. Entries
are keyed by the program, the JAX version and the device, so an upgrade never
loads a stale one; deleting the folder clears the cache. It is bounded, the
least recently used entries going first, and a file lock lets several ``sdsl``
processes share it. A folder that cannot be created or written leaves the
cache off: the call compiles as before.

Its ``programs`` subfolder (:func:`programs_directory`) holds the compiled
planners saved whole (:mod:`sdsl_jax.common.saved_programs`), which a new
process loads without tracing them: with it a second ``sdsl plan`` skips the
0.5 s of tracing and lowering it still spent with the compilation cache alone.
"""

from __future__ import annotations

import os
from typing import Mapping

ENV = "SDSL_COMPILATION_CACHE"
OFF = frozenset({"off", "0", "false", "no"})
# Large enough for every program of the CLI at many shapes; a bound turns on
# the cache's eviction and its file lock.
MAX_BYTES = 2 * 2**30


def cache_directory(environ: Mapping[str, str] | None = None) -> str | None:
    """The folder the cache would use under ``environ`` (default: this process's), or None
    when it is turned off."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(ENV)
    if chosen is not None and chosen.strip().lower() in OFF:
        return None
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sdsl-jax", "compilation")


def enable_compilation_cache(environ: Mapping[str, str] | None = None) -> str | None:
    """Point JAX's persistent compilation cache at :func:`cache_directory`; the folder in
    use, or None when the cache is off.

    Call it before the first compilation: JAX reads the setting then.
    """
    import jax
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory = cache_directory(environ)
    if directory is None:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    if not os.access(directory, os.W_OK | os.X_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    # The CLI's programs are many and small: cache every one, not only those
    # that took a second to compile (JAX's default), which left most of a
    # fit's compiling to be done again.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_compilation_cache_max_size < 0:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return directory


def programs_directory(cache: str | None) -> str | None:
    """The folder of saved programs in the compilation cache ``cache`` (None: off with it).

    A subfolder: JAX's eviction only looks at the cache's own top-level entries.
    """
    return None if cache is None else os.path.join(cache, "programs")
