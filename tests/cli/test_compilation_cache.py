"""The `sdsl` program's persistent compilation cache: where it lives, that a call fills it and
a second call on the same shapes answers the same from it (the planner's saved program too),
and that it can be turned off."""

import os
import subprocess
import sys

import pytest

from sdsl_jax.cli.compilation_cache import cache_directory, programs_directory

PLAN = [sys.executable, "-m", "sdsl_jax.cli", "plan", "--target-params", "70B",
        "--target-tokens", "15T", "--json"]


def test_the_folder_follows_the_environment(tmp_path):
    home = os.path.expanduser("~")
    assert cache_directory({}) == os.path.join(home, ".cache", "sdsl-jax", "compilation")
    assert cache_directory({"XDG_CACHE_HOME": str(tmp_path)}) == str(
        tmp_path / "sdsl-jax" / "compilation")
    assert cache_directory({"SDSL_COMPILATION_CACHE": str(tmp_path / "c"),
                            "XDG_CACHE_HOME": "/elsewhere"}) == str(tmp_path / "c")
    for off in ("off", "0", "false", "no", "OFF", " Off "):
        assert cache_directory({"SDSL_COMPILATION_CACHE": off}) is None
    assert programs_directory(str(tmp_path)) == str(tmp_path / "programs")
    assert programs_directory(None) is None


def _plan(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("SDSL_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    environ.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu", **env)
    result = subprocess.run(PLAN, capture_output=True, text=True, env=environ, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _entries(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.slow
def test_a_second_call_answers_the_same_from_the_cache(tmp_path):
    folder = tmp_path / "xdg" / "sdsl-jax" / "compilation"
    first = _plan(tmp_path)
    filled = _entries(folder)
    assert filled, "the first call left no compiled program in the cache"
    # The planner, saved whole (common/saved_programs), beside JAX's entries.
    assert [p.parent.name for p in (folder / "programs").iterdir()] == ["programs"]
    assert _plan(tmp_path) == first
    # Loaded, not compiled again: nothing new was written.
    assert _entries(folder) == filled
    # Off: the call compiles as before and writes nothing.
    off = tmp_path / "off"
    assert _plan(off, SDSL_COMPILATION_CACHE="off") == first
    assert not (off / "xdg").exists()
