"""Timing whole processes, as a user runs them: the start-up benchmarks' one clock.

Wall time from the parent, and the child's CPU time (user + system) from
``getrusage``: on a shared machine the CPU time is the steadier of the two.
"""

from __future__ import annotations

import resource
import subprocess
import time


def timed(command, env, cwd=None) -> tuple[float, float, str]:
    """(wall seconds, the child's CPU seconds, its stdout) of one process run in ``cwd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout
